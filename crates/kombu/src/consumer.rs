//! Consuming.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use kombu_core::{Channel, ConsumeOptions, DeliveryStream, Error, ErrorKind, QosOptions, Queue, Result};
use tracing::debug;

use crate::connection::{declare_queue, Connection};
use crate::message::{Accept, Message};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Callback = Box<dyn Fn(Arc<Message>) -> BoxFuture<Result<()>> + Send + Sync>;

static TAG_COUNTER: AtomicU64 = AtomicU64::new(1);

/// Configures a [`Consumer`].
#[derive(Debug)]
pub struct ConsumerBuilder {
    connection: Connection,
    queues: Vec<Queue>,
    accept: Option<Accept>,
    accept_names: Option<Vec<String>>,
    prefetch_count: Option<u16>,
    no_ack: Option<bool>,
    tag_prefix: String,
    auto_declare: bool,
}

impl ConsumerBuilder {
    pub(crate) fn new(connection: &Connection, queues: impl IntoIterator<Item = Queue>) -> Self {
        ConsumerBuilder {
            connection: connection.clone(),
            queues: queues.into_iter().collect(),
            accept: None,
            accept_names: None,
            prefetch_count: None,
            no_ack: None,
            tag_prefix: "kombu-rs-".into(),
            auto_declare: true,
        }
    }

    /// Add a queue.
    pub fn queue(mut self, queue: Queue) -> Self {
        self.queues.push(queue);
        self
    }

    /// Accepted serializer names or content types (default: [`Accept::default`]).
    pub fn accept<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.accept_names = Some(names.into_iter().map(|s| s.as_ref().to_owned()).collect());
        self
    }

    /// An explicit [`Accept`] set.
    pub fn accept_set(mut self, accept: Accept) -> Self {
        self.accept = Some(accept);
        self
    }

    /// Prefetch count (unacked deliveries in flight).
    pub fn prefetch_count(mut self, n: u16) -> Self {
        self.prefetch_count = Some(n);
        self
    }

    /// Consume without acknowledgements (default: each queue's `no_ack`).
    pub fn no_ack(mut self, no_ack: bool) -> Self {
        self.no_ack = Some(no_ack);
        self
    }

    /// Consumer tag prefix.
    pub fn tag_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.tag_prefix = prefix.into();
        self
    }

    /// Declare the queues on build (default: true).
    pub fn auto_declare(mut self, auto_declare: bool) -> Self {
        self.auto_declare = auto_declare;
        self
    }

    /// Open a channel, declare the queues, apply QoS and start consuming every queue: the
    /// consumer in one call. (Use [`build`](Self::build) to register callbacks or add queues
    /// before consuming starts.)
    pub async fn consume(self) -> Result<Consumer> {
        let mut consumer = self.build().await?;
        consumer.consume().await?;
        Ok(consumer)
    }

    /// Open a channel, declare the queues, apply QoS. Consuming starts with
    /// [`Consumer::consume`] (or build and start at once with
    /// [`ConsumerBuilder::consume`]).
    pub async fn build(self) -> Result<Consumer> {
        let accept = match (self.accept, self.accept_names) {
            (Some(a), _) => a,
            (None, Some(names)) => Accept::new(names)?,
            (None, None) => Accept::default(),
        };
        let channel = self.connection.channel().await?;
        let mut queues = self.queues;
        if self.auto_declare {
            for q in &mut queues {
                let name = declare_queue(channel.as_ref(), q).await?;
                q.name = name;
            }
        }
        if let Some(n) = self.prefetch_count {
            channel.qos(QosOptions::prefetch(n)).await?;
        }
        Ok(Consumer {
            transport: self.connection.transport_name(),
            connection: self.connection,
            channel,
            queues,
            accept: Arc::new(accept),
            no_ack: self.no_ack,
            tag_prefix: self.tag_prefix,
            active: Vec::new(),
            turn: 0,
            callbacks: Vec::new(),
            on_decode_error: None,
        })
    }
}

struct Active {
    tag: String,
    queue: String,
    deliveries: DeliveryStream,
}

