//! Publishing.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kombu_core::{
    shared_text, Channel, DeliveryMode, Error, ErrorKind, Exchange, FieldTable, Properties, RawMessage,
    Result, Value,
};
use serde::Serialize;
use tracing::field::{display, Empty};
use tracing::{debug_span, Instrument};

use crate::compression;
use crate::connection::{Connection, Declarable};
use crate::observe;
use crate::retry::RetryPolicy;
use crate::serialization;

mod batch;
pub use batch::{BatchOutcome, PublishBatch};

/// Options of one publish (Kombu's `Producer.publish` keyword arguments). Every field is
/// optional; unset fields fall back to the producer's defaults.
///
/// Cloning is cheap where it is common to clone once per publish: the routing key and the
/// `declare` list are shared, not copied.
///
/// ```
/// use std::time::Duration;
/// use kombu::{PublishOptions, Queue};
/// let opts = PublishOptions::new()
///     .routing_key("video")
///     .priority(5)
///     .expiration(Duration::from_secs(10))
///     .header("trace", "abc")
///     .declare(Queue::new("video"));
/// assert_eq!(opts.priority, Some(5));
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PublishOptions {
    /// Routing key (default: the producer's), set with [`routing_key`](Self::routing_key).
    /// Shared, so the message carries it without a copy.
    pub(crate) routing_key: Option<Arc<str>>,
    /// Exchange (default: the producer's).
    pub exchange: Option<Exchange>,
    /// Serializer name (default: the producer's, else `json`).
    pub serializer: Option<String>,
    /// Compression name (default: the producer's, else none).
    pub compression: Option<String>,
    /// Explicit content type: the body is sent as is (bytes) or encoded as text.
    pub content_type: Option<String>,
    /// Explicit content encoding.
    pub content_encoding: Option<String>,
    /// Application headers.
    pub headers: FieldTable,
    /// Priority.
    pub priority: Option<u8>,
    /// Per-message TTL (sent as milliseconds text, as Kombu does).
    pub expiration: Option<Duration>,
    /// Delivery mode (default: the exchange's, else persistent).
    pub delivery_mode: Option<DeliveryMode>,
    /// AMQP `correlation_id`.
    pub correlation_id: Option<String>,
    /// AMQP `reply_to`.
    pub reply_to: Option<String>,
    /// AMQP `message_id`.
    pub message_id: Option<String>,
    /// AMQP `timestamp` (seconds since the epoch).
    pub timestamp: Option<u64>,
    /// AMQP `type`.
    pub message_type: Option<String>,
    /// AMQP `user_id`.
    pub user_id: Option<String>,
    /// AMQP `app_id`.
    pub app_id: Option<String>,
    /// Further properties copied verbatim (e.g. SQS `MessageGroupId`).
    pub extra_properties: FieldTable,
    /// Entities to declare first (cached per connection). Shared between clones of the
    /// options.
    pub declare: Arc<Vec<Declarable>>,
    /// Retry on recoverable errors, reconnecting per `retry_policy`.
    pub retry: bool,
    /// The retry policy (default: Kombu's `ensure` defaults).
    pub retry_policy: Option<RetryPolicy>,
    /// Ask the broker to return unroutable messages (an error on virtual transports).
    pub mandatory: bool,
    /// Wait for a publisher confirm where supported.
    pub confirm: bool,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty => $field:ident),* $(,)?) => {
        $($(#[$doc])* pub fn $name(mut self, value: impl Into<$ty>) -> Self {
            self.$field = Some(value.into());
            self
        })*
    };
}

impl PublishOptions {
    /// No options.
    pub fn new() -> Self {
        PublishOptions::default()
    }

    /// Set the routing key.
    pub fn routing_key(mut self, routing_key: impl Into<Arc<str>>) -> Self {
        self.routing_key = Some(routing_key.into());
        self
    }

