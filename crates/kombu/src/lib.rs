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
//! let mut consumer = conn.consumer([video]).consume().await?;
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

#[cfg(feature = "blocking")]
pub mod blocking;
pub mod common;
pub mod compression;
mod connection;
mod consumer;
pub mod json;
mod message;
pub mod observe;
pub mod pool;
mod producer;
#[cfg(feature = "opentelemetry")]
pub mod propagation;
pub mod retry;
pub mod serialization;
mod simple;
pub mod worker;

pub use connection::{Connection, ConnectionOptions, Declarable, FailoverStrategy};
pub use consumer::{Consumer, ConsumerBuilder};
pub use message::{Accept, Message, MessageState};
pub use pool::{ConnectionPool, Pool, Pooled, ProducerPool};
pub use producer::{BatchOutcome, Producer, PublishBatch, PublishOptions};
pub use retry::RetryPolicy;
pub use simple::{SimpleBuffer, SimpleQueue};
pub use worker::{Incident, Outcome, Poison, Worker, WorkerBuilder, WorkerHandle, WorkerReport};

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

/// The transports of kombu-rs: for each transport crate, the facade feature that references
/// it and, for each descriptor it exports, the feature that compiles that descriptor in and the
/// schemes the descriptor declares.
///
/// This table is the only place in the facade that names a transport: it generates the
/// re-exports of the crates, [`install_default_transports`] and the hints that name the
/// feature of a scheme this build lacks. The schemes are repeated here because a crate whose
/// feature is off is not compiled; the `transport_table_agrees` test checks them against the
/// descriptors, and the table against `Cargo.toml`, `README.md` and the xtask's test matrix.
macro_rules! transport_table {
    ($(
        $krate:ident if $crate_feature:literal {
            $( $feature:literal => $descriptor:ident [$($scheme:literal),* $(,)?] ),* $(,)?
        }
    )*) => {
        $(
            #[cfg(feature = $crate_feature)]
            #[doc = concat!("The `", stringify!($krate), "` transport crate (feature `", $crate_feature, "`).")]
            pub use $krate;
        )*

        /// Register every transport compiled into this build (idempotent).
        ///
        /// Transports also register themselves through `inventory`, but the linker may drop
        /// those registrations (and `staticlib` builds do not run them), so
        /// [`Connection::new`] calls this too. Like sqlx's `install_default_drivers`.
        pub fn install_default_transports() {
            $($(
                #[cfg(feature = $feature)]
                kombu_core::registry::register(&$krate::$descriptor);
            )*)*
            kombu_core::registry::add_feature_hints(FEATURE_HINTS);
        }

        /// Every transport of the table, compiled in or not, by the schemes it serves.
        const FEATURE_HINTS: &[kombu_core::registry::FeatureHint] = &[
            $($( kombu_core::registry::FeatureHint::new($feature, &[$($scheme),*]), )*)*
        ];

        /// The table, for the tests: (crate, crate feature, descriptor feature, descriptor if
        /// compiled in).
        #[cfg(test)]
        fn transport_table() -> Vec<TableEntry> {
            vec![$($(
                TableEntry {
                    krate: stringify!($krate),
                    crate_feature: $crate_feature,
                    feature: $feature,
                    schemes: &[$($scheme),*],
                    #[cfg(feature = $feature)]
                    descriptor: Some(&$krate::$descriptor),
                    #[cfg(not(feature = $feature))]
                    descriptor: None,
                },
            )*)*]
        }
    };
}

transport_table! {
    kombu_memory if "memory" {
        "memory" => DESCRIPTOR ["memory"],
    }
    kombu_sqlite if "sqlite" {
        "sqlite" => DESCRIPTOR ["sqlite", "sqla+sqlite", "sqlalchemy+sqlite"],
    }
    kombu_redis if "redis" {
        "redis" => DESCRIPTOR ["redis", "rediss", "redis+socket", "socket", "redis+unix"],
    }
    kombu_amqp if "amqp" {
        "amqp" => DESCRIPTOR ["amqp", "amqps", "pyamqp", "librabbitmq"],
        "amqp-amiquip" => AMIQUIP_DESCRIPTOR ["amqp+amiquip", "pyamqp+amiquip"],
    }
    kombu_sqs if "sqs" {
        "sqs" => DESCRIPTOR ["sqs"],
    }
    kombu_zookeeper if "zookeeper" {
        "zookeeper" => DESCRIPTOR ["zookeeper"],
    }
    kombu_mongodb if "mongodb" {
        "mongodb" => DESCRIPTOR ["mongodb", "mongodb+srv", "srv"],
    }
}

/// The transports registered in this build.
pub fn transports() -> Vec<&'static kombu_core::TransportDescriptor> {
    install_default_transports();
    kombu_core::registry::transports()
}

#[cfg(test)]
#[derive(Debug)]
struct TableEntry {
    krate: &'static str,
    crate_feature: &'static str,
    feature: &'static str,
    schemes: &'static [&'static str],
    descriptor: Option<&'static kombu_core::TransportDescriptor>,
}

#[cfg(test)]
mod consistency_tests;
