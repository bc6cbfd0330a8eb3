//! The kombu-rs channel of the amiquip driver: the async face of a channel worker.
//!
//! Every operation checks and converts its arguments here, on the caller's task (so a bad
//! name or an oversized body is an error before any thread is involved), then runs the
//! blocking amiquip calls as one job on the channel's worker thread and awaits the answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use kombu_core::{
    Capabilities, Channel, ConsumeOptions, ConsumerHandle, DeclareOptions, DeleteExchangeOptions,
    DeleteQueueOptions, Delivery, Error, ErrorKind, Exchange, ExchangeBinding, ExchangeType, GetOptions,
    QosOptions, Queue, QueueBinding, QueueDeclareOk, RawMessage, RawPublishOptions, Result,
};

use super::connection::ConnectionHandle;
use super::control::Outgoing;
use super::convert::{properties_to_amqp, table_to_amqp};
use super::worker::WorkerLink;
use crate::convert::{check_body_size, check_short};
use crate::errors::Op;
use crate::topology::{Declaration, QueueDeclaration};

/// A kombu-rs channel on RabbitMQ through amiquip.
#[derive(Debug)]
pub(crate) struct AmiquipChannel {
    link: Arc<WorkerLink>,
    connection: ConnectionHandle,
    confirm_publish: bool,
    open: AtomicBool,
}

impl AmiquipChannel {
    pub(crate) fn new(connection: ConnectionHandle, confirm_publish: bool) -> Result<AmiquipChannel> {
        Ok(AmiquipChannel {
            link: super::worker::spawn(connection.clone())?,
            connection,
            confirm_publish,
            open: AtomicBool::new(true),
        })
    }

    /// Run `f` on the worker's control channel (see `control`).
    async fn on_control<T, F>(&self, op: Op, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&amiquip::Channel) -> amiquip::Result<T> + Send + 'static,
    {
        self.ensure_open()?;
        self.link.call(move |w| w.core.on_control(op, f)).await
    }

    fn ensure_open(&self) -> Result<()> {
        if !self.open.load(Ordering::Acquire) || self.connection.state.is_closed() {
            return Err(Error::new(ErrorKind::Closed, "the channel is closed"));
        }
        // A lost connection is no reason to refuse: the job's first channel request
        // recovers it (or waits for the recovery under way).
        if self.connection.state.gave_up() {
            return Err(self.connection.state.gave_up_error(&self.connection.display));
        }
        Ok(())
    }
}

pub(super) fn exchange_type(kind: ExchangeType) -> amiquip::ExchangeType {
    match kind {
        ExchangeType::Direct => amiquip::ExchangeType::Direct,
        ExchangeType::Topic => amiquip::ExchangeType::Topic,
        ExchangeType::Fanout => amiquip::ExchangeType::Fanout,
        ExchangeType::Headers => amiquip::ExchangeType::Headers,
    }
}

#[async_trait]
impl Channel for AmiquipChannel {
    fn capabilities(&self) -> Capabilities {
        crate::settings::connection_capabilities(super::AMIQUIP_CAPABILITIES, self.confirm_publish)
    }

    async fn declare_exchange(&self, exchange: &Exchange, options: DeclareOptions) -> Result<()> {
        self.ensure_open()?;
        if exchange.is_default() {
            return Ok(());
        }
        check_short(&exchange.name, "exchange name")?;
        let name = exchange.name.clone();
        if options.passive || exchange.passive {
            return self
                .on_control(Op::DeclareExchange, move |ch| {
                    ch.exchange_declare_passive(&name).map(|_| ())
                })
                .await;
        }
        let kind = exchange_type(exchange.kind);
        let declare_options = amiquip::ExchangeDeclareOptions {
            durable: exchange.durable,
            auto_delete: exchange.auto_delete,
            internal: false,
            arguments: table_to_amqp(&exchange.arguments)?,
        };
        self.on_control(Op::DeclareExchange, move |ch| {
            ch.exchange_declare(kind.clone(), &name, declare_options.clone())
                .map(|_| ())
        })
        .await?;
        self.connection
            .state
            .topology
            .record(Declaration::Exchange(exchange.clone()));
        Ok(())
    }

