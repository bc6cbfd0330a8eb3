//! `SimpleQueue` and `SimpleBuffer`: a queue as easy as a local one.

use std::time::Duration;

use kombu_core::{Channel, DeliveryMode, Error, ErrorKind, Exchange, GetOptions, Queue, Result};
use serde::Serialize;
use std::sync::Arc;

use crate::connection::{declare_queue, Connection};
use crate::message::{Accept, Message};
use crate::producer::{Producer, PublishOptions};

/// A named queue with `put` and `get` (Kombu's `SimpleQueue`): a direct exchange and a queue
/// both named `name`, routing key `name`.
///
/// `get` never buffers messages on the client: a message is taken from the broker only when
/// `get` returns it, so dropping a `SimpleQueue` loses nothing.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu::Result<()> {
/// use std::time::Duration;
/// let conn = kombu::Connection::new("memory:///simple-doc")?;
/// let queue = conn.simple_queue("greetings");
/// queue.put(&"hello").await?;
/// let message = queue.get(Some(Duration::from_secs(1))).await?;
/// assert_eq!(message.decode::<String>()?, "hello");
/// message.ack().await?;
/// assert_eq!(queue.qsize().await?, 0);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SimpleQueue {
    connection: Connection,
    queue: Queue,
    no_ack: bool,
    accept: Arc<Accept>,
    serializer: Option<String>,
    compression: Option<String>,
    channel: tokio::sync::OnceCell<Arc<dyn Channel>>,
}

impl SimpleQueue {
    /// A durable queue `name` on a durable direct exchange `name`.
    pub fn new(connection: &Connection, name: &str) -> Self {
        let exchange = Exchange::direct(name);
        SimpleQueue::with_queue(
            connection,
            Queue::new(name).exchange(exchange).routing_key(name),
            false,
        )
    }

    /// Use a fully specified queue (its exchange and routing key are used for `put`).
    pub fn with_queue(connection: &Connection, queue: Queue, no_ack: bool) -> Self {
        SimpleQueue {
            connection: connection.clone(),
            queue,
            no_ack,
            accept: Arc::new(Accept::default()),
            serializer: None,
            compression: None,
            channel: tokio::sync::OnceCell::new(),
        }
    }

    /// Accepted serializer names or content types for `get`.
    pub fn accept<I, S>(mut self, names: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.accept = Arc::new(Accept::new(names)?);
        Ok(self)
    }

    /// The serializer used by `put`.
    pub fn serializer(mut self, name: impl Into<String>) -> Self {
        self.serializer = Some(name.into());
        self
    }

    /// The compression used by `put`.
    pub fn compression(mut self, name: impl Into<String>) -> Self {
        self.compression = Some(name.into());
        self
    }

    /// The queue.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    async fn channel(&self) -> Result<&Arc<dyn Channel>> {
        self.channel
            .get_or_try_init(|| async {
                let channel = self.connection.channel().await?;
                declare_queue(channel.as_ref(), &self.queue).await?;
                Ok::<_, Error>(channel)
            })
            .await
    }

    fn producer(&self, channel: &Arc<dyn Channel>) -> Producer {
        let mut p = self
            .connection
            .producer()
            .channel(channel.clone())
            .exchange(self.queue.exchange.clone().unwrap_or_default())
            .routing_key(self.queue.routing_key.clone());
        if let Some(s) = &self.serializer {
            p = p.serializer(s.clone());
        }
        if let Some(c) = &self.compression {
            p = p.compression(c.clone());
        }
        p
    }

    /// Put a message.
    pub async fn put<T: Serialize + ?Sized>(&self, body: &T) -> Result<()> {
        self.put_with(body, PublishOptions::new()).await
    }

    /// Put a message with options (headers, priority, expiration, …).
    pub async fn put_with<T: Serialize + ?Sized>(&self, body: &T, options: PublishOptions) -> Result<()> {
        let channel = self.channel().await?;
        self.producer(channel).publish(body, options).await
    }

    /// Take a message if one is ready.
    pub async fn get_nowait(&self) -> Result<Option<Message>> {
        let channel = self.channel().await?;
        let mut options = GetOptions::default();
        options.no_ack = self.no_ack;
        Ok(channel
            .get(&self.queue.name, options)
            .await?
            .map(|d| Message::new(d, self.accept.clone()).with_transport(self.connection.transport_name())))
    }

    /// Wait for a message, at most `timeout` (forever with `None`); a [`ErrorKind::Timeout`]
    /// error (Kombu's `SimpleQueue.Empty`) if none arrives.
    pub async fn get(&self, timeout: Option<Duration>) -> Result<Message> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut backoff = Duration::from_millis(1);
        loop {
            if let Some(m) = self.get_nowait().await? {
                return Ok(m);
            }
            let mut wait = backoff;
            if let Some(deadline) = deadline {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(Error::new(ErrorKind::Timeout, "queue is empty")
                        .with_context("queue", &self.queue.name));
                }
                wait = wait.min(deadline - now);
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    /// Messages ready in the queue.
    pub async fn qsize(&self) -> Result<u64> {
        let channel = self.channel().await?;
        Ok(channel
            .declare_queue(&self.queue, kombu_core::DeclareOptions::passive())
            .await?
            .message_count)
    }

    /// Remove every message; returns how many.
    pub async fn clear(&self) -> Result<u64> {
        self.channel().await?.purge_queue(&self.queue.name).await
    }

    /// Close the queue's channel (unacked messages are restored).
    pub async fn close(&self) -> Result<()> {
        match self.channel.get() {
            Some(c) => c.close().await,
            None => Ok(()),
        }
    }
}

/// A transient, auto-deleted, no-ack queue (Kombu's `SimpleBuffer`): for data that may be
/// lost, such as progress events.
#[derive(Debug)]
pub struct SimpleBuffer {
    pub(crate) inner: SimpleQueue,
}

impl SimpleBuffer {
    /// A non-durable, auto-delete, exclusive queue `name` on a transient exchange `name`.
    pub fn new(connection: &Connection, name: &str) -> Self {
        let exchange = Exchange::direct(name)
            .durable(false)
            .auto_delete(true)
            .delivery_mode(DeliveryMode::Transient);
        let queue = Queue::new(name)
            .exchange(exchange)
            .routing_key(name)
            .durable(false)
            .exclusive(true)
            .no_ack(true);
        SimpleBuffer {
            inner: SimpleQueue::with_queue(connection, queue, true),
        }
    }
}

impl std::ops::Deref for SimpleBuffer {
    type Target = SimpleQueue;
    fn deref(&self) -> &SimpleQueue {
        &self.inner
    }
}
