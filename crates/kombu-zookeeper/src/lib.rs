//! # kombu-zookeeper
//!
//! The ZooKeeper transport of kombu-rs: Kombu's queues as znodes, shared with Python Kombu's
//! `zookeeper://` transport (kazoo) on the same ensemble, with what Kombu's lacks: claims
//! instead of delete-on-read, watches instead of one-second polling, stored routing and
//! fanout.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu_core::Result<()> {
//! use kombu_core::{ConnectOptions, GetOptions, RawPublishOptions, Queue, RawMessage};
//! let url = "zookeeper://127.0.0.1:2181/myapp".parse()?;
//! let transport = (kombu_zookeeper::DESCRIPTOR.connect)(ConnectOptions::new(url)).await?;
//! let channel = transport.create_channel().await?;
//! channel.declare_queue(&Queue::new("jobs"), Default::default()).await?;
//! channel.publish(RawMessage::new("hi"), RawPublishOptions::new("", "jobs")).await?;
//! let delivery = channel.get("jobs", GetOptions::default()).await?.expect("a message");
//! assert_eq!(&delivery.message.body[..], b"hi");
//! if let Some(handle) = &delivery.ack {
//!     handle.acknowledger.ack(handle.tag).await?; // the entry and its claim are deleted
//! }
//! # transport.close().await?;
//! # Ok(()) }
//! ```
//!
//! ## URLs
//!
//! | URL | ensemble | queue paths |
//! |---|---|---|
//! | `zookeeper://h1:2181/myapp` | `h1:2181` | `/myapp/<queue>` |
//! | `zookeeper://h1:2181,h2:2182/myapp` | `h1:2181,h2:2182` | `/myapp/<queue>` |
//! | `zookeeper://h1:2181;zookeeper://h2:2182/myapp` (failover list) | `h1:2181,h2:2182` (one session over all, as Kombu joins them) | `/myapp/<queue>` |
//! | `zookeeper://h1` or `zookeeper://h1/` | `h1:2181` | `/<queue>` |
//! | `zookeeper://user:secret@h1:2181/myapp` | digest authentication `user:secret` | |
//! | `zookeeper://h1,h2/myapp?chroot=/apps/kombu` | `h1:2181,h2:2181/apps/kombu`: a chroot with several hosts (Kombu crashes on it, kombu#734) | `/apps/kombu/myapp/<queue>` on the server |
//!
//! The password never appears in `Debug` or `Display` output. TLS is not offered yet.
//!
//! ## Transport options
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `session_timeout` | `10` s | the session timeout asked of the server (bounded by its `minSessionTimeout`/`maxSessionTimeout`): how long after a consumer dies its claims are freed |
//! | `polling_interval` | `5` s | the longest single watch wait (a safety net: watches wake consumers at once) |
//! | `jute_maxbuffer` | `1048575` | the server's `jute.maxbuffer`: larger messages are refused with `LimitExceeded` before sending |
//! | `chroot` | none | a chroot appended to the connect string |
//!
//! ## Layout, and compatibility with Python Kombu 5.7
//!
//! * A queue is the node `/<vhost>/<queue>` (`/<queue>` for the vhost `/`); each message is a
//!   persistent-sequential child `entry-<9 - priority, %03d>-<sequence>` holding Kombu's JSON
//!   envelope, exactly kazoo's Queue recipe as Kombu uses it. Lowest name first: higher
//!   priority first (0–9), FIFO within one. Python Kombu producers and consumers share these
//!   queues with kombu-rs.
//! * kombu-rs keeps its own state under `/<vhost>/_kombu_rs/` (so no queue may be called
//!   `_kombu_rs`), which Kombu never lists: claims, parked malformed messages, exchanges and
//!   bindings.
//!
//! ## Where it does better than Kombu's transport
//!
//! * **Nothing is lost when a consumer dies.** Kombu deletes a message when it takes it.
//!   kombu-rs *claims* it with an ephemeral node `_kombu_rs/claims/<queue>/<entry>` tied to
//!   the consumer's session and deletes entry and claim (in one `multi`) only on ack. A
//!   requeue releases the claim and marks the entry redelivered, in its old place; a consumer
//!   that dies loses its session, and with it its claims, after `session_timeout`.
//! * **No message is taken twice** by kombu-rs consumers: creating the claim node is the
//!   lock. A mixed fleet stays at-least-once for the Rust side (a Python consumer, which
//!   ignores claims, may still take a message a Rust consumer holds).
//! * **Batches cost one round trip.** `Producer::batch()` sends every create before awaiting
//!   the first answer (pipelined on the session, applied in order), and each message still
//!   gets its own outcome: one oversized message fails alone.
//! * **Watches, not polling.** An idle consumer lists its queue and the queue's claims with
//!   child watches and sleeps until one fires (a new message, a released claim); Kombu polls
//!   every second.
//! * **Routing shared by every process**: exchanges (with their type) and bindings are stored
//!   under `_kombu_rs/exchanges`, so fanout and topic exchanges declared by one process route
//!   the publishes of all (Kombu keeps them in process memory and has no fanout).
//! * **Sessions**: the client reconnects by itself (a server restart within the session
//!   timeout keeps the session and its claims); an expired session is replaced by a new one
//!   and the watches are set again; the expired session's claims are gone, so its messages
//!   are delivered again (marked redelivered only where requeued explicitly), never held by
//!   two live Rust consumers.
//! * **Malformed data** (an entry that is no Kombu envelope) is moved to
//!   `_kombu_rs/malformed/<queue>/` and reported to the consumer as a `Decode` error; the
//!   rest of the queue flows.
//! * **Size limit checked before sending**: a message over the server's `jute.maxbuffer` is a
//!   `LimitExceeded` error, not a dropped connection.
//!
//! ## Capabilities
//!
//! | capability | |
//! |---|---|
//! | exchanges | direct, topic, fanout, headers (routed by kombu-rs over the stored bindings) |
//! | priorities | 0–9, higher first, no queue argument needed |
//! | crash-safe acks, requeue, recover, restore on close | yes (claims) |
//! | shared routing, persistent bindings | yes |
//! | FIFO within a priority, exactly-once delivery between kombu-rs consumers, exact counts | yes |
//! | message TTL, queue expiry, max length, dead lettering | no |
//! | largest message | about 760 KiB of body (the envelope base64-encodes it under `jute.maxbuffer`) |
//!
//! ## Why `zookeeper-client`
//!
//! The client is the async, maintained [`zookeeper-client`](https://docs.rs/zookeeper-client)
//! crate, not the `zookeeper` crate: that one's last release is from 2023, it blocks, it sits
//! on mio 0.6 whose `net2` dependency carries a RustSec advisory, and it has no `multi`,
//! which acks (entry + claim deleted atomically) and requeues rely on.
#![forbid(unsafe_code)]

