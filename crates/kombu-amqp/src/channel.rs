//! A kombu-rs channel over lapin channels.
//!
//! One kombu-rs channel uses two lapin channels, opened lazily:
//!
//! * **control** — declarations, bindings, purges, deletions and publishes. On RabbitMQ a
//!   failed passive declare or a refused redeclaration closes the channel it was sent on
//!   (404/406); the next operation here opens a fresh one, so such an error is an answer,
//!   not the end of the channel as it is in py-amqp.
//! * **consume** — consumers, `basic.get`, acks, QoS and recover, so deliveries and their
//!   acks share one channel, as AMQP requires, and a refused declaration never takes the
//!   consumers down with it.
//!
//! Both are reopened when the session reconnects (a new generation): consumers resume on the
//! re-declared topology, QoS is applied again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::StreamExt as _;
use kombu_core::{
    AckHandle, Acknowledger, Capabilities, Channel, ConsumeOptions, ConsumerHandle, DeclareOptions,
    DeleteExchangeOptions, DeleteQueueOptions, Delivery, DeliveryInfo, Error, ErrorKind, Exchange,
    ExchangeBinding, GetOptions, QosOptions, Queue, QueueBinding, QueueDeclareOk, RawMessage,
    RawPublishOptions, Result,
};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    BasicQosOptions, BasicRecoverOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, ExchangeUnbindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::Confirmation;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::convert::{check_body_size, message_from_amqp, properties_to_amqp, short, table_to_amqp};
use crate::errors::{from_lapin, is_connection_loss, Op};
use crate::session::{declare, exchange_kind, Session};
use crate::topology::{Declaration, QueueDeclaration};

/// Mandatory messages the broker returned on channels without publisher confirms, counted
/// since the process started (see [`crate::returned_messages`]).
pub(crate) static RETURNED_WITHOUT_CONFIRMS: AtomicU64 = AtomicU64::new(0);

/// One open lapin channel and the generation of the connection it belongs to.
#[derive(Clone)]
struct Open {
    channel: lapin::Channel,
    generation: u64,
    /// Settles deliveries of this lapin channel.
    acker: Arc<ChannelAcker>,
    /// Whether publisher confirms are on.
    confirms: bool,
}

impl Open {
    /// Whether this channel belongs to the live connection of `generation` and is open.
    fn usable(&self, generation: u64) -> bool {
        self.generation == generation && self.channel.status().connected()
    }

    /// Report the mandatory messages the broker returned on this channel since the last call,
    /// if it is not in confirm mode: a `basic.return` comes after the publish it answers, and
    /// without a confirm to wait for, that publish has already succeeded; lapin keeps such
    /// returns until asked. In confirm mode a return travels with its confirm instead (and is
    /// a `NotFound` error of its publish), so there is nothing to collect here.
    async fn report_returns(&self) {
        if self.confirms {
            return;
        }
        // Without confirm mode there is nothing pending: this only takes the kept returns.
        match self.channel.wait_for_confirms().await {
            Ok(returned) => {
                for message in returned {
                    RETURNED_WITHOUT_CONFIRMS.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        exchange = %message.delivery.exchange,
                        routing_key = %message.delivery.routing_key,
                        reply_code = message.reply_code,
                        reply_text = %message.reply_text,
                        "amqp broker returned a mandatory message published without confirms: \
                         no queue received it (publish with confirms to get an error instead)"
                    );
                }
            }
            Err(e) => debug!(error = %e, "amqp returned messages could not be collected"),
        }
    }
}

/// A lazily opened lapin channel, reopened when it closed or the connection was replaced.
struct Slot {
    current: Mutex<Option<Open>>,
    opening: tokio::sync::Mutex<()>,
}

