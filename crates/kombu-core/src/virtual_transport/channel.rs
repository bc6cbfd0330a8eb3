//! The generic channel over a [`VirtualBackend`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::backend::{Claimed, PutNow, StoredBinding, VirtualBackend};
use super::handoff::{handoff, HandoffSender};
use super::state::{BrokerState, Routed};
use crate::capabilities::Capabilities;
use crate::entity::{Exchange, ExchangeType, Queue};
use crate::envelope::{BodyEncoding, Envelope};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{AckHandle, Acknowledger, Delivery, DeliveryInfo, RawMessage};
use crate::router::CompiledBinding;
use crate::transport::{
    Channel, ConsumeOptions, ConsumerHandle, DeclareOptions, DeleteExchangeOptions, DeleteQueueOptions,
    GetOptions, PublishOptions, QosOptions, QueueBinding, QueueDeclareOk, Transport,
};
use crate::value::FieldTable;

/// Hashes the channel's own sequential `u64` delivery tags: no need for SipHash's DoS
/// resistance on keys we mint ourselves.
#[derive(Default, Clone, Copy)]
struct TagHasher(u64);

impl std::hash::Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type UnackedMap = HashMap<u64, Unacked, std::hash::BuildHasherDefault<TagHasher>>;

/// How many messages the dispatcher takes from one queue per turn.
const DISPATCH_BATCH: usize = 64;
/// The first idle sleep of a dispatcher (see [`idle_backoff`]).
const FIRST_IDLE_POLL: Duration = Duration::from_millis(10);
/// Deliveries handed to a consumer and not yet taken by its stream (the stream's own batch,
/// once taken, may hold as many again; in-flight unacked messages are bounded by prefetch,
/// not by this).
const CONSUMER_BUFFER: usize = 256;

/// A [`Transport`] made of a [`VirtualBackend`] and a routing [`BrokerState`].
pub struct VirtualTransport<B: VirtualBackend> {
    backend: Arc<B>,
    state: Arc<BrokerState>,
    body_encoding: BodyEncoding,
    connected: AtomicBool,
    channels: Mutex<Vec<Weak<ChannelInner<B>>>>,
}

impl<B: VirtualBackend> fmt::Debug for VirtualTransport<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtualTransport")
            .field("backend", &self.backend.name())
            .field("connected", &self.connected.load(Ordering::Relaxed))
            .finish()
    }
}

impl<B: VirtualBackend> VirtualTransport<B> {
    /// A transport over `backend`, routing with `state`.
    pub fn new(backend: Arc<B>, state: Arc<BrokerState>) -> Self {
        VirtualTransport {
            backend,
            state,
            body_encoding: BodyEncoding::Base64,
            connected: AtomicBool::new(true),
            channels: Mutex::new(Vec::new()),
        }
    }

    /// How bodies are written into envelopes (Kombu's `body_encoding` transport option).
    pub fn with_body_encoding(mut self, encoding: BodyEncoding) -> Self {
        self.body_encoding = encoding;
        self
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// Open a channel with its concrete type.
    pub fn open_channel(&self) -> Result<VirtualChannel<B>> {
        if !self.connected.load(Ordering::Acquire) {
            return Err(Error::new(ErrorKind::Closed, "connection is closed"));
        }
        let channel = VirtualChannel::new(self.backend.clone(), self.state.clone(), self.body_encoding);
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels.retain(|w| w.strong_count() > 0);
        channels.push(Arc::downgrade(&channel.inner));
        Ok(channel)
    }
}

#[async_trait]
impl<B: VirtualBackend> Transport for VirtualTransport<B> {
    fn name(&self) -> &'static str {
        self.backend.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    async fn create_channel(&self) -> Result<Arc<dyn Channel>> {
        Ok(Arc::new(self.open_channel()?))
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    async fn close(&self) -> Result<()> {
        if !self.connected.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let channels: Vec<_> = std::mem::take(&mut *self.channels.lock().unwrap_or_else(|p| p.into_inner()));
        for inner in channels.iter().filter_map(Weak::upgrade) {
            inner.close().await?;
        }
        self.backend.close().await
    }
}

/// A delivered message not yet settled.
struct Unacked {
    queue: Arc<str>,
    claimed: Claimed,
}

struct ConsumerEntry {
    tag: Arc<str>,
    queue: Arc<str>,
    no_ack: bool,
    sender: HandoffSender,
}

struct ChannelInner<B: VirtualBackend> {
    backend: Arc<B>,
    state: Arc<BrokerState>,
    body_encoding: BodyEncoding,
    open: AtomicBool,
    next_tag: AtomicU64,
    prefetch: AtomicU16,
    unacked: Mutex<UnackedMap>,
    consumers: Mutex<Vec<Arc<ConsumerEntry>>>,
    consumers_version: AtomicU64,
    /// Wakes the dispatcher: a consumer came or went, room was freed, the channel closed.
    wakeup: Arc<Notify>,
    dispatcher_started: AtomicBool,
    self_ref: Weak<ChannelInner<B>>,
}

/// A [`Channel`] over a [`VirtualBackend`].
pub struct VirtualChannel<B: VirtualBackend> {
    inner: Arc<ChannelInner<B>>,
}

impl<B: VirtualBackend> fmt::Debug for VirtualChannel<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtualChannel")
            .field("backend", &self.inner.backend.name())
            .field("open", &self.inner.open.load(Ordering::Relaxed))
            .finish()
    }
}

