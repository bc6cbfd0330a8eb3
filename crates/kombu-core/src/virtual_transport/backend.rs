//! The narrow trait a virtual backend implements, and the optional abilities it can opt into.
//!
//! A backend implements [`VirtualBackend`]: the queue operations every broker has. What only
//! some brokers can do is a separate trait — [`Receipts`], [`StoredBindings`],
//! [`BrokerRouting`], [`NativeFanout`], [`ClaimingWait`] — that the backend implements and
//! hands out from the matching accessor ([`VirtualBackend::receipts`], …). The accessors
//! default to `None` of an uninhabited type ([`Unsupported`]), so an ability a backend does not
//! have cannot be called at all: there is no hook whose default fails at run time, and the
//! channel asks the backend, not a flag, what it can do.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::broadcast::BroadcastBuffer;
use crate::capabilities::Capabilities;
use crate::entity::{Exchange, ExchangeType, Queue};
use crate::envelope::Envelope;
use crate::error::Result;
use crate::value::FieldTable;

/// What [`VirtualBackend::put_now`] did with a message.
#[derive(Debug)]
pub enum PutNow {
    /// Stored at once (or failed at once).
    Done(Result<()>),
    /// This backend stores only by awaiting [`VirtualBackend::put`]: the envelope, given back.
    NeedsAwait(Envelope),
}

/// A message taken from a queue, with what the backend needs to settle it later.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The message.
    pub envelope: Envelope,
    /// The broker's receipt for a message it still holds until settled (a row id, a Redis
    /// delivery tag, an SQS receipt handle); `None` when the message was removed from the
    /// broker by the take itself. Only backends with [`Receipts`] return receipts.
    pub receipt: Option<String>,
}

impl Claimed {
    /// A message removed from the broker by the take (nothing to settle on the broker).
    pub fn removed(envelope: Envelope) -> Self {
        Claimed {
            envelope,
            receipt: None,
        }
    }

    /// A message the broker holds until it is settled through [`Receipts`].
    pub fn held(envelope: Envelope, receipt: impl Into<String>) -> Self {
        Claimed {
            envelope,
            receipt: Some(receipt.into()),
        }
    }
}

/// A binding as a backend persists it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBinding {
    /// The bound queue.
    pub queue: String,
    /// The binding key.
    pub routing_key: String,
    /// Binding arguments.
    pub arguments: FieldTable,
}

/// The routing of one exchange as a backend persists it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredRoutes {
    /// The exchange type, where the backend stores it (Kombu's Redis and MongoDB layouts do
    /// not: their publishers route an exchange they did not declare as direct).
    pub kind: Option<ExchangeType>,
    /// The bindings of the exchange.
    pub bindings: Vec<StoredBinding>,
}

/// One acknowledged delivery (or one rejected without requeue), for [`Receipts::ack_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settle {
    pub(crate) queue: Arc<str>,
    pub(crate) receipt: String,
    pub(crate) rejected: bool,
}

/// One held message to give back, for [`Receipts::requeue_batch`].
#[derive(Debug, Clone)]
pub struct Requeue {
    pub(crate) queue: Arc<str>,
    pub(crate) envelope: Envelope,
    pub(crate) receipt: String,
}

impl Requeue {
    /// The queue the message was taken from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The message, marked redelivered.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The receipt it was claimed with.
    pub fn receipt(&self) -> &str {
        &self.receipt
    }

    /// The parts, to move the envelope out: `(queue, envelope, receipt)`.
    pub fn into_parts(self) -> (Arc<str>, Envelope, String) {
        (self.queue, self.envelope, self.receipt)
    }
}

impl Settle {
    /// The queue the message was taken from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The receipt it was claimed with.
    pub fn receipt(&self) -> &str {
        &self.receipt
    }

    /// `true` when the delivery was rejected without requeue rather than acknowledged. Most
    /// brokers settle both alike; one that dead-letters rejected messages itself (SQS with a
    /// redrive policy) may leave these to the broker.
    pub fn rejected(&self) -> bool {
        self.rejected
    }
}

