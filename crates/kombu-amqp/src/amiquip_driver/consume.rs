//! The consume side of a worker: consumers, `basic.get`, acks, QoS and recover.
//!
//! Deliveries and their acks share the consume channel, as AMQP requires. Each delivery
//! that needs settling leaves its amiquip `Delivery` (body and properties moved out) in
//! [`Tracking`], keyed by delivery tag: an ack or reject takes it out and settles it, so a
//! second settle, or one after `recover`, finds nothing and is a `PreconditionFailed` error
//! (an unknown delivery tag, as on every transport) that
//! is never sent — RabbitMQ would answer an unknown tag by closing the channel with 406,
//! taking every consumer on it down.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use crossbeam_channel::Receiver;
use kombu_core::{
    AckHandle, Acknowledger, ConsumeOptions, Delivery, DeliveryInfo, Error, ErrorKind, QosOptions, Result,
};
use tokio::sync::mpsc::UnboundedSender;
use tracing::debug;

use super::convert::{message_from_amqp, table_to_amqp};
use super::errors::{closes_channel, is_connection_loss};
use super::worker::{Worker, WorkerLink};
use crate::errors::Op;

/// One consumer on the consume channel, and where its deliveries go.
pub(crate) struct ConsumerEntry<'c> {
    consumer: amiquip::Consumer<'c>,
    queue: Arc<str>,
    no_ack: bool,
    /// As sent, to consume again the same way after a recovery.
    options: amiquip::ConsumerOptions,
    deliveries: UnboundedSender<Result<Delivery>>,
}

impl ConsumerEntry<'_> {
    /// amiquip's receiver of this consumer's messages (a cheap clone).
    pub(crate) fn receiver(&self) -> Receiver<amiquip::ConsumerMessage> {
        self.consumer.receiver().clone()
    }

    /// Cancel the consumer and hand every message amiquip received for it to `unhanded`,
    /// returning only once amiquip has finished with the consumer.
    ///
    /// amiquip's I/O thread answers a `basic.cancel-ok` in two steps: it wakes the
    /// cancelling call first and only then tells the consumer's receiver that it was
    /// cancelled, and if that receiver is gone by then it treats the send as an internal
    /// error and drops the whole connection ("channel client dropped without being
    /// disconnected"). Dropping an `amiquip::Consumer` right after its `cancel` (as its own
    /// `Drop` does) races that second step, so this keeps a receiver until the consumer's
    /// last message (`ClientCancelled`, or the sender dropped) has arrived. The wait is
    /// bounded in case the connection dies half-way; its I/O thread then drops the sender,
    /// which also ends it.
    pub(crate) fn stop(self, mut unhanded: impl FnMut(amiquip::Delivery)) -> amiquip::Result<()> {
        use amiquip::ConsumerMessage as M;
        const LAST_MESSAGE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
        let receiver = self.receiver();
        let cancelled = self.consumer.cancel();
        drop(self.consumer); // its `Drop` does not cancel a second time
        let give_up_at = std::time::Instant::now() + LAST_MESSAGE_WAIT;
        loop {
            let message = if cancelled.is_ok() {
                receiver.recv_deadline(give_up_at).ok()
            } else {
                // No cancel-ok will come: take what is there, nothing is on its way.
                receiver.try_recv().ok()
            };
            match message {
                Some(M::Delivery(delivery)) => unhanded(delivery),
                // `ClientCancelled` is the last; any other end (or the sender gone) is too.
                _ => break,
            }
        }
        cancelled
    }

    /// What it takes to consume again after the connection was lost; `None` if nobody
    /// reads the stream any more. The amiquip consumer (on the dead channel) is dropped;
    /// what it had received but not handed out is redelivered by the broker.
    pub(crate) fn into_resume(self, tag: Arc<str>) -> Option<Resume> {
        if self.deliveries.is_closed() {
            return None;
        }
        Some(Resume {
            tag,
            queue: self.queue,
            options: self.options,
            deliveries: self.deliveries,
        })
    }
}

/// A consumer between a lost consume channel and its replacement. The kombu-rs tag and the
/// stream's sender survive, so the application keeps one stream across recoveries and the
/// deliveries keep the tag it knows (the broker's tag is amiquip's business).
pub(crate) struct Resume {
    tag: Arc<str>,
    queue: Arc<str>,
    options: amiquip::ConsumerOptions,
    deliveries: UnboundedSender<Result<Delivery>>,
}

