//! The dispatcher: one task per channel that serves every consumer of the channel fairly.
//!
//! Each turn it takes, per consumer, up to a budget (room in the consumer's buffer, the batch
//! size, prefetch room): first broadcast messages waiting for the queue, then messages a
//! claiming receive brought, then the queue itself. With nothing to deliver it waits:
//!
//! * **non-claiming wait** (the default): [`VirtualBackend::wait_for_messages`], raced
//!   against the channel's and the backend's signals and cancelled when one fires — it takes
//!   nothing, so cancelling it loses nothing; the next turn claims with `get_batch`;
//! * **claiming wait** ([`ClaimingWait`]): a receive per consumed queue, each in a task of
//!   its own that is never cancelled; what it claims is kept for the queue (the *stash*)
//!   and the dispatcher woken, or given straight back if the channel has closed.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{debug, warn};

use super::backend::{Claimed, ClaimingWait, NativeFanout, VirtualBackend};
use super::channel::{ChannelInner, ConsumerEntry};
use super::unacked::restore_all;
use crate::error::Result;
use crate::message::Delivery;

/// How many messages the dispatcher takes from one queue per turn.
const DISPATCH_BATCH: usize = 64;
/// The first idle sleep of a dispatcher (see [`idle_backoff`]).
const FIRST_IDLE_POLL: Duration = Duration::from_millis(10);
/// The pause after a claiming receive failed with a recoverable error (the broker is away).
const RECEIVE_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// One dispatcher per channel: serves every consumer of the channel, fairly.
pub(super) async fn dispatch_loop<B: VirtualBackend>(weak: Weak<ChannelInner<B>>, wakeup: Arc<Notify>) {
    let mut snapshot: Vec<Arc<ConsumerEntry>> = Vec::new();
    let mut version = u64::MAX;
    let mut turn = 0usize;
    let mut batch: Vec<Claimed> = Vec::with_capacity(DISPATCH_BATCH);
    let mut handed: Vec<Result<Delivery>> = Vec::with_capacity(DISPATCH_BATCH);
    let mut idle_polls = 0u32;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if !inner.open.load(Ordering::Acquire) {
            return;
        }
        let current = inner.consumers_version.load(Ordering::Acquire);
        if current != version {
            snapshot = inner.lock_consumers().clone();
            version = current;
        }
        // Register interest before looking, so a signal between the look and the wait is kept.
        let channel_signal = wakeup.notified();
        tokio::pin!(channel_signal);
        channel_signal.as_mut().enable();
        let backend_notify = inner.backend.wakeup();
        let backend_signal = backend_notify.as_ref().map(|n| n.notified());
        tokio::pin!(backend_signal);
        if let Some(s) = backend_signal.as_mut().as_pin_mut() {
            s.enable();
        }

        let mut delivered = 0usize;
        let mut broker_trouble = false;
        let n = snapshot.len();
        for i in 0..n {
            let consumer = &snapshot[(turn + i) % n];
            if consumer.sender.is_closed() {
                continue;
            }
            let mut budget = consumer.sender.room().min(DISPATCH_BATCH);
            if !consumer.no_ack {
                budget = budget.min(inner.prefetch_room());
            }
            if budget == 0 {
                continue;
            }
            batch.clear();
            let polled = take(&inner, &consumer.queue, budget, &mut batch).await;
            // What was claimed is delivered even when the poll also reported an error.
            for claimed in batch.drain(..) {
                delivered += 1;
                handed.push(Ok(inner.make_delivery(
                    &consumer.queue,
                    claimed,
                    Some(&consumer.tag),
                    consumer.no_ack,
                )));
            }
            if !consumer.sender.send_all(&mut handed) {
                give_back_undeliverable(&inner, &consumer.queue, &mut handed).await;
            }
            if let Err(e) = polled {
                if e.is_recoverable() {
                    // The broker is away: keep polling (with backoff) until it is back, so
                    // consumers resume by themselves.
                    warn!(error = %e, queue = %consumer.queue, "consumer poll failed; retrying");
                    broker_trouble = true;
                } else {
                    warn!(error = %e, queue = %consumer.queue, "consumer poll failed");
                    let _ = consumer.sender.send_all(&mut vec![Err(e)]);
                }
            }
        }
        turn = turn.wrapping_add(1);
        if delivered > 0 {
            idle_polls = 0;
            // Give producers and consumers on this runtime a turn between batches.
            drop(inner);
            tokio::task::yield_now().await;
            continue;
        }
        let interval = idle_backoff(inner.backend.polling_interval(), idle_polls);
        idle_polls = idle_polls.saturating_add(1);
        let claiming = inner.backend.claiming_wait().is_some();
        // The consumed queues with room: backends that can block on the broker watch them.
        let room = inner.prefetch_room();
        let mut waiting_on: Vec<Arc<str>> = Vec::new();
        if !broker_trouble && !claiming {
            // A set, not `waiting_on.contains`: with hundreds of consumed queues the quadratic
            // scan was most of an idle channel's CPU.
            let mut seen: HashSet<&str> = HashSet::with_capacity(snapshot.len());
            for c in snapshot
                .iter()
                .filter(|c| !c.sender.is_closed() && c.sender.room() > 0)
            {
                if (c.no_ack || room > 0) && seen.insert(&c.queue) {
                    waiting_on.push(c.queue.clone());
                }
            }
        }
        let backend = inner.backend.clone();
        drop(inner);
        let sleep = async {
            if claiming {
                // The receives run in their own tasks and wake the channel when they return;
                // this is only the safety net.
                tokio::time::sleep(interval).await;
            } else if let Err(e) = backend.wait_for_messages(&waiting_on, interval).await {
                debug!(error = %e, "waiting for messages failed");
                tokio::time::sleep(interval).await;
            }
        };
        match backend_signal.as_mut().as_pin_mut() {
            Some(backend_signal) => {
                tokio::select! {
                    _ = &mut channel_signal => {}
                    _ = backend_signal => {}
                    _ = sleep => {}
                }
            }
            None => {
                tokio::select! {
                    _ = &mut channel_signal => {}
                    _ = sleep => {}
                }
            }
        }
    }
}