impl<B: VirtualBackend> VirtualChannel<B> {
    fn new(backend: Arc<B>, state: Arc<BrokerState>, body_encoding: BodyEncoding) -> Self {
        let inner = Arc::new_cyclic(|self_ref| ChannelInner {
            backend,
            state,
            body_encoding,
            open: AtomicBool::new(true),
            next_tag: AtomicU64::new(1),
            prefetch: AtomicU16::new(0),
            unacked: Mutex::new(UnackedMap::default()),
            consumers: Mutex::new(Vec::new()),
            consumers_version: AtomicU64::new(0),
            wakeup: Arc::new(Notify::new()),
            dispatcher_started: AtomicBool::new(false),
            self_ref: self_ref.clone(),
        });
        VirtualChannel { inner }
    }

    /// Number of delivered, unsettled messages.
    pub fn unacked_count(&self) -> usize {
        self.inner.lock_unacked().len()
    }
}

impl<B: VirtualBackend> ChannelInner<B> {
    fn lock_unacked(&self) -> std::sync::MutexGuard<'_, UnackedMap> {
        self.unacked.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_consumers(&self) -> std::sync::MutexGuard<'_, Vec<Arc<ConsumerEntry>>> {
        self.consumers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ensure_open(&self) -> Result<()> {
        if self.open.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::Closed, "channel is closed")
                .with_context("transport", self.backend.name()))
        }
    }

    fn acknowledger(&self) -> Option<Arc<dyn Acknowledger>> {
        self.self_ref.upgrade().map(|a| a as Arc<dyn Acknowledger>)
    }

    /// How many more unacked deliveries prefetch allows (`usize::MAX`: unlimited).
    fn prefetch_room(&self) -> usize {
        match self.prefetch.load(Ordering::Acquire) {
            0 => usize::MAX,
            limit => (limit as usize).saturating_sub(self.lock_unacked().len()),
        }
    }

    /// Turn a claimed message into a delivery, tracking it unless `no_ack`. For a `no_ack`
    /// delivery the broker's receipt is returned: it must be acked at once (see
    /// [`settle_no_ack`](Self::settle_no_ack)).
    fn make_delivery(
        &self,
        queue: &Arc<str>,
        claimed: Claimed,
        consumer_tag: Option<&Arc<str>>,
        no_ack: bool,
    ) -> (Delivery, Option<String>) {
        let env = &claimed.envelope;
        let info = DeliveryInfo {
            exchange: env.exchange.clone(),
            routing_key: env.routing_key.clone(),
            redelivered: env.redelivered,
            consumer_tag: consumer_tag.cloned(),
            delivery_tag: env.delivery_tag.clone(),
            queue: queue.clone(),
        };
        if no_ack {
            let Claimed { envelope, receipt } = claimed;
            return (
                Delivery {
                    message: envelope.message,
                    info,
                    ack: None,
                },
                receipt,
            );
        }
        let message = env.message.clone();
        let ack = {
            let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
            self.lock_unacked().insert(
                tag,
                Unacked {
                    queue: queue.clone(),
                    claimed,
                },
            );
            self.acknowledger()
                .map(|acknowledger| AckHandle { acknowledger, tag })
        };
        (Delivery { message, info, ack }, None)
    }

    /// Settle on the broker a message delivered with `no_ack` (claimed with a receipt).
    async fn settle_no_ack(&self, queue: &str, receipt: Option<String>) {
        if let Some(receipt) = receipt {
            if let Err(e) = self.backend.ack(queue, Some(&receipt)).await {
                warn!(error = %e, queue, "could not settle a no-ack delivery on the broker");
            }
        }
    }

    async fn restore(&self, queue: &str, mut claimed: Claimed) -> Result<()> {
        claimed.envelope.redelivered = true;
        self.backend
            .requeue(queue, claimed.envelope, claimed.receipt.as_deref())
            .await
    }

    /// Restore every unacked message (newest first, so requeue-at-front keeps the order).
    async fn restore_all_unacked(&self) -> Result<()> {
        let mut all: Vec<(u64, Unacked)> = self.lock_unacked().drain().collect();
        all.sort_by_key(|(tag, _)| std::cmp::Reverse(*tag));
        let mut first_error = None;
        for (_, u) in all {
            if let Err(e) = self.restore(&u.queue, u.claimed).await {
                warn!(error = %e, queue = %u.queue, "failed to restore an unacked message");
                first_error.get_or_insert(e);
            }
        }
        self.wakeup.notify_one();
        first_error.map_or(Ok(()), Err)
    }

    async fn close(&self) -> Result<()> {
        if !self.open.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        self.lock_consumers().clear();
        self.consumers_version.fetch_add(1, Ordering::AcqRel);
        self.wakeup.notify_one();
        debug!(
            transport = self.backend.name(),
            "closing channel, restoring unacked messages"
        );
        self.restore_all_unacked().await
    }

    fn start_dispatcher(&self) {
        if self.dispatcher_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = self.self_ref.clone();
        tokio::spawn(dispatch_loop(weak, self.wakeup.clone()));
    }

    /// Route over what this process declared: the exchange's matching queues are appended to
    /// `queues` and its declared type returned (`None`: not declared here).
    fn route_declared(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: &FieldTable,
        queues: &mut Vec<Arc<str>>,
    ) -> Option<ExchangeType> {
        match self.state.route(exchange, routing_key, headers, queues) {
            Routed::Local(kind) => Some(kind),
            Routed::UnknownExchange => None,
        }
    }

    /// Whether an exchange of type `kind` is broadcast by the backend itself.
    fn is_native_fanout(&self, kind: Option<ExchangeType>) -> bool {
        kind == Some(ExchangeType::Fanout) && self.backend.native_fanout()
    }

    /// Route to a named exchange over local declarations only (backends that store no
    /// bindings): synchronous, so the publish future carries no routing state.
    fn route_local(&self, exchange: &str, routing_key: &str, message: &RawMessage) -> Result<RouteTarget> {
        let mut queues = Vec::new();
        let kind = self.route_declared(exchange, routing_key, &message.headers, &mut queues);
        match kind {
            _ if self.is_native_fanout(kind) => Ok(RouteTarget::NativeFanout),
            Some(_) => Ok(RouteTarget::Queues(queues)),
            None => Err(not_declared(exchange)),
        }
    }

    /// Route to a named exchange over local declarations plus the bindings the backend stores
    /// on the broker. One known only from stored bindings routes by the stored type, else as
    /// direct (Kombu's behaviour); the local declaration wins (Kombu: the publisher's own state
    /// decides).
    async fn route_with_stored(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &RawMessage,
    ) -> Result<RouteTarget> {
        let mut queues = Vec::new();
        let declared = self.route_declared(exchange, routing_key, &message.headers, &mut queues);
        if self.is_native_fanout(declared) {
            return Ok(RouteTarget::NativeFanout);
        }
        let Some(stored) = self.backend.load_bindings(exchange).await? else {
            return match declared {
                Some(_) => Ok(RouteTarget::Queues(queues)),
                None => Err(not_declared(exchange)),
            };
        };
        let kind = declared.or(stored.kind).unwrap_or(ExchangeType::Direct);
        if self.is_native_fanout(Some(kind)) {
            return Ok(RouteTarget::NativeFanout);
        }
        route_stored(kind, &stored.bindings, routing_key, message, &mut queues);
        Ok(RouteTarget::Queues(queues))
    }

    /// Publish to a named exchange through a backend that routes on the broker
    /// ([`VirtualBackend::put_routed`]): one broker call instead of reading the stored
    /// bindings and then appending. `None` when nothing is stored for the exchange or it is a
    /// native fanout (the caller then routes with [`route_with_stored`](Self::route_with_stored)).
    async fn publish_routed_on_broker(
        &self,
        envelope: &Envelope,
        options: &PublishOptions,
    ) -> Result<Option<Result<()>>> {
        let mut local = Vec::new();
        let declared = self.route_declared(
            &options.exchange,
            &options.routing_key,
            &envelope.message.headers,
            &mut local,
        );
        if self.is_native_fanout(declared) {
            return Ok(None);
        }
        let routed = self
            .backend
            .put_routed(
                &options.exchange,
                declared,
                &options.routing_key,
                &local,
                envelope,
            )
            .await?;
        Ok(match routed {
            Some(0) => Some(unroutable(options)),
            Some(_) => Some(Ok(())),
            None => None,
        })
    }
}

