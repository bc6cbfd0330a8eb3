//! What a channel holds for the broker: delivered, unsettled messages, messages a claiming
//! receive brought ahead of their consumer's turn, and the one routine that gives them back.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tracing::warn;

use super::backend::{Claimed, NativeFanout, Receipts, Requeue, VirtualBackend};
use crate::error::{Error, Result};

/// Hashes the channel's own sequential `u64` delivery tags: no need for SipHash's DoS
/// resistance on keys we mint ourselves.
#[derive(Default, Clone, Copy)]
pub(super) struct TagHasher(u64);

impl std::hash::Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Delivered, unsettled messages by the channel's delivery tag.
pub(super) type UnackedMap = HashMap<u64, Unacked, std::hash::BuildHasherDefault<TagHasher>>;

/// A delivered message not yet settled.
pub(super) struct Unacked {
    pub(super) queue: Arc<str>,
    pub(super) claimed: Claimed,
}

/// Messages a claiming receive took for a queue before its consumer had room, and an error
/// to hand to that consumer.
#[derive(Default)]
pub(super) struct Stashed {
    pub(super) claimed: VecDeque<Claimed>,
    pub(super) error: Option<Error>,
}

/// Give one message back to its queue, marked redelivered: by receipt where the broker holds
/// it, into the broadcast buffer where it came from a broadcast, else put back at the head.
/// The one restore routine of the virtual transport: rejects with requeue, `recover`, closed
/// and dropped channels, and deliveries nobody could take all come through here.
pub(super) async fn restore<B: VirtualBackend>(backend: &B, queue: &str, mut claimed: Claimed) -> Result<()> {
    claimed.envelope.redelivered = true;
    if let (Some(receipt), Some(receipts)) = (claimed.receipt.as_deref(), backend.receipts()) {
        return receipts.requeue(queue, claimed.envelope, receipt).await;
    }
    if let Some(fanout) = backend.native_fanout() {
        let buffer = fanout.broadcast_buffer();
        if buffer.is_subscribed(queue) {
            buffer.push_front(queue, claimed.envelope);
            return Ok(());
        }
    }
    backend.restore(queue, claimed.envelope).await
}

/// Give back many messages (`(order, queue, message)`), newest first, so that putting each
/// at the head of its queue keeps the original order: the ones the broker holds in one
/// [`Receipts::requeue_batch`], the others one by one through [`restore`]. Every message is
/// tried; the first error is returned.
pub(super) async fn restore_all<B: VirtualBackend>(
    backend: &B,
    mut held: Vec<(u64, Arc<str>, Claimed)>,
) -> Result<()> {
    held.sort_by_key(|(order, _, _)| std::cmp::Reverse(*order));
    let mut first_error = None;
    let mut batch = Vec::new();
    for (_, queue, mut claimed) in held {
        match (claimed.receipt.take(), backend.receipts()) {
            (Some(receipt), Some(_)) => {
                claimed.envelope.redelivered = true;
                batch.push(Requeue {
                    queue,
                    envelope: claimed.envelope,
                    receipt,
                });
            }
            (receipt, _) => {
                claimed.receipt = receipt;
                if let Err(e) = restore(backend, &queue, claimed).await {
                    warn!(error = %e, queue = %queue, "failed to restore a message");
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    if let (false, Some(receipts)) = (batch.is_empty(), backend.receipts()) {
        let count = batch.len();
        if let Err(e) = receipts.requeue_batch(batch).await {
            warn!(error = %e, count, "failed to give back held messages");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}