/// Consumes from one or more queues (Kombu's `Consumer`), as a [`Stream`] of [`Message`]s or
/// through callbacks with [`Consumer::drain_events`].
///
/// Messages from several queues are interleaved fairly.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu::Result<()> {
/// use std::time::Duration;
/// use kombu::{Connection, PublishOptions, Queue};
/// let conn = Connection::new("memory:///consumer-doc")?;
/// let mut consumer = conn.consumer([Queue::new("tasks")]).prefetch_count(10).consume().await?;
/// conn.producer().publish(&serde_json::json!({"n": 1}), PublishOptions::new().routing_key("tasks")).await?;
/// let message = consumer.recv_timeout(Duration::from_secs(1)).await?;
/// let body: serde_json::Value = message.decode()?;
/// assert_eq!(body["n"], 1);
/// message.ack().await?;
/// # Ok(()) }
/// ```
pub struct Consumer {
    /// The transport's name, for the metrics of each message.
    transport: &'static str,
    connection: Connection,
    channel: Arc<dyn Channel>,
    queues: Vec<Queue>,
    accept: Arc<Accept>,
    no_ack: Option<bool>,
    tag_prefix: String,
    active: Vec<Active>,
    turn: usize,
    callbacks: Vec<Callback>,
    on_decode_error: Option<Callback>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("queues", &self.queues.iter().map(|q| &q.name).collect::<Vec<_>>())
            .field(
                "consuming",
                &self.active.iter().map(|a| &a.queue).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Consumer {
    /// The queues (with generated names filled in).
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    /// The consumer's channel.
    pub fn channel(&self) -> &Arc<dyn Channel> {
        &self.channel
    }

    /// The connection.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Start consuming every queue not yet consumed.
    pub async fn consume(&mut self) -> Result<()> {
        for q in &self.queues {
            if self.active.iter().any(|a| a.queue == q.name) {
                continue;
            }
            let n = TAG_COUNTER.fetch_add(1, Ordering::Relaxed);
            let options = ConsumeOptions::default()
                .consumer_tag(format!("{}{n}", self.tag_prefix))
                .no_ack(self.no_ack.unwrap_or(q.no_ack))
                .arguments(q.consumer_arguments.clone());
            let handle = self.channel.consume(&q.name, options).await?;
            debug!(queue = %q.name, tag = %handle.consumer_tag, "consuming");
            self.active.push(Active {
                tag: handle.consumer_tag,
                queue: q.name.clone(),
                deliveries: handle.deliveries,
            });
        }
        Ok(())
    }

    /// Add a queue (declared; consumed on the next [`Consumer::consume`]).
    pub async fn add_queue(&mut self, mut queue: Queue) -> Result<()> {
        queue.name = declare_queue(self.channel.as_ref(), &queue).await?;
        self.queues.push(queue);
        Ok(())
    }

    /// Whether the consumer is consuming from `queue`.
    pub fn consuming_from(&self, queue: &str) -> bool {
        self.active.iter().any(|a| a.queue == queue)
    }

    /// Stop consuming from one queue.
    pub async fn cancel_by_queue(&mut self, queue: &str) -> Result<()> {
        let tags: Vec<String> = self
            .active
            .iter()
            .filter(|a| a.queue == queue)
            .map(|a| a.tag.clone())
            .collect();
        for tag in tags {
            self.channel.cancel(&tag).await?;
        }
        self.active.retain(|a| a.queue != queue);
        Ok(())
    }

    /// Stop consuming. Delivered, unacked messages stay unacked until settled or the channel
    /// closes.
    pub async fn cancel(&mut self) -> Result<()> {
        for a in std::mem::take(&mut self.active) {
            self.channel.cancel(&a.tag).await?;
        }
        Ok(())
    }

    /// Change the prefetch count.
    pub fn qos(&self, prefetch_count: u16) -> impl Future<Output = Result<()>> + Send + 'static {
        let channel = self.channel.clone();
        async move { channel.qos(QosOptions::prefetch(prefetch_count)).await }
    }

    /// Redeliver every unacked message of this consumer's channel.
    pub fn recover(&self, requeue: bool) -> impl Future<Output = Result<()>> + Send + 'static {
        let channel = self.channel.clone();
        async move { channel.recover(requeue).await }
    }

