//! # kombu-redis
//!
//! The Redis transport of kombu-rs (`redis://`, `rediss://`, `redis+socket://`, `socket://`),
//! byte-for-byte compatible with Python Kombu 5.7's Redis transport: Python and Rust
//! producers and consumers share queues, bindings and the unacked bookkeeping.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu_core::Result<()> {
//! use kombu_core::{GetOptions, RawPublishOptions, Queue, RawMessage};
//! kombu_redis::register();
//! let url = "redis://127.0.0.1:6379/0".parse()?;
//! let transport = (kombu_redis::DESCRIPTOR.connect)(kombu_core::ConnectOptions::new(url)).await?;
//! let channel = transport.create_channel().await?;
//! channel.declare_queue(&Queue::new("jobs"), Default::default()).await?;
//! let message = RawMessage::new("hi");
//! channel.publish(message, RawPublishOptions::new("", "jobs")).await?;
//! let delivery = channel.get("jobs", GetOptions::default()).await?.expect("a message");
//! if let Some(handle) = &delivery.ack {
//!     handle.acknowledger.ack(handle.tag).await?; // removed from `unacked`
//! }
//! # Ok(()) }
//! ```
//!
//! ## The layout (Kombu 5.7)
//!
//! * A queue is the list `<queue>` plus one list per priority bucket, `<queue>\x06\x16<step>`
//!   for steps 3, 6, 9 (`priority_steps`). Messages are Kombu's JSON envelope, `LPUSH`ed.
//! * **Priorities follow Kombu's Redis order: lower numbers are served first** (bucket 0
//!   before 9 — the opposite of AMQP), so a fleet mixing Python and Rust consumers agrees.
//! * Bindings: the set `_kombu.binding.<exchange>` with members
//!   `<routing key>\x06\x16<topic regex or ''>\x06\x16<queue>`, mirrored in
//!   `_kombu.binding_permanent.<exchange>` (Kombu 5.7's sweeper needs it).
//! * Deliveries: `unacked` hash (`tag → [envelope, exchange, routing key]`) and the
//!   `unacked_index` sorted set scored by delivery time; `unacked_mutex` guards restores.
//! * Fanout exchanges use PUB/SUB on `/<db>.<exchange>` (`fanout_prefix`, `fanout_patterns`).
//! * `global_keyprefix` prefixes every key and channel.
//!
//! Transport options keep Kombu's names and defaults: `visibility_timeout` (3600 s),
//! `polling_interval` (1 s), `priority_steps`, `sep`, `global_keyprefix`, `fanout_prefix`,
//! `fanout_patterns`, `ack_emulation`, `unacked_key`, `unacked_index_key`,
//! `unacked_mutex_key`, `unacked_mutex_expire`, `unacked_restore_limit`,
//! `unacked_restore_interval`, `socket_timeout`, `socket_connect_timeout`, `body_encoding`,
//! `client_name`. Pool and keep-alive options Kombu has are accepted and have no effect;
//! any other option is an error.
//!
//! ## TLS
//!
//! `rediss://` (feature `tls`; `redis-tls` on the `kombu` crate) verifies the server against
//! the web's root certificates, or against the authorities in `ssl_ca_certs` (a PEM file);
//! `ssl_certfile` + `ssl_keyfile` present a client certificate; `ssl_cert_reqs=none` turns
//! verification off (`optional` is treated as `required`). These are redis-py's names, given
//! in the URL query as Celery users write them
//! (`rediss://host:6380/0?ssl_ca_certs=/etc/ssl/redis-ca.pem`) or as transport options; on a
//! plain `redis://` URL they are an error rather than silently ignored.
//!
//! ## Better than Kombu
//!
//! * **No lost message between pop and bookkeeping** (Kombu #1836): a Lua script pops and
//!   writes the unacked record in one step, and it is the only take: waiting takes nothing,
//!   so a consumer killed while waiting loses nothing either.
//! * **A consumer's connections do not grow with its queues**: one *waiter* connection per
//!   transport connection watches every consumed list with RESP3 client-side tracking
//!   (`CLIENT TRACKING ON`, Redis ≥ 6, no server configuration): it reads the lists, and
//!   Redis pushes an invalidation when another client (Python Kombu's `LPUSH` included)
//!   writes one, which wakes the consumer. A consumer of 1,000 queues holds 2 connections
//!   (commands and waiter; a third for fanout subscriptions), where a blocking pop per list
//!   would hold 4,000, and lists the waiter knows to be empty cost no polling. Every
//!   `polling_interval` it re-reads all lists, so a lost push only delays. The connection is
//!   named `<client_name or kombu-rs>.waiter` in `CLIENT LIST`. Kombu waits with one `BRPOP`
//!   over all its queues, which takes the message before it is recorded.
//! * **Long tasks are not redelivered while their consumer lives** (Kombu #337): a live
//!   connection pushes the index score of its unsettled deliveries forward every quarter of
//!   `visibility_timeout`. A consumer that died stops doing so, and any consumer — Rust or
//!   Python — restores its messages after `visibility_timeout`.
//! * **A rejected message goes back to its own queue**, consumed next; Kombu re-routes it
//!   through the exchange, duplicating it into every other bound queue.
//! * Messages that are not Kombu envelopes are moved intact to the list `_kombu_rs.malformed`
//!   with a typed `Decode` error, and the queue keeps flowing.
//! * **One round trip per publish**, where Kombu reads the binding set and pushes in a second
//!   call: a publisher that declared the exchange and routes to queues itself sends
//!   `SMEMBERS` and its `LPUSH`es in one pipeline (queues bound only by other processes then
//!   get theirs in a second round trip); one that knows nothing of the exchange runs a Lua
//!   script that matches the set and pushes to every matching queue.
//! * **Acks do not wait for the server**: like AMQP's `basic.ack` they are queued, and the
//!   core's settlement task writes all acks queued meanwhile in one `MULTI ZREM … HDEL … EXEC`
//!   (retrying while the server is away). Closing the connection waits for them; until
//!   written a message is still recorded as in flight, so a crash means a redelivery, never a
//!   loss. The deliveries a consumer holds are renewed (their index score pushed to now) by
//!   the core's renewal task, so a live consumer's long task is never restored under it.
//! * A passive declare of an empty queue declared on this connection succeeds.
//! * The consumer survives a Redis restart: commands reconnect by themselves, fanout
//!   subscriptions are renewed.
#![forbid(unsafe_code)]

