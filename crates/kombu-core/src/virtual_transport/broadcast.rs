//! [`BroadcastBuffer`]: where a backend whose fanout is a stream (Redis PUB/SUB, a capped
//! MongoDB collection read by a tailable cursor) keeps broadcast messages until its queues'
//! consumers take them.
//!
//! A queue bound to a fanout exchange subscribes to a *key* (the backend's name for the
//! broadcast: a PUB/SUB pattern, an exchange name); each message that arrives on a key is
//! copied into the buffer of every queue subscribed to it. Like Kombu's fanout, nothing is
//! stored for a queue nobody subscribed. The virtual channel takes from the buffer before
//! the queue itself, puts rejected broadcast deliveries back at its front, and counts it in
//! the queue's size.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::envelope::Envelope;

#[derive(Debug, Default)]
struct Buffers {
    /// Key → the queues subscribed to it.
    subscriptions: BTreeMap<String, BTreeSet<String>>,
    /// Queue → broadcast messages waiting for it.
    waiting: HashMap<String, VecDeque<Envelope>>,
}

/// Subscriptions of queues to broadcast keys, and the messages waiting for each queue.
#[derive(Debug)]
pub struct BroadcastBuffer {
    buffers: Mutex<Buffers>,
    arrived: Arc<Notify>,
}

impl BroadcastBuffer {
    /// An empty buffer that notifies `arrived` (the backend's
    /// [`wakeup`](super::VirtualBackend::wakeup) signal) when a message arrives.
    pub fn new(arrived: Arc<Notify>) -> Self {
        BroadcastBuffer {
            buffers: Mutex::new(Buffers::default()),
            arrived,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Buffers> {
        self.buffers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribe `queue` to `key`. True when `key` had no subscriber before (the backend
    /// then subscribes on the broker).
    pub fn subscribe(&self, queue: &str, key: &str) -> bool {
        let mut buffers = self.lock();
        let queues = buffers.subscriptions.entry(key.to_owned()).or_default();
        let first = queues.is_empty();
        queues.insert(queue.to_owned());
        first
    }

    /// Unsubscribe `queue` from `key`. True when `key` has no subscriber left (the backend
    /// then unsubscribes on the broker).
    pub fn unsubscribe(&self, queue: &str, key: &str) -> bool {
        let mut buffers = self.lock();
        let Some(queues) = buffers.subscriptions.get_mut(key) else {
            return false;
        };
        queues.remove(queue);
        let unused = queues.is_empty();
        if unused {
            buffers.subscriptions.remove(key);
        }
        unused
    }

    /// Forget `queue`: its subscriptions and waiting messages. Returns the keys left without
    /// a subscriber.
    pub fn remove_queue(&self, queue: &str) -> Vec<String> {
        let mut buffers = self.lock();
        buffers.waiting.remove(queue);
        let mut unused = Vec::new();
        buffers.subscriptions.retain(|key, queues| {
            if queues.remove(queue) && queues.is_empty() {
                unused.push(key.clone());
                return false;
            }
            true
        });
        unused
    }

    /// Every key with a subscriber (to subscribe again after a reconnection).
    pub fn keys(&self) -> Vec<String> {
        self.lock().subscriptions.keys().cloned().collect()
    }

    /// Whether `queue` is subscribed to any key.
    pub fn is_subscribed(&self, queue: &str) -> bool {
        self.lock()
            .subscriptions
            .values()
            .any(|queues| queues.contains(queue))
    }

    /// A message arrived on `key`: a copy waits for every queue subscribed to it. Returns
    /// how many queues it went to.
    pub fn deliver(&self, key: &str, envelope: &Envelope) -> usize {
        let mut buffers = self.lock();
        let Buffers {
            subscriptions,
            waiting,
        } = &mut *buffers;
        let Some(queues) = subscriptions.get(key) else {
            return 0;
        };
        for queue in queues {
            waiting
                .entry(queue.clone())
                .or_default()
                .push_back(envelope.clone());
        }
        let n = queues.len();
        drop(buffers);
        if n > 0 {
            self.arrived.notify_waiters();
        }
        n
    }

    /// Take up to `max` waiting messages of `queue`, oldest first.
    pub fn take(&self, queue: &str, max: usize, out: &mut Vec<Envelope>) {
        let mut buffers = self.lock();
        if let Some(waiting) = buffers.waiting.get_mut(queue) {
            let n = max.min(waiting.len());
            out.extend(waiting.drain(..n));
        }
    }

    /// Put a message back at the front of `queue`'s buffer (a broadcast delivery rejected
    /// with requeue, or restored when its channel closed).
    pub fn push_front(&self, queue: &str, envelope: Envelope) {
        self.lock()
            .waiting
            .entry(queue.to_owned())
            .or_default()
            .push_front(envelope);
        self.arrived.notify_waiters();
    }

    /// How many messages wait for `queue`.
    pub fn len(&self, queue: &str) -> usize {
        self.lock().waiting.get(queue).map_or(0, VecDeque::len)
    }

    /// Drop every message waiting for `queue`; returns how many.
    pub fn purge(&self, queue: &str) -> usize {
        self.lock().waiting.remove(queue).map_or(0, |w| w.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::RawMessage;

    fn envelope(body: &'static str) -> Envelope {
        Envelope::new(
            RawMessage {
                body: bytes::Bytes::from_static(body.as_bytes()),
                ..RawMessage::default()
            },
            "ex",
            "",
        )
    }

    fn bodies(out: &[Envelope]) -> Vec<Vec<u8>> {
        out.iter().map(|e| e.message.body.to_vec()).collect()
    }

    #[test]
    fn copies_to_every_subscriber_in_order() {
        let buffer = BroadcastBuffer::new(Arc::new(Notify::new()));
        assert!(buffer.subscribe("q1", "k"));
        assert!(!buffer.subscribe("q2", "k"));
        assert_eq!(buffer.deliver("k", &envelope("a")), 2);
        assert_eq!(buffer.deliver("k", &envelope("b")), 2);
        // Positive control above; a key nobody subscribed to stores nothing.
        assert_eq!(buffer.deliver("other", &envelope("x")), 0);
        let mut out = Vec::new();
        buffer.take("q1", 10, &mut out);
        assert_eq!(bodies(&out), [b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(buffer.len("q2"), 2);
        assert_eq!(buffer.len("q1"), 0);
    }

    #[test]
    fn push_front_is_taken_first_and_purge_counts() {
        let buffer = BroadcastBuffer::new(Arc::new(Notify::new()));
        buffer.subscribe("q", "k");
        buffer.deliver("k", &envelope("a"));
        buffer.push_front("q", envelope("r"));
        let mut out = Vec::new();
        buffer.take("q", 1, &mut out);
        assert_eq!(bodies(&out), [b"r".to_vec()]);
        assert_eq!(buffer.purge("q"), 1);
        assert_eq!(buffer.len("q"), 0);
    }

    #[test]
    fn unsubscribing_the_last_queue_frees_the_key() {
        let buffer = BroadcastBuffer::new(Arc::new(Notify::new()));
        buffer.subscribe("q1", "k");
        buffer.subscribe("q2", "k");
        buffer.subscribe("q2", "j");
        assert!(!buffer.unsubscribe("q1", "k"));
        assert!(buffer.is_subscribed("q2"));
        assert!(!buffer.is_subscribed("q1"));
        let mut freed = buffer.remove_queue("q2");
        freed.sort();
        assert_eq!(freed, ["j", "k"]);
        assert!(buffer.keys().is_empty());
    }
}
