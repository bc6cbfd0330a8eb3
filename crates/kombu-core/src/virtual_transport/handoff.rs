//! The buffer between a channel's dispatcher and one consumer's stream.
//!
//! The dispatcher hands deliveries over a batch at a time, under one lock, and the stream
//! takes everything waiting in one swap, then yields it one by one without touching shared
//! state. A bounded `tokio::sync::mpsc` did the same work with a semaphore, whose receiving
//! side took a lock for every message.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures_core::Stream;
use tokio::sync::Notify;

use crate::error::Result;
use crate::message::Delivery;

type Item = Result<Delivery>;

/// A handoff holding up to `capacity` deliveries not yet taken by the stream (the stream's own
/// batch, once taken, holds up to as many again). `dispatcher` is woken when the stream takes
/// deliveries after the dispatcher found no room.
pub(super) fn handoff(capacity: usize, dispatcher: Arc<Notify>) -> (HandoffSender, HandoffReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        queued: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        capacity,
        dispatcher,
    });
    (
        HandoffSender {
            shared: shared.clone(),
        },
        HandoffReceiver {
            shared,
            taken: VecDeque::new(),
        },
    )
}

struct Shared {
    state: Mutex<State>,
    /// `state.items.len()`, written under the lock, read without it for a first look.
    queued: AtomicUsize,
    /// The stream was dropped (read without the lock on every dispatcher turn).
    closed: AtomicBool,
    capacity: usize,
    dispatcher: Arc<Notify>,
}

#[derive(Default)]
struct State {
    items: VecDeque<Item>,
    /// The stream's waker while it waits for deliveries.
    waker: Option<Waker>,
    /// The dispatcher found no room: the stream wakes it when it takes deliveries.
    starved: bool,
    /// The sender was dropped: once `items` is empty the stream ends.
    sender_gone: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The dispatcher's end.
pub(super) struct HandoffSender {
    shared: Arc<Shared>,
}

impl HandoffSender {
    /// Whether the stream was dropped.
    pub(super) fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// How many more deliveries may be handed over now. When there is no room, the stream will
    /// wake the dispatcher as soon as it takes what is waiting.
    pub(super) fn room(&self) -> usize {
        let capacity = self.shared.capacity;
        let queued = self.shared.queued.load(Ordering::Acquire);
        if queued < capacity {
            return capacity - queued;
        }
        let mut state = self.shared.lock();
        let queued = state.items.len();
        if queued < capacity {
            return capacity - queued;
        }
        state.starved = true;
        0
    }

    /// Hand over everything in `batch` (left empty), waking the stream. If the stream is gone
    /// nothing is taken: `false`, and `batch` still holds every delivery.
    pub(super) fn send_all(&self, batch: &mut Vec<Item>) -> bool {
        if batch.is_empty() {
            return true;
        }
        let waker = {
            let mut state = self.shared.lock();
            // Set before the stream takes the lock to drop what waits, so seen here after it.
            if self.is_closed() {
                return false;
            }
            state.items.extend(batch.drain(..));
            self.shared.queued.store(state.items.len(), Ordering::Release);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }
}

impl Drop for HandoffSender {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.sender_gone = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The consumer's end: a stream of deliveries that ends when the sender is dropped and every
/// delivery was taken.
pub(super) struct HandoffReceiver {
    shared: Arc<Shared>,
    /// Deliveries taken in the last swap, yielded without touching shared state.
    taken: VecDeque<Item>,
}

impl Stream for HandoffReceiver {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let this = self.get_mut();
        if let Some(item) = this.taken.pop_front() {
            return Poll::Ready(Some(item));
        }
        let wake_dispatcher = {
            let mut state = this.shared.lock();
            if state.items.is_empty() {
                if state.sender_gone {
                    return Poll::Ready(None);
                }
                if !state.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    state.waker = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
            // The emptied deque (with its allocation) goes back for the next batch.
            std::mem::swap(&mut state.items, &mut this.taken);
            this.shared.queued.store(0, Ordering::Release);
            std::mem::take(&mut state.starved)
        };
        if wake_dispatcher {
            this.shared.dispatcher.notify_one();
        }
        Poll::Ready(this.taken.pop_front())
    }
}

impl Drop for HandoffReceiver {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        // Dropped outside the lock; the channel still records them as unacked, so closing it
        // restores them.
        let waiting = std::mem::take(&mut self.shared.lock().items);
        drop(waiting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, ErrorKind};
    use std::future::poll_fn;