/// A publish after its synchronous part.
enum Prepared {
    /// Routed already: append to these queues (or hand to the native fanout).
    Routed(Envelope, RouteTarget),
    /// To a named exchange of a backend that stores bindings: routing needs the broker.
    RouteWithStored(Envelope, PublishOptions),
    /// Routed to no queue and not mandatory: nothing to do (AMQP drops it).
    Dropped,
}

impl<B: VirtualBackend> ChannelInner<B> {
    /// Everything of a publish that needs no await: the channel and size checks, the
    /// envelope, and routing when the local declarations decide it.
    fn prepare_publish(&self, message: RawMessage, options: PublishOptions) -> Result<Prepared> {
        self.ensure_open()?;
        if let Some(limit) = self.backend.capabilities().max_message_size {
            if message.body.len() as u64 > limit {
                return Err(Error::new(
                    ErrorKind::LimitExceeded,
                    "message body exceeds the transport's size limit",
                )
                .with_context("size", message.body.len())
                .with_context("limit", limit)
                .with_context("transport", self.backend.name()));
            }
        }
        let (exchange, routing_key) = (&*options.exchange, &*options.routing_key);
        let target = if exchange.is_empty() {
            // The default exchange: the queue named by the routing key.
            let queue = (!routing_key.is_empty()).then(|| options.routing_key.clone());
            RouteTarget::Queues(queue.into_iter().collect())
        } else if self.backend.persists_bindings() {
            let mut envelope = Envelope::new(message, exchange, routing_key);
            envelope.body_encoding = self.body_encoding;
            return Ok(Prepared::RouteWithStored(envelope, options));
        } else {
            self.route_local(exchange, routing_key, &message)?
        };
        if matches!(&target, RouteTarget::Queues(queues) if queues.is_empty()) {
            // An error when mandatory, else dropped here, before any envelope is made.
            return unroutable(&options).map(|()| Prepared::Dropped);
        }
        // Routed: the options' names move into the envelope instead of being copied.
        let mut envelope = Envelope::with_names(message, options.exchange, options.routing_key);
        envelope.body_encoding = self.body_encoding;
        Ok(Prepared::Routed(envelope, target))
    }

