//! The narrow trait a virtual backend implements.

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use tokio::sync::Notify;

use crate::capabilities::Capabilities;
use crate::entity::{Exchange, ExchangeType, Queue};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
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
    /// Backend-specific receipt (a row id, an SQS receipt handle); `None` when the message was
    /// removed from the broker by `get` itself.
    pub receipt: Option<String>,
}

impl Claimed {
    /// A message removed from the broker by `get` (nothing to settle on the broker).
    pub fn removed(envelope: Envelope) -> Self {
        Claimed {
            envelope,
            receipt: None,
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

/// What a broker must provide to become a kombu-rs transport through the virtual channel.
///
/// Only the queue operations are required. Backends whose broker can acknowledge (SQLite rows
/// with a visibility deadline, Redis's unacked hash, SQS receipt handles) override
/// [`ack`](VirtualBackend::ack) and [`requeue`](VirtualBackend::requeue); backends that store
/// bindings (Redis, MongoDB) override the binding hooks; backends with a native broadcast
/// (Redis PUB/SUB) override [`put_fanout`](VirtualBackend::put_fanout).
///
/// The operations return `impl Future + Send` (implement them with `async fn`): the trait is
/// only used generically, by [`VirtualChannel`](super::VirtualChannel), so its futures are
/// embedded in the channel's instead of boxed one by one, and an in-process backend may do
/// its work when called and return a ready future.
pub trait VirtualBackend: Send + Sync + 'static {
    /// The transport's registered name.
    fn name(&self) -> &'static str;

    /// What the backend supports.
    fn capabilities(&self) -> Capabilities;

    /// Create the queue if needed (Kombu's `_new_queue`). A redeclaration with different
    /// settings may be a `NotEquivalent` error.
    fn declare_queue(&self, queue: &Queue, arguments: &FieldTable)
        -> impl Future<Output = Result<()>> + Send;

    /// Whether the queue exists (for passive declarations).
    fn queue_exists(&self, queue: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Append a message to a queue.
    fn put(&self, queue: &str, envelope: Envelope) -> impl Future<Output = Result<()>> + Send;

    /// Append a message to a queue at once, without a future, where nothing needs to wait
    /// (an in-process store): a publish to one queue then allocates no future. The default
    /// gives the envelope back ([`PutNow::NeedsAwait`]), and [`put`](Self::put) is used.
    fn put_now(&self, queue: &str, envelope: Envelope) -> PutNow {
        let _ = queue;
        PutNow::NeedsAwait(envelope)
    }

    /// Take the next message (by the backend's priority order, FIFO within a priority).
    fn get(&self, queue: &str) -> impl Future<Output = Result<Option<Claimed>>> + Send;

    /// Take up to `max` messages into `out`. The default calls [`get`](Self::get) repeatedly;
    /// backends that can take several at once should override it.
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

    /// The consumer acknowledged (or rejected without requeue) a message. Only called for
    /// messages claimed with a receipt: a message `get` removed from the broker
    /// ([`Claimed::removed`]) has nothing left to settle.
    fn ack(&self, _queue: &str, _receipt: Option<&str>) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Ok(()))
    }

    /// Make a message available again, to be consumed before older ones where the backend can
    /// (Kombu's `_restore_at_beginning`). `envelope.redelivered` is already set.
    fn requeue(
        &self,
        queue: &str,
        envelope: Envelope,
        _receipt: Option<&str>,
    ) -> impl Future<Output = Result<()>> + Send {
        self.put(queue, envelope)
    }

    /// Remove every ready message; returns how many.
    fn purge(&self, queue: &str) -> impl Future<Output = Result<u64>> + Send;

    /// Ready messages in the queue.
    fn size(&self, queue: &str) -> impl Future<Output = Result<u64>> + Send;

    /// Delete the queue and its messages.
    fn delete_queue(&self, queue: &str) -> impl Future<Output = Result<()>> + Send;

    /// Whether fanout exchanges are delivered by [`put_fanout`](Self::put_fanout) rather than
    /// by routing to every bound queue.
    fn native_fanout(&self) -> bool {
        false
    }

    /// Broadcast on a fanout exchange (only called when [`native_fanout`](Self::native_fanout)).
    fn put_fanout(
        &self,
        exchange: &str,
        _envelope: Envelope,
        _routing_key: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Err(
            Error::unsupported("native fanout").with_context("exchange", exchange)
        ))
    }

    /// Whether the backend stores bindings on the broker: [`load_bindings`](Self::load_bindings)
    /// is only consulted when true, so other backends publish without that call.
    fn persists_bindings(&self) -> bool {
        false
    }

    /// An exchange was declared (not passively). Backends that persist bindings may record its
    /// type, so other processes route it the same way. Default: nothing.
    fn declare_exchange(&self, _exchange: &Exchange) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Ok(()))
    }

    /// An exchange was deleted: forget its persisted type and bindings. Default: nothing.
    fn delete_exchange(&self, _exchange: &str) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Ok(()))
    }

    /// Persist a binding so other processes route through it. Default: bindings are kept by
    /// the [`BrokerState`](super::BrokerState) only.
    fn store_binding(
        &self,
        _exchange: &Exchange,
        _binding: &StoredBinding,
    ) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Ok(()))
    }

    /// The routing of `exchange` persisted by any process (`None`: nothing is stored for it).
    fn load_bindings(&self, _exchange: &str) -> impl Future<Output = Result<Option<StoredRoutes>>> + Send {
        std::future::ready(Ok(None))
    }

    /// Remove a persisted binding.
    fn remove_binding(
        &self,
        _exchange: &str,
        _binding: &StoredBinding,
    ) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Ok(()))
    }

    /// Whether [`put_routed`](Self::put_routed) routes and appends on the broker in one step
    /// (only consulted when [`persists_bindings`](Self::persists_bindings) is true too).
    fn routes_on_broker(&self) -> bool {
        false
    }

    /// Route over the bindings stored on the broker and append the message to every matching
    /// queue, in one step: Redis runs one Lua script where reading the binding set and then
    /// pushing would take two round trips (Kombu's way).
    ///
    /// `kind` is the exchange type declared locally (`None`: infer it from what is stored, as
    /// [`load_bindings`](Self::load_bindings) does); `local` are the queues the local
    /// declarations route to, appended too, each queue once. Returns `Ok(None)`, having
    /// appended nothing, when nothing is stored for the exchange (the channel then routes with
    /// its local table), else `Ok(Some(n))` for the `n` queues the message went to.
    fn put_routed(
        &self,
        exchange: &str,
        _kind: Option<ExchangeType>,
        _routing_key: &str,
        _local: &[Arc<str>],
        _envelope: &Envelope,
    ) -> impl Future<Output = Result<Option<usize>>> + Send {
        std::future::ready(Err(
            Error::unsupported("routing on the broker").with_context("exchange", exchange)
        ))
    }

    /// A signal notified when messages arrive, so consumers wake at once instead of polling.
    fn wakeup(&self) -> Option<Arc<Notify>> {
        None
    }

    /// How long an idle consumer waits between polls when there is no wake-up signal (or as a
    /// safety net beside it).
    fn polling_interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// Wait, at most `timeout`, for a message on one of `queues` (the consumed queues with
    /// room for more). The default sleeps: the dispatcher then polls again. Backends that can
    /// block on the broker (Redis `BLMOVE`) watch the queues and notify their
    /// [`wakeup`](Self::wakeup) signal when a message arrives; a wait must take nothing, so
    /// cancelling it at any point loses nothing (the dispatcher claims with
    /// [`get_batch`](Self::get_batch)).
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

    /// Release the backend's resources.
    fn close(&self) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}