    async fn delete_exchange(&self, name: &str, options: DeleteExchangeOptions) -> Result<()> {
        check_short(name, "exchange name")?;
        let name = name.to_owned();
        let if_unused = options.if_unused;
        let forget = name.clone();
        self.on_control(Op::DeleteExchange, move |ch| ch.exchange_delete(&name, if_unused))
            .await?;
        self.connection.state.topology.forget_exchange(&forget);
        Ok(())
    }

    async fn declare_queue(&self, queue: &Queue, options: DeclareOptions) -> Result<QueueDeclareOk> {
        self.ensure_open()?;
        check_short(&queue.name, "queue name")?;
        let name = queue.name.clone();
        let passive = options.passive || queue.passive;
        let declare_options = amiquip::QueueDeclareOptions {
            durable: queue.durable,
            exclusive: queue.exclusive,
            auto_delete: queue.auto_delete,
            arguments: table_to_amqp(&queue.declare_arguments())?,
        };
        // Server-named queues ("amq.gen-…") cannot be declared again by name: not recorded.
        let record = (!passive && !queue.name.is_empty()).then(|| {
            Declaration::Queue(QueueDeclaration {
                name: queue.name.clone(),
                durable: queue.durable,
                exclusive: queue.exclusive,
                auto_delete: queue.auto_delete,
                arguments: queue.declare_arguments(),
            })
        });
        let declared = self
            .on_control(Op::DeclareQueue, move |ch| {
                let declared = if passive {
                    ch.queue_declare_passive(&name)?
                } else {
                    ch.queue_declare(&name, declare_options.clone())?
                };
                Ok(QueueDeclareOk {
                    queue: declared.name().to_owned(),
                    message_count: u64::from(declared.declared_message_count().unwrap_or(0)),
                    consumer_count: declared.declared_consumer_count().unwrap_or(0),
                })
            })
            .await?;
        if let Some(declaration) = record {
            self.connection.state.topology.record(declaration);
        }
        Ok(declared)
    }

    async fn bind_queue(&self, binding: &QueueBinding) -> Result<()> {
        let (queue, exchange, key, arguments) = queue_binding(binding)?;
        self.on_control(Op::Bind, move |ch| {
            ch.queue_bind(&queue, &exchange, &key, arguments.clone())
        })
        .await?;
        self.connection
            .state
            .topology
            .record(Declaration::Binding(binding.clone()));
        Ok(())
    }

    async fn unbind_queue(&self, binding: &QueueBinding) -> Result<()> {
        let (queue, exchange, key, arguments) = queue_binding(binding)?;
        self.on_control(Op::Unbind, move |ch| {
            ch.queue_unbind(&queue, &exchange, &key, arguments.clone())
        })
        .await?;
        self.connection
            .state
            .topology
            .forget(&Declaration::Binding(binding.clone()));
        Ok(())
    }

    async fn bind_exchange(&self, binding: &ExchangeBinding) -> Result<()> {
        let (destination, source, key, arguments) = exchange_binding(binding)?;
        self.on_control(Op::Bind, move |ch| {
            ch.exchange_bind(&destination, &source, &key, arguments.clone())
        })
        .await?;
        self.connection
            .state
            .topology
            .record(Declaration::ExchangeBinding(binding.clone()));
        Ok(())
    }

    async fn unbind_exchange(&self, binding: &ExchangeBinding) -> Result<()> {
        let (destination, source, key, arguments) = exchange_binding(binding)?;
        self.on_control(Op::Unbind, move |ch| {
            ch.exchange_unbind(&destination, &source, &key, arguments.clone())
        })
        .await?;
        self.connection
            .state
            .topology
            .forget(&Declaration::ExchangeBinding(binding.clone()));
        Ok(())
    }

    async fn purge_queue(&self, queue: &str) -> Result<u64> {
        check_short(queue, "queue name")?;
        let name = queue.to_owned();
        self.on_control(Op::Purge, move |ch| ch.queue_purge(&name))
            .await
            .map(u64::from)
    }

    async fn delete_queue(&self, queue: &str, options: DeleteQueueOptions) -> Result<u64> {
        check_short(queue, "queue name")?;
        let name = queue.to_owned();
        let delete_options = amiquip::QueueDeleteOptions {
            if_unused: options.if_unused,
            if_empty: options.if_empty,
        };
        let deleted = self
            .on_control(Op::DeleteQueue, move |ch| ch.queue_delete(&name, delete_options))
            .await?;
        self.connection.state.topology.forget_queue(queue);
        Ok(u64::from(deleted))
    }