/// What a broker must provide to become a kombu-rs transport through the virtual channel.
///
/// The required methods are the queue operations every broker has. Optional abilities are
/// separate traits handed out by the accessors at the end (`receipts`, `stored_bindings`,
/// `broker_routing`, `native_fanout`, `claiming_wait`); each defaults to `None`.
///
/// The operations return `impl Future + Send` (implement them with `async fn`): the trait is
/// only used generically, by [`VirtualChannel`](super::VirtualChannel), so its futures are
/// embedded in the channel's instead of boxed one by one, and an in-process backend may do
/// its work when called and return a ready future.
pub trait VirtualBackend: Send + Sync + 'static {
    /// The transport's registered name.
    fn name(&self) -> &'static str;

    /// What this connection supports, computed from its options (a Redis connection without
    /// ack emulation is not crash-safe).
    fn capabilities(&self) -> Capabilities;

    /// Create the queue if needed (Kombu's `_new_queue`). A redeclaration with different
    /// settings may be a `NotEquivalent` error.
    fn declare_queue(&self, queue: &Queue, arguments: &FieldTable)
        -> impl Future<Output = Result<()>> + Send;

    /// Whether the queue exists (for passive declarations).
    fn queue_exists(&self, queue: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Append a message to a queue.
    fn put(&self, queue: &str, envelope: Envelope) -> impl Future<Output = Result<()>> + Send;

    /// Take the next message, by the backend's priority order, FIFO within a priority,
    /// without waiting. A backend with [`Receipts`] claims it (with its receipt); the others
    /// remove it.
    fn get(&self, queue: &str) -> impl Future<Output = Result<Option<Claimed>>> + Send;

    /// Remove every ready message; returns how many.
    fn purge(&self, queue: &str) -> impl Future<Output = Result<u64>> + Send;

    /// Ready messages in the queue.
    fn size(&self, queue: &str) -> impl Future<Output = Result<u64>> + Send;

    /// Delete the queue and its messages.
    fn delete_queue(&self, queue: &str) -> impl Future<Output = Result<()>> + Send;

    /// Append a message to a queue at once, without a future, where nothing needs to wait
    /// (an in-process store): a publish to one queue then allocates no future. The default
    /// gives the envelope back ([`PutNow::NeedsAwait`]), and [`put`](Self::put) is used.
    fn put_now(&self, queue: &str, envelope: Envelope) -> PutNow {
        let _ = queue;
        PutNow::NeedsAwait(envelope)
    }

    /// Append several messages, each to its queue, in the order given (the copies a batch
    /// publish routed); one outcome per item, in order. The default puts them one after
    /// another; backends that can write many in one round trip or transaction (a pipeline,
    /// `SendMessageBatch`, `insert_many`, `multi`) override it, keeping the order per queue
    /// and reporting every item's outcome.
    fn put_batch(&self, puts: Vec<(Arc<str>, Envelope)>) -> impl Future<Output = Vec<Result<()>>> + Send {
        async move {
            let mut outcomes = Vec::with_capacity(puts.len());
            for (queue, envelope) in puts {
                outcomes.push(self.put(&queue, envelope).await);
            }
            outcomes
        }
    }

    /// Take up to `max` messages into `out`, as [`get`](Self::get) takes one. The default
    /// calls `get` repeatedly; backends that can take several at once should override it.
    fn get_batch(
        &self,
        queue: &str,
        max: usize,
        out: &mut Vec<Claimed>,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            for _ in 0..max {
                match self.get(queue).await? {
                    Some(m) => out.push(m),
                    None => break,
                }
            }
            Ok(())
        }
    }

    /// Put back a message that was removed by the take ([`Claimed::removed`]), to be consumed
    /// before older ones where the backend can (Kombu's `_restore_at_beginning`).
    /// `envelope.redelivered` is already set. Default: [`put`](Self::put).
    fn restore(&self, queue: &str, envelope: Envelope) -> impl Future<Output = Result<()>> + Send {
        self.put(queue, envelope)
    }

    /// A signal notified when messages arrive, so consumers wake at once instead of polling.
    fn wakeup(&self) -> Option<Arc<Notify>> {
        None
    }

    /// How long an idle consumer waits between polls (or, with a [`ClaimingWait`], the
    /// longest wait of one receive).
    fn polling_interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// The non-claiming wait: wait, at most `timeout`, for a message on one of `queues` (the
    /// consumed queues with room for more). The default sleeps: the dispatcher then polls
    /// again. Backends that can watch the broker without taking anything (Redis: client-side
    /// tracking of the lists) watch the queues and notify their [`wakeup`](Self::wakeup) signal
    /// when a message arrives. The wait is cancelled at any point, so it must take nothing
    /// (the dispatcher claims with [`get_batch`](Self::get_batch)). Not used when the backend
    /// has a [`ClaimingWait`].
    fn wait_for_messages(
        &self,
        _queues: &[Arc<str>],
        timeout: Duration,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            tokio::time::sleep(timeout).await;
            Ok(())
        }
    }

    /// Release the backend's resources. Called after every channel has restored its unacked
    /// messages and every queued ack was written.
    fn close(&self) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Ok(()))
    }

    /// Messages the broker holds until they are settled: acks and requeues by receipt,
    /// renewal of in-flight deliveries. `None`: taking a message removes it.
    fn receipts(&self) -> Option<&impl Receipts> {
        None::<&Unsupported>
    }

    /// Bindings (and maybe exchange types) stored on the broker, shared by every process.
    fn stored_bindings(&self) -> Option<&impl StoredBindings> {
        None::<&Unsupported>
    }

    /// Routing and appending on the broker in one step.
    fn broker_routing(&self) -> Option<&impl BrokerRouting> {
        None::<&Unsupported>
    }

    /// A native broadcast for fanout exchanges.
    fn native_fanout(&self) -> Option<&impl NativeFanout> {
        None::<&Unsupported>
    }

    /// A receive that both waits and claims (SQS long polling, MongoDB awaitData cursors,
    /// ZooKeeper watches).
    fn claiming_wait(&self) -> Option<&impl ClaimingWait> {
        None::<&Unsupported>
    }
}

