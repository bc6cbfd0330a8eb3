//! The transport-level message model.
//!
//! A [`RawMessage`] is what a channel publishes and what a [`Delivery`] carries: body bytes
//! (already serialized and maybe compressed by the facade), content type and encoding, headers
//! and the AMQP basic properties. Serialization lives in the `kombu` facade; transports only
//! move bytes.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;
use crate::value::FieldTable;

/// AMQP delivery mode: whether the broker should keep the message on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeliveryMode {
    /// `1`: kept in memory only.
    Transient,
    /// `2`: written to disk by durable brokers (Kombu's default).
    #[default]
    Persistent,
}

impl DeliveryMode {
    /// The AMQP number (1 or 2).
    pub fn as_u8(self) -> u8 {
        match self {
            DeliveryMode::Transient => 1,
            DeliveryMode::Persistent => 2,
        }
    }

    /// From the AMQP number; anything but 1 is persistent.
    pub fn from_u8(mode: u8) -> Self {
        if mode == 1 {
            DeliveryMode::Transient
        } else {
            DeliveryMode::Persistent
        }
    }
}

/// The AMQP 0-9-1 basic properties Kombu exposes, plus any extra keys a transport or a foreign
/// producer put into the envelope's `properties` (kept so that they round-trip).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// 1 = transient, 2 = persistent. Kombu publishes 2 unless told otherwise.
    pub delivery_mode: Option<DeliveryMode>,
    /// Message priority (0–255 on the wire; virtual transports clamp to 0..=9).
    pub priority: Option<u8>,
    /// Correlates a reply with its request.
    pub correlation_id: Option<String>,
    /// Name of the queue replies should go to.
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as a decimal string (AMQP/Kombu convention).
    pub expiration: Option<String>,
    /// Application message id.
    pub message_id: Option<String>,
    /// Seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// Application message type (AMQP `type`).
    pub message_type: Option<String>,
    /// Publishing user id (validated by RabbitMQ).
    pub user_id: Option<String>,
    /// Publishing application id.
    pub app_id: Option<String>,
    /// Other properties, preserved verbatim (e.g. SQS `MessageGroupId`).
    pub extra: FieldTable,
}

impl Properties {
    /// The per-message TTL as a duration, if `expiration` is a valid millisecond count.
    pub fn expiration_duration(&self) -> Option<std::time::Duration> {
        let ms: f64 = self.expiration.as_deref()?.trim().parse().ok()?;
        (ms.is_finite() && ms >= 0.0).then(|| std::time::Duration::from_secs_f64(ms / 1000.0))
    }

    /// Whether only `delivery_mode` and a priority of at most 9 are set: what nearly every
    /// message carries, and what [`shared_properties`] keeps one copy of.
    fn is_plain(&self) -> bool {
        let Properties {
            delivery_mode: _,
            priority,
            correlation_id,
            reply_to,
            expiration,
            message_id,
            timestamp,
            message_type,
            user_id,
            app_id,
            extra,
        } = self;
        priority.is_none_or(|p| p <= 9)
            && correlation_id.is_none()
            && reply_to.is_none()
            && expiration.is_none()
            && message_id.is_none()
            && timestamp.is_none()
            && message_type.is_none()
            && user_id.is_none()
            && app_id.is_none()
            && extra.is_empty()
    }
}

/// `properties` behind a shared pointer. Plain properties (a delivery mode and a priority
/// of 0–9, nothing else: what nearly every message carries) come from a process-wide table,
/// so publishing or decoding such a message allocates nothing for them.
pub fn shared_properties(properties: Properties) -> Arc<Properties> {
    if !properties.is_plain() {
        return Arc::new(properties);
    }
    plain_properties(properties.delivery_mode, properties.priority).unwrap_or_else(|| Arc::new(properties))
}

