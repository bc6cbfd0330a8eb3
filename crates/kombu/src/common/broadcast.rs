//! Kombu's `Broadcast` queue.

use kombu_core::{Exchange, Queue};

/// A broadcast queue (Kombu's `kombu.common.Broadcast`): a fanout exchange named after the
/// broadcast, and for every consumer a queue of its own, so each consumer gets every message
/// published to the exchange.
///
/// As in Kombu:
/// - the exchange is `Exchange(name, type='fanout')`: durable, not auto-delete;
/// - the queue is named `bcast.<uuid4>`, or the name given with [`queue`](Self::queue)
///   (with [`unique`](Self::unique), `<queue>.<uuid4>`);
/// - the queue is auto-delete (see [`auto_delete`](Self::auto_delete)) and otherwise a
///   default queue (durable, not exclusive), bound with an empty routing key.
///
/// Build a new `Broadcast` (and so a new queue name) for each consumer: two consumers of the
/// same queue share its messages instead of each getting all of them.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu::Result<()> {
/// use kombu::common::Broadcast;
/// use kombu::{Connection, PublishOptions};
/// let conn = Connection::new("memory:///broadcast-doc")?;
/// let mut first = conn.consumer([Broadcast::new("news").into_queue()]).consume().await?;
/// let mut second = conn.consumer([Broadcast::new("news").into_queue()]).consume().await?;
/// assert_ne!(first.queues()[0].name, second.queues()[0].name);
/// assert!(first.queues()[0].name.starts_with("bcast."));
///
/// let producer = conn.producer().exchange(Broadcast::exchange_for("news"));
/// producer.publish("hello", PublishOptions::new()).await?;
/// let timeout = std::time::Duration::from_secs(1);
/// for consumer in [&mut first, &mut second] {
///     let message = consumer.recv_timeout(timeout).await?;
///     assert_eq!(message.decode::<String>()?, "hello");
///     message.ack().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Broadcast {
    name: String,
    queue: Option<String>,
    unique: bool,
    auto_delete: bool,
    exchange: Option<Exchange>,
}

impl Broadcast {
    /// A broadcast over the fanout exchange `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Broadcast {
            name: name.into(),
            queue: None,
            unique: false,
            auto_delete: true,
            exchange: None,
        }
    }

    /// The exchange a broadcast named `name` publishes to: `Exchange::fanout(name)`, as Kombu's
    /// `Broadcast` declares it. Publish to it to reach every consumer.
    pub fn exchange_for(name: impl Into<String>) -> Exchange {
        Exchange::fanout(name)
    }

    /// Name the queue instead of `bcast.<uuid>` (Kombu's `queue=`). Consumers that share the
    /// name share the queue's messages, unless [`unique`](Self::unique) is set.
    pub fn queue(mut self, name: impl Into<String>) -> Self {
        self.queue = Some(name.into());
        self
    }

    /// Always add a unique suffix: `<queue>.<uuid>` (Kombu's `unique=True`).
    pub fn unique(mut self, unique: bool) -> Self {
        self.unique = unique;
        self
    }

    /// Whether the queue is deleted when its last consumer goes (default: true).
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }

    /// Bind to this exchange instead of `Exchange::fanout(name)` (Kombu's `exchange=`).
    pub fn exchange(mut self, exchange: Exchange) -> Self {
        self.exchange = Some(exchange);
        self
    }

    /// The queue: a fresh name on every call, bound to the exchange.
    pub fn into_queue(self) -> Queue {
        let queue_name = match (self.queue, self.unique) {
            (Some(q), true) => format!("{q}.{}", uuid::Uuid::new_v4()),
            (None, _) => format!("bcast.{}", uuid::Uuid::new_v4()),
            (Some(q), false) => q,
        };
        let exchange = self.exchange.unwrap_or_else(|| Exchange::fanout(self.name));
        Queue::new(queue_name)
            .exchange(exchange)
            .auto_delete(self.auto_delete)
    }
}

impl From<Broadcast> for Queue {
    fn from(broadcast: Broadcast) -> Queue {
        broadcast.into_queue()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kombu_core::ExchangeType;

    #[test]
    fn kombu_naming_and_options() {
        let q = Broadcast::new("news").into_queue();
        let suffix = q.name.strip_prefix("bcast.").expect("bcast. prefix");
        assert!(uuid::Uuid::parse_str(suffix).is_ok(), "{suffix} is a uuid");
        let ex = q.exchange.as_ref().expect("bound");
        assert_eq!((ex.name.as_str(), ex.kind), ("news", ExchangeType::Fanout));
        assert!(ex.durable && !ex.auto_delete);
        assert!(q.auto_delete && q.durable && !q.exclusive);
        assert_eq!(q.routing_key, "");
        assert_ne!(Broadcast::new("news").into_queue().name, q.name);
    }

    #[test]
    fn named_and_unique_queues() {
        assert_eq!(Broadcast::new("n").queue("mine").into_queue().name, "mine");
        let unique = Broadcast::new("n").queue("mine").unique(true).into_queue().name;
        let suffix = unique.strip_prefix("mine.").expect("mine. prefix");
        assert!(uuid::Uuid::parse_str(suffix).is_ok());
        let unique = Broadcast::new("n").unique(true).into_queue().name;
        assert!(unique.starts_with("bcast."));
        assert!(!Broadcast::new("n").auto_delete(false).into_queue().auto_delete);
    }
}