impl Slot {
    fn new() -> Self {
        Slot {
            current: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    fn peek(&self) -> Option<Open> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set(&self, open: Option<Open>) {
        *self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = open;
    }
}

/// A registered consumer: the signal that ends its stream.
struct ConsumerEntry {
    cancel: watch::Sender<bool>,
}

/// The state of a kombu-rs channel on RabbitMQ, shared with its consumers' streams.
pub(crate) struct ChannelCore {
    session: Arc<Session>,
    control: Slot,
    consume: Slot,
    qos: Mutex<Option<QosOptions>>,
    consumers: Mutex<HashMap<String, ConsumerEntry>>,
    open: AtomicBool,
}

impl std::fmt::Debug for ChannelCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpChannel")
            .field("session", &self.session)
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A kombu-rs channel on RabbitMQ.
#[derive(Debug)]
pub(crate) struct AmqpChannel(Arc<ChannelCore>);

impl std::ops::Deref for AmqpChannel {
    type Target = ChannelCore;
    fn deref(&self) -> &ChannelCore {
        &self.0
    }
}

impl AmqpChannel {
    pub(crate) fn new(session: Arc<Session>) -> AmqpChannel {
        AmqpChannel(Arc::new(ChannelCore {
            session,
            control: Slot::new(),
            consume: Slot::new(),
            qos: Mutex::new(None),
            consumers: Mutex::new(HashMap::new()),
            open: AtomicBool::new(true),
        }))
    }
}

impl ChannelCore {
    fn ensure_open(&self) -> Result<()> {
        if self.open.load(Ordering::Acquire) && !self.session.is_closed() {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::Closed, "the channel is closed"))
        }
    }

    /// The control channel, with publisher confirms on when `confirms`.
    async fn control(&self, confirms: bool) -> Result<Open> {
        let live = self.session.live().await?;
        if let Some(open) = self.control.peek() {
            if open.usable(live.generation) && (open.confirms || !confirms) {
                return Ok(open);
            }
        }
        let _opening = self.control.opening.lock().await;
        let live = self.session.live().await?;
        let mut open = match self.control.peek() {
            Some(open) if open.usable(live.generation) => open,
            _ => self.open_lapin_channel().await?,
        };
        if confirms && !open.confirms {
            open.channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| from_lapin(Op::OpenChannel, e))?;
            open.confirms = true;
        }
        self.control.set(Some(open.clone()));
        Ok(open)
    }

    /// The consume channel, with the channel's QoS applied.
    async fn consumer_channel(&self) -> Result<Open> {
        let live = self.session.live().await?;
        if let Some(open) = self.consume.peek() {
            if open.usable(live.generation) {
                return Ok(open);
            }
        }
        let _opening = self.consume.opening.lock().await;
        let live = self.session.live().await?;
        if let Some(open) = self.consume.peek() {
            if open.usable(live.generation) {
                return Ok(open);
            }
        }
        let open = self.open_lapin_channel().await?;
        let qos = *self.qos.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(qos) = qos {
            apply_qos(&open.channel, qos).await?;
        }
        self.consume.set(Some(open.clone()));
        Ok(open)
    }

    async fn open_lapin_channel(&self) -> Result<Open> {
        let (channel, generation) = self.session.open_channel().await?;
        Ok(Open {
            acker: Arc::new(ChannelAcker::new(channel.clone())),
            channel,
            generation,
            confirms: false,
        })
    }

    /// Run `op` on the control channel; when the connection was lost before anything was
    /// sent, reconnect and run it once more.
    async fn on_control<T, F, Fut>(&self, op: Op, confirms: bool, f: F) -> Result<T>
    where
        F: Fn(Open) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, lapin::Error>>,
    {
        let open = self.control(confirms).await?;
        match f(open.clone()).await {
            Ok(value) => Ok(value),
            Err(e) if is_connection_loss(&e) || !open.channel.status().connected() && is_state_error(&e) => {
                debug!(error = %e, ?op, "amqp channel unusable; retrying on a fresh one");
                if is_connection_loss(&e) {
                    self.session.recover(open.generation).await?;
                }
                let open = self.control(confirms).await?;
                f(open).await.map_err(|e| from_lapin(op, e))
            }
            Err(e) => Err(from_lapin(op, e)),
        }
    }

    fn deliveries(
        self: &Arc<Self>,
        queue: Arc<str>,
        tag: Arc<str>,
        options: ConsumeOptions,
        consumer: lapin::Consumer,
        open: Open,
        cancelled: watch::Receiver<bool>,
    ) -> kombu_core::DeliveryStream {
        let state = ConsumerLoop {
            channel: Arc::clone(self),
            queue,
            tag,
            options,
            consumer: Some(consumer),
            open,
            cancelled,
        };
        Box::pin(futures_util::stream::unfold(state, |mut state| async move {
            state.next().await.map(|item| (item, state))
        }))
    }

    /// Send a declaration on the control channel and record it for recovery.
    async fn declare_and_record(&self, declaration: Declaration) -> Result<()> {
        let open = self.control(false).await?;
        declare(&open.channel, &declaration).await?;
        self.session.topology.record(declaration);
        Ok(())
    }

    /// Whether `queue` exists (a passive declare on the control channel).
    async fn declare_queue_passive(&self, queue: &str) -> Result<()> {
        let name = short(queue, "queue name")?;
        self.on_control(Op::DeclareQueue, false, |open| {
            let name = name.clone();
            async move {
                let options = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                open.channel
                    .queue_declare(name, options, Default::default())
                    .await
            }
        })
        .await
        .map(|_| ())
    }

    async fn start_consumer(
        &self,
        queue: &str,
        tag: &str,
        options: &ConsumeOptions,
    ) -> Result<(lapin::Consumer, Open)> {
        let open = self.consumer_channel().await?;
        let consume_options = BasicConsumeOptions {
            no_local: false,
            no_ack: options.no_ack,
            exclusive: options.exclusive,
            nowait: false,
        };
        let consumer = open
            .channel
            .basic_consume(
                short(queue, "queue name")?,
                short(tag, "consumer tag")?,
                consume_options,
                table_to_amqp(&options.arguments)?,
            )
            .await
            .map_err(|e| from_lapin(Op::Consume, e))?;
        Ok((consumer, open))
    }
}

