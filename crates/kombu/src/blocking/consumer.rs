//! The blocking [`Consumer`] and its builder: Kombu's `drain_events` with plain closures as
//! callbacks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use kombu_core::{Error, ErrorKind, Queue, Result};

use super::runtime::{InRuntime, Runtime};
use super::Message;
use crate::Accept;

/// A callback of [`Consumer::on_message`]: a plain closure, run on the thread that calls
/// [`Consumer::drain_events`].
type Callback = Box<dyn FnMut(&Message) -> Result<()> + Send>;

/// Configures a [`Consumer`] (the async [`crate::ConsumerBuilder`]'s options).
#[derive(Debug)]
pub struct ConsumerBuilder {
    inner: InRuntime<crate::ConsumerBuilder>,
}

impl ConsumerBuilder {
    pub(crate) fn new(builder: crate::ConsumerBuilder, runtime: Runtime) -> Self {
        ConsumerBuilder {
            inner: InRuntime::new(builder, runtime),
        }
    }

    fn map(self, f: impl FnOnce(crate::ConsumerBuilder) -> crate::ConsumerBuilder) -> Self {
        ConsumerBuilder {
            inner: self.inner.map(f),
        }
    }

    /// Add a queue.
    pub fn queue(self, queue: Queue) -> Self {
        self.map(|b| b.queue(queue))
    }

    /// Accepted serializer names or content types (default: [`Accept::default`]).
    pub fn accept<I, S>(self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.map(|b| b.accept(names))
    }

    /// An explicit [`Accept`] set.
    pub fn accept_set(self, accept: Accept) -> Self {
        self.map(|b| b.accept_set(accept))
    }

    /// Prefetch count (unacked deliveries in flight).
    pub fn prefetch_count(self, n: u16) -> Self {
        self.map(|b| b.prefetch_count(n))
    }

    /// Consume without acknowledgements (default: each queue's `no_ack`).
    pub fn no_ack(self, no_ack: bool) -> Self {
        self.map(|b| b.no_ack(no_ack))
    }

    /// Consumer tag prefix.
    pub fn tag_prefix(self, prefix: impl Into<String>) -> Self {
        self.map(|b| b.tag_prefix(prefix))
    }

    /// Declare the queues on build (default: true).
    pub fn auto_declare(self, auto_declare: bool) -> Self {
        self.map(|b| b.auto_declare(auto_declare))
    }

    /// Open a channel, declare the queues, apply QoS and start consuming every queue.
    pub fn consume(self) -> Result<Consumer> {
        let (builder, runtime) = self.inner.into_parts();
        let consumer = runtime.block_on(async move { builder.consume().await })?;
        Ok(Consumer::new(consumer, runtime))
    }

    /// Open a channel, declare the queues, apply QoS; consuming starts with
    /// [`Consumer::consume`].
    pub fn build(self) -> Result<Consumer> {
        let (builder, runtime) = self.inner.into_parts();
        let consumer = runtime.block_on(async move { builder.build().await })?;
        Ok(Consumer::new(consumer, runtime))
    }
}

/// Consumes from one or more queues (Kombu's `Consumer`): one message at a time with
/// [`recv`](Self::recv) / [`recv_timeout`](Self::recv_timeout), or through callbacks with
/// [`drain_events`](Self::drain_events).
///
/// ```
/// use std::time::Duration;
/// use kombu::{PublishOptions, Queue};
/// let conn = kombu::blocking::Connection::new("memory:///blocking-consumer-doc")?;
/// let mut consumer = conn.consumer([Queue::new("tasks")]).prefetch_count(10).consume()?;
/// conn.producer().publish(&serde_json::json!({"n": 1}), PublishOptions::new().routing_key("tasks"))?;
/// let message = consumer.recv_timeout(Duration::from_secs(1))?;
/// assert_eq!(message.decode::<serde_json::Value>()?["n"], 1);
/// message.ack()?;
/// # Ok::<(), kombu::Error>(())
/// ```
pub struct Consumer {
    inner: InRuntime<crate::Consumer>,
    callbacks: Vec<Callback>,
    on_decode_error: Option<Callback>,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("blocking::Consumer")
            .field("consumer", self.inner.get())
            .field("callbacks", &self.callbacks.len())
            .finish()
    }
}

impl Consumer {
    fn new(consumer: crate::Consumer, runtime: Runtime) -> Self {
        Consumer {
            inner: InRuntime::new(consumer, runtime),
            callbacks: Vec::new(),
            on_decode_error: None,
        }
    }

    /// The async consumer underneath.
    pub fn as_async(&self) -> &crate::Consumer {
        self.inner.get()
    }

    /// The queues (with generated names filled in).
    pub fn queues(&self) -> &[Queue] {
        self.inner.get().queues()
    }

