//! Received messages.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use kombu_core::{Delivery, DeliveryInfo, Error, ErrorKind, FieldTable, Properties, Result, Value};
use serde::de::DeserializeOwned;

use crate::compression;
use crate::observe::{self, Settled};
use crate::serialization;

/// Content types a consumer accepts (Kombu's `accept`).
///
/// Built from serializer names or MIME types. The default accepts JSON, text and raw bytes
/// (`application/json`, `text/plain`, `application/data`, `application/text`); msgpack and YAML
/// must be listed, as in Kombu where they are disabled by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accept {
    // An ordered set: a handful of names, checked on every decode; comparing a few short
    // strings is cheaper than hashing one twice.
    content_types: BTreeSet<String>,
}

impl Default for Accept {
    fn default() -> Self {
        Accept {
            content_types: [
                "application/json",
                "text/plain",
                "application/data",
                "application/text",
            ]
            .into_iter()
            .map(str::to_owned)
            .collect(),
        }
    }
}

impl Accept {
    /// Accept the given serializer names or MIME types. Unknown names (without `/`) are a
    /// `SerializerNotInstalled` error; `application/data` and `application/text` are always
    /// trusted, as in Kombu.
    pub fn new<I, S>(names: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut content_types: BTreeSet<String> = ["application/data", "application/text"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        for name in names {
            let name = name.as_ref();
            if name.contains('/') {
                content_types.insert(name.to_owned());
            } else {
                content_types.insert(serialization::get(name)?.content_type().to_owned());
            }
        }
        Ok(Accept { content_types })
    }

    /// Accept anything.
    pub fn any() -> Self {
        Accept {
            content_types: BTreeSet::from(["*".to_owned()]),
        }
    }

    /// Whether `content_type` is accepted. A message without a content type is raw bytes.
    pub fn allows(&self, content_type: Option<&str>) -> bool {
        self.content_types.contains("*")
            || self
                .content_types
                .contains(content_type.unwrap_or("application/data"))
    }
}

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    /// Delivered, not settled.
    Received,
    /// Acknowledged.
    Acked,
    /// Rejected (dropped).
    Rejected,
    /// Requeued.
    Requeued,
}

const RECEIVED: u8 = 0;
const SETTLING: u8 = 1;
const ACKED: u8 = 2;
const REJECTED: u8 = 3;
const REQUEUED: u8 = 4;

/// A received message (Kombu's `Message`): decode it, then ack, reject or requeue it once.
///
/// A second `ack`/`reject`/`requeue` is a [`ErrorKind::MessageState`] error. Decoding checks
/// the consumer's [`Accept`] list first: a content type not accepted is a
/// [`ErrorKind::ContentDisallowed`] error and the body is never deserialized. The message
/// stays unacked in that case — nothing is lost; reject or requeue it explicitly.
pub struct Message {
    delivery: Delivery,
    accept: Arc<Accept>,
    state: AtomicU8,
    /// The transport's name, for metrics (`"unknown"` unless the consumer says).
    transport: &'static str,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("content_type", &self.delivery.message.content_type())
            .field("delivery_info", &self.delivery.info)
            .field("body_len", &self.delivery.message.body.len())
            .field("state", &self.state())
            .finish()
    }
}

impl Message {
    /// Wrap a delivery.
    pub fn new(delivery: Delivery, accept: Arc<Accept>) -> Self {
        Message {
            delivery,
            accept,
            state: AtomicU8::new(RECEIVED),
            transport: "unknown",
        }
    }

    /// Delivered by the transport named `transport` (its registered name, as
    /// `Connection::transport_name` gives it): the `transport` label of the settle metrics.
    pub(crate) fn with_transport(mut self, transport: &'static str) -> Self {
        self.transport = transport;
        self
    }

