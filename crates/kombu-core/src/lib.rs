//! # kombu-core
//!
//! The thin core of [kombu-rs](https://github.com/kombu-rs/kombu-rs): everything transports
//! and the `kombu` facade share, and nothing else.
//!
//! * [`entity`]: [`Exchange`], [`Queue`], [`Binding`] with Kombu's options and defaults;
//! * [`message`]: the transport-level message model ([`RawMessage`], [`Delivery`]);
//! * [`value`]: header/argument values mapping to AMQP field tables and Kombu JSON;
//! * [`transport`]: the [`Transport`] and [`Channel`] traits — the trait boundary;
//! * [`capabilities`]: what a transport supports;
//! * [`router`]: AMQP routing (direct, topic, fanout, headers), compiled once per binding;
//! * [`virtual_transport`]: Kombu's virtual transport machinery for non-AMQP brokers;
//! * [`envelope`]: Kombu's JSON message envelope;
//! * [`url`]: broker URLs with redacted passwords;
//! * [`registry`]: transports by URL scheme;
//! * [`error`]: the one [`Error`] type.
//!
//! Applications use the `kombu` crate; this crate is for transport authors.
#![forbid(unsafe_code)]

pub mod capabilities;
pub mod entity;
pub mod envelope;
pub mod error;
pub mod message;
pub mod registry;
pub mod router;
pub mod transport;
pub mod url;
pub mod value;
pub mod virtual_transport;

pub use capabilities::{Capabilities, PriorityOrder, PrioritySupport};
pub use entity::{Binding, Exchange, ExchangeType, Queue};
pub use envelope::{BodyEncoding, Envelope};
pub use error::{Error, ErrorKind, Result};
pub use message::{
    plain_properties, shared_properties, shared_text, AckHandle, Acknowledger, Delivery, DeliveryInfo,
    DeliveryMode, Properties, RawMessage,
};
pub use registry::TransportDescriptor;
pub use transport::{
    Channel, ConnectOptions, ConsumeOptions, ConsumerHandle, DeclareOptions, DeleteExchangeOptions,
    DeleteQueueOptions, DeliveryStream, ExchangeBinding, GetOptions, QosOptions, QueueBinding,
    QueueDeclareOk, RawPublishOptions, Transport, TransportOptions,
};
pub use url::{BrokerUrl, Secret};
pub use value::{FieldTable, Value};

/// Re-exported so transport crates can `inventory::submit!` without depending on it directly.
pub use inventory;