/// The shared plain [`Properties`] with only `delivery_mode` and `priority` set, without
/// building one first; `None` for a priority above 9 (see [`shared_properties`]).
pub fn plain_properties(
    delivery_mode: Option<DeliveryMode>,
    priority: Option<u8>,
) -> Option<Arc<Properties>> {
    const PRIORITIES: usize = 11; // None, 0..=9
    const MODES: [Option<DeliveryMode>; 3] = [
        None,
        Some(DeliveryMode::Transient),
        Some(DeliveryMode::Persistent),
    ];
    static PLAIN: std::sync::OnceLock<Vec<Arc<Properties>>> = std::sync::OnceLock::new();
    let priority_index = match priority {
        None => 0,
        Some(p @ 0..=9) => usize::from(p) + 1,
        Some(_) => return None,
    };
    let mode_index = match delivery_mode {
        None => 0,
        Some(DeliveryMode::Transient) => 1,
        Some(DeliveryMode::Persistent) => 2,
    };
    let plain = PLAIN.get_or_init(|| {
        MODES
            .iter()
            .flat_map(|&delivery_mode| {
                std::iter::once(None)
                    .chain((0..=9).map(Some))
                    .map(move |priority| {
                        Arc::new(Properties {
                            delivery_mode,
                            priority,
                            ..Properties::default()
                        })
                    })
            })
            .collect()
    });
    plain.get(mode_index * PRIORITIES + priority_index).cloned()
}

/// Content types and encodings nearly every message carries: one shared string each.
const COMMON_TEXTS: [&str; 9] = [
    "application/json",
    "utf-8",
    "binary",
    "application/data",
    "text/plain",
    "application/x-python-serialize",
    "application/x-msgpack",
    "application/x-yaml",
    "application/x-bzip2",
];

/// `text` as a shared string; the common content types and encodings are allocated once per
/// process and shared by every message that names them (serializers and envelope decoders
/// use this, so a message's metadata costs no allocation).
pub fn shared_text(text: &str) -> Arc<str> {
    static COMMON: std::sync::OnceLock<Vec<Arc<str>>> = std::sync::OnceLock::new();
    // A `match` compiles to a switch on the length and one comparison, not a scan.
    let index = match text {
        "application/json" => 0,
        "utf-8" => 1,
        "binary" => 2,
        "application/data" => 3,
        "text/plain" => 4,
        "application/x-python-serialize" => 5,
        "application/x-msgpack" => 6,
        "application/x-yaml" => 7,
        "application/x-bzip2" => 8,
        _ => return Arc::from(text),
    };
    let common = COMMON.get_or_init(|| COMMON_TEXTS.iter().map(|t| Arc::from(*t)).collect());
    common.get(index).cloned().unwrap_or_else(|| Arc::from(text))
}

/// A message as transports see it: opaque body bytes plus metadata.
#[derive(Clone, PartialEq)]
pub struct RawMessage {
    /// The (serialized, maybe compressed) body.
    pub body: Bytes,
    /// MIME type of the serialized body (`application/json`, …). Shared: serializers hand out
    /// one string per type, and deliveries share the stored message's.
    pub(crate) content_type: Option<Arc<str>>,
    /// Character set or `binary` (shared likewise).
    pub(crate) content_encoding: Option<Arc<str>>,
    /// Application headers (Kombu puts `compression` here).
    pub headers: FieldTable,
    /// The basic properties, shared: a message moves through several layers and is copied
    /// for the unacked record of every delivery, and a pointer keeps both cheap. Read them
    /// through the pointer (`message.properties.priority`); change them with
    /// [`properties_mut`](Self::properties_mut).
    pub properties: Arc<Properties>,
}

impl Default for RawMessage {
    /// An empty body and no metadata; the empty properties are shared, not allocated.
    fn default() -> Self {
        RawMessage {
            body: Bytes::new(),
            content_type: None,
            content_encoding: None,
            headers: FieldTable::new(),
            properties: shared_properties(Properties::default()),
        }
    }
}

