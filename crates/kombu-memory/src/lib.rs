//! # kombu-memory
//!
//! The in-process memory transport of kombu-rs (`memory://`), like Kombu's `memory://`, but
//! with every exchange type, priorities and message TTL.
//!
//! * Broker state is process-wide and keyed by virtual host: `memory://` and `memory:///` use
//!   vhost `/`, `memory:///tests-42` uses `tests-42`. Every connection to the same vhost shares
//!   its queues, exchanges and bindings (so routing declared on one connection serves all).
//! * Envelopes move between producer and consumer as Rust values: nothing is serialized.
//! * Priorities 0–9, higher first (AMQP order), FIFO within a priority.
//! * Message TTL: per message (`expiration`) and per queue (`x-message-ttl`); expired
//!   messages are dropped when they reach the head of the queue.
//! * `x-max-length` / `x-max-length-bytes`: the oldest messages are dropped on overflow
//!   (RabbitMQ's default `drop-head`).
//! * Consumers wake the instant a message arrives.
//!
//! Use it through the `kombu` facade (feature `memory`, on by default):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu_core::Result<()> {
//! use kombu_core::{Queue, RawPublishOptions, GetOptions, RawMessage};
//! kombu_memory::register();
//! let url = "memory:///doc-example".parse()?;
//! let transport = (kombu_memory::DESCRIPTOR.connect)(kombu_core::ConnectOptions::new(url)).await?;
//! let channel = transport.create_channel().await?;
//! channel.declare_queue(&Queue::new("jobs"), Default::default()).await?;
//! let message = RawMessage::new("hi");
//! channel.publish(message, RawPublishOptions::new("", "jobs")).await?;
//! let delivery = channel.get("jobs", GetOptions::default()).await?.expect("a message");
//! assert_eq!(&delivery.message.body[..], b"hi");
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kombu_core::registry::{ConnectFuture, TransportDescriptor};
use kombu_core::virtual_transport::{BrokerState, Claimed, PutNow, VirtualBackend, VirtualTransport};
use kombu_core::{
    Capabilities, ConnectOptions, Envelope, Error, ErrorKind, FieldTable, PriorityOrder, PrioritySupport,
    Queue, Result, Transport, Value,
};
use tokio::sync::Notify;

/// The URL schemes this transport serves.
pub const SCHEMES: &[&str] = &["memory"];

/// What the memory transport supports.
pub const CAPABILITIES: Capabilities = Capabilities {
    exchange_direct: true,
    exchange_topic: true,
    exchange_fanout: true,
    exchange_headers: true,
    priority: Some(PrioritySupport {
        max: 9,
        order: PriorityOrder::HigherFirst,
        requires_max_priority: false,
    }),
    message_ttl: true,
    max_length: true,
    shared_routing: true,
    restore_unacked_on_close: true,
    recover: true,
    fifo_order: true,
    exactly_once_delivery: true,
    exact_counts: true,
    ..Capabilities::NONE
};

/// The registry entry of the memory transport.
pub static DESCRIPTOR: TransportDescriptor = TransportDescriptor::new("memory", connect)
    .schemes(SCHEMES)
    .kombu_feature("memory")
    .description("in-process broker: all exchange types, priorities, TTL; nothing persisted")
    .capabilities(CAPABILITIES);

kombu_core::inventory::submit! { kombu_core::registry::Registration(&DESCRIPTOR) }

/// Register the memory transport explicitly (see [`kombu_core::registry`]).
pub fn register() {
    kombu_core::registry::register(&DESCRIPTOR);
}

fn connect(options: ConnectOptions) -> ConnectFuture {
    Box::pin(async move {
        let vhost = options.url.virtual_host().unwrap_or("/").to_owned();
        let broker = MemoryBroker::for_vhost(&vhost);
        let transport: Arc<dyn Transport> =
            Arc::new(VirtualTransport::new(broker.clone(), broker.state.clone()));
        Ok(transport)
    })
}

/// The shared state of one virtual host.
pub struct MemoryBroker {
    state: Arc<BrokerState>,
    /// Looked up on every put and poll: foldhash (seeded per process) rather than SipHash.
    queues: Mutex<HashMap<String, Arc<MemoryQueue>, foldhash::fast::RandomState>>,
    notify: Arc<Notify>,
}

impl MemoryBroker {
    /// The broker of `vhost` (created on first use, shared process-wide).
    pub fn for_vhost(vhost: &str) -> Arc<MemoryBroker> {
        static BROKERS: OnceLock<Mutex<HashMap<String, Arc<MemoryBroker>>>> = OnceLock::new();
        let mut brokers = BROKERS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        brokers
            .entry(vhost.to_owned())
            .or_insert_with(|| {
                Arc::new(MemoryBroker {
                    state: BrokerState::new(),
                    queues: Mutex::new(HashMap::default()),
                    notify: Arc::new(Notify::new()),
                })
            })
            .clone()
    }

