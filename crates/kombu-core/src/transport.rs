//! The trait boundary between the facade and every transport.
//!
//! A [`Transport`] is one live connection to a broker; it opens [`Channel`]s. Channel
//! operations mirror AMQP 0-9-1 (what Kombu's channels expose) and take option structs, so
//! options can grow without breaking signatures. Anything a transport cannot do returns an
//! [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) error, as its
//! [`Capabilities`] say.
//!
//! Native transports (AMQP) implement [`Channel`] directly; every other transport implements
//! the narrow [`VirtualBackend`](crate::virtual_transport::VirtualBackend) trait and gets a
//! full channel from [`VirtualChannel`](crate::virtual_transport::VirtualChannel).

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_core::Stream;

use crate::capabilities::Capabilities;
use crate::entity::{Exchange, Queue};
use crate::error::Result;
use crate::message::{Delivery, RawMessage};
use crate::url::BrokerUrl;
use crate::value::FieldTable;

/// Transport options (Kombu's `transport_options`): names and values as text, e.g.
/// `visibility_timeout=3600`. URL query parameters are merged in, explicit options winning.
pub type TransportOptions = BTreeMap<String, String>;

/// Everything a transport needs to connect.
///
/// Non-exhaustive so that fields can be added without breaking transports: build it with
/// [`ConnectOptions::new`] and the `with_*` methods, then set the public fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// The URL of the broker to connect to (one entry of a failover list).
    pub url: BrokerUrl,
    /// Transport options.
    pub transport_options: TransportOptions,
    /// How long to wait for the connection to be established.
    pub connect_timeout: Duration,
    /// AMQP heartbeat interval, if any.
    pub heartbeat: Option<Duration>,
    /// The other URLs of the connection's failover list, in the order the facade would try
    /// them after [`url`](Self::url), each as the complete options the facade would connect
    /// to it with (its own query parameters under the same transport options, as Kombu
    /// applies one `transport_options` to every URL of the list). Their own `alternates` are
    /// empty.
    ///
    /// The facade fails over by itself when a transport reports it is disconnected, so most
    /// transports ignore this. It exists for transports that recover a lost connection
    /// *without* the facade (AMQP), which would otherwise only ever reconnect to `url` and
    /// lose their recovered state (the topology they re-declare) when the facade replaces
    /// them. Only URLs the same transport serves are listed: a transport cannot connect to
    /// another transport's broker.
    pub alternates: Vec<ConnectOptions>,
}

impl ConnectOptions {
    /// Options for `url`: its query parameters as transport options, a 5 s connect timeout,
    /// no alternates.
    pub fn new(url: BrokerUrl) -> Self {
        let transport_options = url.query().iter().cloned().collect();
        ConnectOptions {
            url,
            transport_options,
            connect_timeout: Duration::from_secs(5),
            heartbeat: None,
            alternates: Vec::new(),
        }
    }

    /// These options with `alternates` as the failover URLs to try after
    /// [`url`](Self::url) (see [`alternates`](Self::alternates)). The alternates' own
    /// alternates are dropped: the list is flat.
    ///
    /// ```
    /// use kombu_core::ConnectOptions;
    /// let b = ConnectOptions::new("amqp://b//".parse()?);
    /// let options = ConnectOptions::new("amqp://a//".parse()?).with_alternates([b]);
    /// assert_eq!(options.alternates[0].url.host(), Some("b"));
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn with_alternates(mut self, alternates: impl IntoIterator<Item = ConnectOptions>) -> Self {
        self.alternates = alternates
            .into_iter()
            .map(|mut alternate| {
                alternate.alternates.clear();
                alternate
            })
            .collect();
        self
    }

    /// Parse transport option `key` as `T`; a malformed value is an `InvalidArgument` error.
    pub fn option<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>> {
        match self.transport_options.get(key) {
            None => Ok(None),
            Some(raw) => raw.trim().parse::<T>().map(Some).map_err(|_| {
                crate::Error::new(
                    crate::ErrorKind::InvalidArgument,
                    format!("invalid value {raw:?} for transport option {key:?}"),
                )
            }),
        }
    }