impl RawMessage {
    /// A message with `body` and no metadata.
    pub fn new(body: impl Into<Bytes>) -> Self {
        RawMessage {
            body: body.into(),
            ..RawMessage::default()
        }
    }

    /// MIME type of the serialized body (`application/json`, …).
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// Character set of the body, or `binary`.
    pub fn content_encoding(&self) -> Option<&str> {
        self.content_encoding.as_deref()
    }

    /// With this content type (pass a [`shared_text`] to share one string per type).
    #[must_use]
    pub fn with_content_type(mut self, content_type: Option<Arc<str>>) -> Self {
        self.content_type = content_type;
        self
    }

    /// With this content encoding (shared likewise).
    #[must_use]
    pub fn with_content_encoding(mut self, content_encoding: Option<Arc<str>>) -> Self {
        self.content_encoding = content_encoding;
        self
    }

    /// With these application headers.
    #[must_use]
    pub fn with_headers(mut self, headers: FieldTable) -> Self {
        self.headers = headers;
        self
    }

    /// With these (shared) properties.
    #[must_use]
    pub fn with_properties(mut self, properties: Arc<Properties>) -> Self {
        self.properties = properties;
        self
    }

    /// Change the content type in place.
    pub fn set_content_type(&mut self, content_type: Option<Arc<str>>) {
        self.content_type = content_type;
    }

    /// Change the content encoding in place.
    pub fn set_content_encoding(&mut self, content_encoding: Option<Arc<str>>) {
        self.content_encoding = content_encoding;
    }

    /// The properties, for changing them (copied first if another message shares them).
    pub fn properties_mut(&mut self) -> &mut Properties {
        Arc::make_mut(&mut self.properties)
    }
}

impl fmt::Debug for RawMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawMessage")
            .field("body_len", &self.body.len())
            .field("content_type", &self.content_type)
            .field("content_encoding", &self.content_encoding)
            .field("headers", &self.headers)
            .field("properties", &self.properties)
            .finish()
    }
}

/// Where a delivered message came from and how to refer to it.
///
/// The names are shared (not copied) with the stored message, the consumer and the queue, so
/// making a delivery copies no names; read them with the accessors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryInfo {
    pub(crate) exchange: Arc<str>,
    pub(crate) routing_key: Arc<str>,
    pub(crate) redelivered: bool,
    pub(crate) consumer_tag: Option<Arc<str>>,
    pub(crate) delivery_tag: Arc<str>,
    pub(crate) queue: Arc<str>,
}

impl DeliveryInfo {
    /// A delivery of a message published to `exchange` with `routing_key`, taken from
    /// `queue`, that the broker calls `delivery_tag`; not redelivered, for no consumer (a
    /// `get`) until the `with_*` methods say otherwise.
    pub fn new(
        exchange: impl Into<Arc<str>>,
        routing_key: impl Into<Arc<str>>,
        delivery_tag: impl Into<Arc<str>>,
        queue: impl Into<Arc<str>>,
    ) -> Self {
        DeliveryInfo {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            redelivered: false,
            consumer_tag: None,
            delivery_tag: delivery_tag.into(),
            queue: queue.into(),
        }
    }

    /// Marked as delivered before.
    #[must_use]
    pub fn with_redelivered(mut self, redelivered: bool) -> Self {
        self.redelivered = redelivered;
        self
    }

    /// Delivered to the consumer `tag` (shared by every delivery of that consumer).
    #[must_use]
    pub fn with_consumer_tag(mut self, tag: Option<Arc<str>>) -> Self {
        self.consumer_tag = tag;
        self
    }

    /// The exchange it was published to (`""` for the default exchange).
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// Whether it was delivered before and requeued (or restored after a crash).
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// The tag of the consumer it was delivered to (`None` for `get`).
    pub fn consumer_tag(&self) -> Option<&str> {
        self.consumer_tag.as_deref()
    }

