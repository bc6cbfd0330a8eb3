//! # kombu — messaging for Rust
//!
//! Python [Kombu](https://docs.celeryq.dev/projects/kombu/)'s API — connections, exchanges,
//! queues, producers, consumers, acknowledgements — async on tokio, typed with serde, and
//! wire-compatible with Kombu 5.x on every transport: a message Python Kombu publishes is
//! consumed here and the reverse.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu::Result<()> {
//! use std::time::Duration;
//! use kombu::{Connection, Exchange, PublishOptions, Queue};
//!
//! let conn = Connection::new("memory://")?;
//! let media = Exchange::direct("media");
//! let video = Queue::new("video").exchange(media.clone()).routing_key("video");
//!
//! conn.producer()
//!     .exchange(media)
//!     .publish(
//!         &serde_json::json!({"name": "/tmp/lolcat1.avi", "size": 1301013}),
//!         PublishOptions::new().routing_key("video").declare(video.clone()),
//!     )
//!     .await?;
//!
//! let mut consumer = conn.consumer([video]).build().await?;
//! consumer.consume().await?;
//! let message = consumer.recv_timeout(Duration::from_secs(1)).await?;
//! let body: serde_json::Value = message.decode()?;
//! assert_eq!(body["size"], 1301013);
//! message.ack().await?;
//! # Ok(()) }
//! ```
//!
//! Transports are chosen by URL scheme and compiled in by Cargo features (`memory` and the
//! embedded `sqlite` are on by default). See the [`transports`] function for what this build has.
#![forbid(unsafe_code)]

pub mod compression;
mod connection;
mod consumer;
pub mod json;
mod message;
pub mod pool;
mod producer;
pub mod retry;
pub mod serialization;
mod simple;

pub use connection::{Connection, ConnectionOptions, Declarable, FailoverStrategy};
pub use consumer::{Consumer, ConsumerBuilder};
pub use message::{Accept, Message, MessageState};
pub use pool::{ConnectionPool, Pool, Pooled, ProducerPool};
pub use producer::{Producer, PublishOptions};
pub use retry::RetryPolicy;
pub use simple::{SimpleBuffer, SimpleQueue};

pub use kombu_core::{
    Binding, BrokerUrl, Capabilities, DeliveryInfo, DeliveryMode, Error, ErrorKind, Exchange, ExchangeType,
    FieldTable, PriorityOrder, PrioritySupport, Properties, Queue, Result, Value,
};

/// The transport-level API (for transport authors and advanced use).
pub mod transport {
    pub use kombu_core::registry;
    pub use kombu_core::transport::*;
    pub use kombu_core::url;
    pub use kombu_core::virtual_transport;
    pub use kombu_core::{envelope, router, Delivery, Envelope, RawMessage};
}

#[cfg(feature = "amqp")]
pub use kombu_amqp;
/// The transport crates compiled into this build, under their features.
#[cfg(feature = "memory")]
pub use kombu_memory;
#[cfg(feature = "redis")]
pub use kombu_redis;

/// Register every transport compiled into this build (idempotent).
///
/// Transports also register themselves through `inventory`, but the linker may drop those
/// registrations (and `staticlib` builds do not run them), so [`Connection::new`] calls this
/// too. Like sqlx's `install_default_drivers`.
pub fn install_default_transports() {
    #[cfg(feature = "memory")]
    kombu_memory::register();
    #[cfg(feature = "sqlite")]
    kombu_sqlite::register();
    #[cfg(feature = "redis")]
    kombu_redis::register();
    #[cfg(feature = "amqp")]
    kombu_amqp::register();
    #[cfg(feature = "amqp-amiquip")]
    kombu_amqp::register_amiquip();
}

/// The transports registered in this build.
pub fn transports() -> Vec<&'static kombu_core::TransportDescriptor> {
    install_default_transports();
    kombu_core::registry::transports()
}

#[cfg(test)]
mod tests {
    #[test]
    fn registered_transports_match_enabled_features() {
        let names: Vec<&str> = super::transports().iter().map(|d| d.name).collect();
        let mut expected: Vec<&str> = Vec::new();
        if cfg!(feature = "memory") {
            expected.push("memory");
        }
        if cfg!(feature = "sqlite") {
            expected.push("sqlite");
        }
        if cfg!(feature = "redis") {
            expected.push("redis");
        }
        if cfg!(feature = "amqp") {
            expected.push("amqp");
        }
        if cfg!(feature = "amqp-amiquip") {
            expected.push("amqp-amiquip");
        }
        expected.sort_unstable();
        let mut names = names;
        names.sort_unstable();
        assert_eq!(names, expected);
    }
}