    fn error(n: usize) -> Item {
        Err(Error::new(ErrorKind::Decode, format!("item {n}")))
    }

    /// One poll of the stream, without waiting.
    async fn next(receiver: &mut HandoffReceiver) -> Poll<Option<Item>> {
        poll_fn(|cx| Poll::Ready(Pin::new(&mut *receiver).poll_next(cx))).await
    }

    fn label(item: &Item) -> String {
        match item {
            Err(e) => e.to_string(),
            Ok(_) => "delivery".into(),
        }
    }

    #[tokio::test]
    async fn hands_over_in_order_and_ends_when_the_sender_is_gone() {
        let dispatcher = Arc::new(Notify::new());
        let (sender, mut receiver) = handoff(4, dispatcher);
        assert_eq!(sender.room(), 4);
        let mut batch = vec![error(1), error(2), error(3)];
        assert!(sender.send_all(&mut batch));
        assert!(batch.is_empty());
        assert_eq!(sender.room(), 1);
        let first = next(&mut receiver).await;
        assert!(matches!(&first, Poll::Ready(Some(item)) if label(item).contains("item 1")));
        assert_eq!(
            sender.room(),
            4,
            "taken deliveries no longer count against the room"
        );
        assert!(sender.send_all(&mut vec![error(4)]));
        let mut seen = Vec::new();
        while let Poll::Ready(Some(item)) = next(&mut receiver).await {
            seen.push(label(&item));
        }
        assert_eq!(seen.len(), 3);
        assert!(
            seen[0].contains("item 2") && seen[2].contains("item 4"),
            "{seen:?}"
        );
        drop(sender);
        assert!(matches!(next(&mut receiver).await, Poll::Ready(None)));
    }

    #[tokio::test]
    async fn a_starved_dispatcher_is_woken_when_the_stream_takes_deliveries() {
        let dispatcher = Arc::new(Notify::new());
        let (sender, mut receiver) = handoff(2, dispatcher.clone());
        assert!(sender.send_all(&mut vec![error(1), error(2)]));
        assert_eq!(sender.room(), 0);
        let woken = dispatcher.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let taken = poll_fn(|cx| Poll::Ready(Pin::new(&mut receiver).poll_next(cx))).await;
        assert!(matches!(taken, Poll::Ready(Some(_))));
        tokio::time::timeout(std::time::Duration::from_secs(1), woken)
            .await
            .expect("the dispatcher was woken");
    }

    #[tokio::test]
    async fn a_dropped_stream_takes_nothing_more() {
        let (sender, receiver) = handoff(8, Arc::new(Notify::new()));
        drop(receiver);
        assert!(sender.is_closed());
        let mut batch = vec![error(1)];
        assert!(!sender.send_all(&mut batch));
        assert_eq!(batch.len(), 1, "the deliveries are given back");
    }

    #[tokio::test]
    async fn a_waiting_stream_is_woken_by_a_handover() {
        let (sender, mut receiver) = handoff(8, Arc::new(Notify::new()));
        let waiting = tokio::spawn(async move {
            poll_fn(|cx| Pin::new(&mut receiver).poll_next(cx))
                .await
                .map(|item| label(&item))
        });
        tokio::task::yield_now().await;
        assert!(sender.send_all(&mut vec![error(7)]));
        let got = tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("woken")
            .expect("joined");
        assert!(got.is_some_and(|l| l.contains("item 7")));
    }
}