    /// Whether the consumer is consuming from `queue`.
    pub fn consuming_from(&self, queue: &str) -> bool {
        self.inner.get().consuming_from(queue)
    }

    /// Start consuming every queue not yet consumed.
    pub fn consume(&mut self) -> Result<()> {
        let runtime = self.inner.runtime().clone();
        let consumer = self.inner.get_mut();
        runtime.block_on(consumer.consume())
    }

    /// Add a queue (declared; consumed on the next [`consume`](Self::consume)).
    pub fn add_queue(&mut self, queue: Queue) -> Result<()> {
        let runtime = self.inner.runtime().clone();
        let consumer = self.inner.get_mut();
        runtime.block_on(consumer.add_queue(queue))
    }

    /// Stop consuming from one queue.
    pub fn cancel_by_queue(&mut self, queue: &str) -> Result<()> {
        let runtime = self.inner.runtime().clone();
        let consumer = self.inner.get_mut();
        runtime.block_on(consumer.cancel_by_queue(queue))
    }

    /// Stop consuming. Delivered, unacked messages stay unacked until settled or the channel
    /// closes.
    pub fn cancel(&mut self) -> Result<()> {
        let runtime = self.inner.runtime().clone();
        let consumer = self.inner.get_mut();
        runtime.block_on(consumer.cancel())
    }

    /// Change the prefetch count.
    pub fn qos(&self, prefetch_count: u16) -> Result<()> {
        self.inner
            .runtime()
            .block_on(self.inner.get().qos(prefetch_count))
    }

    /// Redeliver every unacked message of this consumer's channel.
    pub fn recover(&self, requeue: bool) -> Result<()> {
        self.inner.runtime().block_on(self.inner.get().recover(requeue))
    }

    /// Purge every queue; returns the number of messages removed.
    pub fn purge(&self) -> Result<u64> {
        self.inner.runtime().block_on(self.inner.get().purge())
    }

    /// Close the consumer's channel (unacked messages are restored).
    pub fn close(self) -> Result<()> {
        let (consumer, runtime) = self.inner.into_parts();
        runtime.block_on(async move { consumer.close().await })
    }

    /// Register a callback run for each message by [`drain_events`](Self::drain_events)
    /// (Kombu's `callbacks=[...]` / `register_callback`), on the thread calling it. Every
    /// callback receives the same message, so one ack settles it for all.
    pub fn on_message<F>(&mut self, callback: F)
    where
        F: FnMut(&Message) -> Result<()> + Send + 'static,
    {
        self.callbacks.push(Box::new(callback));
    }

    /// Called instead of the callbacks for a message whose content type is not accepted
    /// (Kombu's `on_decode_error`). Without it, [`drain_events`](Self::drain_events) returns
    /// the `ContentDisallowed` error and the message stays unacked.
    pub fn on_decode_error<F>(&mut self, callback: F)
    where
        F: FnMut(&Message) -> Result<()> + Send + 'static,
    {
        self.on_decode_error = Some(Box::new(callback));
    }

    /// Wait for the next message, at most `timeout`: a [`ErrorKind::Timeout`] error if none
    /// arrives, a [`ErrorKind::Closed`] error when no queue is consumed any more.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Message> {
        let runtime = self.inner.runtime().clone();
        let consumer = self.inner.get_mut();
        let message = runtime.block_on(consumer.recv_timeout(timeout))?;
        Ok(Message::new(Arc::new(message), runtime))
    }

    /// Wait for the next message, as long as it takes; a [`ErrorKind::Closed`] error when no
    /// queue is consumed any more.
    pub fn recv(&mut self) -> Result<Message> {
        let runtime = self.inner.runtime().clone();
        let consumer = self.inner.get_mut();
        let message = runtime.block_on(consumer.recv())?;
        Ok(Message::new(Arc::new(message), runtime))
    }

    /// Receive one message and pass it to the callbacks (Kombu's `drain_events`), waiting at
    /// most `timeout` (`None`: as long as it takes); a [`ErrorKind::Timeout`] error when none
    /// arrives in time. The callbacks run on this thread, outside the runtime, so they may
    /// use the blocking API (ack, publish a reply). The first callback error is returned.
    pub fn drain_events(&mut self, timeout: impl Into<Option<Duration>>) -> Result<()> {
        if self.callbacks.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "no callbacks registered (use on_message)",
            ));
        }
        let message = match timeout.into() {
            Some(timeout) => self.recv_timeout(timeout)?,
            None => self.recv()?,
        };
        if let Err(refused) = message.as_async().check_accept() {
            return match &mut self.on_decode_error {
                Some(callback) => callback(&message),
                None => Err(refused),
            };
        }
        for callback in &mut self.callbacks {
            callback(&message)?;
        }
        Ok(())
    }
}