    /// Route a publish to a named exchange with the bindings the backend stores (on the
    /// broker itself where the backend can), then deliver it.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would store its arguments twice"
    )]
    fn publish_with_stored(
        &self,
        envelope: Envelope,
        options: PublishOptions,
    ) -> impl Future<Output = Result<()>> + Send + '_ {
        async move {
            // This whole future is boxed by `publish` (only on this path), so its awaits are not
            // boxed again.
            if self.backend.routes_on_broker() {
                if let Some(routed) = self.publish_routed_on_broker(&envelope, &options).await? {
                    return routed;
                }
            }
            let target = self
                .route_with_stored(&options.exchange, &options.routing_key, &envelope.message)
                .await?;
            if matches!(&target, RouteTarget::Queues(queues) if queues.is_empty()) {
                return unroutable(&options);
            }
            self.deliver(envelope, target).await
        }
    }

    /// Append a routed message: one copy per queue, or one broadcast for a native fanout.
    ///
    /// Not an `async fn`: that would keep its arguments twice in the future (once as given,
    /// once moved into the body), and the envelope is most of the future.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would store its arguments twice"
    )]
    fn deliver(
        &self,
        envelope: Envelope,
        target: RouteTarget,
    ) -> impl Future<Output = Result<()>> + Send + '_ {
        async move {
            match target {
                RouteTarget::NativeFanout => {
                    let (exchange, routing_key) = (envelope.exchange.clone(), envelope.routing_key.clone());
                    self.backend.put_fanout(&exchange, envelope, &routing_key).await
                }
                RouteTarget::Queues(mut queues) => {
                    let Some(last) = queues.pop() else {
                        return Ok(());
                    };
                    for queue in &queues {
                        // Bound first, so the clone is not kept in this future across the await.
                        let put = self.backend.put(queue, envelope.clone());
                        put.await?;
                    }
                    self.backend.put(&last, envelope).await
                }
            }
        }
    }
}

/// A publish that is already done: zero-sized, so boxing it allocates nothing.
struct Published;

impl Future for Published {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn not_declared(exchange: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        "exchange not declared (declare it first, e.g. with the producer's `declare` list)",
    )
    .with_context("exchange", exchange)
}

/// A message that matched no queue: an error for a mandatory publish, else dropped (AMQP).
fn unroutable(options: &PublishOptions) -> Result<()> {
    if options.mandatory {
        return Err(
            Error::new(ErrorKind::NotFound, "message is unroutable (mandatory)")
                .with_context("exchange", &options.exchange)
                .with_context("routing_key", &options.routing_key),
        );
    }
    debug!(exchange = %options.exchange, routing_key = %options.routing_key, "message routed to no queue, dropped");
    Ok(())
}

enum RouteTarget {
    Queues(Vec<Arc<str>>),
    NativeFanout,
}

fn route_stored(
    kind: ExchangeType,
    stored: &[StoredBinding],
    routing_key: &str,
    message: &RawMessage,
    out: &mut Vec<Arc<str>>,
) {
    for b in stored {
        if out.iter().any(|q| **q == *b.queue) {
            continue;
        }
        let compiled = CompiledBinding::new(
            kind,
            b.queue.as_str(),
            b.routing_key.as_str(),
            b.arguments.clone(),
        );
        if compiled.matches(routing_key, &message.headers) {
            out.push(compiled.queue);
        }
    }
}