/// Take up to `budget` messages for a consumer of `queue`: broadcast ones first, then what
/// a claiming receive brought, then the queue itself (without waiting, or by starting a
/// claiming receive when the backend has one).
async fn take<B: VirtualBackend>(
    inner: &Arc<ChannelInner<B>>,
    queue: &Arc<str>,
    budget: usize,
    out: &mut Vec<Claimed>,
) -> Result<()> {
    if let Some(fanout) = inner.backend.native_fanout() {
        let mut broadcast = Vec::new();
        fanout.broadcast_buffer().take(queue, budget, &mut broadcast);
        out.extend(broadcast.into_iter().map(Claimed::removed));
    }
    if inner.backend.claiming_wait().is_none() {
        // Only claiming receives stash: the other backends never touch the stash's lock.
        let rest = budget - out.len();
        if rest == 0 {
            return Ok(());
        }
        return inner.backend.get_batch(queue, rest, out).await;
    }
    if out.len() < budget {
        if let Some(error) = inner.take_stashed(queue, budget - out.len(), out) {
            return Err(error);
        }
    }
    let rest = budget - out.len();
    if rest > 0 && inner.start_receiving(queue) {
        let timeout = inner.backend.polling_interval();
        tokio::spawn(receive_task(
            inner.backend.clone(),
            Arc::downgrade(inner),
            queue.clone(),
            rest,
            timeout,
        ));
    }
    Ok(())
}

/// One claiming receive, run to its end: what it claimed is stashed for the queue's
/// consumer, or given back at once when the channel is gone.
async fn receive_task<B: VirtualBackend>(
    backend: Arc<B>,
    weak: Weak<ChannelInner<B>>,
    queue: Arc<str>,
    max: usize,
    timeout: Duration,
) {
    let Some(receiver) = backend.claiming_wait() else {
        return;
    };
    let mut claimed = Vec::new();
    let result = receiver.receive(&queue, max, timeout, &mut claimed).await;
    let (error, pause) = match result {
        Ok(()) => (None, None),
        Err(e) if e.is_recoverable() => {
            warn!(error = %e, queue = %queue, "claiming receive failed; retrying");
            (None, Some(RECEIVE_RETRY_PAUSE))
        }
        Err(e) => (Some(e), None),
    };
    let kept = match weak.upgrade() {
        Some(inner) => inner.stash(&queue, &mut claimed, error),
        None => false,
    };
    if !kept && !claimed.is_empty() {
        let held = claimed
            .drain(..)
            .enumerate()
            .map(|(i, c)| (i as u64, queue.clone(), c))
            .collect();
        if let Err(e) = restore_all(&*backend, held).await {
            warn!(error = %e, queue = %queue, "could not give back what a receive claimed for a closed channel");
        }
    }
    if let Some(pause) = pause {
        tokio::time::sleep(pause).await;
    }
    if let Some(inner) = weak.upgrade() {
        inner.done_receiving(&queue);
        inner.wakeup.notify_one();
    }
}

/// Deliveries a consumer could not take (its stream went away): every one goes back.
async fn give_back_undeliverable<B: VirtualBackend>(
    inner: &ChannelInner<B>,
    queue: &Arc<str>,
    handed: &mut Vec<Result<Delivery>>,
) {
    let mut held = Vec::new();
    for (i, delivery) in handed.drain(..).flatten().enumerate() {
        let claimed = match delivery.ack.as_ref() {
            Some(handle) => inner.take_for_restore(handle.tag),
            // A no-ack delivery: already settled on the broker, so it goes back as a new copy.
            None => Some(Claimed::removed(inner.envelope_of(delivery))),
        };
        if let Some(claimed) = claimed {
            held.push((i as u64, queue.clone(), claimed));
        }
    }
    if let Err(e) = restore_all(&*inner.backend, held).await {
        warn!(error = %e, queue = %queue, "failed to requeue undeliverable messages");
    }
}

/// How long an idle dispatcher sleeps before polling again: [`FIRST_IDLE_POLL`] after the last
/// delivery, doubling on every empty poll up to the backend's polling interval. Messages that
/// another process adds (which no wake-up signal announces) are picked up quickly while the
/// queue is busy, and an idle queue costs one poll per interval.
fn idle_backoff(polling_interval: Duration, idle_polls: u32) -> Duration {
    FIRST_IDLE_POLL
        .saturating_mul(1u32 << idle_polls.min(16))
        .min(polling_interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_backoff_doubles_up_to_the_polling_interval() {
        let second = Duration::from_secs(1);
        assert_eq!(idle_backoff(second, 0), Duration::from_millis(10));
        assert_eq!(idle_backoff(second, 1), Duration::from_millis(20));
        assert_eq!(idle_backoff(second, 6), Duration::from_millis(640));
        assert_eq!(idle_backoff(second, 7), second);
        assert_eq!(idle_backoff(second, u32::MAX), second);
        assert_eq!(
            idle_backoff(Duration::from_millis(5), 0),
            Duration::from_millis(5)
        );
    }
}
