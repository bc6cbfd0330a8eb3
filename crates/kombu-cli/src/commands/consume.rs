//! `kombu consume`: print messages as they arrive, then settle them.
//!
//! A message is acked only after it was written *and flushed* to stdout, so a reader that goes
//! away (a closed pipe) never costs a message: what was not printed stays unacked and the
//! channel restores it on close. `--no-ack` flips that to at-most-once; `--requeue` holds every
//! message and gives them all back at the end (a peek). With `--count N` no more than N
//! messages are ever taken from the broker, so none is handed out and given back.

use std::io::Write as _;
use std::time::Duration;

use kombu::{Accept, Connection, Consumer, ErrorKind, Message, Queue};

use crate::cli::{ConsumeArgs, GlobalArgs};
use crate::commands::{connect, seconds};
use crate::error::{stdout_error, CliError, CliResult};
use crate::output::{message_json, message_text};

/// Runs `kombu consume`.
pub(crate) async fn run(global: &GlobalArgs, args: ConsumeArgs) -> CliResult {
    let connection = connect(global)?;
    let result = consume(&connection, &args).await;
    // Closing restores whatever was delivered but not settled (prefetched beyond --count).
    let closed = connection.close().await;
    result?;
    closed?;
    Ok(())
}

/// The prefetch count: never more than `--count` (nothing is taken that will not be printed;
/// `--prefetch 0`, unlimited, then means `--count`), and unlimited for a peek without
/// `--count`, which holds every message until the end.
fn prefetch(args: &ConsumeArgs) -> u16 {
    let count = args.count.map(|n| u16::try_from(n).unwrap_or(u16::MAX));
    match (args.requeue, count) {
        (true, Some(n)) => n,
        (true, None) => 0,
        (false, Some(n)) if args.prefetch == 0 => n,
        (false, Some(n)) => args.prefetch.min(n),
        (false, None) => args.prefetch,
    }
}

async fn consume(connection: &Connection, args: &ConsumeArgs) -> CliResult {
    let queues = args
        .queues
        .iter()
        .map(|name| Queue::new(name.clone()).passive(!args.declare));
    // An operator's tool shows whatever is in the queue, whatever its content type.
    let mut consumer = connection
        .consumer(queues)
        .accept_set(Accept::any())
        .prefetch_count(prefetch(args))
        .consume()
        .await?;

    let timeout = args.timeout.map(seconds);
    let mut held: Vec<Message> = Vec::new();
    let mut received = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut ctrl_c_armed = true;
    let outcome: CliResult = loop {
        if args.count.is_some_and(|n| received >= n) {
            break Ok(());
        }
        let next = async {
            match timeout {
                Some(t) => consumer.recv_timeout(t).await,
                // A Closed error when the consumer stopped (queue deleted, channel closed).
                None => consumer.recv().await,
            }
        };
        tokio::select! {
            biased;
            signal = &mut ctrl_c, if ctrl_c_armed => match signal {
                Ok(()) => break Err(CliError::Interrupted(format!("after {received} message(s)"))),
                // No signal handler: consume on; Ctrl-C then kills the process.
                Err(_) => ctrl_c_armed = false,
            },
            next = next => match next {
                Ok(message) => {
                    received += 1;
                    if let Err(e) = handle(&mut consumer, message, received, args, &mut held).await {
                        break Err(e);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Timeout => break timed_out(args, received, timeout),
                Err(e) => break Err(e.into()),
            },
        }
    };

    let settled = if args.requeue {
        give_back(&mut consumer, &held).await
    } else {
        Ok(())
    };
    let closed = consumer.close().await;
    outcome?;
    settled?;
    closed?;
    Ok(())
}

/// The idle timeout passed: the normal end without `--count`, an error with it.
fn timed_out(args: &ConsumeArgs, received: u64, timeout: Option<Duration>) -> CliResult {
    match args.count {
        None => Ok(()),
        Some(n) => Err(CliError::Timeout(format!(
            "received {received} of {n} message(s); none arrived for {:.3}s (--timeout)",
            timeout.unwrap_or_default().as_secs_f64()
        ))),
    }
}

/// Gives peeked messages back, in their order. Every delivered message goes back, including
/// any delivered but not yet printed: `recover` restores them all newest first at the head of
/// their queues, which keeps the order; where a transport cannot recover, each held message is
/// rejected with requeue, newest first.
async fn give_back(consumer: &mut Consumer, held: &[Message]) -> CliResult {
    consumer.cancel().await?;
    match consumer.recover(true).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            for message in held.iter().rev() {
                message.requeue().await?;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Prints one message and settles it per the flags.
async fn handle(
    consumer: &mut Consumer,
    message: Message,
    index: u64,
    args: &ConsumeArgs,
    held: &mut Vec<Message>,
) -> CliResult {
    if args.requeue {
        // A peek settles nothing until the end; its prefetch already stops at --count.
        print(&message, index, args)?;
        held.push(message);
        return Ok(());
    }
    if let Some(count) = args.count {
        // Shrink the prefetch as the end nears, before this message's ack frees room, so the
        // broker never hands out more than --count messages: no extra message is taken and
        // then given back (which would mark it redelivered).
        let remaining = count - index;
        if remaining == 0 {
            consumer.cancel().await?;
        } else if remaining < u64::from(prefetch(args)) {
            consumer.qos(u16::try_from(remaining).unwrap_or(u16::MAX)).await?;
        }
    }
    if args.no_ack {
        message.ack().await?;
        print(&message, index, args)
    } else {
        print(&message, index, args)?;
        message.ack().await?;
        Ok(())
    }
}

/// Writes one message to stdout and flushes: other processes read this through a pipe. A
/// body that cannot be decompressed is an error before anything is written.
fn print(message: &Message, index: u64, args: &ConsumeArgs) -> CliResult {
    let payload = message.payload()?;
    let text = if args.json {
        let mut line = serde_json::to_string(&message_json(message, &payload))
            .map_err(|e| CliError::other(format!("cannot render the message as JSON: {e}")))?;
        line.push('\n');
        line
    } else {
        message_text(index, message, &payload)
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(stdout_error)
}