    fn queue(&self, name: &str) -> Option<Arc<MemoryQueue>> {
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Append (or, restoring, prepend) a message, waking waiting consumers when the queue was
    /// empty.
    fn append(&self, queue: &str, envelope: Envelope, front: bool) {
        let was_empty = self.queue_or_create(queue).lock().push(envelope, front);
        if was_empty {
            self.notify.notify_waiters();
        }
    }

    /// The queue, created with default settings if it does not exist (Kombu's memory
    /// transport creates queues on first put).
    fn queue_or_create(&self, name: &str) -> Arc<MemoryQueue> {
        if let Some(q) = self.queue(name) {
            return q;
        }
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(MemoryQueue::new(QueueSettings::default())))
            .clone()
    }
}

/// Settings of a queue that change how it stores messages.
#[derive(Debug, Clone, Default, PartialEq)]
struct QueueSettings {
    declared: bool,
    durable: bool,
    auto_delete: bool,
    arguments: FieldTable,
    message_ttl: Option<Duration>,
    max_length: Option<usize>,
    max_length_bytes: Option<usize>,
}

impl QueueSettings {
    fn from_declaration(queue: &Queue, arguments: &FieldTable) -> Result<Self> {
        let non_negative = |key: &str| -> Result<Option<u64>> {
            match arguments.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_i64()
                    .and_then(|n| u64::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::InvalidArgument,
                            format!("{key} must be a non-negative integer"),
                        )
                        .with_context("queue", &queue.name)
                    }),
            }
        };
        Ok(QueueSettings {
            declared: true,
            durable: queue.durable,
            auto_delete: queue.auto_delete,
            arguments: arguments.clone(),
            message_ttl: non_negative("x-message-ttl")?.map(Duration::from_millis),
            max_length: non_negative("x-max-length")?.map(|n| n as usize),
            max_length_bytes: non_negative("x-max-length-bytes")?.map(|n| n as usize),
        })
    }
}

struct Stored {
    envelope: Envelope,
    expires_at: Option<Instant>,
}

struct QueueData {
    settings: QueueSettings,
    /// One FIFO per priority 0..=9.
    levels: [VecDeque<Stored>; 10],
    /// Bit `p` set when level `p` is non-empty.
    nonempty: u16,
    len: usize,
    bytes: usize,
}

struct MemoryQueue {
    data: Mutex<QueueData>,
}