    /// Transport option `key` in seconds (Kombu's unit; fractions allowed): a positive, finite
    /// number, else an `InvalidArgument` error.
    pub fn seconds(&self, key: &str) -> Result<Option<Duration>> {
        let Some(value) = self.option::<f64>(key)? else {
            return Ok(None);
        };
        match Duration::try_from_secs_f64(value) {
            Ok(d) if !d.is_zero() => Ok(Some(d)),
            _ => Err(crate::Error::new(
                crate::ErrorKind::InvalidArgument,
                format!("transport option {key} must be a positive number of seconds"),
            )
            .with_context("value", value)),
        }
    }
}

/// Builder-style setters for the option structs, which are `#[non_exhaustive]` (so they can
/// grow) and therefore cannot be built with struct literals outside this crate:
/// `ConsumeOptions::default().no_ack(true)`.
macro_rules! setters {
    ($ty:ident { $($field:ident: $t:ty => $doc:literal),* $(,)? }) => {
        impl $ty {
            $(
                #[doc = $doc]
                #[must_use]
                pub fn $field(mut self, value: $t) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

// `DeclareOptions::passive()` builds a passive declaration.
setters!(DeclareOptions {
    nowait: bool => "Do not wait for the broker's reply.",
});
setters!(DeleteQueueOptions {
    if_unused: bool => "Only delete a queue without consumers.",
    if_empty: bool => "Only delete a queue without messages.",
});
setters!(DeleteExchangeOptions {
    if_unused: bool => "Only delete an exchange without bindings.",
});
setters!(RawPublishOptions {
    mandatory: bool => "Ask for the message back (an error) if no queue receives it.",
    confirm: bool => "Wait for a publisher confirm (where supported).",
});
setters!(GetOptions {
    no_ack: bool => "Settle immediately: the message is not tracked as unacked.",
});
setters!(ConsumeOptions {
    consumer_tag: String => "The consumer tag (generated when empty).",
    no_ack: bool => "Deliveries need no acknowledgement.",
    exclusive: bool => "Be the queue's only consumer (`Unsupported` on the virtual transports).",
    arguments: FieldTable => "Consumer arguments.",
});
setters!(QosOptions {
    prefetch_count: u16 => "Unacked deliveries allowed in flight (0: unlimited).",
    prefetch_size: u32 => "A byte limit: anything but 0 is `Unsupported`.",
    global: bool => "Apply to the whole connection (AMQP `global`).",
});

/// A live connection to a broker.
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// The registered name of the transport (`"memory"`, `"redis"`, …).
    fn name(&self) -> &'static str;

    /// What this transport (and this connection) supports.
    fn capabilities(&self) -> Capabilities;

    /// Open a new channel.
    async fn create_channel(&self) -> Result<Arc<dyn Channel>>;

    /// Whether the connection is still usable.
    fn is_connected(&self) -> bool;

    /// Close the connection and every channel (restoring unacked messages where the transport
    /// does that).
    async fn close(&self) -> Result<()>;
}

/// Options of a declaration.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DeclareOptions {
    /// Only check that the entity exists (errors with `NotFound` otherwise).
    pub passive: bool,
    /// Do not wait for the broker's reply (AMQP `nowait`).
    pub nowait: bool,
}

impl DeclareOptions {
    /// Passive declaration.
    pub fn passive() -> Self {
        DeclareOptions {
            passive: true,
            ..Default::default()
        }
    }
}

/// The broker's answer to a queue declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDeclareOk {
    /// The queue name (generated by the broker for anonymous queues).
    pub queue: String,
    /// Messages ready in the queue.
    pub message_count: u64,
    /// Active consumers.
    pub consumer_count: u32,
}

/// A queue binding or unbinding.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueBinding {
    /// The queue.
    pub queue: String,
    /// The exchange.
    pub exchange: String,
    /// The binding key.
    pub routing_key: String,
    /// Binding arguments.
    pub arguments: FieldTable,
}

impl QueueBinding {
    /// Bind `queue` to `exchange` with `routing_key`.
    pub fn new(
        queue: impl Into<String>,
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
    ) -> Self {
        QueueBinding {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            arguments: FieldTable::new(),
        }
    }
}