    setters! {
        /// Set the exchange.
        exchange: Exchange => exchange,
        /// Set the serializer.
        serializer: String => serializer,
        /// Set the compression.
        compression: String => compression,
        /// Set the content type.
        content_type: String => content_type,
        /// Set the content encoding.
        content_encoding: String => content_encoding,
        /// Set `correlation_id`.
        correlation_id: String => correlation_id,
        /// Set `reply_to`.
        reply_to: String => reply_to,
        /// Set `message_id`.
        message_id: String => message_id,
        /// Set the AMQP `type`.
        message_type: String => message_type,
        /// Set `user_id`.
        user_id: String => user_id,
        /// Set `app_id`.
        app_id: String => app_id,
    }

    /// Set the priority.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Set the per-message TTL.
    pub fn expiration(mut self, ttl: Duration) -> Self {
        self.expiration = Some(ttl);
        self
    }

    /// Set the delivery mode.
    pub fn delivery_mode(mut self, mode: DeliveryMode) -> Self {
        self.delivery_mode = Some(mode);
        self
    }

    /// Set the timestamp (seconds since the epoch).
    pub fn timestamp(mut self, secs: u64) -> Self {
        self.timestamp = Some(secs);
        self
    }

    /// Stamp with the current time.
    pub fn timestamp_now(self) -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.timestamp(secs)
    }

    /// Add a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// Add a property copied verbatim.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra_properties.insert(key.into(), value.into());
        self
    }

    /// Declare an entity before publishing.
    pub fn declare(mut self, entity: impl Into<Declarable>) -> Self {
        Arc::make_mut(&mut self.declare).push(entity.into());
        self
    }

    /// Retry recoverable failures with `policy` (reconnecting as needed).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = true;
        self.retry_policy = Some(policy);
        self
    }

    /// Set `mandatory`.
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// Wait for a publisher confirm.
    pub fn confirm(mut self, confirm: bool) -> Self {
        self.confirm = confirm;
        self
    }
}

/// The body of a publish before serialization.
enum Body<'a> {
    /// Already serialized by [`Producer::publish`] (where the value's type is known, so the
    /// built-in JSON serializes without type erasure): content type, encoding, bytes.
    Serialized(Result<(Arc<str>, Arc<str>, Vec<u8>)>),
    Bytes(Bytes),
    Text(&'a str),
}

/// Publishes messages (Kombu's `Producer`). Cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu::Result<()> {
/// use kombu::{Connection, Exchange, PublishOptions, Queue};
/// let conn = Connection::new("memory:///producer-doc")?;
/// let media = Exchange::direct("media");
/// let video = Queue::new("video").exchange(media.clone()).routing_key("video");
/// let producer = conn.producer().exchange(media);
/// producer
///     .publish(&serde_json::json!({"name": "cat.mp4"}), PublishOptions::new().routing_key("video").declare(video))
///     .await?;
/// let message = conn.simple_queue("video").get_nowait().await?.expect("published");
/// assert_eq!(message.content_type(), Some("application/json"));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Producer {
    connection: Connection,
    channel: Option<Arc<dyn Channel>>,
    exchange: Exchange,
    /// `exchange.name`, shared by every message published to it (no copy per publish).
    exchange_name: Arc<str>,
    routing_key: Arc<str>,
    serializer: Option<String>,
    compression: Option<String>,
    auto_declare: bool,
}

impl Producer {
    /// A producer on the connection's default channel, publishing to the default exchange.
    pub fn new(connection: &Connection) -> Self {
        Producer {
            connection: connection.clone(),
            channel: None,
            exchange: Exchange::default_exchange(),
            exchange_name: Arc::from(""),
            routing_key: Arc::from(""),
            serializer: None,
            compression: None,
            auto_declare: true,
        }
    }

    /// Publish on a given channel instead of the default one.
    pub fn channel(mut self, channel: Arc<dyn Channel>) -> Self {
        self.channel = Some(channel);
        self
    }

    /// The default exchange of this producer (declared before the first publish unless
    /// `auto_declare` is off).
    pub fn exchange(mut self, exchange: Exchange) -> Self {
        self.exchange_name = Arc::from(exchange.name.as_str());
        self.exchange = exchange;
        self
    }

