//! The blocking [`Worker`]: the async [`crate::Worker`] with a synchronous handler, run on
//! the runtime's blocking thread pool so a slow handler never stalls the runtime's thread.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use kombu_core::{Error, ErrorKind, Queue, Result};

use super::runtime::{InRuntime, Runtime};
use super::{Connection, Message};
use crate::{Accept, Incident, Outcome, Poison, RetryPolicy, WorkerHandle, WorkerReport};

/// Configures a blocking [`Worker`]; start with [`Worker::builder`] or
/// [`Connection::worker`]. The options are the async [`crate::WorkerBuilder`]'s.
#[derive(Debug)]
pub struct WorkerBuilder {
    inner: InRuntime<crate::WorkerBuilder>,
}

impl WorkerBuilder {
    pub(crate) fn new(builder: crate::WorkerBuilder, runtime: Runtime) -> Self {
        WorkerBuilder {
            inner: InRuntime::new(builder, runtime),
        }
    }

    fn map(self, f: impl FnOnce(crate::WorkerBuilder) -> crate::WorkerBuilder) -> Self {
        WorkerBuilder {
            inner: self.inner.map(f),
        }
    }

    /// Handlers running at once, each on a thread of the blocking pool (default 1: messages
    /// are handled one after another, in the order delivered).
    pub fn concurrency(self, n: usize) -> Self {
        self.map(|b| b.concurrency(n))
    }

    /// Deliveries the broker may hand over ahead of the handlers (default: the concurrency).
    pub fn prefetch_count(self, n: u16) -> Self {
        self.map(|b| b.prefetch_count(n))
    }

    /// Content types handlers may decode (default: [`Accept::default`]).
    pub fn accept(self, accept: Accept) -> Self {
        self.map(|b| b.accept(accept))
    }

    /// Where poison messages go (default: parked in `<queue>.poison`).
    pub fn poison(self, poison: Poison) -> Self {
        self.map(|b| b.poison(poison))
    }

    /// The outcome of a handler that fails with an error that is not about the message, or
    /// panics (default: [`Outcome::RETRY_LATER`]).
    pub fn on_failure(self, outcome: Outcome) -> Self {
        self.map(|b| b.on_failure(outcome))
    }

    /// How long a graceful stop waits for running handlers (default 30 s).
    pub fn drain_timeout(self, timeout: Duration) -> Self {
        self.map(|b| b.drain_timeout(timeout))
    }

    /// How to reconnect when the consumer loses its broker.
    pub fn reconnect_policy(self, policy: RetryPolicy) -> Self {
        self.map(|b| b.reconnect_policy(policy))
    }

    /// Called for everything the worker handles on its own (poison, failures, reconnects),
    /// on the runtime's thread: keep it short.
    pub fn on_incident(self, hook: impl Fn(&Incident<'_>) + Send + Sync + 'static) -> Self {
        self.map(|b| b.on_incident(hook))
    }

    /// The worker, running `handler` for each message on a thread of the blocking pool.
    ///
    /// The handler's `Ok` outcome settles the message (unless the handler settled it
    /// itself); an error or a panic is handled as the async worker handles it (a decode
    /// error parks the message as poison, any other applies the `on_failure` outcome). The
    /// handler may use the blocking API (publish a result, ack).
    pub fn build<F>(self, handler: F) -> Worker
    where
        F: Fn(&Message) -> Result<Outcome> + Send + Sync + 'static,
    {
        let (builder, runtime) = self.inner.into_parts();
        let handler = Arc::new(handler);
        let for_messages = runtime.clone();
        let worker = builder.build(move |message: Arc<crate::Message>| {
            let handler = handler.clone();
            let message = Message::new(message, for_messages.clone());
            async move {
                match tokio::task::spawn_blocking(move || handler(&message)).await {
                    Ok(result) => result,
                    // The worker turns a handler's panic into a failure: let it see this one.
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(e) => Err(
                        Error::new(ErrorKind::Unexpected, "the blocking handler was cancelled")
                            .with_source(e),
                    ),
                }
            }
        });
        Worker {
            inner: InRuntime::new(worker, runtime),
        }
    }
}

/// A long-running consumer that runs a synchronous handler per message (Kombu's
/// `ConsumerMixin`); see the async [`crate::Worker`] for what it does with poison, failures,
/// a lost broker and stops.
///
/// [`run`](Self::run) blocks the calling thread until the worker is stopped through its
/// [`WorkerHandle`], which works from any thread.
///
/// ```
/// use kombu::blocking::Connection;
/// use kombu::{Outcome, Queue};
///
/// let conn = Connection::new("memory:///blocking-worker-doc")?;
/// let jobs = conn.simple_queue("jobs");
/// for n in 0..3 {
///     jobs.put(&serde_json::json!({ "n": n }))?;
/// }
/// let worker = conn.worker([jobs.queue().clone()]).build(|message| {
///     let job: serde_json::Value = message.decode()?;
///     assert!(job["n"].as_u64().is_some());
///     Ok(Outcome::Ack)
/// });
/// let handle = worker.handle();
/// let stopper = std::thread::spawn(move || {
///     while handle.report().acked < 3 {
///         std::thread::sleep(std::time::Duration::from_millis(5));
///     }
///     handle.shutdown();
/// });
/// let report = worker.run()?;
/// stopper.join().expect("the stopping thread");
/// assert_eq!((report.handled, report.acked), (3, 3));
/// assert_eq!(jobs.qsize()?, 0);
/// # Ok::<(), kombu::Error>(())
/// ```
pub struct Worker {
    inner: InRuntime<crate::Worker>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("blocking::Worker").field(self.inner.get()).finish()
    }
}

impl Worker {
    /// Configure a worker consuming `queues` of `connection`.
    pub fn builder(connection: &Connection, queues: impl IntoIterator<Item = Queue>) -> WorkerBuilder {
        connection.worker(queues)
    }

    /// A handle that stops the worker and reads its counters, from any thread.
    pub fn handle(&self) -> WorkerHandle {
        self.inner.get().handle()
    }

    /// Stop on SIGINT (Ctrl-C) or SIGTERM: the first is a graceful stop, a second one an
    /// immediate stop (the async [`WorkerHandle::shutdown_on_signals`], on this worker's
    /// runtime).
    pub fn shutdown_on_signals(&self) -> Result<()> {
        let _entered = self.inner.runtime().enter();
        self.inner.get().handle().shutdown_on_signals()
    }

    /// Consume until stopped, blocking this thread; the counts of what was done. Errors as
    /// the async [`crate::Worker::run`], and inside an async runtime.
    pub fn run(self) -> Result<WorkerReport> {
        let (worker, runtime) = self.inner.into_parts();
        runtime.block_on(async move { worker.run().await })
    }
}
