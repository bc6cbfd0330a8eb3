//! The blocking [`Producer`] and its [`PublishBatch`].

use bytes::Bytes;
use kombu_core::{Exchange, Result};
use serde::Serialize;

use super::runtime::{InRuntime, Runtime};
use crate::{BatchOutcome, PublishOptions};

/// Publishes messages (Kombu's `Producer`), blocking until each publish is done. Cheap to
/// clone.
///
/// ```
/// use kombu::{Exchange, PublishOptions, Queue};
/// let conn = kombu::blocking::Connection::new("memory:///blocking-producer-doc")?;
/// let media = Exchange::direct("media");
/// let video = Queue::new("video").exchange(media.clone()).routing_key("video");
/// let producer = conn.producer().exchange(media).serializer("json");
/// producer.publish(&serde_json::json!({"name": "cat.mp4"}), PublishOptions::new().routing_key("video").declare(video))?;
/// producer.publish_text("hello", PublishOptions::new().routing_key("video"))?;
/// assert_eq!(conn.simple_queue("video").qsize()?, 2);
/// # Ok::<(), kombu::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Producer {
    inner: InRuntime<crate::Producer>,
}

impl Producer {
    pub(crate) fn new(producer: crate::Producer, runtime: Runtime) -> Self {
        Producer {
            inner: InRuntime::new(producer, runtime),
        }
    }

    /// The async producer underneath.
    pub fn as_async(&self) -> &crate::Producer {
        self.inner.get()
    }

    /// The default exchange of this producer (declared before the first publish unless
    /// `auto_declare` is off).
    pub fn exchange(self, exchange: Exchange) -> Self {
        Producer {
            inner: self.inner.map(|p| p.exchange(exchange)),
        }
    }

    /// The default routing key.
    pub fn routing_key(self, key: impl Into<String>) -> Self {
        Producer {
            inner: self.inner.map(|p| p.routing_key(key)),
        }
    }

    /// The default serializer.
    pub fn serializer(self, name: impl Into<String>) -> Self {
        Producer {
            inner: self.inner.map(|p| p.serializer(name)),
        }
    }

    /// The default compression.
    pub fn compression(self, name: impl Into<String>) -> Self {
        Producer {
            inner: self.inner.map(|p| p.compression(name)),
        }
    }

    /// Whether the producer's exchange is declared automatically (default: true).
    pub fn auto_declare(self, auto_declare: bool) -> Self {
        Producer {
            inner: self.inner.map(|p| p.auto_declare(auto_declare)),
        }
    }

    /// Publish any serializable value (JSON unless a serializer is chosen).
    pub fn publish<T: Serialize + ?Sized>(&self, body: &T, options: PublishOptions) -> Result<()> {
        let producer = self.inner.get();
        self.inner
            .runtime()
            .block_on(async { producer.publish(body, options).await })
    }

    /// Publish raw bytes: `application/data`/`binary` unless a content type is given.
    pub fn publish_bytes(&self, body: impl Into<Bytes>, options: PublishOptions) -> Result<()> {
        let producer = self.inner.get();
        let body = body.into();
        self.inner
            .runtime()
            .block_on(async { producer.publish_bytes(body, options).await })
    }

    /// Publish text: `text/plain`/`utf-8` unless a content type is given.
    pub fn publish_text(&self, body: &str, options: PublishOptions) -> Result<()> {
        let producer = self.inner.get();
        self.inner
            .runtime()
            .block_on(async { producer.publish_text(body, options).await })
    }

    /// Declare the producer's exchange.
    pub fn declare(&self) -> Result<()> {
        self.inner.runtime().block_on(self.inner.get().declare())
    }

    /// An empty batch on this producer: add messages, then [`send`](PublishBatch::send) them
    /// in as few round trips as the transport allows.
    ///
    /// ```
    /// use kombu::{PublishOptions, Queue};
    /// let conn = kombu::blocking::Connection::new("memory:///blocking-batch-doc")?;
    /// let producer = conn.producer();
    /// let mut batch = producer.batch();
    /// for n in 0..10 {
    ///     batch.add(&n, PublishOptions::new().routing_key("jobs").declare(Queue::new("jobs")));
    /// }
    /// assert_eq!(batch.send()?.confirmed(), 10);
    /// assert_eq!(conn.simple_queue("jobs").qsize()?, 10);
    /// # Ok::<(), kombu::Error>(())
    /// ```
    pub fn batch(&self) -> PublishBatch<'_> {
        PublishBatch {
            inner: self.inner.get().batch(),
            runtime: self.inner.runtime(),
        }
    }
}

/// Messages to publish together (built by [`Producer::batch`]); see the async
/// [`crate::PublishBatch`] for what is promised about order, retries and outcomes.
#[derive(Debug)]
#[must_use = "a batch publishes nothing until `send` is called"]
pub struct PublishBatch<'p> {
    inner: crate::PublishBatch<'p>,
    runtime: &'p Runtime,
}

impl PublishBatch<'_> {
    /// Add a serializable value, as [`Producer::publish`] would publish it.
    pub fn add<T: Serialize + ?Sized>(&mut self, body: &T, options: PublishOptions) -> &mut Self {
        self.inner.add(body, options);
        self
    }

    /// Add raw bytes, as [`Producer::publish_bytes`].
    pub fn add_bytes(&mut self, body: impl Into<Bytes>, options: PublishOptions) -> &mut Self {
        self.inner.add_bytes(body, options);
        self
    }

    /// Add text, as [`Producer::publish_text`].
    pub fn add_text(&mut self, body: &str, options: PublishOptions) -> &mut Self {
        self.inner.add_text(body, options);
        self
    }

    /// Messages added so far.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Publish every message; one outcome per message, in the order added. (The error is only
    /// the async-context one: failures of messages are in the outcome.)
    pub fn send(self) -> Result<BatchOutcome> {
        let batch = self.inner;
        self.runtime.block_on(async { Ok(batch.send().await) })
    }
}