    /// The default routing key.
    pub fn routing_key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = Arc::from(key.into());
        self
    }

    /// The default serializer.
    pub fn serializer(mut self, name: impl Into<String>) -> Self {
        self.serializer = Some(name.into());
        self
    }

    /// The default compression.
    pub fn compression(mut self, name: impl Into<String>) -> Self {
        self.compression = Some(name.into());
        self
    }

    /// Whether the producer's exchange is declared automatically (default: true).
    pub fn auto_declare(mut self, auto_declare: bool) -> Self {
        self.auto_declare = auto_declare;
        self
    }

    /// The connection.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    async fn channel_for_publish(&self) -> Result<Arc<dyn Channel>> {
        match &self.channel {
            Some(c) => Ok(c.clone()),
            None => self.connection.default_channel().await,
        }
    }

    /// Publish any serializable value (JSON unless a serializer is chosen).
    ///
    /// The body is serialized before the returned future is first polled, so the future does
    /// not borrow `body` and is `Send`.
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        body: &T,
        options: PublishOptions,
    ) -> impl Future<Output = Result<()>> + Send + '_ {
        let prepared = self.prepare(self.serialize(body, &options), &options);
        self.send(prepared, options)
    }

    /// `body` serialized with the options' serializer, else the producer's, else JSON.
    fn serialize<T: Serialize + ?Sized>(&self, body: &T, options: &PublishOptions) -> Body<'static> {
        let name = options
            .serializer
            .as_deref()
            .or(self.serializer.as_deref())
            .unwrap_or("json");
        Body::Serialized(serialization::dumps(body, name))
    }

    /// Publish raw bytes: `application/data`/`binary` unless a content type is given.
    pub fn publish_bytes(
        &self,
        body: impl Into<Bytes>,
        options: PublishOptions,
    ) -> impl Future<Output = Result<()>> + Send + '_ {
        let prepared = self.prepare(Body::Bytes(body.into()), &options);
        self.send(prepared, options)
    }

    /// Publish text: `text/plain`/`utf-8` unless a content type is given.
    pub fn publish_text(
        &self,
        body: &str,
        options: PublishOptions,
    ) -> impl Future<Output = Result<()>> + Send + '_ {
        let prepared = self.prepare(Body::Text(body), &options);
        self.send(prepared, options)
    }

    /// Declare the producer's exchange.
    pub async fn declare(&self) -> Result<()> {
        let channel = self.channel_for_publish().await?;
        self.connection
            .maybe_declare_exchange(&self.exchange, channel.as_ref())
            .await
            .map(|_| ())
    }

    /// Serialize, compress and assemble the message (Kombu's `_prepare` + `prepare_message`).
    fn prepare(&self, body: Body<'_>, options: &PublishOptions) -> Result<RawMessage> {
        let exchange = options.exchange.as_ref().unwrap_or(&self.exchange);
        let text = |t: &String| shared_text(t);
        let (mut content_type, mut content_encoding, payload): (Option<Arc<str>>, Option<Arc<str>>, Bytes) =
            match (body, &options.content_type) {
                (Body::Bytes(b), Some(ct)) => (
                    Some(text(ct)),
                    Some(
                        options
                            .content_encoding
                            .as_ref()
                            .map_or_else(|| shared_text("binary"), text),
                    ),
                    b,
                ),
                (Body::Text(t), Some(ct)) => {
                    let enc = options
                        .content_encoding
                        .as_ref()
                        .map_or_else(|| shared_text("utf-8"), text);
                    if !enc.eq_ignore_ascii_case("utf-8") && !enc.eq_ignore_ascii_case("utf8") {
                        return Err(Error::new(
                            ErrorKind::Encode,
                            "text bodies can only be encoded as utf-8",
                        )
                        .with_context("content_encoding", &*enc));
                    }
                    (Some(text(ct)), Some(enc), Bytes::copy_from_slice(t.as_bytes()))
                }
                (Body::Bytes(b), None) => (
                    Some(shared_text("application/data")),
                    Some(shared_text("binary")),
                    b,
                ),
                (Body::Text(t), None) => (
                    Some(shared_text("text/plain")),
                    Some(shared_text("utf-8")),
                    Bytes::copy_from_slice(t.as_bytes()),
                ),
                (Body::Serialized(serialized), _) => {
                    let (ct, enc, bytes) = serialized?;
                    (
                        Some(options.content_type.as_ref().map_or(ct, text)),
                        Some(options.content_encoding.as_ref().map_or(enc, text)),
                        Bytes::from(bytes),
                    )
                }
            };
        let mut headers = options.headers.clone();
        #[cfg(feature = "opentelemetry")]
        crate::propagation::inject(&mut headers);
        let payload = match options.compression.as_deref().or(self.compression.as_deref()) {
            Some(name) => {
                let (compressed, header) = compression::compress(&payload, name)?;
                headers.insert(compression::HEADER.into(), Value::String(header));
                Bytes::from(compressed)
            }
            None => payload,
        };
        if content_type.as_deref() == Some("") {
            content_type = None;
        }
        if content_encoding.as_deref() == Some("") {
            content_encoding = None;
        }
        Ok(RawMessage::new(payload)
            .with_content_type(content_type)
            .with_content_encoding(content_encoding)
            .with_headers(headers)
            .with_properties(message_properties(options, exchange)))
    }

    /// Not an `async fn`, which would keep its arguments (the message, the options) twice in
    /// the future: once as passed, once moved into the body. The future keeps only what a
    /// publish needs after its synchronous part (the message, the target, the few options that
    /// still matter), and the cold paths — declaring, connecting, waiting to retry — are boxed
    /// where they run, so the future a publish builds and moves is small.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would store its arguments twice"
    )]
    fn send(
        &self,
        prepared: Result<RawMessage>,
        options: PublishOptions,
    ) -> impl Future<Output = Result<()>> + Send + '_ {
        let (attempt, retry_policy) = Attempt::from_options(options);
        async move {
            #[cfg(feature = "metrics")]
            let stopwatch = observe::Stopwatch::start();
            let transport = self.connection.transport_name();
            let exchange = attempt.exchange.as_deref().unwrap_or(&self.exchange);
            // The fields are evaluated only when the span is enabled.
            let span = debug_span!(
                "kombu.publish",
                transport,
                exchange = %exchange.name,
                routing_key = %attempt.routing_key.as_deref().unwrap_or(&self.routing_key),
                message_id = prepared
                    .as_ref()
                    .ok()
                    .and_then(|m| observe::message_id(&m.properties, &m.headers)),
                error = Empty,
            );
            let result = async {
                let result = match prepared {
                    Err(e) => Err(e),
                    Ok(message) => match retry_policy {
                        None => self.publish_once(message, &attempt).await,
                        // Boxed: retrying keeps a copy of the message, a policy and a wait.
                        Some(policy) => Box::pin(self.publish_with_retry(message, &attempt, policy)).await,
                    },
                };
                if let Err(e) = &result {
                    // The span just entered (a disabled one without a subscriber).
                    tracing::Span::current().record("error", display(e));
                }
                result
            }
            .instrument(span)
            .await;
            #[cfg(feature = "metrics")]
            observe::published(
                transport,
                self.exchange_label(&attempt),
                result.is_ok(),
                stopwatch.elapsed(),
            );
            result
        }
    }

    /// Publish, retrying recoverable failures as `policy` says (reconnecting in between).
    async fn publish_with_retry(
        &self,
        message: RawMessage,
        attempt: &Attempt,
        policy: RetryPolicy,
    ) -> Result<()> {
        let mut waits = policy.intervals();
        loop {
            match self.publish_once(message.clone(), attempt).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_recoverable() => {
                    let Some(wait) = waits.next() else { return Err(e) };
                    tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "publish failed, retrying");
                    tokio::time::sleep(wait).await;
                    self.connection.ensure_connection(&policy).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One try: the channel, the declarations not yet cached, the publish itself.
    async fn publish_once(&self, message: RawMessage, attempt: &Attempt) -> Result<()> {
        let channel = self.channel_for_publish().await?;
        self.declare_for(attempt, channel.as_ref()).await?;
        channel.publish(message, self.raw_options(attempt)).await
    }

    /// Declare what `attempt` needs that the connection has not declared yet (a cache check
    /// when everything is).
    async fn declare_for(&self, attempt: &Attempt, channel: &dyn Channel) -> Result<()> {
        let exchange = attempt.exchange.as_deref().unwrap_or(&self.exchange);
        let declare_exchange = self.auto_declare && !exchange.skips_declare();
        let declared = self
            .connection
            .all_declared(&attempt.declare, declare_exchange.then_some(exchange));
        if !declared {
            Box::pin(async {
                for entity in attempt.declare.iter() {
                    self.connection.maybe_declare(entity, channel).await?;
                }
                if declare_exchange {
                    self.connection.maybe_declare_exchange(exchange, channel).await?;
                }
                Ok::<_, Error>(())
            })
            .await?;
        }
        Ok(())
    }

    /// The exchange of `attempt` as a metric label: the producer's shared name, else a copy.
    #[cfg(feature = "metrics")]
    fn exchange_label(&self, attempt: &Attempt) -> Arc<str> {
        match &attempt.exchange {
            Some(e) => Arc::from(e.name.as_str()),
            None => self.exchange_name.clone(),
        }
    }

    /// The core's publish options for `attempt`: its exchange and routing key, else the
    /// producer's.
    fn raw_options(&self, attempt: &Attempt) -> kombu_core::RawPublishOptions {
        let exchange_name = match &attempt.exchange {
            Some(e) => Arc::from(e.name.as_str()),
            None => self.exchange_name.clone(),
        };
        let routing_key = attempt
            .routing_key
            .clone()
            .unwrap_or_else(|| self.routing_key.clone());
        kombu_core::RawPublishOptions::new(exchange_name, routing_key)
            .mandatory(attempt.mandatory)
            .confirm(attempt.confirm)
    }
}

/// The basic properties of a publish (Kombu's defaults: persistent unless the options or the
/// exchange say otherwise, priority 0). Plain ones — nothing but those two — are shared.
fn message_properties(options: &PublishOptions, exchange: &Exchange) -> Arc<Properties> {
    let delivery_mode = Some(
        options
            .delivery_mode
            .or(exchange.delivery_mode)
            .unwrap_or(DeliveryMode::Persistent),
    );
    let priority = Some(options.priority.unwrap_or(0));
    let plain = options.correlation_id.is_none()
        && options.reply_to.is_none()
        && options.expiration.is_none()
        && options.message_id.is_none()
        && options.timestamp.is_none()
        && options.message_type.is_none()
        && options.user_id.is_none()
        && options.app_id.is_none()
        && options.extra_properties.is_empty();
    if let Some(shared) = plain
        .then(|| kombu_core::plain_properties(delivery_mode, priority))
        .flatten()
    {
        return shared;
    }
    Arc::new(Properties {
        delivery_mode,
        priority,
        correlation_id: options.correlation_id.clone(),
        reply_to: options.reply_to.clone(),
        // Kombu: str(int(expiration * 1000)).
        expiration: options.expiration.map(|d| (d.as_millis() as u64).to_string()),
        message_id: options.message_id.clone(),
        timestamp: options.timestamp,
        message_type: options.message_type.clone(),
        user_id: options.user_id.clone(),
        app_id: options.app_id.clone(),
        extra: options.extra_properties.clone(),
    })
}

/// What a publish still needs of its [`PublishOptions`] once the message is built.
#[derive(Debug)]
struct Attempt {
    /// Boxed: rarely given, and an exchange is most of the struct.
    exchange: Option<Box<Exchange>>,
    routing_key: Option<Arc<str>>,
    declare: Arc<Vec<Declarable>>,
    mandatory: bool,
    confirm: bool,
}

impl Attempt {
    /// What of `options` a publish keeps once the message is built, and its retry policy
    /// (`None` without `retry`).
    fn from_options(options: PublishOptions) -> (Attempt, Option<RetryPolicy>) {
        let PublishOptions {
            exchange,
            routing_key,
            declare,
            retry,
            retry_policy,
            mandatory,
            confirm,
            ..
        } = options;
        let attempt = Attempt {
            exchange: exchange.map(Box::new),
            routing_key,
            declare,
            mandatory,
            confirm,
        };
        (
            attempt,
            retry.then(|| retry_policy.unwrap_or_else(RetryPolicy::publish_default)),
        )
    }
}