/// Messages held by the broker until settled (SQLite rows with a visibility deadline, Redis's
/// unacked hash, SQS receipt handles).
///
/// The core drives it from each channel's unacked deliveries: acks are queued and written in
/// groups by [`ack_batch`](Self::ack_batch) (an ack returns once queued, like AMQP's
/// `basic.ack`; a failed group is retried while the error is recoverable, and closing the
/// connection waits for the queue), and while a consumer lives the deadlines of the messages
/// it holds are renewed every [`renewal_interval`](Self::renewal_interval), so a long task is
/// never handed to another consumer.
pub trait Receipts: Send + Sync {
    /// Settle acknowledged messages (and messages rejected without requeue, told apart by
    /// [`Settle::rejected`]), in one group where the broker can. It may return before the write is done if the backend orders it
    /// before everything the connection does later (SQLite's connection thread runs its
    /// commands in order): closes wait for this future, not for more.
    fn ack_batch(&self, batch: &[Settle]) -> impl Future<Output = Result<()>> + Send;

    /// Make a held message available again, before older ones where the broker can.
    /// `envelope.redelivered` is already set; a backend that stores the message itself
    /// (and cannot change it) may ignore the envelope.
    fn requeue(
        &self,
        queue: &str,
        envelope: Envelope,
        receipt: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Give back many held messages, in this order (newest first: each goes before older
    /// ones where the broker can), as [`requeue`](Self::requeue) does one: what a closing
    /// channel, `recover` or a cancelled claiming receive holds. The default calls `requeue`
    /// for each, trying all and returning the first error; brokers with a batch call (SQS's
    /// `ChangeMessageVisibilityBatch`, one transaction) override it.
    fn requeue_batch(&self, batch: Vec<Requeue>) -> impl Future<Output = Result<()>> + Send {
        async move {
            let mut first_error = None;
            for item in batch {
                let (queue, envelope, receipt) = item.into_parts();
                if let Err(e) = self.requeue(&queue, envelope, &receipt).await {
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        }
    }

    /// Push the deadlines of these held messages forward (a visibility heartbeat).
    fn renew(&self, receipts: &[&str]) -> impl Future<Output = Result<()>> + Send;

    /// How often [`renew`](Self::renew) runs while messages are held (`None`: the broker holds
    /// messages without a deadline, and nothing needs renewing).
    fn renewal_interval(&self) -> Option<Duration>;
}

/// Bindings stored on the broker (Redis `_kombu.binding.*` sets, SQLite tables, MongoDB's
/// `messages.routing`). Publishes then route over local bindings plus stored ones, and an
/// exchange not declared locally routes by its stored type, else as direct (Kombu's
/// behaviour).
pub trait StoredBindings: Send + Sync {
    /// An exchange was declared (not passively): record its type where the broker keeps
    /// types, so other processes route it the same way.
    fn declare_exchange(&self, exchange: &Exchange) -> impl Future<Output = Result<()>> + Send;

    /// An exchange was deleted: forget its stored type and bindings.
    fn delete_exchange(&self, exchange: &str) -> impl Future<Output = Result<()>> + Send;

    /// Store a binding so other processes route through it.
    fn store_binding(
        &self,
        exchange: &Exchange,
        binding: &StoredBinding,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The routing of `exchange` stored by any process (`None`: nothing is stored for it).
    fn load_bindings(&self, exchange: &str) -> impl Future<Output = Result<Option<StoredRoutes>>> + Send;

    /// Remove a stored binding.
    fn remove_binding(
        &self,
        exchange: &str,
        binding: &StoredBinding,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// Routing on the broker: reading the stored bindings and appending in one step.
pub trait BrokerRouting: StoredBindings {
    /// Route over the bindings stored on the broker and append the message to every matching
    /// queue, in one step: Redis runs one Lua script where reading the binding set and then
    /// pushing would take two round trips (Kombu's way).
    ///
    /// `kind` is the exchange type declared locally (`None`: infer it from what is stored, as
    /// [`StoredBindings::load_bindings`] does); `local` are the queues the local declarations
    /// route to, appended too, each queue once. Returns `Ok(None)`, having appended nothing,
    /// when nothing is stored for the exchange (the channel then routes with its local
    /// table), else `Ok(Some(n))` for the `n` queues the message went to.
    fn put_routed(
        &self,
        exchange: &str,
        kind: Option<ExchangeType>,
        routing_key: &str,
        local: &[Arc<str>],
        envelope: &Envelope,
    ) -> impl Future<Output = Result<Option<usize>>> + Send;
}

/// A native broadcast for fanout exchanges (Redis PUB/SUB, MongoDB's capped
/// `messages.broadcast`): a publish to a fanout exchange is one
/// [`put_fanout`](Self::put_fanout), and what arrives for a subscribed queue waits in the
/// backend's [`BroadcastBuffer`], which the channel takes from before the queue itself.
pub trait NativeFanout: Send + Sync {
    /// Broadcast on a fanout exchange.
    fn put_fanout(
        &self,
        exchange: &str,
        envelope: Envelope,
        routing_key: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Where broadcast messages wait for their queues' consumers.
    fn broadcast_buffer(&self) -> &BroadcastBuffer;
}

/// A receive that waits for messages and claims them in one broker call (SQS long polling,
/// a MongoDB awaitData cursor, a ZooKeeper child watch).
///
/// The dispatcher runs each receive in a task of its own and never cancels it: what it
/// claimed is delivered, kept for the queue's next turn, or given back if nobody wants it
/// any more, so nothing waits out a visibility timeout.
pub trait ClaimingWait: Send + Sync {
    /// Wait up to `timeout` for messages on `queue` and claim up to `max` of them into `out`.
    /// Returns early once anything was claimed; returns empty-handed after `timeout`.
    fn receive(
        &self,
        queue: &str,
        max: usize,
        timeout: Duration,
        out: &mut Vec<Claimed>,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// The type of an ability a backend does not have: uninhabited, so no method of it can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsupported {}

impl Receipts for Unsupported {
    async fn ack_batch(&self, _batch: &[Settle]) -> Result<()> {
        match *self {}
    }

    async fn requeue(&self, _queue: &str, _envelope: Envelope, _receipt: &str) -> Result<()> {
        match *self {}
    }

    async fn renew(&self, _receipts: &[&str]) -> Result<()> {
        match *self {}
    }

    fn renewal_interval(&self) -> Option<Duration> {
        match *self {}
    }
}

impl StoredBindings for Unsupported {
    async fn declare_exchange(&self, _exchange: &Exchange) -> Result<()> {
        match *self {}
    }

    async fn delete_exchange(&self, _exchange: &str) -> Result<()> {
        match *self {}
    }

    async fn store_binding(&self, _exchange: &Exchange, _binding: &StoredBinding) -> Result<()> {
        match *self {}
    }

    async fn load_bindings(&self, _exchange: &str) -> Result<Option<StoredRoutes>> {
        match *self {}
    }

    async fn remove_binding(&self, _exchange: &str, _binding: &StoredBinding) -> Result<()> {
        match *self {}
    }
}

impl BrokerRouting for Unsupported {
    async fn put_routed(
        &self,
        _exchange: &str,
        _kind: Option<ExchangeType>,
        _routing_key: &str,
        _local: &[Arc<str>],
        _envelope: &Envelope,
    ) -> Result<Option<usize>> {
        match *self {}
    }
}

impl NativeFanout for Unsupported {
    async fn put_fanout(&self, _exchange: &str, _envelope: Envelope, _routing_key: &str) -> Result<()> {
        match *self {}
    }

    fn broadcast_buffer(&self) -> &BroadcastBuffer {
        match *self {}
    }
}

impl ClaimingWait for Unsupported {
    async fn receive(
        &self,
        _queue: &str,
        _max: usize,
        _timeout: Duration,
        _out: &mut Vec<Claimed>,
    ) -> Result<()> {
        match *self {}
    }
}