/// The deliveries of the current consume channel that wait to be settled.
pub(crate) struct Tracking {
    unsettled: HashMap<u64, amiquip::Delivery>,
    epoch: u64,
    link: Weak<WorkerLink>,
}

impl Tracking {
    pub(crate) fn new(epoch: u64, link: Weak<WorkerLink>) -> Tracking {
        Tracking {
            unsettled: HashMap::new(),
            epoch,
            link,
        }
    }

    /// An amiquip delivery as a kombu-rs one; tracked for settling unless `no_ack`.
    fn delivery(
        &mut self,
        mut delivery: amiquip::Delivery,
        queue: Arc<str>,
        consumer_tag: Option<Arc<str>>,
        no_ack: bool,
    ) -> Delivery {
        let tag = delivery.delivery_tag();
        let message = message_from_amqp(
            std::mem::take(&mut delivery.body),
            &std::mem::take(&mut delivery.properties),
        );
        let info = DeliveryInfo::new(
            std::mem::take(&mut delivery.exchange),
            std::mem::take(&mut delivery.routing_key),
            crate::convert::delivery_tag_text(tag),
            queue,
        )
        .with_redelivered(delivery.redelivered)
        .with_consumer_tag(consumer_tag);
        let ack = match (no_ack, self.link.upgrade()) {
            (false, Some(link)) => {
                self.unsettled.insert(tag, delivery);
                let acknowledger: Arc<dyn Acknowledger> = Arc::new(WorkerAcker {
                    link,
                    epoch: self.epoch,
                });
                Some(AckHandle { acknowledger, tag })
            }
            _ => None,
        };
        Delivery { info, ack, message }
    }
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy)]
enum Settle {
    Ack,
    Reject { requeue: bool },
}

/// Settles deliveries of one consume channel (one epoch) of a worker.
struct WorkerAcker {
    link: Arc<WorkerLink>,
    epoch: u64,
}

impl WorkerAcker {
    async fn settle(&self, tag: u64, how: Settle) -> Result<()> {
        let epoch = self.epoch;
        match self.link.call(move |worker| worker.settle(epoch, tag, how)).await {
            Err(e) if e.kind() == ErrorKind::Closed => Err(channel_gone()),
            other => other,
        }
    }
}

#[async_trait]
impl Acknowledger for WorkerAcker {
    async fn ack(&self, tag: u64) -> Result<()> {
        self.settle(tag, Settle::Ack).await
    }

    async fn reject(&self, tag: u64, requeue: bool) -> Result<()> {
        self.settle(tag, Settle::Reject { requeue }).await
    }
}

/// A delivery of a channel that has closed: its tag died with it, an unknown delivery tag.
fn channel_gone() -> Error {
    Error::new(
        ErrorKind::PreconditionFailed,
        "the channel that delivered this message has closed; the broker delivers it again",
    )
}