impl MemoryQueue {
    fn new(settings: QueueSettings) -> Self {
        MemoryQueue {
            data: Mutex::new(QueueData {
                settings,
                levels: Default::default(),
                nonempty: 0,
                len: 0,
                bytes: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueData> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl QueueData {
    /// Push a message; returns whether the queue was empty before.
    fn push(&mut self, envelope: Envelope, front: bool) -> bool {
        let was_empty = self.len == 0;
        let per_message = envelope.message.properties.expiration_duration();
        let ttl = match (per_message, self.settings.message_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let level = envelope.priority() as usize;
        self.bytes += envelope.message.body.len();
        self.len += 1;
        let stored = Stored {
            envelope,
            expires_at: ttl.map(|t| Instant::now() + t),
        };
        if front {
            self.levels[level].push_front(stored);
        } else {
            self.levels[level].push_back(stored);
        }
        self.nonempty |= 1 << level;
        self.enforce_limits();
        was_empty
    }

    /// Drop the oldest messages while over `x-max-length` / `x-max-length-bytes`.
    fn enforce_limits(&mut self) {
        loop {
            let over_count = self.settings.max_length.is_some_and(|m| self.len > m);
            let over_bytes = self.settings.max_length_bytes.is_some_and(|m| self.bytes > m);
            if !(over_count || over_bytes) {
                return;
            }
            // RabbitMQ drops from the head: the lowest-priority, oldest message goes first.
            let Some(level) = (0..10).find(|l| self.nonempty & (1 << l) != 0) else {
                return;
            };
            self.take_from(level);
        }
    }

    fn take_from(&mut self, level: usize) -> Option<Stored> {
        let stored = self.levels[level].pop_front()?;
        if self.levels[level].is_empty() {
            self.nonempty &= !(1 << level);
        }
        self.len -= 1;
        self.bytes -= stored.envelope.message.body.len();
        Some(stored)
    }

    /// The next live message, highest priority first; expired ones are dropped on the way.
    fn pop(&mut self, now: &mut Option<Instant>) -> Option<Envelope> {
        while self.nonempty != 0 {
            let level = 15 - self.nonempty.leading_zeros() as usize;
            let stored = self.take_from(level)?;
            match stored.expires_at {
                Some(deadline) if *now.get_or_insert_with(Instant::now) >= deadline => continue,
                _ => return Some(stored.envelope),
            }
        }
        None
    }

    fn live_len(&self) -> usize {
        let now = Instant::now();
        self.levels
            .iter()
            .flatten()
            .filter(|s| s.expires_at.is_none_or(|d| d > now))
            .count()
    }

    fn clear(&mut self) -> usize {
        let n = self.live_len();
        for level in &mut self.levels {
            level.clear();
        }
        self.nonempty = 0;
        self.len = 0;
        self.bytes = 0;
        n
    }
}

impl VirtualBackend for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    async fn declare_queue(&self, queue: &Queue, arguments: &FieldTable) -> Result<()> {
        let settings = QueueSettings::from_declaration(queue, arguments)?;
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        match queues.get(&queue.name) {
            Some(existing) => {
                let mut data = existing.lock();
                if !data.settings.declared {
                    // Created implicitly by a publish: adopt the declared settings.
                    data.settings = settings;
                    data.enforce_limits();
                } else if data.settings != settings {
                    return Err(Error::new(
                        ErrorKind::NotEquivalent,
                        "queue already declared with different settings",
                    )
                    .with_context("queue", &queue.name));
                }
            }
            None => {
                queues.insert(queue.name.clone(), Arc::new(MemoryQueue::new(settings)));
            }
        }
        Ok(())
    }

    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        Ok(self.queue(queue).is_some())
    }

    /// Stores at once and returns a ready future: nothing here waits, so the publish future
    /// carries no state of ours.
    fn put(&self, queue: &str, envelope: Envelope) -> impl Future<Output = Result<()>> + Send {
        self.append(queue, envelope, false);
        std::future::ready(Ok(()))
    }

    fn put_now(&self, queue: &str, envelope: Envelope) -> PutNow {
        self.append(queue, envelope, false);
        PutNow::Done(Ok(()))
    }

    fn get(&self, queue: &str) -> impl Future<Output = Result<Option<Claimed>>> + Send {
        let envelope = self.queue(queue).and_then(|q| q.lock().pop(&mut None));
        std::future::ready(Ok(envelope.map(Claimed::removed)))
    }

    fn get_batch(
        &self,
        queue: &str,
        max: usize,
        out: &mut Vec<Claimed>,
    ) -> impl Future<Output = Result<()>> + Send {
        if let Some(q) = self.queue(queue) {
            let mut now = None;
            let mut data = q.lock();
            for _ in 0..max {
                match data.pop(&mut now) {
                    Some(envelope) => out.push(Claimed::removed(envelope)),
                    None => break,
                }
            }
        }
        std::future::ready(Ok(()))
    }

    fn restore(&self, queue: &str, envelope: Envelope) -> impl Future<Output = Result<()>> + Send {
        self.append(queue, envelope, true);
        std::future::ready(Ok(()))
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        Ok(self.queue(queue).map_or(0, |q| q.lock().clear() as u64))
    }

    async fn size(&self, queue: &str) -> Result<u64> {
        Ok(self.queue(queue).map_or(0, |q| q.lock().live_len() as u64))
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(queue);
        Ok(())
    }

    fn wakeup(&self) -> Option<Arc<Notify>> {
        Some(self.notify.clone())
    }

    fn polling_interval(&self) -> Duration {
        // A safety net only: puts notify waiting consumers at once.
        Duration::from_millis(200)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn inventory_holds_the_descriptor_itself() {
        assert!(
            kombu_core::registry::is_submitted(&super::DESCRIPTOR),
            "DESCRIPTOR was not submitted to inventory"
        );
    }

    use super::*;
    use kombu_core::RawMessage;

    fn env(priority: u8, body: &'static str) -> Envelope {
        let mut m = RawMessage::new(body);
        m.properties_mut().priority = Some(priority);
        Envelope::new(m, "", "q")
    }

    #[test]
    fn priorities_higher_first_fifo_within() {
        let q = MemoryQueue::new(QueueSettings::default());
        let mut d = q.lock();
        d.push(env(0, "low1"), false);
        d.push(env(7, "high"), false);
        d.push(env(0, "low2"), false);
        d.push(env(200, "max"), false);
        let mut now = None;
        let order: Vec<_> = std::iter::from_fn(|| d.pop(&mut now))
            .map(|e| String::from_utf8_lossy(&e.message.body).into_owned())
            .collect();
        assert_eq!(order, ["max", "high", "low1", "low2"]);
        assert_eq!((d.len, d.bytes, d.nonempty), (0, 0, 0));
    }

    #[test]
    fn max_length_drops_head() {
        let settings = QueueSettings {
            max_length: Some(2),
            ..Default::default()
        };
        let q = MemoryQueue::new(settings);
        let mut d = q.lock();
        for b in ["a", "b", "c"] {
            d.push(env(0, b), false);
        }
        let mut now = None;
        assert_eq!(
            &d.pop(&mut now).map(|e| e.message.body).unwrap_or_default()[..],
            b"b"
        );
    }
}