    /// The transport's registered name (`"unknown"` for a message made outside a consumer).
    pub(crate) fn transport(&self) -> &'static str {
        self.transport
    }

    /// The body as received (still compressed if it was sent compressed).
    pub fn body(&self) -> &Bytes {
        &self.delivery.message.body
    }

    /// The body, decompressed per its `compression` header.
    pub fn payload(&self) -> Result<Cow<'_, [u8]>> {
        match self.compression() {
            None => Ok(Cow::Borrowed(&self.delivery.message.body)),
            Some(mime) => compression::decompress(
                &self.delivery.message.body,
                mime,
                compression::DEFAULT_MAX_DECOMPRESSED,
            )
            .map(Cow::Owned),
        }
    }

    /// The compression header, if any.
    pub fn compression(&self) -> Option<&str> {
        self.delivery
            .message
            .headers
            .get(compression::HEADER)
            .and_then(Value::as_str)
    }

    /// The content type.
    pub fn content_type(&self) -> Option<&str> {
        self.delivery.message.content_type()
    }

    /// The content encoding.
    pub fn content_encoding(&self) -> Option<&str> {
        self.delivery.message.content_encoding()
    }

    /// Application headers.
    pub fn headers(&self) -> &FieldTable {
        &self.delivery.message.headers
    }

    /// Basic properties.
    pub fn properties(&self) -> &Properties {
        &self.delivery.message.properties
    }

    /// Exchange, routing key, redelivered flag, tags, queue.
    pub fn delivery_info(&self) -> &DeliveryInfo {
        &self.delivery.info
    }

    /// The broker's delivery tag (a uuid4 on virtual transports).
    pub fn delivery_tag(&self) -> &str {
        self.delivery.info.delivery_tag()
    }

    /// Whether the message was delivered before.
    pub fn redelivered(&self) -> bool {
        self.delivery.info.redelivered()
    }

    /// The raw transport delivery.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    pub(crate) fn check_accept(&self) -> Result<()> {
        if self.accept.allows(self.content_type()) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::ContentDisallowed,
                format!(
                    "refusing to deserialize untrusted content of type {}",
                    self.content_type().unwrap_or("application/data")
                ),
            )
            .with_context("queue", self.delivery.info.queue()))
        }
    }

    /// Decode the body into `T` (checks `accept`, decompresses, deserializes).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        self.check_accept()?;
        let payload = self.payload()?;
        serialization::loads(&payload, self.content_type(), self.content_encoding())
    }

    /// Decode into a generic JSON value (any serializer).
    pub fn decode_value(&self) -> Result<serde_json::Value> {
        self.decode()
    }

    /// The current state.
    pub fn state(&self) -> MessageState {
        match self.state.load(Ordering::Acquire) {
            ACKED => MessageState::Acked,
            REJECTED => MessageState::Rejected,
            REQUEUED => MessageState::Requeued,
            _ => MessageState::Received,
        }
    }

    /// Whether the message was acked, rejected or requeued.
    pub fn acknowledged(&self) -> bool {
        self.state() != MessageState::Received
    }

    fn begin_settle(&self) -> Result<()> {
        match self
            .state
            .compare_exchange(RECEIVED, SETTLING, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(()),
            Err(SETTLING) => Err(Error::new(ErrorKind::MessageState, "message is being settled")),
            Err(_) => Err(Error::new(
                ErrorKind::MessageState,
                format!("message already acknowledged with state: {:?}", self.state()),
            )
            .with_context("delivery_tag", self.delivery_tag())),
        }
    }

    async fn settle(&self, final_state: u8, requeue: Option<bool>) -> Result<()> {
        self.begin_settle()?;
        let result = match &self.delivery.ack {
            // Delivered with no_ack: nothing to tell the broker (Kombu: silent no-op).
            None => Ok(()),
            Some(handle) => {
                let result = match requeue {
                    None => match handle.acknowledger.ack_now(handle.tag) {
                        Some(settled) => settled,
                        None => handle.acknowledger.ack(handle.tag).await,
                    },
                    Some(requeue) => handle.acknowledger.reject(handle.tag, requeue).await,
                };
                if result.is_ok() {
                    let how = match requeue {
                        None => Settled::Acked,
                        Some(false) => Settled::Rejected,
                        Some(true) => Settled::Requeued,
                    };
                    observe::settled(self.transport, self.delivery.info.queue(), how);
                }
                result
            }
        };
        let state = if result.is_ok() { final_state } else { RECEIVED };
        self.state.store(state, Ordering::Release);
        result
    }

    /// Acknowledge: the broker forgets the message.
    pub async fn ack(&self) -> Result<()> {
        self.settle(ACKED, None).await
    }

    /// Reject; with `requeue` the message is delivered again (with `redelivered` set).
    pub async fn reject(&self, requeue: bool) -> Result<()> {
        self.settle(if requeue { REQUEUED } else { REJECTED }, Some(requeue))
            .await
    }

    /// Reject with requeue.
    pub async fn requeue(&self) -> Result<()> {
        self.reject(true).await
    }
}
