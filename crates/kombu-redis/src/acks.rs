//! Queued acknowledgements: an ack returns once queued, as AMQP's `basic.ack` does, and a
//! background task removes the acked deliveries from `unacked` / `unacked_index` in batches
//! (one `MULTI ZREM … HDEL … EXEC` for every ack queued meanwhile).
//!
//! A consumer that acks each message would otherwise wait a round trip per message. Nothing
//! can be lost by queueing: until the batch is written the delivery is still recorded as
//! unacked, so the worst case — the process dies first — is a redelivery after the
//! visibility timeout (at least once, as with Kombu). A batch that fails because Redis is away
//! is retried until it is written, so an ack that was accepted does not come back once the
//! server is reachable again; closing the connection waits for the queue to drain.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// The most acks written in one transaction.
const MAX_BATCH: usize = 1024;
/// The first pause after a failed batch; doubled up to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(50);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);

enum Command {
    Ack(String),
    /// Answered once every ack queued before it was written (or given up).
    Flush(oneshot::Sender<()>),
}

/// The sending side; the writer task ends when it is dropped and the queue is drained.
pub(crate) struct AckQueue {
    inbox: mpsc::UnboundedSender<Command>,
}

impl AckQueue {
    /// Start the writer task on the current runtime.
    pub(crate) fn spawn(conn: ConnectionManager, unacked: String, unacked_index: String) -> AckQueue {
        let (inbox, commands) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(commands, conn, unacked, unacked_index));
        AckQueue { inbox }
    }

    /// Queue the ack of `tag`. `false` when the writer is gone (the runtime is shutting
    /// down): the caller acks directly.
    pub(crate) fn push(&self, tag: &str) -> bool {
        self.inbox.send(Command::Ack(tag.to_owned())).is_ok()
    }

    /// Wait until every ack queued so far is written.
    pub(crate) async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.inbox.send(Command::Flush(done)).is_ok() {
            let _ = written.await;
        }
    }
}

async fn write_loop(
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut conn: ConnectionManager,
    unacked: String,
    unacked_index: String,
) {
    let mut tags: Vec<String> = Vec::new();
    let mut flushed: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = commands.recv().await {
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Ack(tag) => tags.push(tag),
                Command::Flush(done) => flushed.push(done),
            }
            if tags.len() < MAX_BATCH {
                next = commands.try_recv().ok();
            }
        }
        if !tags.is_empty() {
            write_batch(&mut conn, &unacked, &unacked_index, &tags, &commands).await;
            tags.clear();
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Write one batch, retrying while Redis is away (the connection manager reconnects). Gives up
/// only on an error a retry cannot fix, or when the connection is gone and a last try failed.
async fn write_batch(
    conn: &mut ConnectionManager,
    unacked: &str,
    unacked_index: &str,
    tags: &[String],
    commands: &mpsc::UnboundedReceiver<Command>,
) {
    let mut pause = FIRST_RETRY_PAUSE;
    loop {
        match settle(unacked, unacked_index, tags).query_async::<()>(conn).await {
            Ok(()) => {
                debug!(count = tags.len(), "acks written");
                return;
            }
            Err(e) if retryable(&e) && !commands.is_closed() => {
                debug!(error = %e, count = tags.len(), "writing acks failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
            Err(e) => {
                warn!(
                    error = %e,
                    count = tags.len(),
                    "acks could not be written; these messages come back after the visibility timeout"
                );
                return;
            }
        }
    }
}

/// Kombu's ack: remove the deliveries `tags` from the unacked hash and its index, atomically.
pub(crate) fn settle<T: redis::ToRedisArgs>(unacked: &str, unacked_index: &str, tags: T) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic()
        .zrem(unacked_index, &tags)
        .ignore()
        .hdel(unacked, &tags)
        .ignore();
    pipe
}

fn retryable(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}
