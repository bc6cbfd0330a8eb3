//! The publish side of the virtual channel: size check, envelope, routing (over local
//! declarations, the bindings stored on the broker, or on the broker itself), and appending
//! to the routed queues or the native broadcast.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tracing::debug;

use super::backend::{
    BrokerRouting, NativeFanout, StoredBinding, StoredBindings, StoredRoutes, VirtualBackend,
};
use super::channel::ChannelInner;
use super::state::Routed;
use crate::entity::ExchangeType;
use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};
use crate::message::RawMessage;
use crate::router::CompiledBinding;
use crate::transport::RawPublishOptions;
use crate::value::FieldTable;

impl<B: VirtualBackend> ChannelInner<B> {
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
        kind == Some(ExchangeType::Fanout) && self.backend.native_fanout().is_some()
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
    /// decides). A batch passes `loaded`, so the stored routes of an exchange are read once
    /// for all its messages; a single publish passes `None`.
    async fn route_with_stored(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &RawMessage,
        loaded: Option<&mut LoadedRoutes>,
    ) -> Result<RouteTarget> {
        let mut queues = Vec::new();
        let declared = self.route_declared(exchange, routing_key, &message.headers, &mut queues);
        if self.is_native_fanout(declared) {
            return Ok(RouteTarget::NativeFanout);
        }
        let load = || async {
            match self.backend.stored_bindings() {
                Some(bindings) => bindings.load_bindings(exchange).await,
                None => Ok(None),
            }
        };
        let fresh;
        let stored = match loaded {
            None => {
                fresh = load().await?;
                fresh.as_ref()
            }
            Some(loaded) => {
                if !loaded.contains_key(exchange) {
                    let routes = load().await?;
                    loaded.insert(Arc::from(exchange), routes);
                }
                loaded.get(exchange).and_then(Option::as_ref)
            }
        };
        let Some(stored) = stored else {
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

    /// Publish a batch: every message prepared and routed in order (the routes an exchange
    /// stores on the broker loaded once per exchange for the whole batch), then every copy
    /// for a queue appended with one [`VirtualBackend::put_batch`], in batch order. A native
    /// fanout is broadcast as it comes. One outcome per message: a message fails if its
    /// preparation, routing or any of its copies failed.
    pub(super) async fn publish_batch(&self, batch: Vec<(RawMessage, RawPublishOptions)>) -> Vec<Result<()>> {
        let mut outcomes: Vec<Result<()>> = Vec::with_capacity(batch.len());
        let mut puts: Vec<(Arc<str>, Envelope)> = Vec::with_capacity(batch.len());
        let mut owners: Vec<usize> = Vec::with_capacity(batch.len());
        let mut loaded = LoadedRoutes::new();
        for (index, (message, options)) in batch.into_iter().enumerate() {
            let routed = match self.prepare_publish(message, options) {
                Err(e) => Err(e),
                Ok(Prepared::Dropped) => Ok(None),
                Ok(Prepared::Routed(envelope, target)) => Ok(Some((envelope, target))),
                Ok(Prepared::RouteWithStored(envelope, options)) => self
                    .route_with_stored(
                        &options.exchange,
                        &options.routing_key,
                        &envelope.message,
                        Some(&mut loaded),
                    )
                    .await
                    .and_then(|target| match target {
                        RouteTarget::Queues(queues) if queues.is_empty() => {
                            unroutable(&options).map(|()| None)
                        }
                        target => Ok(Some((envelope, target))),
                    }),
            };
            match routed {
                Err(e) => outcomes.push(Err(e)),
                Ok(None) => outcomes.push(Ok(())),
                Ok(Some((envelope, RouteTarget::NativeFanout))) => {
                    outcomes.push(self.deliver(envelope, RouteTarget::NativeFanout).await);
                }
                Ok(Some((envelope, RouteTarget::Queues(mut queues)))) => {
                    outcomes.push(Ok(()));
                    let Some(last) = queues.pop() else { continue };
                    for queue in queues {
                        puts.push((queue, envelope.clone()));
                        owners.push(index);
                    }
                    puts.push((last, envelope));
                    owners.push(index);
                }
            }
        }
        if puts.is_empty() {
            return outcomes;
        }
        let results = self.backend.put_batch(puts).await;
        let mut results = results.into_iter();
        for owner in owners {
            let result = results.next().unwrap_or_else(|| {
                Err(Error::new(
                    ErrorKind::Unexpected,
                    "the backend's put_batch returned fewer outcomes than puts",
                )
                .with_context("transport", self.backend.name()))
            });
            if let (Err(e), Ok(())) = (result, &outcomes[owner]) {
                outcomes[owner] = Err(e);
            }
        }
        outcomes
    }

    /// Publish to a named exchange through a backend that routes on the broker
    /// ([`BrokerRouting::put_routed`]): one broker call instead of reading the stored
    /// bindings and then appending. `None` when nothing is stored for the exchange or it is a
    /// native fanout (the caller then routes with [`route_with_stored`](Self::route_with_stored)).
    async fn publish_routed_on_broker(
        &self,
        routing: &impl BrokerRouting,
        envelope: &Envelope,
        options: &RawPublishOptions,
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
        let routed = routing
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
pub(super) enum Prepared {
    /// Routed already: append to these queues (or hand to the native fanout).
    Routed(Envelope, RouteTarget),
    /// To a named exchange of a backend that stores bindings: routing needs the broker.
    RouteWithStored(Envelope, RawPublishOptions),
    /// Routed to no queue and not mandatory: nothing to do (AMQP drops it).
    Dropped,
}

impl<B: VirtualBackend> ChannelInner<B> {
    /// Everything of a publish that needs no await: the channel and size checks, the
    /// envelope, and routing when the local declarations decide it.
    pub(super) fn prepare_publish(
        &self,
        message: RawMessage,
        options: RawPublishOptions,
    ) -> Result<Prepared> {
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
        } else if self.backend.stored_bindings().is_some() {
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
    pub(super) fn publish_with_stored(
        &self,
        envelope: Envelope,
        options: RawPublishOptions,
    ) -> impl Future<Output = Result<()>> + Send + '_ {
        async move {
            // This whole future is boxed by `publish` (only on this path), so its awaits are not
            // boxed again.
            if let Some(routing) = self.backend.broker_routing() {
                if let Some(routed) = self
                    .publish_routed_on_broker(routing, &envelope, &options)
                    .await?
                {
                    return routed;
                }
            }
            let target = self
                .route_with_stored(&options.exchange, &options.routing_key, &envelope.message, None)
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
    pub(super) fn deliver(
        &self,
        envelope: Envelope,
        target: RouteTarget,
    ) -> impl Future<Output = Result<()>> + Send + '_ {
        async move {
            match target {
                RouteTarget::NativeFanout => {
                    let Some(fanout) = self.backend.native_fanout() else {
                        return Err(
                            Error::unsupported("native fanout").with_context("exchange", &envelope.exchange)
                        );
                    };
                    let (exchange, routing_key) = (envelope.exchange.clone(), envelope.routing_key.clone());
                    fanout.put_fanout(&exchange, envelope, &routing_key).await
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
pub(super) struct Published;

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
fn unroutable(options: &RawPublishOptions) -> Result<()> {
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

/// The stored routes of each exchange a batch publishes to, read once per batch.
type LoadedRoutes = HashMap<Arc<str>, Option<StoredRoutes>>;

pub(super) enum RouteTarget {
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
