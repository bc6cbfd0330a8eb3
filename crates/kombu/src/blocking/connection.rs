//! The blocking [`Connection`]: the async [`crate::Connection`] and the runtime it runs on.

use std::fmt;
use std::future::Future;

use kombu_core::{BrokerUrl, Capabilities, Queue, Result};

use super::runtime::{ensure_blocking_allowed, InRuntime, Runtime};
use super::{ConsumerBuilder, Producer, SimpleBuffer, SimpleQueue, WorkerBuilder};
use crate::{ConnectionOptions, RetryPolicy};

/// A connection to a broker, by URL, for synchronous code (Kombu's `Connection`). Cheap to
/// clone: clones share the connection and its runtime.
///
/// Lazy, as the async [`crate::Connection`]: nothing connects until a producer, consumer or
/// queue needs a channel. The runtime behind it stops when the last clone — counting those
/// held by the producers, consumers, queues, messages and workers made from it — drops.
///
/// ```
/// let conn = kombu::blocking::Connection::new("memory:///blocking-conn-doc")?;
/// assert!(!conn.is_connected());
/// conn.ensure_connection(&kombu::RetryPolicy::no_retry())?;
/// assert!(conn.is_connected());
/// assert_eq!(conn.as_uri(false), "memory:///blocking-conn-doc");
/// conn.close()?;
/// # Ok::<(), kombu::Error>(())
/// ```
#[derive(Clone)]
pub struct Connection {
    inner: InRuntime<crate::Connection>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("blocking::Connection")
            .field(self.inner.get())
            .finish()
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.inner.get(), f)
    }
}

impl Connection {
    /// A connection to `url` (a URL or a `;`-separated failover list) with default options.
    /// Fails on a malformed URL, or when called inside an async runtime; nothing connects yet.
    pub fn new(url: &str) -> Result<Connection> {
        Connection::with_options(url, ConnectionOptions::default())
    }

    /// A connection with explicit options.
    pub fn with_options(url: &str, options: ConnectionOptions) -> Result<Connection> {
        ensure_blocking_allowed()?;
        let connection = crate::Connection::with_options(url, options)?;
        Ok(Connection {
            inner: InRuntime::new(connection, Runtime::start()?),
        })
    }

    pub(crate) fn runtime(&self) -> &Runtime {
        self.inner.runtime()
    }

    /// The async connection underneath, to use with [`block_on`](Self::block_on) where this
    /// module has no blocking counterpart.
    pub fn as_async(&self) -> &crate::Connection {
        self.inner.get()
    }

    /// Run a future of the async API on this connection's runtime, blocking until it is done.
    /// An [`InvalidArgument`](crate::ErrorKind::InvalidArgument) error instead inside an async
    /// runtime.
    ///
    /// ```
    /// let conn = kombu::blocking::Connection::new("memory:///blocking-block-on-doc")?;
    /// let channel = conn.block_on(conn.as_async().channel())??;
    /// assert!(channel.is_open());
    /// # Ok::<(), kombu::Error>(())
    /// ```
    pub fn block_on<F: Future>(&self, future: F) -> Result<F::Output> {
        self.runtime().block_on(async { Ok(future.await) })
    }

    /// The URLs (first is primary).
    pub fn urls(&self) -> &[BrokerUrl] {
        self.inner.get().urls()
    }

    /// The options.
    pub fn options(&self) -> &ConnectionOptions {
        self.inner.get().options()
    }

    /// The current URL as text; the password only if `include_password`.
    pub fn as_uri(&self, include_password: bool) -> String {
        self.inner.get().as_uri(include_password)
    }

    /// Whether a live transport connection exists.
    pub fn is_connected(&self) -> bool {
        self.inner.get().is_connected()
    }

    /// The capabilities of the transport of the current URL (known without connecting).
    pub fn capabilities(&self) -> Result<Capabilities> {
        self.inner.get().capabilities()
    }

    /// Connect (if not connected), retrying per `policy` and switching to the next alternate
    /// URL after each failure (Kombu's `ensure_connection`).
    pub fn ensure_connection(&self, policy: &RetryPolicy) -> Result<()> {
        self.runtime()
            .block_on(self.inner.get().ensure_connection(policy))
    }

    /// Close the connection: every channel closes and restores its unacked messages. The
    /// connection connects again when next used; its runtime runs until the last clone drops.
    pub fn close(&self) -> Result<()> {
        self.runtime().block_on(self.inner.get().close())
    }

    /// Forget cached declarations (after a queue was deleted elsewhere, say).
    pub fn forget_declarations(&self) {
        self.inner.get().forget_declarations();
    }

    /// A producer publishing through the default channel (Kombu's `conn.Producer()`).
    pub fn producer(&self) -> Producer {
        Producer::new(self.inner.get().producer(), self.runtime().clone())
    }

    /// A consumer builder for `queues` (Kombu's `conn.Consumer(queues)`).
    pub fn consumer(&self, queues: impl IntoIterator<Item = Queue>) -> ConsumerBuilder {
        ConsumerBuilder::new(self.inner.get().consumer(queues), self.runtime().clone())
    }

    /// A [`SimpleQueue`] named `name` (Kombu's `conn.SimpleQueue(name)`).
    pub fn simple_queue(&self, name: &str) -> SimpleQueue {
        SimpleQueue::new(self.inner.get().simple_queue(name), self.runtime().clone())
    }

    /// A [`SimpleBuffer`] named `name` (Kombu's `conn.SimpleBuffer(name)`).
    pub fn simple_buffer(&self, name: &str) -> SimpleBuffer {
        SimpleBuffer::new(self.inner.get().simple_buffer(name), self.runtime().clone())
    }

    /// A [`Worker`](super::Worker) builder for `queues`: a long-running consumer that runs a
    /// synchronous handler per message.
    pub fn worker(&self, queues: impl IntoIterator<Item = Queue>) -> WorkerBuilder {
        WorkerBuilder::new(self.inner.get().worker(queues), self.runtime().clone())
    }
}