mod backend;
mod claims;
mod fanout;
mod keys;
mod scripts;
mod settings;
mod waiter;

use std::sync::Arc;

use kombu_core::registry::{ConnectFuture, TransportDescriptor};
use kombu_core::virtual_transport::{BrokerState, VirtualTransport};
use kombu_core::{Capabilities, ConnectOptions, PriorityOrder, PrioritySupport, Transport};

/// The URL schemes this transport serves: TCP (`redis`, `rediss` with TLS) and a Unix socket
/// (Kombu's `redis+socket` and `socket`, and `redis+unix`).
pub const SCHEMES: &[&str] = &["redis", "rediss", "redis+socket", "socket", "redis+unix"];

/// Largest message body accepted: Redis strings hold 512 MB, and the envelope carries the body
/// base64-encoded.
pub const MAX_MESSAGE_SIZE: u64 = 256 * 1024 * 1024;

/// What the Redis transport supports.
pub const CAPABILITIES: Capabilities = Capabilities {
    exchange_direct: true,
    exchange_topic: true,
    exchange_fanout: true,
    priority: Some(PrioritySupport {
        max: 9,
        order: PriorityOrder::LowerFirst,
        requires_max_priority: false,
    }),
    queue_expiry: true,
    persistent_bindings: true,
    shared_routing: true,
    crash_safe_acks: true,
    restore_unacked_on_close: true,
    recover: true,
    extend_visibility: true,
    max_message_size: Some(MAX_MESSAGE_SIZE),
    cross_process: true,
    fifo_order: true,
    exactly_once_delivery: true,
    exact_counts: true,
    ..Capabilities::NONE
};

/// The registry entry of the Redis transport.
pub static DESCRIPTOR: TransportDescriptor = TransportDescriptor::new("redis", connect)
    .schemes(SCHEMES)
    .kombu_feature("redis")
    .description("Redis lists, Python Kombu's layout; crash-safe acks, fanout over PUB/SUB")
    .capabilities(CAPABILITIES);

kombu_core::inventory::submit! { kombu_core::registry::Registration(&DESCRIPTOR) }

/// Register the Redis transport explicitly (see [`kombu_core::registry`]).
pub fn register() {
    kombu_core::registry::register(&DESCRIPTOR);
}

fn connect(options: ConnectOptions) -> ConnectFuture {
    Box::pin(async move {
        let settings = settings::Settings::from_options(&options)?;
        let backend = backend::RedisBackend::connect(settings).await?;
        let encoding = backend.body_encoding();
        let transport: Arc<dyn Transport> = Arc::new(
            VirtualTransport::new(Arc::new(backend), BrokerState::new()).with_body_encoding(encoding),
        );
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
