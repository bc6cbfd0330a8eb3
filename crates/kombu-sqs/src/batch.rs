//! Publishing through `SendMessageBatch`: puts to one queue that are waiting at the same time
//! go out in groups of 10, each publish answered with its own entry's result.
//!
//! One flusher task per queue sends, so messages leave in the order they were published
//! (what FIFO queues need); a lone publish is one `SendMessage`, as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use kombu_core::{Error, ErrorKind, Result};
use tokio::sync::oneshot;
use tracing::debug;

use crate::backend::{sdk_error, Outgoing, Target, SQS_BATCH};

type Waiting = Vec<(Outgoing, oneshot::Sender<Result<()>>)>;

#[derive(Default)]
struct Pending {
    items: Waiting,
    flushing: bool,
}

/// The queues' waiting publishes.
#[derive(Default, Clone)]
pub(crate) struct SendBatcher {
    queues: Arc<Mutex<HashMap<Arc<str>, Pending>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SendBatcher {
    /// Send one message, batched with those waiting for the same queue.
    pub(crate) async fn send(&self, target: &Target, outgoing: Outgoing) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queues = lock(&self.queues);
            let pending = queues.entry(target.url.clone()).or_default();
            pending.items.push((outgoing, tx));
            !std::mem::replace(&mut pending.flushing, true)
        };
        if start {
            tokio::spawn(flush(self.queues.clone(), target.clone()));
        }
        rx.await.map_err(|_| {
            Error::new(
                ErrorKind::Closed,
                "the SQS sender stopped before sending the message",
            )
        })?
    }
}

async fn flush(queues: Arc<Mutex<HashMap<Arc<str>, Pending>>>, target: Target) {
    loop {
        let batch: Waiting = {
            let mut guard = lock(&queues);
            let Some(pending) = guard.get_mut(&target.url) else {
                return;
            };
            if pending.items.is_empty() {
                pending.flushing = false;
                guard.remove(&target.url);
                return;
            }
            let n = pending.items.len().min(SQS_BATCH);
            pending.items.drain(..n).collect()
        };
        send_batch(&target, batch).await;
    }
}

async fn send_batch(target: &Target, mut batch: Waiting) {
    if batch.len() == 1 {
        let Some((o, tx)) = batch.pop() else { return };
        let result = target
            .client
            .send_message()
            .queue_url(&*target.url)
            .message_body(o.body)
            .set_message_attributes(o.attributes)
            .set_message_group_id(o.group_id)
            .set_message_deduplication_id(o.dedup_id)
            .set_delay_seconds(o.delay_seconds)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_error("SendMessage", e));
        let _ = tx.send(result);
        return;
    }
    let mut entries = Vec::with_capacity(batch.len());
    let mut senders = Vec::with_capacity(batch.len());
    for (i, (o, tx)) in batch.into_iter().enumerate() {
        let entry = SendMessageBatchRequestEntry::builder()
            .id(i.to_string())
            .message_body(o.body)
            .set_message_attributes(o.attributes)
            .set_message_group_id(o.group_id)
            .set_message_deduplication_id(o.dedup_id)
            .set_delay_seconds(o.delay_seconds)
            .build();
        match entry {
            Ok(entry) => {
                entries.push(entry);
                senders.push(Some(tx));
            }
            Err(e) => {
                let _ = tx.send(Err(Error::new(ErrorKind::InvalidArgument, e.to_string())));
                senders.push(None);
            }
        }
    }
    let total = entries.len();
    let result = target
        .client
        .send_message_batch()
        .queue_url(&*target.url)
        .set_entries(Some(entries))
        .send()
        .await;
    match result {
        Err(e) => {
            let e = sdk_error("SendMessageBatch", e);
            for tx in senders.into_iter().flatten() {
                let _ = tx.send(Err(e.duplicate()));
            }
        }
        Ok(out) => {
            debug!(sent = out.successful().len(), total, "SendMessageBatch");
            for failed in out.failed() {
                let Some(tx) = failed
                    .id()
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| senders.get_mut(i))
                    .and_then(Option::take)
                else {
                    continue;
                };
                let kind = match failed.code() {
                    "MessageTooLong" | "BatchRequestTooLong" => ErrorKind::LimitExceeded,
                    "InvalidParameterValue" | "InvalidMessageContents" | "MissingParameter" => {
                        ErrorKind::InvalidArgument
                    }
                    _ => ErrorKind::Channel,
                };
                let mut error = Error::new(
                    kind,
                    format!(
                        "SQS refused a message of a SendMessageBatch: {} ({})",
                        failed.code(),
                        failed.message().unwrap_or("")
                    ),
                );
                if !failed.sender_fault() {
                    error = error.set_recoverable(true);
                }
                let _ = tx.send(Err(error));
            }
            for i in out
                .successful()
                .iter()
                .filter_map(|s| s.id().parse::<usize>().ok())
            {
                if let Some(tx) = senders.get_mut(i).and_then(Option::take) {
                    let _ = tx.send(Ok(()));
                }
            }
            // An entry SQS reported neither way: never silently taken for sent.
            for tx in senders.into_iter().flatten() {
                let _ = tx.send(Err(Error::new(
                    ErrorKind::Unexpected,
                    "SendMessageBatch reported nothing for a message: it may or may not be stored",
                )
                .set_recoverable(true)));
            }
        }
    }
}