mod backend;
mod paths;
mod settings;

use std::sync::Arc;

use kombu_core::registry::{ConnectFuture, TransportDescriptor};
use kombu_core::virtual_transport::{BrokerState, VirtualTransport};
use kombu_core::{Capabilities, ConnectOptions, PriorityOrder, PrioritySupport, Transport};

/// The URL schemes this transport serves (Kombu's).
pub const SCHEMES: &[&str] = &["zookeeper"];

/// The largest body whose envelope fits a request under `jute_maxbuffer` bytes: the body is
/// base64-encoded (4/3), and 8 KiB are left for the path, properties and headers.
pub const fn max_message_size(jute_maxbuffer: usize) -> u64 {
    (jute_maxbuffer.saturating_sub(8192) / 4 * 3) as u64
}

/// What the ZooKeeper transport supports (with the server's default `jute.maxbuffer`).
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
    persistent_bindings: true,
    shared_routing: true,
    crash_safe_acks: true,
    restore_unacked_on_close: true,
    recover: true,
    max_message_size: Some(max_message_size(settings::DEFAULT_JUTE_MAXBUFFER)),
    cross_process: true,
    fifo_order: true,
    exactly_once_delivery: true,
    exact_counts: true,
    ..Capabilities::NONE
};

/// The registry entry of the ZooKeeper transport.
pub static DESCRIPTOR: TransportDescriptor = TransportDescriptor::new("zookeeper", connect)
    .schemes(SCHEMES)
    .kombu_feature("zookeeper")
    .description("ZooKeeper znodes, Python Kombu's layout; claims held by sessions, watches, stored routing")
    .capabilities(CAPABILITIES);

kombu_core::inventory::submit! { kombu_core::registry::Registration(&DESCRIPTOR) }

/// Register the ZooKeeper transport explicitly (see [`kombu_core::registry`]).
pub fn register() {
    kombu_core::registry::register(&DESCRIPTOR);
}

fn connect(options: ConnectOptions) -> ConnectFuture {
    Box::pin(async move {
        let settings = settings::Settings::from_options(&options)?;
        let backend = backend::ZkBackend::connect(settings).await?;
        let transport: Arc<dyn Transport> =
            Arc::new(VirtualTransport::new(Arc::new(backend), BrokerState::new()));
        Ok(transport)
    })
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
}
