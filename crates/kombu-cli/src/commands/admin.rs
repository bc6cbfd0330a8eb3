//! `kombu purge`, `kombu delete`, `kombu stats`: queue and exchange housekeeping.
//!
//! Each checks that a queue exists first (a passive declaration), so a typo is a clear
//! `not-found` error instead of a silent "0 messages".

use std::io::Write as _;
use std::sync::Arc;

use kombu::transport::{Channel, DeclareOptions, DeleteExchangeOptions, DeleteQueueOptions};
use kombu::Queue;
use serde_json::json;

use crate::cli::{DeleteCommand, GlobalArgs, PurgeArgs, StatsArgs};
use crate::commands::connect;
use crate::error::{stdout_error, CliResult};
use crate::output::table;

/// Runs `f` on the connection's default channel, then closes the connection; prints the lines.
async fn with_channel<F>(global: &GlobalArgs, f: F) -> CliResult
where
    F: AsyncFnOnce(Arc<dyn Channel>) -> CliResult<Vec<String>>,
{
    let connection = connect(global)?;
    let result = match connection.default_channel().await {
        Ok(channel) => f(channel).await,
        Err(e) => Err(e.into()),
    };
    let closed = connection.close().await;
    let lines = result?;
    closed?;
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        writeln!(stdout, "{line}").map_err(stdout_error)?;
    }
    Ok(())
}

/// Ready messages in `queue`; a `not-found` error if it does not exist.
async fn message_count(channel: &dyn Channel, queue: &str) -> CliResult<u64> {
    let ok = channel
        .declare_queue(&Queue::new(queue), DeclareOptions::passive())
        .await?;
    Ok(ok.message_count)
}

fn messages(n: u64) -> String {
    format!("{n} message{}", if n == 1 { "" } else { "s" })
}

/// Runs `kombu purge`.
pub(crate) async fn purge(global: &GlobalArgs, args: PurgeArgs) -> CliResult {
    with_channel(global, async |channel| {
        let mut lines = Vec::new();
        for queue in &args.queues {
            message_count(channel.as_ref(), queue).await?;
            let purged = channel.purge_queue(queue).await?;
            lines.push(format!("purged {} from queue {queue:?}", messages(purged)));
        }
        Ok(lines)
    })
    .await
}

/// Runs `kombu delete`.
pub(crate) async fn delete(global: &GlobalArgs, command: DeleteCommand) -> CliResult {
    with_channel(global, async |channel| match command {
        DeleteCommand::Queue {
            name,
            if_empty,
            if_unused,
        } => {
            message_count(channel.as_ref(), &name).await?;
            let mut options = DeleteQueueOptions::default();
            options.if_empty = if_empty;
            options.if_unused = if_unused;
            let held = channel.delete_queue(&name, options).await?;
            Ok(vec![format!("deleted queue {name:?} ({})", messages(held))])
        }
        DeleteCommand::Exchange { name, if_unused } => {
            let mut options = DeleteExchangeOptions::default();
            options.if_unused = if_unused;
            channel.delete_exchange(&name, options).await?;
            Ok(vec![format!("deleted exchange {name:?}")])
        }
    })
    .await
}

/// Runs `kombu stats`.
pub(crate) async fn stats(global: &GlobalArgs, args: StatsArgs) -> CliResult {
    with_channel(global, async |channel| {
        let mut counts = Vec::new();
        for queue in &args.queues {
            counts.push((queue.clone(), message_count(channel.as_ref(), queue).await?));
        }
        if args.json {
            let array: Vec<_> = counts
                .iter()
                .map(|(queue, n)| json!({"queue": queue, "messages": n}))
                .collect();
            return Ok(vec![serde_json::Value::Array(array).to_string()]);
        }
        let mut rows = vec![vec!["queue".to_owned(), "messages".to_owned()]];
        rows.extend(counts.into_iter().map(|(queue, n)| vec![queue, n.to_string()]));
        Ok(table(&rows))
    })
    .await
}