fn is_state_error(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::InvalidChannelState(..) | lapin::ErrorKind::InvalidChannel(_)
    )
}

async fn apply_qos(channel: &lapin::Channel, qos: QosOptions) -> Result<()> {
    channel
        .basic_qos(qos.prefetch_count, BasicQosOptions { global: qos.global })
        .await
        .map_err(|e| from_lapin(Op::Qos, e))
}

/// How often a consumer whose stream ended tries to consume again (100 ms apart) before its
/// stream yields the error; connection recovery has its own, longer policy on top.
const RESUME_ATTEMPTS: u32 = 50;

/// The state of one consumer's delivery stream.
struct ConsumerLoop {
    channel: Arc<ChannelCore>,
    queue: Arc<str>,
    tag: Arc<str>,
    options: ConsumeOptions,
    consumer: Option<lapin::Consumer>,
    open: Open,
    cancelled: watch::Receiver<bool>,
}

impl ConsumerLoop {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            if *self.cancelled.borrow() {
                return None;
            }
            let consumer = self.consumer.as_mut()?;
            let item = tokio::select! {
                item = consumer.next() => item,
                _ = self.cancelled.changed() => return None,
            };
            match item {
                Some(Ok(delivery)) => return Some(Ok(self.delivery(delivery))),
                Some(Err(e)) => debug!(error = %e, tag = %self.tag, "amqp consumer interrupted"),
                None => {}
            }
            // The lapin consumer ended: cancelled by us, by the broker (its queue was
            // deleted), or its channel or connection went away.
            self.consumer = None;
            if let Err(e) = self.resume().await? {
                return Some(Err(e));
            }
        }
    }

    /// Consume again after the lapin consumer ended. lapin may end the stream before the
    /// statuses say why, so instead of guessing: a missing queue answers `NotFound`, a dying
    /// connection fails until it is recovered. `None` when the stream should just end
    /// (cancelled, or the channel closed).
    async fn resume(&mut self) -> Option<Result<()>> {
        let mut attempt: u32 = 0;
        loop {
            if *self.cancelled.borrow()
                || !self.channel.open.load(Ordering::Acquire)
                || self.channel.session.is_closed()
            {
                return None;
            }
            if !self.channel.session.is_connected() {
                if let Err(e) = self.channel.session.recover(self.open.generation).await {
                    return Some(Err(e));
                }
            }
            match self.restart().await {
                Ok((consumer, open)) => {
                    debug!(tag = %self.tag, generation = open.generation, "amqp consumer resumed");
                    self.consumer = Some(consumer);
                    self.open = open;
                    return Some(Ok(()));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    let message = format!(
                        "consumer {} ended: queue {:?} no longer exists",
                        self.tag, self.queue
                    );
                    return Some(Err(Error::new(ErrorKind::NotFound, message).with_source(e)));
                }
                Err(e) if attempt < RESUME_ATTEMPTS => {
                    debug!(error = %e, attempt, tag = %self.tag, "amqp consumer not resumed yet");
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Check that the queue exists (on the control channel: a `basic.consume` on a missing
    /// queue would close the consume channel, and with it this channel's other consumers),
    /// then consume from it again under the same tag.
    async fn restart(&self) -> Result<(lapin::Consumer, Open)> {
        self.channel.declare_queue_passive(&self.queue).await?;
        self.channel
            .start_consumer(&self.queue, &self.tag, &self.options)
            .await
    }

    fn delivery(&self, delivery: lapin::message::Delivery) -> Delivery {
        to_delivery(
            delivery,
            Arc::clone(&self.queue),
            Some(Arc::clone(&self.tag)),
            !self.options.no_ack,
            &self.open.acker,
        )
    }
}

/// A lapin delivery (from a consumer or `basic.get`) as a kombu-rs [`Delivery`]; when it
/// needs settling, its tag is tracked by `acker`, the acker of the lapin channel it came on.
fn to_delivery(
    delivery: lapin::message::Delivery,
    queue: Arc<str>,
    consumer_tag: Option<Arc<str>>,
    needs_ack: bool,
    acker: &Arc<ChannelAcker>,
) -> Delivery {
    let tag = delivery.delivery_tag;
    let ack = needs_ack.then(|| {
        acker.track(tag);
        AckHandle {
            acknowledger: acker.clone(),
            tag,
        }
    });
    Delivery {
        info: DeliveryInfo::new(
            delivery.exchange.as_str(),
            delivery.routing_key.as_str(),
            crate::convert::delivery_tag_text(tag),
            queue,
        )
        .with_redelivered(delivery.redelivered)
        .with_consumer_tag(consumer_tag),
        ack,
        message: message_from_amqp(delivery.data, &delivery.properties),
    }
}

/// Settles deliveries on the lapin channel that delivered them.
///
/// It keeps the tags delivered and not yet settled: RabbitMQ answers an ack of an unknown
/// tag (a second ack, or one after `recover` requeued everything) by closing the channel
/// with 406, taking every consumer on it down. Such an ack is refused here, with the
/// `PreconditionFailed` error the broker's 406 would be (as on every transport), and never
/// sent.
struct ChannelAcker {
    channel: lapin::Channel,
    unsettled: Mutex<HashSet<u64>>,
}

impl ChannelAcker {
    fn new(channel: lapin::Channel) -> Self {
        ChannelAcker {
            channel,
            unsettled: Mutex::new(HashSet::new()),
        }
    }

    fn unsettled(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.unsettled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A delivery that needs settling was handed out.
    fn track(&self, tag: u64) {
        self.unsettled().insert(tag);
    }

    /// Claim `tag` for settling; an error if it is not outstanding.
    fn claim(&self, tag: u64) -> Result<()> {
        if self.unsettled().remove(&tag) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::PreconditionFailed,
                "unknown delivery tag: the message was already settled, or requeued by recover",
            )
            .with_context("delivery_tag", tag))
        }
    }

    /// Everything outstanding was requeued (`basic.recover`).
    fn forget_all(&self) {
        self.unsettled().clear();
    }

    fn gone(&self, e: lapin::Error) -> Error {
        if self.channel.status().connected() {
            from_lapin(Op::Ack, e)
        } else {
            // Its tags died with it: an unknown delivery tag, as on every transport.
            Error::new(
                ErrorKind::PreconditionFailed,
                "the channel that delivered this message has closed; the broker delivers it again",
            )
            .with_source(e)
        }
    }
}

#[async_trait]
impl Acknowledger for ChannelAcker {
    async fn ack(&self, tag: u64) -> Result<()> {
        self.claim(tag)?;
        self.channel
            .basic_ack(tag, BasicAckOptions::default())
            .await
            .map_err(|e| self.gone(e))
    }

    async fn reject(&self, tag: u64, requeue: bool) -> Result<()> {
        self.claim(tag)?;
        self.channel
            .basic_reject(tag, BasicRejectOptions { requeue })
            .await
            .map_err(|e| self.gone(e))
    }
}

#[async_trait]
impl Channel for AmqpChannel {
    fn capabilities(&self) -> Capabilities {
        crate::settings::connection_capabilities(crate::CAPABILITIES, self.session.settings.confirm_publish)
    }

    async fn declare_exchange(&self, exchange: &Exchange, options: DeclareOptions) -> Result<()> {
        self.ensure_open()?;
        if exchange.is_default() {
            return Ok(());
        }
        let passive = options.passive || exchange.passive;
        if passive {
            let name = short(&exchange.name, "exchange name")?;
            let kind = exchange_kind(exchange.kind);
            return self
                .on_control(Op::DeclareExchange, false, |open| {
                    let (name, kind) = (name.clone(), kind.clone());
                    async move {
                        let options = ExchangeDeclareOptions {
                            passive: true,
                            ..Default::default()
                        };
                        open.channel
                            .exchange_declare(name, kind, options, Default::default())
                            .await
                    }
                })
                .await;
        }
        self.declare_and_record(Declaration::Exchange(exchange.clone()))
            .await
    }

    async fn delete_exchange(&self, name: &str, options: DeleteExchangeOptions) -> Result<()> {
        self.ensure_open()?;
        let exchange = short(name, "exchange name")?;
        self.on_control(Op::DeleteExchange, false, |open| {
            let exchange = exchange.clone();
            async move {
                let options = ExchangeDeleteOptions {
                    if_unused: options.if_unused,
                    nowait: false,
                };
                open.channel.exchange_delete(exchange, options).await
            }
        })
        .await?;
        self.session.topology.forget_exchange(name);
        Ok(())
    }

    async fn declare_queue(&self, queue: &Queue, options: DeclareOptions) -> Result<QueueDeclareOk> {
        self.ensure_open()?;
        let passive = options.passive || queue.passive;
        let name = short(&queue.name, "queue name")?;
        let arguments = queue.declare_arguments();
        let amqp_arguments = table_to_amqp(&arguments)?;
        let declare_options = QueueDeclareOptions {
            passive,
            durable: queue.durable,
            exclusive: queue.exclusive,
            auto_delete: queue.auto_delete,
            nowait: false,
        };
        let ok = self
            .on_control(Op::DeclareQueue, false, |open| {
                let (name, amqp_arguments) = (name.clone(), amqp_arguments.clone());
                async move {
                    open.channel
                        .queue_declare(name, declare_options, amqp_arguments)
                        .await
                }
            })
            .await?;
        // Server-named queues ("amq.gen-…") cannot be declared again by name: not recorded.
        if !passive && !queue.name.is_empty() {
            self.session.topology.record(Declaration::Queue(QueueDeclaration {
                name: queue.name.clone(),
                durable: queue.durable,
                exclusive: queue.exclusive,
                auto_delete: queue.auto_delete,
                arguments,
            }));
        }
        Ok(QueueDeclareOk {
            queue: ok.name().as_str().to_owned(),
            message_count: u64::from(ok.message_count()),
            consumer_count: ok.consumer_count(),
        })
    }

    async fn bind_queue(&self, binding: &QueueBinding) -> Result<()> {
        self.ensure_open()?;
        self.declare_and_record(Declaration::Binding(binding.clone()))
            .await
    }

    async fn unbind_queue(&self, binding: &QueueBinding) -> Result<()> {
        self.ensure_open()?;
        let queue = short(&binding.queue, "queue name")?;
        let exchange = short(&binding.exchange, "exchange name")?;
        let key = short(&binding.routing_key, "routing key")?;
        let arguments = table_to_amqp(&binding.arguments)?;
        self.on_control(Op::Unbind, false, |open| {
            let (queue, exchange, key, arguments) =
                (queue.clone(), exchange.clone(), key.clone(), arguments.clone());
            async move { open.channel.queue_unbind(queue, exchange, key, arguments).await }
        })
        .await?;
        self.session
            .topology
            .forget(&Declaration::Binding(binding.clone()));
        Ok(())
    }

    async fn bind_exchange(&self, binding: &ExchangeBinding) -> Result<()> {
        self.ensure_open()?;
        self.declare_and_record(Declaration::ExchangeBinding(binding.clone()))
            .await
    }

    async fn unbind_exchange(&self, binding: &ExchangeBinding) -> Result<()> {
        self.ensure_open()?;
        let destination = short(&binding.destination, "exchange name")?;
        let source = short(&binding.source, "exchange name")?;
        let key = short(&binding.routing_key, "routing key")?;
        let arguments = table_to_amqp(&binding.arguments)?;
        self.on_control(Op::Unbind, false, |open| {
            let (destination, source, key, arguments) = (
                destination.clone(),
                source.clone(),
                key.clone(),
                arguments.clone(),
            );
            async move {
                open.channel
                    .exchange_unbind(
                        destination,
                        source,
                        key,
                        ExchangeUnbindOptions::default(),
                        arguments,
                    )
                    .await
            }
        })
        .await?;
        self.session
            .topology
            .forget(&Declaration::ExchangeBinding(binding.clone()));
        Ok(())
    }

    async fn purge_queue(&self, queue: &str) -> Result<u64> {
        self.ensure_open()?;
        let name = short(queue, "queue name")?;
        let count = self
            .on_control(Op::Purge, false, |open| {
                let name = name.clone();
                async move { open.channel.queue_purge(name, QueuePurgeOptions::default()).await }
            })
            .await?;
        Ok(u64::from(count))
    }

    async fn delete_queue(&self, queue: &str, options: DeleteQueueOptions) -> Result<u64> {
        self.ensure_open()?;
        let name = short(queue, "queue name")?;
        let count = self
            .on_control(Op::DeleteQueue, false, |open| {
                let name = name.clone();
                async move {
                    let options = QueueDeleteOptions {
                        if_unused: options.if_unused,
                        if_empty: options.if_empty,
                        nowait: false,
                    };
                    open.channel.queue_delete(name, options).await
                }
            })
            .await?;
        self.session.topology.forget_queue(queue);
        Ok(u64::from(count))
    }

    async fn publish_batch(&self, batch: Vec<(RawMessage, RawPublishOptions)>) -> Vec<Result<()>> {
        crate::batch::publish_batch(self, &self.session.topology, batch).await
    }

    async fn publish(&self, message: RawMessage, options: RawPublishOptions) -> Result<()> {
        self.ensure_open()?;
        check_body_size(message.body.len())?;
        let properties = properties_to_amqp(&message)?;
        let exchange = short(options.exchange(), "exchange name")?;
        let routing_key = short(options.routing_key(), "routing key")?;
        let confirm = options.confirm || self.session.settings.confirm_publish;
        let publish_options = BasicPublishOptions {
            mandatory: options.mandatory,
            immediate: false,
        };
        let pending = self
            .on_control(Op::Publish, confirm, |open| {
                let (exchange, routing_key, properties) =
                    (exchange.clone(), routing_key.clone(), properties.clone());
                let body = message.body.clone();
                async move {
                    open.channel
                        .basic_publish(exchange, routing_key, publish_options, &body, properties)
                        .await
                }
            })
            .await?;
        if !confirm {
            // Returns of earlier publishes on this channel (this one's comes later).
            if let Some(open) = self.control.peek() {
                open.report_returns().await;
            }
            return Ok(());
        }
        match pending.await {
            Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
            Ok(Confirmation::Ack(Some(returned))) | Ok(Confirmation::Nack(Some(returned))) => {
                Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "the broker returned the mandatory message: {} (no queue is bound for it)",
                        returned.reply_text
                    ),
                )
                .with_context("exchange", options.exchange())
                .with_context("routing_key", options.routing_key()))
            }
            Ok(Confirmation::Nack(None)) => Err(Error::new(
                ErrorKind::Channel,
                "the broker refused the message (basic.nack): it was not stored",
            )),
            Err(e) => {
                let lost = is_connection_loss(&e);
                let error = from_lapin(Op::Publish, e);
                Err(if lost {
                    error.with_context(
                        "delivery",
                        "unknown: the connection was lost before the broker confirmed; \
                         the message may or may not have been stored",
                    )
                } else {
                    error
                })
            }
        }
    }

    async fn get(&self, queue: &str, options: GetOptions) -> Result<Option<Delivery>> {
        self.ensure_open()?;
        let name = short(queue, "queue name")?;
        let open = self.consumer_channel().await?;
        let got = open
            .channel
            .basic_get(
                name,
                BasicGetOptions {
                    no_ack: options.no_ack,
                },
            )
            .await
            .map_err(|e| from_lapin(Op::Get, e))?;
        Ok(got.map(|got| to_delivery(got.delivery, Arc::from(queue), None, !options.no_ack, &open.acker)))
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<ConsumerHandle> {
        self.ensure_open()?;
        let tag = if options.consumer_tag.is_empty() {
            format!("kombu-rs.{}", uuid::Uuid::new_v4().simple())
        } else {
            options.consumer_tag.clone()
        };
        let (consumer, open) = self.start_consumer(queue, &tag, &options).await?;
        let (cancel, cancelled) = watch::channel(false);
        self.consumers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(tag.clone(), ConsumerEntry { cancel });
        let deliveries = self.0.deliveries(
            Arc::from(queue),
            Arc::from(tag.as_str()),
            options,
            consumer,
            open,
            cancelled,
        );
        Ok(ConsumerHandle {
            consumer_tag: tag,
            deliveries,
        })
    }

    async fn cancel(&self, consumer_tag: &str) -> Result<()> {
        let entry = self
            .consumers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(consumer_tag);
        let Some(entry) = entry else {
            return Ok(());
        };
        let _ = entry.cancel.send(true);
        if let Some(open) = self.consume.peek() {
            if open.channel.status().connected() {
                open.channel
                    .basic_cancel(
                        short(consumer_tag, "consumer tag")?,
                        BasicCancelOptions::default(),
                    )
                    .await
                    .map_err(|e| from_lapin(Op::Cancel, e))?;
            }
        }
        Ok(())
    }

    async fn qos(&self, options: QosOptions) -> Result<()> {
        self.ensure_open()?;
        options.refuse_byte_limit("amqp")?;
        *self.qos.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(options);
        let open = self.consumer_channel().await?;
        apply_qos(&open.channel, options).await
    }

    async fn recover(&self, requeue: bool) -> Result<()> {
        self.ensure_open()?;
        if !requeue {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "RabbitMQ does not implement basic.recover with requeue=false",
            ));
        }
        let Some(open) = self.consume.peek() else {
            return Ok(()); // nothing was ever delivered on this channel
        };
        open.channel
            .basic_recover(BasicRecoverOptions { requeue: true })
            .await
            .map_err(|e| from_lapin(Op::Recover, e))?;
        open.acker.forget_all();
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        if !self.open.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let consumers: Vec<ConsumerEntry> = self
            .consumers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .drain()
            .map(|(_, entry)| entry)
            .collect();
        for entry in consumers {
            let _ = entry.cancel.send(true);
        }
        if let Some(open) = self.control.peek() {
            if crate::session::bounded_close(open.report_returns())
                .await
                .is_none()
            {
                warn!("amqp returned messages not collected within the close timeout");
            }
        }
        // Closing the channels makes the broker requeue what they had unacked.
        for slot in [&self.control, &self.consume] {
            if let Some(open) = slot.peek() {
                if open.channel.status().connected() {
                    let closing = open.channel.close(200, "kombu-rs channel closed".into());
                    match crate::session::bounded_close(closing).await {
                        Some(Ok(())) => {}
                        Some(Err(e)) => warn!(error = %e, "amqp channel close failed"),
                        None => warn!("amqp channel close not confirmed within the close timeout"),
                    }
                }
            }
            slot.set(None);
        }
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire) && !self.session.is_closed()
    }
}