impl<'c> Worker<'c> {
    /// The consume channel, opened (with the channel's QoS) on first use.
    fn consume_channel(&mut self) -> Result<&'c amiquip::Channel> {
        if let Some(channel) = self.consume.get() {
            return Ok(channel);
        }
        let (channel, generation) = self.core.connection.open_channel_blocking()?;
        // QoS is per channel: a channel of a recovered connection gets it again here.
        if let Some(qos) = self.core.qos {
            channel
                .qos(0, qos.prefetch_count, qos.global)
                .map_err(|e| self.core.connection.state.observe(Op::Qos, e))?;
        }
        self.consume_generation = generation;
        Ok(self.consume.get_or_init(|| channel))
    }

    /// The connection under the consume channel is gone: end the epoch, resuming its
    /// consumers in the next.
    fn connection_lost(&mut self) {
        self.lost = true;
        self.consume_closed = true;
    }

    /// Consume again, on a new consume channel, what the last epoch lost with the
    /// connection. A consumer that cannot be resumed (its queue is gone, recovery gave up)
    /// ends with the error; if the channel closes under the resumption, the rest wait for
    /// the next epoch.
    pub(crate) fn resume_consumers(&mut self) {
        let mut waiting = std::mem::take(&mut self.core.resume).into_iter();
        for resume in waiting.by_ref() {
            if resume.deliveries.is_closed() {
                continue;
            }
            let consumed = match self.resume_one(&resume) {
                // The control channel died with the connection too, and nobody has asked for
                // a new one yet: the retry's request is what recovers the connection.
                Err(e) if e.kind() == ErrorKind::Connection && self.core.connection.state.is_usable() => {
                    debug!(error = %e, "amiquip: resuming a consumer on a new connection");
                    self.resume_one(&resume)
                }
                other => other,
            };
            match consumed {
                Ok(consumer) => {
                    debug!(tag = %resume.tag, queue = %resume.queue, "amiquip consumer resumed");
                    self.consumers.insert(
                        resume.tag,
                        ConsumerEntry {
                            consumer,
                            queue: resume.queue,
                            no_ack: resume.options.no_ack,
                            options: resume.options,
                            deliveries: resume.deliveries,
                        },
                    );
                }
                Err(e)
                    if self.lost
                        || (e.kind() == ErrorKind::Connection && self.core.connection.state.is_usable()) =>
                {
                    // Lost again while resuming: this one and the rest try the next epoch,
                    // after the next recovery.
                    debug!(error = %e, "amiquip connection lost while resuming consumers");
                    self.lost = true;
                    self.consume_closed = true;
                    self.core.resume.push(resume);
                    break;
                }
                Err(e) => {
                    let _ = resume.deliveries.send(Err(e));
                    if self.consume_closed {
                        break;
                    }
                }
            }
        }
        self.core.resume.extend(waiting);
    }

    /// Check the queue and consume it again as before.
    fn resume_one(&mut self, resume: &Resume) -> Result<amiquip::Consumer<'c>> {
        self.check_queue(&resume.queue)?;
        let channel = self.consume_channel()?;
        channel
            .basic_consume(&*resume.queue, resume.options.clone())
            .map_err(|e| self.consume_failed(Op::Consume, e))
    }

    /// An error of an operation on the consume channel; a channel the server closed ends
    /// this epoch (its consumers end with the error, the next operation opens a new one;
    /// after a lost connection they are resumed instead).
    fn consume_failed(&mut self, op: Op, error: amiquip::Error) -> Error {
        if closes_channel(&error) {
            self.consume_closed = true;
        }
        if is_connection_loss(&error) {
            self.lost = true;
        }
        self.core.connection.state.observe(op, error)
    }

    /// Check that `queue` exists on the control channel: a `basic.get` or `basic.consume`
    /// on a missing queue would close the consume channel and its consumers with it.
    fn check_queue(&mut self, queue: &str) -> Result<()> {
        self.core.on_control(Op::DeclareQueue, |channel| {
            channel.queue_declare_passive(queue).map(|_| ())
        })
    }

    pub(crate) fn get(&mut self, queue: &str, no_ack: bool) -> Result<Option<Delivery>> {
        self.check_queue(queue)?;
        let channel = self.consume_channel()?;
        match channel.basic_get(queue, no_ack) {
            Ok(Some(got)) => Ok(Some(self.tracking.delivery(
                got.delivery,
                Arc::from(queue),
                None,
                no_ack,
            ))),
            Ok(None) => Ok(None),
            Err(e) => Err(self.consume_failed(Op::Get, e)),
        }
    }

    pub(crate) fn consume(
        &mut self,
        queue: &str,
        tag: Arc<str>,
        options: &ConsumeOptions,
        deliveries: UnboundedSender<Result<Delivery>>,
    ) -> Result<()> {
        if self.consumers.contains_key(&tag) {
            return Err(Error::new(
                ErrorKind::PreconditionFailed,
                format!("consumer tag {tag:?} is already in use on this channel"),
            ));
        }
        let arguments = table_to_amqp(&options.arguments)?;
        self.check_queue(queue)?;
        let channel = self.consume_channel()?;
        let consumer_options = amiquip::ConsumerOptions {
            no_local: false,
            no_ack: options.no_ack,
            exclusive: options.exclusive,
            arguments,
        };
        // amiquip lets the broker name the consumer; deliveries carry the kombu-rs tag.
        let consumer = channel
            .basic_consume(queue, consumer_options.clone())
            .map_err(|e| self.consume_failed(Op::Consume, e))?;
        self.consumers.insert(
            tag,
            ConsumerEntry {
                consumer,
                queue: Arc::from(queue),
                no_ack: options.no_ack,
                options: consumer_options,
                deliveries,
            },
        );
        Ok(())
    }

    /// Stop a consumer. What amiquip received for it but was not handed out yet goes back
    /// to the queue (those messages were never seen by the application).
    pub(crate) fn cancel(&mut self, tag: &str) -> Result<()> {
        self.core.resume.retain(|resume| &*resume.tag != tag);
        let Some(entry) = self.consumers.remove(tag) else {
            return Ok(());
        };
        let channel = self.consume.get();
        let no_ack = entry.no_ack;
        let cancelled = entry.stop(|delivery| {
            if let (Some(channel), false) = (channel, no_ack) {
                if let Err(e) = delivery.nack(channel, true) {
                    debug!(error = %e, "amiquip: requeueing an undelivered message failed");
                }
            }
        });
        cancelled.map_err(|e| self.consume_failed(Op::Cancel, e))
    }

    pub(crate) fn qos(&mut self, qos: QosOptions) -> Result<()> {
        self.core.qos = Some(qos);
        let channel = self.consume_channel()?;
        channel
            .qos(0, qos.prefetch_count, qos.global)
            .map_err(|e| self.consume_failed(Op::Qos, e))
    }

    pub(crate) fn recover(&mut self) -> Result<()> {
        let Some(channel) = self.consume.get() else {
            return Ok(()); // nothing was ever delivered on this channel
        };
        channel
            .recover(true)
            .map_err(|e| self.consume_failed(Op::Recover, e))?;
        self.tracking.unsettled.clear();
        Ok(())
    }

    fn settle(&mut self, epoch: u64, tag: u64, how: Settle) -> Result<()> {
        let channel = match self.consume.get() {
            Some(channel) if epoch == self.tracking.epoch => channel,
            _ => return Err(channel_gone()),
        };
        let Some(delivery) = self.tracking.unsettled.remove(&tag) else {
            return Err(Error::new(
                ErrorKind::PreconditionFailed,
                "unknown delivery tag: the message was already settled, or requeued by recover",
            )
            .with_context("delivery_tag", tag));
        };
        let settled = match how {
            Settle::Ack => delivery.ack(channel),
            Settle::Reject { requeue } => delivery.reject(channel, requeue),
        };
        settled.map_err(|e| {
            if is_connection_loss(&e) {
                self.connection_lost();
                channel_gone().with_source(e)
            } else if closes_channel(&e) {
                self.consume_closed = true;
                channel_gone().with_source(e)
            } else {
                self.core.connection.state.observe(Op::Ack, e)
            }
        })
    }

    /// A message from consumer `tag`'s amiquip receiver (`None`: the receiver closed).
    pub(crate) fn on_consumer_message(&mut self, tag: &Arc<str>, message: Option<amiquip::ConsumerMessage>) {
        use amiquip::ConsumerMessage as M;
        let ending = match message {
            Some(M::Delivery(delivery)) => {
                let Some(entry) = self.consumers.get(tag) else {
                    return;
                };
                let delivery = self.tracking.delivery(
                    delivery,
                    Arc::clone(&entry.queue),
                    Some(Arc::clone(tag)),
                    entry.no_ack,
                );
                let Err(unread) = entry.deliveries.send(Ok(delivery)) else {
                    return;
                };
                // Nobody reads this consumer any more: give the message back, stop it.
                if let Ok(delivery) = unread.0 {
                    if let Some(handle) = delivery.ack {
                        let _ =
                            self.settle(self.tracking.epoch, handle.tag, Settle::Reject { requeue: true });
                    }
                }
                if let Err(e) = self.cancel(tag) {
                    debug!(error = %e, "amiquip: cancelling an unread consumer failed");
                }
                return;
            }
            Some(M::ServerCancelled) => {
                let queue = self.consumers.get(tag).map(|entry| Arc::clone(&entry.queue));
                Some(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "consumer {tag} ended: queue {:?} no longer exists",
                        queue.as_deref().unwrap_or("")
                    ),
                ))
            }
            Some(M::ServerClosedChannel(e)) => {
                self.consume_closed = true;
                Some(self.core.connection.state.observe(Op::Consume, e))
            }
            Some(M::ClientClosedConnection) | None if self.core.connection.state.is_closed() => {
                Some(Error::new(ErrorKind::Closed, "the amqp connection was closed"))
            }
            // The broker closed the connection (a restart sends 320 CONNECTION_FORCED), the
            // socket went (the receiver disconnects), or a recovery dropped the old
            // connection: the consumer is resumed on the recovered one, not ended.
            Some(M::ServerClosedConnection(e)) => {
                debug!(error = %e, tag = %tag, "amiquip consumer lost its connection; resuming after recovery");
                self.connection_lost();
                return;
            }
            Some(M::ClientClosedConnection) | None => {
                self.connection_lost();
                return;
            }
            Some(M::ClientCancelled | M::ClientClosedChannel) => None,
        };
        if let Some(entry) = self.consumers.remove(tag) {
            if let Some(error) = ending {
                let _ = entry.deliveries.send(Err(error));
            }
        }
    }
}
