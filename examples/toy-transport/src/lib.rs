//! # kombu-toy-transport
//!
//! A third-party kombu-rs transport in one file, as an example: an in-process broker of named
//! FIFO queues behind the virtual channel, which gives it exchanges, routing, acks, prefetch
//! and recover. It implements only the required [`VirtualBackend`] methods.
//!
//! * It registers itself with `inventory` alone — no `register()` call anywhere: depending on
//!   the crate (and naming something in it, such as [`DESCRIPTOR`], so the linker keeps it) is
//!   enough for `toy://` URLs to work.
//! * Queues are process-wide and keyed by virtual host (`toy://` and `toy:///` use `/`), so
//!   every connection to a vhost sees the same messages. Exchanges and bindings are kept per
//!   connection, so routing declared on one connection does not serve another
//!   (`shared_routing` is off).
//! * Envelopes are stored as Kombu's JSON text, as a networked backend would store them.
//! * The transport option `lose_messages=true` (`toy:///x?lose_messages=true`) makes it
//!   accept every message and store none: a broken transport, which the conformance suite
//!   must fail (`tests/suite_can_fail.rs`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu_core::Result<()> {
//! use kombu_core::{GetOptions, RawPublishOptions, Queue, RawMessage};
//! let url = "toy:///doc".parse()?;
//! let transport = (kombu_toy_transport::DESCRIPTOR.connect)(kombu_core::ConnectOptions::new(url)).await?;
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
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use kombu_core::registry::{ConnectFuture, TransportDescriptor};
use kombu_core::virtual_transport::{BrokerState, Claimed, VirtualBackend, VirtualTransport};
use kombu_core::{Capabilities, ConnectOptions, Envelope, FieldTable, Queue, Result, Transport};

/// What the toy transport supports: the virtual channel's routing for three exchange types,
/// its restore on close and recover; no priorities, TTL or limits; nothing beyond the process.
pub const CAPABILITIES: Capabilities = Capabilities {
    exchange_direct: true,
    exchange_topic: true,
    exchange_fanout: true,
    restore_unacked_on_close: true,
    recover: true,
    fifo_order: true,
    exactly_once_delivery: true,
    exact_counts: true,
    ..Capabilities::NONE
};

/// The registry entry of the toy transport.
pub static DESCRIPTOR: TransportDescriptor = TransportDescriptor::new("toy", connect)
    .schemes(&["toy"])
    .description("example third-party transport: in-process FIFO queues")
    .capabilities(CAPABILITIES);

// The only registration: no explicit `register` call exists for this transport.
kombu_core::inventory::submit! { kombu_core::registry::Registration(&DESCRIPTOR) }

/// Named queues of stored envelopes (Kombu JSON text).
type Queues = Mutex<HashMap<String, VecDeque<String>>>;

/// The queues of `vhost`, shared by every connection to it in the process.
fn queues_of(vhost: &str) -> Arc<Queues> {
    static VHOSTS: OnceLock<Mutex<HashMap<String, Arc<Queues>>>> = OnceLock::new();
    lock(VHOSTS.get_or_init(Default::default))
        .entry(vhost.to_owned())
        .or_default()
        .clone()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn connect(options: ConnectOptions) -> ConnectFuture {
    Box::pin(async move {
        let backend = ToyBackend {
            queues: queues_of(options.url.virtual_host().unwrap_or("/")),
            lose_messages: options.option::<bool>("lose_messages")?.unwrap_or(false),
        };
        let transport: Arc<dyn Transport> =
            Arc::new(VirtualTransport::new(Arc::new(backend), BrokerState::new()));
        Ok(transport)
    })
}

/// One connection's view of a vhost's queues.
struct ToyBackend {
    queues: Arc<Queues>,
    /// Accept every message and store none (the broken mode the suite must catch).
    lose_messages: bool,
}

impl VirtualBackend for ToyBackend {
    fn name(&self) -> &'static str {
        "toy"
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    async fn declare_queue(&self, queue: &Queue, _arguments: &FieldTable) -> Result<()> {
        lock(&self.queues).entry(queue.name.clone()).or_default();
        Ok(())
    }

    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        Ok(lock(&self.queues).contains_key(queue))
    }

    async fn put(&self, queue: &str, envelope: Envelope) -> Result<()> {
        let mut queues = lock(&self.queues);
        let stored = queues.entry(queue.to_owned()).or_default();
        if !self.lose_messages {
            stored.push_back(envelope.to_json());
        }
        Ok(())
    }

    async fn get(&self, queue: &str) -> Result<Option<Claimed>> {
        let text = lock(&self.queues).get_mut(queue).and_then(VecDeque::pop_front);
        // A malformed stored envelope is a typed decode error, never a panic.
        text.map(|t| Envelope::from_json(t.as_bytes()).map(Claimed::removed))
            .transpose()
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        Ok(lock(&self.queues)
            .get_mut(queue)
            .map_or(0, |q| q.drain(..).count() as u64))
    }

    async fn size(&self, queue: &str) -> Result<u64> {
        Ok(lock(&self.queues).get(queue).map_or(0, |q| q.len() as u64))
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        lock(&self.queues).remove(queue);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn registered_through_inventory_alone() {
        assert!(kombu_core::registry::is_submitted(&super::DESCRIPTOR));
        let found = kombu_core::registry::lookup("toy").expect("toy is registered");
        assert!(std::ptr::eq(found, &super::DESCRIPTOR));
    }
}
