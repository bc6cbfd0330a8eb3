//! The blocking [`Message`]: the async [`crate::Message`], settled through the runtime.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use kombu_core::{DeliveryInfo, FieldTable, Properties, Result};
use serde::de::DeserializeOwned;

use super::runtime::{InRuntime, Runtime};
use crate::MessageState;

/// A received message (Kombu's `Message`): decode it, then ack, reject or requeue it once.
///
/// Cheap to clone: clones are the same message, settled once for all (a second settlement is
/// a [`MessageState`](crate::ErrorKind::MessageState) error). See the async
/// [`crate::Message`] for what decoding checks.
#[derive(Clone, Debug)]
pub struct Message {
    inner: InRuntime<Arc<crate::Message>>,
}

impl Message {
    pub(crate) fn new(message: Arc<crate::Message>, runtime: Runtime) -> Self {
        Message {
            inner: InRuntime::new(message, runtime),
        }
    }

    /// The async message underneath.
    pub fn as_async(&self) -> &crate::Message {
        self.inner.get()
    }

    /// The body as received (still compressed if it was sent compressed).
    pub fn body(&self) -> &Bytes {
        self.as_async().body()
    }

    /// The body, decompressed per its `compression` header.
    pub fn payload(&self) -> Result<Cow<'_, [u8]>> {
        self.as_async().payload()
    }

    /// The compression header, if any.
    pub fn compression(&self) -> Option<&str> {
        self.as_async().compression()
    }

    /// The content type.
    pub fn content_type(&self) -> Option<&str> {
        self.as_async().content_type()
    }

    /// The content encoding.
    pub fn content_encoding(&self) -> Option<&str> {
        self.as_async().content_encoding()
    }

    /// Application headers.
    pub fn headers(&self) -> &FieldTable {
        self.as_async().headers()
    }

    /// Basic properties.
    pub fn properties(&self) -> &Properties {
        self.as_async().properties()
    }

    /// Exchange, routing key, redelivered flag, tags, queue.
    pub fn delivery_info(&self) -> &DeliveryInfo {
        self.as_async().delivery_info()
    }

    /// The broker's delivery tag.
    pub fn delivery_tag(&self) -> &str {
        self.as_async().delivery_tag()
    }

    /// Whether the message was delivered before.
    pub fn redelivered(&self) -> bool {
        self.as_async().redelivered()
    }

    /// Decode the body into `T` (checks `accept`, decompresses, deserializes).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        self.as_async().decode()
    }

    /// Decode into a generic JSON value (any serializer).
    pub fn decode_value(&self) -> Result<serde_json::Value> {
        self.as_async().decode_value()
    }

    /// The current state.
    pub fn state(&self) -> MessageState {
        self.as_async().state()
    }

    /// Whether the message was acked, rejected or requeued.
    pub fn acknowledged(&self) -> bool {
        self.as_async().acknowledged()
    }

    /// Acknowledge: the broker forgets the message.
    pub fn ack(&self) -> Result<()> {
        self.inner.runtime().block_on(self.as_async().ack())
    }

    /// Reject; with `requeue` the message is delivered again (with `redelivered` set).
    pub fn reject(&self, requeue: bool) -> Result<()> {
        self.inner.runtime().block_on(self.as_async().reject(requeue))
    }

    /// Reject with requeue.
    pub fn requeue(&self) -> Result<()> {
        self.inner.runtime().block_on(self.as_async().requeue())
    }
}