/// An exchange-to-exchange binding (a RabbitMQ extension of AMQP 0-9-1): messages that
/// `source` routes with a matching key are routed on by `destination`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExchangeBinding {
    /// The exchange that receives the messages.
    pub destination: String,
    /// The exchange messages are published to.
    pub source: String,
    /// The binding key.
    pub routing_key: String,
    /// Binding arguments (`x-match` … for a headers source).
    pub arguments: FieldTable,
}

impl ExchangeBinding {
    /// Route what `source` routes with `routing_key` on to `destination`.
    pub fn new(
        destination: impl Into<String>,
        source: impl Into<String>,
        routing_key: impl Into<String>,
    ) -> Self {
        ExchangeBinding {
            destination: destination.into(),
            source: source.into(),
            routing_key: routing_key.into(),
            arguments: FieldTable::new(),
        }
    }
}

/// Options of a queue deletion.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DeleteQueueOptions {
    /// Only delete if it has no consumers.
    pub if_unused: bool,
    /// Only delete if it has no messages.
    pub if_empty: bool,
}

/// Options of an exchange deletion.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DeleteExchangeOptions {
    /// Only delete if it has no bindings.
    pub if_unused: bool,
}

/// Where and how a message is published.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RawPublishOptions {
    /// The exchange (`""`: the default exchange, routing by queue name). Shared, not copied:
    /// it travels into the stored envelope and every delivery.
    pub(crate) exchange: Arc<str>,
    /// The routing key (shared likewise).
    pub(crate) routing_key: Arc<str>,
    /// Ask the broker to return the message if no queue receives it (AMQP).
    pub mandatory: bool,
    /// Wait for a publisher confirm (where supported).
    pub confirm: bool,
}

impl RawPublishOptions {
    /// Publish to `exchange` with `routing_key`.
    pub fn new(exchange: impl Into<Arc<str>>, routing_key: impl Into<Arc<str>>) -> Self {
        RawPublishOptions {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            ..Default::default()
        }
    }

    /// The exchange (`""`: the default exchange).
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// The exchange and routing key, shared (not copied), for a transport that keeps them
    /// with the message.
    pub fn shared_names(&self) -> (Arc<str>, Arc<str>) {
        (self.exchange.clone(), self.routing_key.clone())
    }
}

/// Options of a `basic_get`.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct GetOptions {
    /// Settle immediately: the message is not tracked as unacked.
    pub no_ack: bool,
}

/// Options of a consumer.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ConsumeOptions {
    /// The consumer tag (generated when empty).
    pub consumer_tag: String,
    /// Deliveries need no acknowledgement.
    pub no_ack: bool,
    /// Be the queue's only consumer.
    pub exclusive: bool,
    /// Consumer arguments.
    pub arguments: FieldTable,
}

/// Prefetch limits.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct QosOptions {
    /// Unacked deliveries allowed in flight on the channel; 0 = unlimited.
    pub prefetch_count: u16,
    /// Unacked bytes allowed in flight; 0 = unlimited. No transport honours a byte limit
    /// (RabbitMQ does not implement it): anything but 0 is an `Unsupported` error rather
    /// than silently ignored, as Kombu does.
    pub prefetch_size: u32,
    /// Apply to the whole connection (AMQP `global`).
    pub global: bool,
}

impl QosOptions {
    /// `Unsupported` when a byte limit (`prefetch_size`) is asked for: no transport honours
    /// one, and it is refused rather than ignored. Every transport's `qos` calls this.
    pub fn refuse_byte_limit(&self, transport: &str) -> Result<()> {
        if self.prefetch_size == 0 {
            return Ok(());
        }
        Err(
            crate::error::Error::unsupported("prefetch_size (a byte limit; only prefetch_count is honoured)")
                .with_context("transport", transport)
                .with_context("prefetch_size", self.prefetch_size),
        )
    }

    /// A prefetch count.
    pub fn prefetch(count: u16) -> Self {
        QosOptions {
            prefetch_count: count,
            ..Default::default()
        }
    }
}

/// A stream of deliveries for one consumer. It ends when the consumer is cancelled or the
/// channel closes; a broker failure is yielded as an error item.
pub type DeliveryStream = Pin<Box<dyn Stream<Item = Result<Delivery>> + Send>>;