/// One dispatcher per channel: serves every consumer of the channel, fairly.
async fn dispatch_loop<B: VirtualBackend>(weak: Weak<ChannelInner<B>>, wakeup: Arc<Notify>) {
    let mut snapshot: Vec<Arc<ConsumerEntry>> = Vec::new();
    let mut version = u64::MAX;
    let mut turn = 0usize;
    let mut batch: Vec<Claimed> = Vec::with_capacity(DISPATCH_BATCH);
    let mut handed: Vec<Result<Delivery>> = Vec::with_capacity(DISPATCH_BATCH);
    let mut idle_polls = 0u32;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if !inner.open.load(Ordering::Acquire) {
            return;
        }
        let current = inner.consumers_version.load(Ordering::Acquire);
        if current != version {
            snapshot = inner.lock_consumers().clone();
            version = current;
        }
        // Register interest before looking, so a signal between the look and the wait is kept.
        let channel_signal = wakeup.notified();
        tokio::pin!(channel_signal);
        channel_signal.as_mut().enable();
        let backend_notify = inner.backend.wakeup();
        let backend_signal = backend_notify.as_ref().map(|n| n.notified());
        tokio::pin!(backend_signal);
        if let Some(s) = backend_signal.as_mut().as_pin_mut() {
            s.enable();
        }

        let mut delivered = 0usize;
        let mut broker_trouble = false;
        let n = snapshot.len();
        for i in 0..n {
            let consumer = &snapshot[(turn + i) % n];
            if consumer.sender.is_closed() {
                continue;
            }
            let mut budget = consumer.sender.room().min(DISPATCH_BATCH);
            if !consumer.no_ack {
                budget = budget.min(inner.prefetch_room());
            }
            if budget == 0 {
                continue;
            }
            batch.clear();
            let polled = inner.backend.get_batch(&consumer.queue, budget, &mut batch).await;
            // What was claimed is delivered even when the poll also reported an error.
            for claimed in batch.drain(..) {
                delivered += 1;
                let (delivery, receipt) =
                    inner.make_delivery(&consumer.queue, claimed, Some(&consumer.tag), consumer.no_ack);
                inner.settle_no_ack(&consumer.queue, receipt).await;
                handed.push(Ok(delivery));
            }
            if !consumer.sender.send_all(&mut handed) {
                // The consumer went away: nothing is lost.
                for d in handed.drain(..).flatten() {
                    let claimed = match d.ack.as_ref() {
                        Some(h) => inner.lock_unacked().remove(&h.tag).map(|u| u.claimed),
                        None => None,
                    };
                    let claimed = claimed.unwrap_or_else(|| Claimed::removed(envelope_of(&d)));
                    if let Err(e) = inner
                        .backend
                        .requeue(&consumer.queue, claimed.envelope, claimed.receipt.as_deref())
                        .await
                    {
                        warn!(error = %e, "failed to requeue an undeliverable message");
                    }
                }
            }
            if let Err(e) = polled {
                if e.is_recoverable() {
                    // The broker is away: keep polling (with backoff) until it is back, so
                    // consumers resume by themselves.
                    warn!(error = %e, queue = %consumer.queue, "consumer poll failed; retrying");
                    broker_trouble = true;
                } else {
                    warn!(error = %e, queue = %consumer.queue, "consumer poll failed");
                    let _ = consumer.sender.send_all(&mut vec![Err(e)]);
                }
            }
        }
        turn = turn.wrapping_add(1);
        if delivered > 0 {
            idle_polls = 0;
            // Give producers and consumers on this runtime a turn between batches.
            drop(inner);
            tokio::task::yield_now().await;
            continue;
        }
        let interval = idle_backoff(inner.backend.polling_interval(), idle_polls);
        idle_polls = idle_polls.saturating_add(1);
        // The consumed queues with room: backends that can block on the broker watch them.
        let room = inner.prefetch_room();
        let mut waiting_on: Vec<Arc<str>> = Vec::new();
        if !broker_trouble {
            for c in snapshot
                .iter()
                .filter(|c| !c.sender.is_closed() && c.sender.room() > 0)
            {
                if (c.no_ack || room > 0) && !waiting_on.contains(&c.queue) {
                    waiting_on.push(c.queue.clone());
                }
            }
        }
        let backend = inner.backend.clone();
        drop(inner);
        let sleep = async {
            if let Err(e) = backend.wait_for_messages(&waiting_on, interval).await {
                debug!(error = %e, "waiting for messages failed");
                tokio::time::sleep(interval).await;
            }
        };
        match backend_signal.as_mut().as_pin_mut() {
            Some(backend_signal) => {
                tokio::select! {
                    _ = &mut channel_signal => {}
                    _ = backend_signal => {}
                    _ = sleep => {}
                }
            }
            None => {
                tokio::select! {
                    _ = &mut channel_signal => {}
                    _ = sleep => {}
                }
            }
        }
    }
}