    /// The delivery tag as the broker names it: a uuid4 on virtual transports (minted at
    /// publish, as Kombu does), the channel's counter on AMQP.
    pub fn delivery_tag(&self) -> &str {
        &self.delivery_tag
    }

    /// The queue it was taken from.
    pub fn queue(&self) -> &str {
        &self.queue
    }
}

/// Settles deliveries: implemented by each channel.
///
/// Deliveries carry a numeric, channel-local tag; the acknowledger maps it to whatever the
/// broker needs (an AMQP delivery tag, a Redis unacked-hash key, an SQS receipt handle).
#[async_trait]
pub trait Acknowledger: Send + Sync + 'static {
    /// Acknowledge: the broker forgets the message.
    async fn ack(&self, tag: u64) -> Result<()>;
    /// Reject: drop it (or dead-letter it), or with `requeue` make it available again with
    /// `redelivered` set.
    async fn reject(&self, tag: u64, requeue: bool) -> Result<()>;

    /// Acknowledge without a future when nothing has to be awaited (a virtual channel whose
    /// broker already forgot the message, as the memory transport's does): `Some` with the
    /// outcome, or `None` to say that [`ack`](Acknowledger::ack) must be awaited. Callers try
    /// this first, so the common in-process ack costs no boxed future.
    fn ack_now(&self, tag: u64) -> Option<Result<()>> {
        let _ = tag;
        None
    }
}

/// How a delivery is settled: the channel's acknowledger and the channel-local tag.
#[derive(Clone)]
pub struct AckHandle {
    /// The channel that delivered the message.
    pub acknowledger: Arc<dyn Acknowledger>,
    /// The channel-local tag.
    pub tag: u64,
}

impl fmt::Debug for AckHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckHandle").field("tag", &self.tag).finish()
    }
}

/// A message delivered by a channel, by `consume` or `get`.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message.
    pub message: RawMessage,
    /// Exchange, routing key, redelivered flag, tags.
    pub info: DeliveryInfo,
    /// `None` when the message was delivered with `no_ack` (nothing to settle).
    pub ack: Option<AckHandle>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_properties_are_shared_and_copied_on_write() {
        let plain = |delivery_mode, priority| Properties {
            delivery_mode,
            priority,
            ..Properties::default()
        };
        for mode in [
            None,
            Some(DeliveryMode::Transient),
            Some(DeliveryMode::Persistent),
        ] {
            for priority in std::iter::once(None).chain((0..=9).map(Some)) {
                let a = shared_properties(plain(mode, priority));
                let b = shared_properties(plain(mode, priority));
                assert!(Arc::ptr_eq(&a, &b), "{mode:?} {priority:?} is one shared value");
                assert_eq!(*a, plain(mode, priority), "the shared value is the one asked for");
            }
        }
        let high = shared_properties(plain(None, Some(10)));
        assert_eq!(high.priority, Some(10));
        let mut with_id = plain(Some(DeliveryMode::Persistent), Some(0));
        with_id.message_id = Some("m".into());
        let with_id = shared_properties(with_id);
        assert_eq!(with_id.message_id.as_deref(), Some("m"));
        assert_eq!(with_id.delivery_mode, Some(DeliveryMode::Persistent));

        let mut first = RawMessage::default();
        let second = RawMessage::default();
        first.properties_mut().priority = Some(3);
        assert_eq!(first.properties.priority, Some(3));
        assert_eq!(
            second.properties.priority, None,
            "a shared value is copied before a change"
        );
        assert_eq!(*RawMessage::default().properties, Properties::default());
    }

    #[test]
    fn common_texts_are_shared_and_others_are_copied() {
        let (a, b) = (shared_text("application/json"), shared_text("application/json"));
        assert!(Arc::ptr_eq(&a, &b), "one string per common content type");
        assert_eq!(&*a, "application/json");
        let custom = shared_text("application/x-custom");
        assert_eq!(&*custom, "application/x-custom");
        assert!(!Arc::ptr_eq(&custom, &shared_text("application/x-custom")));
    }
}