    async fn publish_batch(&self, batch: Vec<(RawMessage, RawPublishOptions)>) -> Vec<Result<()>> {
        crate::batch::publish_batch(self, &self.connection.state.topology, batch).await
    }

    async fn publish(&self, message: RawMessage, options: RawPublishOptions) -> Result<()> {
        self.ensure_open()?;
        check_body_size(message.body.len())?;
        check_short(options.exchange(), "exchange name")?;
        check_short(options.routing_key(), "routing key")?;
        let outgoing = Outgoing {
            properties: properties_to_amqp(&message)?,
            body: message.body,
            exchange: options.shared_names().0,
            routing_key: options.routing_key().to_owned(),
            mandatory: options.mandatory,
            confirm: options.confirm || self.confirm_publish,
        };
        self.link.call(move |w| w.core.publish(outgoing)).await
    }

    async fn get(&self, queue: &str, options: GetOptions) -> Result<Option<Delivery>> {
        self.ensure_open()?;
        check_short(queue, "queue name")?;
        let name = queue.to_owned();
        let no_ack = options.no_ack;
        self.link.call(move |w| w.get(&name, no_ack)).await
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<ConsumerHandle> {
        self.ensure_open()?;
        check_short(queue, "queue name")?;
        let tag = if options.consumer_tag.is_empty() {
            format!("kombu-rs.{}", uuid::Uuid::new_v4().simple())
        } else {
            options.consumer_tag.clone()
        };
        check_short(&tag, "consumer tag")?;
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let name = queue.to_owned();
        let worker_tag: Arc<str> = Arc::from(tag.as_str());
        self.link
            .call(move |w| w.consume(&name, worker_tag, &options, sender))
            .await?;
        // The stream keeps the worker alive while the application reads it.
        let link = Arc::clone(&self.link);
        let deliveries = futures_util::stream::unfold((receiver, link), |(mut receiver, link)| async move {
            receiver.recv().await.map(|item| (item, (receiver, link)))
        });
        Ok(ConsumerHandle {
            consumer_tag: tag,
            deliveries: Box::pin(deliveries),
        })
    }

    async fn cancel(&self, consumer_tag: &str) -> Result<()> {
        let tag = consumer_tag.to_owned();
        match self.link.call(move |w| w.cancel(&tag)).await {
            Err(e) if e.kind() == ErrorKind::Closed => Ok(()), // the channel closed: consumers ended
            other => other,
        }
    }

    async fn qos(&self, options: QosOptions) -> Result<()> {
        self.ensure_open()?;
        options.refuse_byte_limit("amqp-amiquip")?;
        self.link.call(move |w| w.qos(options)).await
    }

    async fn recover(&self, requeue: bool) -> Result<()> {
        self.ensure_open()?;
        if !requeue {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "RabbitMQ does not implement basic.recover with requeue=false",
            ));
        }
        self.link.call(|w| w.recover()).await
    }

    async fn close(&self) -> Result<()> {
        if !self.open.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        self.link.close().await
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire) && self.connection.state.is_usable()
    }
}

/// The parts of a queue binding as amiquip takes them: queue, exchange, key, arguments
/// (every name checked against AMQP's limit).
fn queue_binding(binding: &QueueBinding) -> Result<(String, String, String, amiquip::FieldTable)> {
    check_short(&binding.queue, "queue name")?;
    check_short(&binding.exchange, "exchange name")?;
    check_short(&binding.routing_key, "routing key")?;
    Ok((
        binding.queue.clone(),
        binding.exchange.clone(),
        binding.routing_key.clone(),
        table_to_amqp(&binding.arguments)?,
    ))
}

/// The parts of an exchange binding as amiquip takes them: destination, source, key,
/// arguments (every name checked against AMQP's limit).
fn exchange_binding(binding: &ExchangeBinding) -> Result<(String, String, String, amiquip::FieldTable)> {
    check_short(&binding.destination, "exchange name")?;
    check_short(&binding.source, "exchange name")?;
    check_short(&binding.routing_key, "routing key")?;
    Ok((
        binding.destination.clone(),
        binding.source.clone(),
        binding.routing_key.clone(),
        table_to_amqp(&binding.arguments)?,
    ))
}