    /// Purge every queue; returns the number of messages removed.
    pub fn purge(&self) -> impl Future<Output = Result<u64>> + Send + 'static {
        let channel = self.channel.clone();
        let names: Vec<String> = self.queues.iter().map(|q| q.name.clone()).collect();
        async move {
            let mut total = 0;
            for name in names {
                total += channel.purge_queue(&name).await?;
            }
            Ok(total)
        }
    }

    /// Close the consumer's channel (unacked messages are restored).
    pub async fn close(mut self) -> Result<()> {
        self.active.clear();
        self.channel.close().await
    }

    /// Register an async callback run for each message by [`Consumer::drain_events`]. Every
    /// callback receives the same message (as in Kombu), so one ack settles it for all.
    pub fn on_message<F, Fut>(&mut self, callback: F)
    where
        F: Fn(Arc<Message>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.callbacks.push(Box::new(move |m| Box::pin(callback(m))));
    }

    /// Called instead of the callbacks for a message whose content type is not accepted
    /// (Kombu's `on_decode_error`). Without it, [`Consumer::drain_events`] returns the
    /// `ContentDisallowed` error and the message stays unacked.
    pub fn on_decode_error<F, Fut>(&mut self, callback: F)
    where
        F: Fn(Arc<Message>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.on_decode_error = Some(Box::new(move |m| Box::pin(callback(m))));
    }

    /// Wait for the next message, at most `timeout`: a [`ErrorKind::Timeout`] error if none
    /// arrives, a [`ErrorKind::Closed`] error (as [`recv`](Self::recv)) when no queue is
    /// consumed any more.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Message> {
        // A message already waiting needs no timer (arming one reads the clock): look first.
        let waiting = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *self).poll_next(cx))).await;
        let next = match waiting {
            Poll::Ready(next) => Ok(next),
            Poll::Pending => {
                let next = std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx));
                tokio::time::timeout(timeout, next).await
            }
        };
        match next {
            Ok(Some(result)) => result,
            Ok(None) => Err(consumer_closed()),
            Err(_) => Err(Error::new(ErrorKind::Timeout, "no message within the timeout")
                .with_context("timeout_ms", timeout.as_millis())
                .set_recoverable(false)),
        }
    }

    /// The next message; a [`ErrorKind::Closed`] error when no queue is consumed any more
    /// (cancelled, or its channel closed), as [`recv_timeout`](Self::recv_timeout) reports
    /// it. As a [`Stream`], the consumer ends with `None` instead.
    pub async fn recv(&mut self) -> Result<Message> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .unwrap_or_else(|| Err(consumer_closed()))
    }

    /// Receive one message and pass it to the callbacks (Kombu's `drain_events`): a
    /// `Timeout` error when none arrives in time.
    pub async fn drain_events(&mut self, timeout: Duration) -> Result<()> {
        if self.callbacks.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "no callbacks registered (use on_message)",
            ));
        }
        let message = Arc::new(self.recv_timeout(timeout).await?);
        if !self.accept.allows(message.content_type()) {
            return match &self.on_decode_error {
                Some(cb) => cb(message).await,
                None => message.decode::<serde::de::IgnoredAny>().map(|_| ()),
            };
        }
        for cb in &self.callbacks {
            cb(message.clone()).await?;
        }
        Ok(())
    }
}

fn consumer_closed() -> Error {
    Error::new(
        ErrorKind::Closed,
        "the consumer stopped: no queue is consumed any more (cancelled, queue deleted or channel closed)",
    )
}

impl Stream for Consumer {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let n = this.active.len();
        if n == 0 {
            return Poll::Ready(None);
        }
        let start = this.turn % n;
        let mut finished = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            match this.active[idx].deliveries.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    this.turn = idx + 1;
                    let (accept, transport) = (this.accept.clone(), this.transport);
                    return Poll::Ready(Some(item.map(|d| {
                        crate::observe::delivered(transport, d.info.queue(), d.info.redelivered());
                        Message::new(d, accept).with_transport(transport)
                    })));
                }
                Poll::Ready(None) => finished.push(idx),
                Poll::Pending => {}
            }
        }
        for idx in finished.into_iter().rev() {
            this.active.remove(idx);
        }
        if this.active.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::{Connection, PublishOptions};

    #[tokio::test]
    async fn every_callback_sees_the_same_message() {
        let conn = Connection::new("memory:///callbacks-share").unwrap();
        let mut consumer = conn.consumer([Queue::new("cb")]).build().await.unwrap();
        let seen_acked = Arc::new(AtomicUsize::new(0));
        consumer.on_message(|m: Arc<Message>| async move { m.ack().await });
        let seen = seen_acked.clone();
        consumer.on_message(move |m: Arc<Message>| {
            let seen = seen.clone();
            async move {
                // The first callback's ack is visible here: it is one message, settled once.
                if m.acknowledged() {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
        });
        consumer.consume().await.unwrap();
        conn.producer()
            .publish(&1, PublishOptions::new().routing_key("cb"))
            .await
            .unwrap();
        consumer.drain_events(Duration::from_secs(1)).await.unwrap();
        assert_eq!(seen_acked.load(Ordering::Relaxed), 1);
    }
}
