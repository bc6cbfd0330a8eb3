//! Batched settlement: acks queued by every channel of a connection and written in groups
//! through [`Receipts::ack_batch`].
//!
//! An ack returns once queued, as AMQP's `basic.ack` does, so a consumer that acks each
//! message does not wait a round trip per message. Nothing can be lost by queueing: until a
//! group is written its messages are still held by the broker, so the worst case — the
//! process dies first — is a redelivery after the visibility timeout. A group that fails
//! with a recoverable error (the broker is away) is retried with backoff until it is written
//! or the connection is gone; closing a channel or the connection waits for the queue.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::backend::{Receipts, Settle, VirtualBackend};

/// The most acks written in one group.
const MAX_GROUP: usize = 1024;
/// How long a close waits for queued acks to be written.
const FLUSH_LIMIT: Duration = Duration::from_secs(10);
/// The first pause after a failed group; doubled up to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(50);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);

#[derive(Debug)]
enum Command {
    Ack(Settle),
    /// Answered once every ack queued before it was written (or given up).
    Flush(oneshot::Sender<()>),
}

/// The sending side, shared by a connection's channels. The writer task ends when the last
/// one is dropped and the queue is drained.
#[derive(Debug, Clone)]
pub(crate) struct Settlement {
    inbox: mpsc::UnboundedSender<Command>,
}

impl Settlement {
    /// Start the writer for `backend` on the current runtime; `None` when the backend holds
    /// no messages until settled (it has no [`Receipts`]) or there is no runtime.
    pub(crate) fn spawn<B: VirtualBackend>(backend: &Arc<B>) -> Option<Settlement> {
        backend.receipts()?;
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (inbox, commands) = mpsc::unbounded_channel();
        runtime.spawn(write_loop(commands, backend.clone()));
        Some(Settlement { inbox })
    }

    /// Queue the ack of one message. `Err` gives it back when the writer is gone (the
    /// runtime is shutting down): the caller then writes it itself.
    pub(crate) fn push(&self, settle: Settle) -> std::result::Result<(), Settle> {
        match self.inbox.send(Command::Ack(settle)) {
            Err(mpsc::error::SendError(Command::Ack(settle))) => Err(settle),
            // Only an `Ack` was sent, so only an `Ack` comes back.
            Ok(()) | Err(_) => Ok(()),
        }
    }

    /// Wait until every ack queued so far is written (or given up), at most
    /// [`FLUSH_LIMIT`]: a broker that stays away must not hang a close. Acks still queued
    /// then are retried in the background.
    pub(crate) async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.inbox.send(Command::Flush(done)).is_err() {
            return;
        }
        if tokio::time::timeout(FLUSH_LIMIT, written).await.is_err() {
            warn!(
                "closing with acks not yet written (broker unreachable); they are retried in the background"
            );
        }
    }
}

async fn write_loop<B: VirtualBackend>(mut commands: mpsc::UnboundedReceiver<Command>, backend: Arc<B>) {
    let Some(receipts) = backend.receipts() else {
        return;
    };
    let mut group: Vec<Settle> = Vec::new();
    let mut flushed: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = commands.recv().await {
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Ack(settle) => group.push(settle),
                Command::Flush(done) => flushed.push(done),
            }
            if group.len() < MAX_GROUP {
                next = commands.try_recv().ok();
            }
        }
        if !group.is_empty() {
            write_group(receipts, &group, &commands).await;
            group.clear();
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Write one group, retrying recoverable errors while the connection lives.
async fn write_group(
    receipts: &impl Receipts,
    group: &[Settle],
    commands: &mpsc::UnboundedReceiver<Command>,
) {
    let mut pause = FIRST_RETRY_PAUSE;
    loop {
        match receipts.ack_batch(group).await {
            Ok(()) => {
                debug!(count = group.len(), "acks written");
                return;
            }
            Err(e) if e.is_recoverable() && !commands.is_closed() => {
                debug!(error = %e, count = group.len(), "writing acks failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
            Err(e) => {
                warn!(
                    error = %e,
                    count = group.len(),
                    "acks could not be written; these messages come back after the visibility timeout"
                );
                return;
            }
        }
    }
}
