//! The long-running consumer: Kombu's `ConsumerMixin`, done so a service can run it for weeks.
//!
//! A [`Worker`] consumes one or many queues and runs an async handler per message, at most
//! [`concurrency`](WorkerBuilder::concurrency) at a time. What the handler returns decides the
//! message's fate ([`Outcome`]). Around that loop it handles what every service otherwise
//! writes (and gets wrong) itself:
//!
//! * **Poison messages** — a body that cannot be decompressed or deserialized, or a content
//!   type outside the `accept` list — are parked per [`Poison`] (never dropped) and consumption
//!   goes on. A stored envelope the transport cannot parse is parked by the transport and
//!   reported here as an [`Incident::Malformed`].
//! * **Handler failures** (an error that is not about the message, a panic) apply the
//!   [`on_failure`](WorkerBuilder::on_failure) outcome: by default the message comes back a
//!   second later.
//! * **A lost broker**: the consumer is rebuilt on a new connection (across the failover list)
//!   with the [`reconnect_policy`](WorkerBuilder::reconnect_policy); queues are declared again.
//! * **Stopping** ([`WorkerHandle`], or SIGINT/SIGTERM with
//!   [`WorkerHandle::shutdown_on_signals`]): no new message is taken, running handlers get the
//!   [`drain_timeout`](WorkerBuilder::drain_timeout) to finish, and every delivery still held
//!   — prefetched, unfinished, waiting to be requeued — goes back to the broker at once by
//!   closing the channel, on every transport (none waits out a visibility timeout). An
//!   immediate stop skips the drain.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu::Result<()> {
//! use kombu::{Connection, Outcome, PublishOptions, Queue, Worker};
//!
//! let conn = Connection::new("memory:///worker-doc")?;
//! conn.producer().publish(&serde_json::json!({"n": 1}), PublishOptions::new().routing_key("jobs").declare(Queue::new("jobs"))).await?;
//!
//! let worker = Worker::builder(&conn, [Queue::new("jobs")])
//!     .concurrency(4)
//!     .build(|message| async move {
//!         let job: serde_json::Value = message.decode()?; // a bad body: parked, not retried
//!         assert_eq!(job["n"], 1);
//!         Ok(Outcome::Ack)
//!     });
//! let handle = worker.handle();
//! let running = tokio::spawn(worker.run());
//! while handle.report().acked < 1 {
//!     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
//! }
//! handle.shutdown();
//! let report = running.await.expect("the worker task")?;
//! assert_eq!((report.handled, report.acked), (1, 1));
//! # Ok(()) }
//! ```