/// A consumer started by [`Channel::consume`].
pub struct ConsumerHandle {
    /// The consumer tag (needed to cancel).
    pub consumer_tag: String,
    /// The deliveries.
    pub deliveries: DeliveryStream,
}

impl fmt::Debug for ConsumerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerHandle")
            .field("consumer_tag", &self.consumer_tag)
            .finish_non_exhaustive()
    }
}

/// A channel: the AMQP-shaped operations every transport provides.
#[async_trait]
pub trait Channel: Send + Sync + fmt::Debug + 'static {
    /// What this channel supports.
    fn capabilities(&self) -> Capabilities;

    /// Declare an exchange. Redeclaring with different settings is a `NotEquivalent` error.
    async fn declare_exchange(&self, exchange: &Exchange, options: DeclareOptions) -> Result<()>;

    /// Delete an exchange.
    async fn delete_exchange(&self, name: &str, options: DeleteExchangeOptions) -> Result<()>;

    /// Declare a queue (not its bindings; see [`Channel::bind_queue`]).
    async fn declare_queue(&self, queue: &Queue, options: DeclareOptions) -> Result<QueueDeclareOk>;

    /// Bind a queue to an exchange.
    async fn bind_queue(&self, binding: &QueueBinding) -> Result<()>;

    /// Remove a binding.
    async fn unbind_queue(&self, binding: &QueueBinding) -> Result<()>;

    /// Bind an exchange to an exchange. Transports without
    /// [`Capabilities::exchange_to_exchange`] return `Unsupported`.
    async fn bind_exchange(&self, binding: &ExchangeBinding) -> Result<()> {
        let _ = binding;
        Err(crate::Error::unsupported("exchange-to-exchange bindings"))
    }

    /// Remove an exchange-to-exchange binding.
    async fn unbind_exchange(&self, binding: &ExchangeBinding) -> Result<()> {
        let _ = binding;
        Err(crate::Error::unsupported("exchange-to-exchange bindings"))
    }

    /// Remove every ready message; returns how many were removed.
    async fn purge_queue(&self, queue: &str) -> Result<u64>;

    /// Delete a queue; returns how many messages it held.
    async fn delete_queue(&self, queue: &str, options: DeleteQueueOptions) -> Result<u64>;

    /// Publish one message.
    async fn publish(&self, message: RawMessage, options: RawPublishOptions) -> Result<()>;

    /// Publish several messages, with one outcome per message, in the order given.
    ///
    /// The default starts every publish at once and awaits them together, so they share
    /// the connection's pipeline: AMQP confirms are awaited together, commands to a
    /// multiplexed connection are pipelined, and a backend that serializes its writes
    /// (SQLite's worker thread) commits the ones that coincide in one transaction. Each
    /// publish is started (first polled) in batch order, so messages that take the same path
    /// to the same queue keep that order. A transport with a native batch operation overrides
    /// this; it must still report every message's outcome and never drop one silently.
    async fn publish_batch(&self, batch: Vec<(RawMessage, RawPublishOptions)>) -> Vec<Result<()>> {
        let publishes = batch
            .into_iter()
            .map(|(message, options)| self.publish(message, options));
        futures_util::future::join_all(publishes).await
    }

    /// Take one message, if any is ready.
    async fn get(&self, queue: &str, options: GetOptions) -> Result<Option<Delivery>>;

    /// Start consuming from a queue.
    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<ConsumerHandle>;

    /// Stop a consumer. Unacked deliveries stay unacked until settled or the channel closes.
    async fn cancel(&self, consumer_tag: &str) -> Result<()>;

    /// Set prefetch limits.
    async fn qos(&self, options: QosOptions) -> Result<()>;

    /// Redeliver every unacked message of this channel (`requeue` must be true on virtual
    /// transports, as in Kombu).
    async fn recover(&self, requeue: bool) -> Result<()>;

    /// Close the channel, restoring unacked messages where the transport does.
    async fn close(&self) -> Result<()>;

    /// Whether the channel is still open.
    fn is_open(&self) -> bool;
}