/// How long an idle dispatcher sleeps before polling again: [`FIRST_IDLE_POLL`] after the last
/// delivery, doubling on every empty poll up to the backend's polling interval. Messages that
/// another process adds (which no wake-up signal announces) are picked up quickly while the
/// queue is busy, and an idle queue costs one poll per interval.
fn idle_backoff(polling_interval: Duration, idle_polls: u32) -> Duration {
    FIRST_IDLE_POLL
        .saturating_mul(1u32 << idle_polls.min(16))
        .min(polling_interval)
}

/// Rebuild an envelope from a delivery (only used when a no-ack delivery could not be handed
/// to its consumer and must go back).
fn envelope_of(d: &Delivery) -> Envelope {
    Envelope {
        message: d.message.clone(),
        exchange: d.info.exchange.clone(),
        routing_key: d.info.routing_key.clone(),
        delivery_tag: d.info.delivery_tag.clone(),
        redelivered: d.info.redelivered,
        body_encoding: BodyEncoding::Base64,
    }
}

#[async_trait]
impl<B: VirtualBackend> Acknowledger for ChannelInner<B> {
    async fn ack(&self, tag: u64) -> Result<()> {
        let unacked = self.lock_unacked().remove(&tag);
        let Some(u) = unacked else {
            return Err(unknown_tag(tag));
        };
        self.wakeup.notify_one();
        match u.claimed.receipt.as_deref() {
            Some(receipt) => self.backend.ack(&u.queue, Some(receipt)).await,
            None => Ok(()),
        }
    }

    fn ack_now(&self, tag: u64) -> Option<Result<()>> {
        let settled = {
            let mut unacked = self.lock_unacked();
            match unacked.get(&tag) {
                None => return Some(Err(unknown_tag(tag))),
                // The broker holds it until acked: `ack` must tell it.
                Some(u) if u.claimed.receipt.is_some() => return None,
                Some(_) => unacked.remove(&tag),
            }
        };
        // Dropped after the lock is released.
        drop(settled);
        self.wakeup.notify_one();
        Some(Ok(()))
    }

    async fn reject(&self, tag: u64, requeue: bool) -> Result<()> {
        let unacked = self.lock_unacked().remove(&tag);
        let Some(u) = unacked else {
            return Err(unknown_tag(tag));
        };
        self.wakeup.notify_one();
        match (requeue, u.claimed.receipt.as_deref()) {
            (true, _) => self.restore(&u.queue, u.claimed).await,
            (false, Some(receipt)) => self.backend.ack(&u.queue, Some(receipt)).await,
            (false, None) => Ok(()),
        }
    }
}

fn unknown_tag(tag: u64) -> Error {
    Error::new(
        ErrorKind::PreconditionFailed,
        "unknown delivery tag (already settled, or its channel was closed and the message restored)",
    )
    .with_context("delivery_tag", tag)
}

impl<B: VirtualBackend> Drop for ChannelInner<B> {
    fn drop(&mut self) {
        // A channel dropped without close(): give its unacked messages back.
        let unacked: Vec<(u64, Unacked)> = self.lock_unacked().drain().collect();
        if unacked.is_empty() || !self.open.load(Ordering::Acquire) {
            return;
        }
        let backend = self.backend.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let mut unacked = unacked;
                    unacked.sort_by_key(|(tag, _)| std::cmp::Reverse(*tag));
                    for (_, u) in unacked {
                        let mut claimed = u.claimed;
                        claimed.envelope.redelivered = true;
                        if let Err(e) = backend
                            .requeue(&u.queue, claimed.envelope, claimed.receipt.as_deref())
                            .await
                        {
                            warn!(error = %e, "failed to restore an unacked message of a dropped channel");
                        }
                    }
                });
            }
            Err(_) => warn!(
                count = unacked.len(),
                "channel dropped outside a tokio runtime with unacked messages; they were not restored"
            ),
        }
    }
}

#[async_trait]
impl<B: VirtualBackend> Channel for VirtualChannel<B> {
    fn capabilities(&self) -> Capabilities {
        self.inner.backend.capabilities()
    }

    async fn declare_exchange(&self, exchange: &Exchange, options: DeclareOptions) -> Result<()> {
        let inner = &self.inner;
        inner.ensure_open()?;
        if exchange.is_default() {
            return Ok(());
        }
        let caps = inner.backend.capabilities();
        if !caps.supports_exchange_type(exchange.kind) {
            return Err(Error::unsupported(format!("{} exchanges", exchange.kind))
                .with_context("transport", inner.backend.name())
                .with_context("exchange", &exchange.name));
        }
        let passive = options.passive || exchange.passive;
        inner.state.declare_exchange(exchange, passive)?;
        if passive {
            return Ok(());
        }
        inner.backend.declare_exchange(exchange).await
    }