mod limit;
mod outcome;
mod report;
mod running;
mod shutdown;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use kombu_core::transport::RawPublishOptions;
use kombu_core::{Error, ErrorKind, Queue, Result, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

pub use outcome::{Outcome, Poison};
pub use report::{Incident, WorkerReport};
pub use shutdown::WorkerHandle;

use crate::connection::Connection;
use crate::consumer::Consumer;
use crate::message::{Accept, Message};
use crate::observe;
use crate::retry::RetryPolicy;
use limit::Limit;
use outcome::is_poison;
use report::Counters;
use running::{Finished, Running};
use shutdown::{reached, Stop};

type Handler = Box<dyn Fn(Arc<Message>) -> BoxFuture<'static, Result<Outcome>> + Send + Sync>;
type IncidentHook = Box<dyn Fn(&Incident<'_>) + Send + Sync>;

/// Configures a [`Worker`]; start with [`Worker::builder`] or [`Connection::worker`].
pub struct WorkerBuilder {
    connection: Connection,
    queues: Vec<Queue>,
    accept: Accept,
    concurrency: usize,
    prefetch_count: Option<u16>,
    limit: Option<u64>,
    no_ack: bool,
    poison: Poison,
    on_failure: Outcome,
    drain_timeout: Duration,
    reconnect_policy: RetryPolicy,
    on_incident: Option<IncidentHook>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("queues", &self.queues.iter().map(|q| &q.name).collect::<Vec<_>>())
            .field("concurrency", &self.concurrency)
            .field("prefetch_count", &self.prefetch_count)
            .field("limit", &self.limit)
            .field("no_ack", &self.no_ack)
            .field("poison", &self.poison)
            .field("on_failure", &self.on_failure)
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    pub(crate) fn new(connection: &Connection, queues: impl IntoIterator<Item = Queue>) -> Self {
        WorkerBuilder {
            connection: connection.clone(),
            queues: queues.into_iter().collect(),
            accept: Accept::default(),
            concurrency: 1,
            prefetch_count: None,
            limit: None,
            no_ack: false,
            poison: Poison::default(),
            on_failure: Outcome::RETRY_LATER,
            drain_timeout: Duration::from_secs(30),
            reconnect_policy: RetryPolicy::default(),
            on_incident: None,
        }
    }

    /// Handlers running at once (default 1: messages are handled one after another, in the
    /// order delivered).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Deliveries the broker may hand over ahead of the handlers (default: the concurrency).
    pub fn prefetch_count(mut self, n: u16) -> Self {
        self.prefetch_count = Some(n);
        self
    }

    /// Take at most `n` messages, then stop once their handlers are done. The prefetch
    /// shrinks as the end nears, so no message beyond the `n`th is ever taken from the broker
    /// (and none is given back marked redelivered).
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// At-most-once: the broker forgets each message as it is delivered, so the outcome of
    /// its handler no longer matters and a stop gives nothing back (default: false).
    pub fn no_ack(mut self, no_ack: bool) -> Self {
        self.no_ack = no_ack;
        self
    }

    /// Content types handlers may decode (default: [`Accept::default`]). A message of
    /// another type is poison: it never reaches the handler.
    pub fn accept(mut self, accept: Accept) -> Self {
        self.accept = accept;
        self
    }

    /// Where poison messages go (default: parked in `<queue>.poison`).
    pub fn poison(mut self, poison: Poison) -> Self {
        self.poison = poison;
        self
    }

    /// The outcome of a handler that fails with an error that is not about the message, or
    /// panics (default: [`Outcome::RETRY_LATER`]).
    pub fn on_failure(mut self, outcome: Outcome) -> Self {
        self.on_failure = outcome;
        self
    }

    /// How long a graceful stop waits for running handlers (default 30 s) before giving
    /// their messages back.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How to reconnect when the consumer loses its broker (default: Kombu's
    /// `ensure_connection` policy, retrying forever).
    pub fn reconnect_policy(mut self, policy: RetryPolicy) -> Self {
        self.reconnect_policy = policy;
        self
    }

    /// Called for everything the worker handles on its own (poison, failures, reconnects);
    /// each is logged with `tracing` too.
    pub fn on_incident(mut self, hook: impl Fn(&Incident<'_>) + Send + Sync + 'static) -> Self {
        self.on_incident = Some(Box::new(hook));
        self
    }

    /// The worker, running `handler` for each message.
    pub fn build<F, Fut>(self, handler: F) -> Worker
    where
        F: Fn(Arc<Message>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Outcome>> + Send + 'static,
    {
        let prefetch_count = self
            .prefetch_count
            .unwrap_or_else(|| u16::try_from(self.concurrency).unwrap_or(u16::MAX));
        let handle = WorkerHandle::new();
        Worker {
            shared: Arc::new(Shared {
                connection: self.connection,
                queues: self.queues,
                accept: self.accept,
                concurrency: self.concurrency,
                prefetch_count,
                limit: self.limit,
                no_ack: self.no_ack,
                poison: self.poison,
                on_failure: self.on_failure,
                drain_timeout: self.drain_timeout,
                reconnect_policy: self.reconnect_policy,
                on_incident: self.on_incident,
                handler: Box::new(move |message| Box::pin(handler(message))),
                handle,
            }),
        }
    }
}

/// A long-running consumer that runs a handler per message; see the [module docs](self).
pub struct Worker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field(
                "queues",
                &self.shared.queues.iter().map(|q| &q.name).collect::<Vec<_>>(),
            )
            .field("concurrency", &self.shared.concurrency)
            .finish_non_exhaustive()
    }
}

/// What the worker loop and its handler tasks share.
struct Shared {
    connection: Connection,
    queues: Vec<Queue>,
    accept: Accept,
    concurrency: usize,
    prefetch_count: u16,
    limit: Option<u64>,
    no_ack: bool,
    poison: Poison,
    on_failure: Outcome,
    drain_timeout: Duration,
    reconnect_policy: RetryPolicy,
    on_incident: Option<IncidentHook>,
    handler: Handler,
    handle: WorkerHandle,
}

impl Worker {
    /// Configure a worker consuming `queues` of `connection`.
    pub fn builder(connection: &Connection, queues: impl IntoIterator<Item = Queue>) -> WorkerBuilder {
        WorkerBuilder::new(connection, queues)
    }

    /// A handle that stops the worker and reads its counters while it runs.
    pub fn handle(&self) -> WorkerHandle {
        self.shared.handle.clone()
    }

    /// Consume until stopped; the counts of what was done.
    ///
    /// Returns an error for a broker it cannot reach at the start (after the connection's own
    /// `connect_policy`: a service usually wants its supervisor to know), and later only for
    /// what reconnecting cannot mend (a queue that does not exist, a refused login, the
    /// reconnect policy exhausted) — after giving back every delivery. Stop the worker before
    /// closing its connection: a consumer that ends because its connection closed is
    /// reconnected like one whose broker went away.
    pub async fn run(self) -> Result<WorkerReport> {
        let shared = self.shared;
        let mut stop = shared.handle.subscribe();
        let mut running = Running::default();
        let mut limit = shared.limit.map(|n| Limit::new(n, shared.prefetch_count));
        if limit.as_ref().is_some_and(Limit::reached) {
            return Ok(shared.handle.report());
        }
        let started = tokio::select! {
            biased;
            () = reached(&mut stop, Stop::Graceful) => return Ok(shared.handle.report()),
            started = shared.start_consumer(false, shared.prefetch_now(limit.as_ref())) => started,
        };
        let mut consumer = started?;
        info!(queues = ?consumer.queues().iter().map(|q| &q.name).collect::<Vec<_>>(), concurrency = shared.concurrency, "worker started");
        let outcome = shared
            .consume(&mut consumer, &mut running, &mut limit, &mut stop)
            .await;
        shared.stop(consumer, running, &mut stop).await;
        info!(report = ?shared.handle.report(), "worker stopped");
        outcome.map(|()| shared.handle.report())
    }
}

impl Shared {
    fn incident(&self, incident: Incident<'_>) {
        incident.log();
        if let Some(hook) = &self.on_incident {
            hook(&incident);
        }
    }

    fn counters(&self) -> &Counters {
        self.handle.counters()
    }

    /// A consumer of every queue, on a connection made (or checked) first; with `retry`, failures
    /// that a retry may mend are retried per the reconnect policy.
    async fn start_consumer(&self, retry: bool, prefetch: u16) -> Result<Consumer> {
        let policy = &self.reconnect_policy;
        let started = Instant::now();
        let mut waits = policy.intervals();
        loop {
            let attempt = async {
                if retry {
                    self.connection
                        .ensure_connection(&RetryPolicy::no_retry())
                        .await?;
                }
                self.connection
                    .consumer(self.queues.iter().cloned())
                    .accept_set(self.accept.clone())
                    .prefetch_count(prefetch)
                    .no_ack(self.no_ack)
                    .consume()
                    .await
            };
            let error = match attempt.await {
                Ok(consumer) => return Ok(consumer),
                Err(e) if !retry || !reconnectable(&e) => return Err(e),
                Err(e) => e,
            };
            let wait = waits
                .next()
                .filter(|wait| policy.timeout.is_none_or(|t| started.elapsed() + *wait <= t));
            let Some(wait) = wait else {
                return Err(error.with_context("worker", "reconnect policy exhausted"));
            };
            warn!(error = %error, wait_ms = wait.as_millis() as u64, "worker: reconnect failed, retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// The loop: take a message whenever a handler slot is free, until asked to stop, the
    /// limit is reached and handled, or an error no reconnect mends.
    async fn consume(
        self: &Arc<Self>,
        consumer: &mut Consumer,
        running: &mut Running,
        limit: &mut Option<Limit>,
        stop: &mut watch::Receiver<Stop>,
    ) -> Result<()> {
        // One future for the whole loop: making one per message costs more than a delivery.
        let stopping = reached(stop, Stop::Graceful);
        tokio::pin!(stopping);
        loop {
            let at_limit = limit.as_ref().is_some_and(Limit::reached);
            if at_limit && running.is_empty() {
                return Ok(());
            }
            let room = running.len() < self.concurrency && !at_limit;
            tokio::select! {
                biased;
                () = &mut stopping => return Ok(()),
                Some(finished) = running.next(), if !running.is_empty() => {
                    self.after_handler(finished, running, limit, consumer).await?;
                }
                next = consumer.recv(), if room => match next {
                    Ok(message) => {
                        if let Some(limit) = limit.as_mut() {
                            // Before this message's handler can settle it and free room.
                            match limit.took_one() {
                                _ if limit.reached() => consumer.cancel().await?,
                                Some(prefetch) if !self.no_ack => consumer.qos(prefetch).await?,
                                _ => {}
                            }
                        }
                        if let Some(finished) = self.start_handler(Arc::new(message), running).await {
                            self.after_handler(finished, running, limit, consumer).await?;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Decode => {
                        self.counters().malformed.inc();
                        self.incident(Incident::Malformed { error: &e });
                    }
                    Err(e) if reconnectable(&e) => {
                        self.counters().reconnects.inc();
                        self.incident(Incident::Reconnecting { error: &e });
                        let fresh = tokio::select! {
                            biased;
                            () = &mut stopping => return Ok(()),
                            fresh = self.start_consumer(true, self.prefetch_now(limit.as_ref())) => fresh?,
                        };
                        let lost = std::mem::replace(consumer, fresh);
                        // Its channel is gone with the connection; closing tidies what is left.
                        let _ = lost.close().await;
                    }
                    Err(e) => return Err(e),
                },
            }
        }
    }

    /// The prefetch in force: the limit's, or the configured one.
    fn prefetch_now(&self, limit: Option<&Limit>) -> u16 {
        limit.map_or(self.prefetch_count, Limit::prefetch)
    }

    /// A handler run ended: settle what a panic left, and let a held message widen the
    /// prefetch window of a limited worker.
    async fn after_handler(
        self: &Arc<Self>,
        finished: Finished,
        running: &mut Running,
        limit: &mut Option<Limit>,
        consumer: &mut Consumer,
    ) -> Result<()> {
        let held = self.finished(finished, running);
        if let (true, Some(limit)) = (held && !self.no_ack, limit.as_mut()) {
            if let Some(prefetch) = limit.held_one() {
                consumer.qos(prefetch).await?;
            }
        }
        Ok(())
    }

    /// Start the handler of `message` (in its delivery span and trace context); its end if
    /// it finished without waiting.
    async fn start_handler(
        self: &Arc<Self>,
        message: Arc<Message>,
        running: &mut Running,
    ) -> Option<Finished> {
        let span = observe::delivery_span(&message, message.transport());
        let work = self.clone().process(message.clone()).instrument(span);
        // The handler runs inside the trace context its message carried.
        #[cfg(feature = "opentelemetry")]
        let work = opentelemetry::context::FutureExt::with_context(
            work,
            crate::propagation::extract(message.headers()),
        );
        running
            .start_now(message, self.handle.shared_counters(), work)
            .await
    }

    /// One message: check it, run the handler, settle it as the outcome says.
    async fn process(self: Arc<Self>, message: Arc<Message>) {
        if let Err(refused) = message.check_accept() {
            // Boxed, as every cold path here: the future of each message stays small to move.
            return Box::pin(self.poisoned(&message, refused)).await;
        }
        let stopwatch = observe::Stopwatch::start();
        let result = (self.handler)(message.clone()).await;
        observe::handler_finished(
            message.transport(),
            message.delivery_info().queue(),
            stopwatch.elapsed(),
        );
        self.counters().handled.inc();
        if message.acknowledged() {
            // The handler settled it itself.
            record_outcome(&message);
            return self.counters().count_settled(&message);
        }
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) if is_poison(&e) => return Box::pin(self.poisoned(&message, e)).await,
            Err(e) => {
                record_on_span("error", tracing::field::display(&e));
                self.counters().failed.inc();
                self.incident(Incident::HandlerFailed {
                    message: &message,
                    error: &e,
                });
                self.on_failure
            }
        };
        self.settle(&message, outcome).await;
    }

    async fn settle(&self, message: &Message, outcome: Outcome) {
        let settled = match outcome {
            Outcome::Ack => message.ack().await,
            Outcome::Reject => message.reject(false).await,
            Outcome::Requeue => message.requeue().await,
            Outcome::RequeueAfter(pause) => Box::pin(self.requeue_after(message, pause)).await,
            Outcome::Hold => return record_on_span("outcome", "held"),
        };
        match settled {
            Ok(()) => {
                record_outcome(message);
                self.counters().count_settled(message);
            }
            Err(error) => {
                record_on_span("error", tracing::field::display(&error));
                self.incident(Incident::SettleFailed {
                    message,
                    error: &error,
                });
            }
        }
    }

    /// Hold `message` for `pause`, then requeue it — at once if the worker is stopping.
    async fn requeue_after(&self, message: &Message, pause: Duration) -> Result<()> {
        let mut stop = self.handle.subscribe();
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            // Stopping: give it back now rather than make the stop wait.
            () = reached(&mut stop, Stop::Graceful) => {}
        }
        message.requeue().await
    }

    /// A message no handler can use: parked (then acked) or rejected, per the policy. If it
    /// cannot be parked now, it is given back to try again later: never dropped.
    async fn poisoned(&self, message: &Message, error: Error) {
        let queue = message.delivery_info().queue();
        let parking = self.poison.parking_queue(queue);
        let result = match &parking {
            Some(parking) => match self.park(message, parking, &error).await {
                Ok(()) => message.ack().await,
                Err(park_error) => {
                    self.incident(Incident::SettleFailed {
                        message,
                        error: &park_error,
                    });
                    return self.settle(message, Outcome::RETRY_LATER).await;
                }
            },
            None => message.reject(false).await,
        };
        self.incident(Incident::Poison {
            message,
            error: &error,
            parked_in: parking.as_deref(),
        });
        match result {
            Ok(()) => {
                record_on_span("outcome", "poisoned");
                observe::parked(message.transport(), queue);
                self.counters().poisoned.inc();
            }
            Err(settle_error) => self.incident(Incident::SettleFailed {
                message,
                error: &settle_error,
            }),
        }
    }

    /// Publish an unchanged copy of `message` to `parking`, saying where it came from and why.
    async fn park(&self, message: &Message, parking: &str, error: &Error) -> Result<()> {
        let channel = self.connection.default_channel().await?;
        self.connection
            .maybe_declare_queue(&Queue::new(parking), channel.as_ref())
            .await?;
        let mut copy = message.delivery().message.clone();
        copy.headers.insert(
            "x-kombu-parked-from".into(),
            Value::String(message.delivery_info().queue().to_owned()),
        );
        copy.headers
            .insert("x-kombu-park-reason".into(), Value::String(error.to_string()));
        let mut options = RawPublishOptions::new("", parking);
        options.confirm = true;
        channel.publish(copy, options).await
    }

    /// A handler run ended: if it panicked, apply the failure outcome to its message.
    /// Whether the message was left unsettled ([`Outcome::Hold`]).
    fn finished(self: &Arc<Self>, finished: Finished, running: &mut Running) -> bool {
        let Finished { message, panic } = finished;
        let Some(panic) = panic else {
            return !message.acknowledged();
        };
        let error = Error::new(ErrorKind::Unexpected, format!("the handler panicked: {panic}"));
        self.counters().handled.inc();
        self.counters().failed.inc();
        self.incident(Incident::HandlerFailed {
            message: &message,
            error: &error,
        });
        if !message.acknowledged() {
            let (shared, retry) = (self.clone(), message.clone());
            let work = async move { shared.settle(&retry, shared.on_failure).await };
            running.start(message, self.handle.shared_counters(), work);
        }
        false
    }

    /// Stop consuming, let handlers finish (unless told to stop now), then give every
    /// delivery still held back to the broker by closing the channel.
    async fn stop(
        self: &Arc<Self>,
        mut consumer: Consumer,
        mut running: Running,
        stop: &mut watch::Receiver<Stop>,
    ) {
        if let Err(e) = consumer.cancel().await {
            debug!(error = %e, "worker: cancelling the consumer failed (its channel is closing anyway)");
        }
        let drain = tokio::time::sleep(self.drain_timeout);
        tokio::pin!(drain);
        while !running.is_empty() {
            tokio::select! {
                biased;
                () = reached(stop, Stop::Now) => break,
                () = &mut drain => {
                    warn!(running = running.len(), "worker: drain timeout passed, abandoning running handlers");
                    break;
                }
                Some(finished) = running.next() => {
                    self.finished(finished, &mut running);
                }
            }
        }
        // Counted as abandoned as they drop.
        running.abandon();
        // Closing restores every unsettled delivery: prefetched, abandoned, waiting to requeue.
        if let Err(e) = consumer.close().await {
            warn!(error = %e, "worker: closing the channel failed; the broker restores unacked messages when the connection goes");
        }
    }
}

/// Record `field` on the current (delivery) span — only when spans are recorded at all:
/// looking the current span up costs more than a memory transport's delivery.
fn record_on_span(field: &str, value: impl tracing::Value) {
    if tracing::level_enabled!(tracing::Level::DEBUG) {
        tracing::Span::current().record(field, value);
    }
}

/// Record how `message` was settled on the current (delivery) span.
fn record_outcome(message: &Message) {
    let outcome = match message.state() {
        crate::MessageState::Acked => "acked",
        crate::MessageState::Rejected => "rejected",
        crate::MessageState::Requeued => "requeued",
        crate::MessageState::Received => return,
    };
    record_on_span("outcome", outcome);
}

/// Whether the consumer ended for a reason a new connection may mend.
fn reconnectable(error: &Error) -> bool {
    error.is_recoverable() || error.kind() == ErrorKind::Closed
}

#[cfg(test)]
mod tests;