    async fn delete_exchange(&self, name: &str, options: DeleteExchangeOptions) -> Result<()> {
        let inner = &self.inner;
        inner.ensure_open()?;
        // Where bindings live on the broker, another process may have declared the exchange
        // and bound queues to it: what is stored counts as much as what is known here.
        let stored = if inner.backend.persists_bindings() {
            inner.backend.load_bindings(name).await?
        } else {
            None
        };
        if options.if_unused && stored.as_ref().is_some_and(|r| !r.bindings.is_empty()) {
            return Err(
                Error::new(ErrorKind::PreconditionFailed, "exchange has bindings (if_unused)")
                    .with_context("exchange", name),
            );
        }
        match inner.state.delete_exchange(name, options.if_unused) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound && stored.is_some() => {}
            Err(e) => return Err(e),
        }
        inner.backend.delete_exchange(name).await
    }

    async fn declare_queue(&self, queue: &Queue, options: DeclareOptions) -> Result<QueueDeclareOk> {
        let inner = &self.inner;
        inner.ensure_open()?;
        let name = if queue.name.is_empty() {
            format!("amq.gen-{}", uuid::Uuid::new_v4())
        } else {
            queue.name.clone()
        };
        if options.passive || queue.passive {
            if !inner.backend.queue_exists(&name).await? {
                return Err(Error::new(ErrorKind::NotFound, "no such queue").with_context("queue", &name));
            }
        } else {
            let mut q = queue.clone();
            q.name.clone_from(&name);
            inner.backend.declare_queue(&q, &q.declare_arguments()).await?;
        }
        let message_count = inner.backend.size(&name).await?;
        let consumer_count = inner
            .lock_consumers()
            .iter()
            .filter(|c| *c.queue == *name)
            .count() as u32;
        Ok(QueueDeclareOk {
            queue: name,
            message_count,
            consumer_count,
        })
    }

    async fn bind_queue(&self, binding: &QueueBinding) -> Result<()> {
        let inner = &self.inner;
        inner.ensure_open()?;
        if binding.exchange.is_empty() {
            return Err(
                Error::new(ErrorKind::InvalidArgument, "cannot bind to the default exchange")
                    .with_context("queue", &binding.queue),
            );
        }
        let exchange = inner.state.bind(
            &binding.exchange,
            &binding.queue,
            &binding.routing_key,
            &binding.arguments,
        )?;
        inner
            .backend
            .store_binding(
                &exchange,
                &StoredBinding {
                    queue: binding.queue.clone(),
                    routing_key: binding.routing_key.clone(),
                    arguments: binding.arguments.clone(),
                },
            )
            .await
    }

    async fn unbind_queue(&self, binding: &QueueBinding) -> Result<()> {
        let inner = &self.inner;
        inner.ensure_open()?;
        inner.state.unbind(
            &binding.exchange,
            &binding.queue,
            &binding.routing_key,
            &binding.arguments,
        );
        inner
            .backend
            .remove_binding(
                &binding.exchange,
                &StoredBinding {
                    queue: binding.queue.clone(),
                    routing_key: binding.routing_key.clone(),
                    arguments: binding.arguments.clone(),
                },
            )
            .await
    }

    async fn purge_queue(&self, queue: &str) -> Result<u64> {
        self.inner.ensure_open()?;
        self.inner.backend.purge(queue).await
    }

    async fn delete_queue(&self, queue: &str, options: DeleteQueueOptions) -> Result<u64> {
        let inner = &self.inner;
        inner.ensure_open()?;
        let size = inner.backend.size(queue).await?;
        if options.if_empty && size > 0 {
            return Err(
                Error::new(ErrorKind::PreconditionFailed, "queue is not empty (if_empty)")
                    .with_context("queue", queue)
                    .with_context("messages", size),
            );
        }
        {
            let mut consumers = inner.lock_consumers();
            if options.if_unused && consumers.iter().any(|c| &*c.queue == queue) {
                return Err(
                    Error::new(ErrorKind::PreconditionFailed, "queue has consumers (if_unused)")
                        .with_context("queue", queue),
                );
            }
            // AMQP cancels the consumers of a deleted queue.
            consumers.retain(|c| &*c.queue != queue);
        }
        inner.consumers_version.fetch_add(1, Ordering::AcqRel);
        for (exchange, routing_key, arguments) in inner.state.bindings_of(queue) {
            inner
                .backend
                .remove_binding(
                    &exchange,
                    &StoredBinding {
                        queue: queue.to_owned(),
                        routing_key,
                        arguments,
                    },
                )
                .await?;
        }
        inner.state.remove_queue(queue);
        inner.backend.delete_queue(queue).await?;
        Ok(size)
    }

    /// Written out (not `async fn`) so that the synchronous part of a publish — the size
    /// check, the envelope, routing over local declarations — runs before the boxed future
    /// is built: the future then holds only what crosses an await (the envelope and its
    /// queues), a fraction of what the whole body would keep, and a publish to a backend
    /// that stores no bindings costs one small allocation instead of a 2 KiB one.
    fn publish<'life0, 'async_trait>(
        &'life0 self,
        message: RawMessage,
        options: PublishOptions,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let inner = &*self.inner;
        match inner.prepare_publish(message, options) {
            Err(e) => Box::pin(std::future::ready(Err(e))),
            Ok(Prepared::Dropped) => Box::pin(Published),
            Ok(Prepared::Routed(envelope, RouteTarget::Queues(queues))) if queues.len() == 1 => {
                match inner.backend.put_now(&queues[0], envelope) {
                    PutNow::Done(Ok(())) => Box::pin(Published),
                    PutNow::Done(Err(e)) => Box::pin(std::future::ready(Err(e))),
                    PutNow::NeedsAwait(envelope) => {
                        Box::pin(inner.deliver(envelope, RouteTarget::Queues(queues)))
                    }
                }
            }
            Ok(Prepared::Routed(envelope, target)) => Box::pin(inner.deliver(envelope, target)),
            Ok(Prepared::RouteWithStored(envelope, options)) => {
                Box::pin(inner.publish_with_stored(envelope, options))
            }
        }
    }

    async fn get(&self, queue: &str, options: GetOptions) -> Result<Option<Delivery>> {
        let inner = &self.inner;
        inner.ensure_open()?;
        let queue: Arc<str> = Arc::from(queue);
        let Some(claimed) = inner.backend.get(&queue).await? else {
            return Ok(None);
        };
        let (delivery, receipt) = inner.make_delivery(&queue, claimed, None, options.no_ack);
        inner.settle_no_ack(&queue, receipt).await;
        Ok(Some(delivery))
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<ConsumerHandle> {
        let inner = &self.inner;
        inner.ensure_open()?;
        let tag = if options.consumer_tag.is_empty() {
            format!("amq.ctag-{}", uuid::Uuid::new_v4().simple())
        } else {
            options.consumer_tag.clone()
        };
        let (sender, receiver) = handoff(CONSUMER_BUFFER, inner.wakeup.clone());
        {
            let mut consumers = inner.lock_consumers();
            if consumers.iter().any(|c| *c.tag == *tag) {
                return Err(
                    Error::new(ErrorKind::InvalidArgument, "consumer tag already in use")
                        .with_context("consumer_tag", &tag),
                );
            }
            consumers.push(Arc::new(ConsumerEntry {
                tag: Arc::from(tag.as_str()),
                queue: Arc::from(queue),
                no_ack: options.no_ack,
                sender,
            }));
        }
        inner.consumers_version.fetch_add(1, Ordering::AcqRel);
        inner.start_dispatcher();
        inner.wakeup.notify_one();
        Ok(ConsumerHandle {
            consumer_tag: tag,
            deliveries: Box::pin(receiver),
        })
    }

    async fn cancel(&self, consumer_tag: &str) -> Result<()> {
        let inner = &self.inner;
        inner.lock_consumers().retain(|c| &*c.tag != consumer_tag);
        inner.consumers_version.fetch_add(1, Ordering::AcqRel);
        inner.wakeup.notify_one();
        Ok(())
    }

    async fn qos(&self, options: QosOptions) -> Result<()> {
        self.inner.ensure_open()?;
        self.inner
            .prefetch
            .store(options.prefetch_count, Ordering::Release);
        self.inner.wakeup.notify_one();
        Ok(())
    }

    async fn recover(&self, requeue: bool) -> Result<()> {
        self.inner.ensure_open()?;
        if !requeue {
            return Err(Error::unsupported(
                "recover(requeue=false) on a virtual transport (as in Kombu)",
            ));
        }
        self.inner.restore_all_unacked().await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }

    fn is_open(&self) -> bool {
        self.inner.open.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_backoff_doubles_up_to_the_polling_interval() {
        let second = Duration::from_secs(1);
        assert_eq!(idle_backoff(second, 0), Duration::from_millis(10));
        assert_eq!(idle_backoff(second, 1), Duration::from_millis(20));
        assert_eq!(idle_backoff(second, 6), Duration::from_millis(640));
        assert_eq!(idle_backoff(second, 7), second);
        assert_eq!(idle_backoff(second, u32::MAX), second);
        assert_eq!(
            idle_backoff(Duration::from_millis(5), 0),
            Duration::from_millis(5)
        );
    }
}
