//! Connections: lazy, with retry and failover.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kombu_core::url::parse_failover;
use kombu_core::{
    BrokerUrl, Capabilities, Channel, ConnectOptions, Error, ErrorKind, Exchange, Queue, QueueBinding,
    Result, Transport, TransportOptions,
};
use tracing::{debug, info_span, warn, Instrument};

use crate::consumer::ConsumerBuilder;
use crate::producer::Producer;
use crate::retry::RetryPolicy;
use crate::simple::{SimpleBuffer, SimpleQueue};

/// The order in which alternate URLs are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailoverStrategy {
    /// The next URL in the list, cycling (Kombu's `round-robin`).
    #[default]
    RoundRobin,
    /// A random URL (Kombu's `shuffle`).
    Shuffle,
}

/// An exchange or queue to declare. Shared (`Arc`), so options that carry a `declare` list
/// are cheap to clone per publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Declarable {
    /// An exchange.
    Exchange(Arc<Exchange>),
    /// A queue with its exchange(s) and bindings.
    Queue(Arc<Queue>),
}

impl From<Exchange> for Declarable {
    fn from(e: Exchange) -> Self {
        Declarable::Exchange(Arc::new(e))
    }
}

impl From<Queue> for Declarable {
    fn from(q: Queue) -> Self {
        Declarable::Queue(Arc::new(q))
    }
}

impl From<Arc<Queue>> for Declarable {
    fn from(q: Arc<Queue>) -> Self {
        Declarable::Queue(q)
    }
}

impl From<Arc<Exchange>> for Declarable {
    fn from(e: Arc<Exchange>) -> Self {
        Declarable::Exchange(e)
    }
}

/// The declaration-cache key of an exchange (`None`: its declaration is never cached).
fn exchange_key(exchange: &Exchange) -> Option<(bool, &str)> {
    exchange
        .can_cache_declaration()
        .then_some((false, exchange.name.as_str()))
}

/// The declaration-cache key of a queue (`None`: never cached, e.g. a server-named queue).
fn queue_key(queue: &Queue) -> Option<(bool, &str)> {
    (queue.can_cache_declaration() && !queue.name.is_empty()).then_some((true, queue.name.as_str()))
}

/// Names declared on this connection (Kombu's `declared_entities`).
#[derive(Default)]
struct Declared {
    // Ordered sets: a connection declares a handful of names, and comparing a few strings is
    // cheaper than hashing one on every publish.
    exchanges: BTreeSet<String>,
    queues: BTreeSet<String>,
}

impl Declared {
    fn contains(&self, (is_queue, name): (bool, &str)) -> bool {
        if is_queue {
            self.queues.contains(name)
        } else {
            self.exchanges.contains(name)
        }
    }

    fn insert(&mut self, (is_queue, name): (bool, &str)) {
        if is_queue {
            self.queues.insert(name.to_owned());
        } else {
            self.exchanges.insert(name.to_owned());
        }
    }

    fn clear(&mut self) {
        self.exchanges.clear();
        self.queues.clear();
    }
}

/// Declare an exchange (skipped for the default exchange, `amq.*` and `no_declare`).
pub(crate) async fn declare_exchange(channel: &dyn Channel, exchange: &Exchange) -> Result<()> {
    if exchange.skips_declare() {
        return Ok(());
    }
    channel.declare_exchange(exchange, Default::default()).await
}

/// Declare a queue as Kombu's `Queue.declare` does: its exchanges, the queue, its bindings.
/// Returns the queue name (generated for anonymous queues).
pub(crate) async fn declare_queue(channel: &dyn Channel, queue: &Queue) -> Result<String> {
    if queue.no_declare {
        return Ok(queue.name.clone());
    }
    let bindings = queue.all_bindings();
    for b in &bindings {
        declare_exchange(channel, &b.exchange).await?;
    }
    let ok = channel.declare_queue(queue, Default::default()).await?;
    for b in bindings {
        channel
            .bind_queue(&QueueBinding {
                queue: ok.queue.clone(),
                exchange: b.exchange.name.clone(),
                routing_key: b.routing_key.clone(),
                arguments: b.arguments.clone(),
            })
            .await?;
    }
    Ok(ok.queue)
}

/// Options of a [`Connection`].
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    /// Transport options (Kombu's `transport_options`).
    pub transport_options: TransportOptions,
    /// Per-attempt connect timeout (Kombu default: 5 s).
    pub connect_timeout: Duration,
    /// How alternates are cycled.
    pub failover_strategy: FailoverStrategy,
    /// AMQP heartbeat.
    pub heartbeat: Option<Duration>,
    /// The policy used when a channel is needed and the connection is down (Kombu takes it
    /// from `transport_options`; default: one pass over the alternates).
    pub connect_policy: RetryPolicy,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions {
            transport_options: TransportOptions::new(),
            connect_timeout: Duration::from_secs(5),
            failover_strategy: FailoverStrategy::RoundRobin,
            heartbeat: None,
            connect_policy: RetryPolicy::no_retry(),
        }
    }
}

struct State {
    transport: Option<Arc<dyn Transport>>,
    current: usize,
}

struct Inner {
    /// The default channel. Outside the async `state` lock so the publish hot path reads it
    /// with a plain mutex; cleared whenever the transport is replaced or closed.
    default_channel: Mutex<Option<Arc<dyn Channel>>>,
    urls: Vec<BrokerUrl>,
    options: ConnectionOptions,
    state: tokio::sync::Mutex<State>,
    declared: Mutex<Declared>,
    /// `state.current`, readable without the async lock (for [`Connection::transport_name`]).
    current_url: AtomicUsize,
    /// The transport name of each URL, looked up once it is first asked for.
    transport_names: Box<[OnceLock<&'static str>]>,
}

impl Inner {
    fn new(urls: Vec<BrokerUrl>, options: ConnectionOptions) -> Inner {
        Inner {
            default_channel: Mutex::new(None),
            transport_names: urls.iter().map(|_| OnceLock::new()).collect(),
            urls,
            options,
            state: tokio::sync::Mutex::new(State {
                transport: None,
                current: 0,
            }),
            declared: Mutex::new(Declared::default()),
            current_url: AtomicUsize::new(0),
        }
    }
}

/// A connection to a broker, by URL. Cheap to clone (clones share the connection).
///
/// Lazy, as in Kombu: nothing connects until a channel is needed. A failover list
/// (`"amqp://a//;amqp://b//"`) is tried in turn by [`Connection::ensure_connection`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu::Result<()> {
/// let conn = kombu::Connection::new("memory:///conn-doc")?;
/// assert!(!conn.is_connected());
/// let _channel = conn.channel().await?; // connects
/// assert!(conn.is_connected());
/// assert_eq!(conn.as_uri(false), "memory:///conn-doc");
/// conn.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("urls", &self.inner.urls)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_uri(false))
    }
}

impl Connection {
    /// A connection to `url` (a URL or a `;`-separated failover list) with default options.
    /// Fails only on a malformed URL; nothing connects yet.
    pub fn new(url: &str) -> Result<Connection> {
        Connection::with_options(url, ConnectionOptions::default())
    }

    /// A connection with explicit options.
    pub fn with_options(url: &str, options: ConnectionOptions) -> Result<Connection> {
        crate::install_default_transports();
        let urls = parse_failover(url)?;
        Ok(Connection {
            inner: Arc::new(Inner::new(urls, options)),
        })
    }

    /// A new, unconnected connection with the same URLs and options (Kombu's `clone`).
    pub fn clone_fresh(&self) -> Connection {
        Connection {
            inner: Arc::new(Inner::new(self.inner.urls.clone(), self.inner.options.clone())),
        }
    }

    /// The URLs (first is primary), passwords redacted when displayed.
    pub fn urls(&self) -> &[BrokerUrl] {
        &self.inner.urls
    }

    /// The options.
    pub fn options(&self) -> &ConnectionOptions {
        &self.inner.options
    }

    /// The current URL as text; the password only if `include_password`.
    pub fn as_uri(&self, include_password: bool) -> String {
        let current = self.inner.state.try_lock().map(|s| s.current).unwrap_or(0);
        self.inner.urls[current % self.inner.urls.len()].as_uri(include_password)
    }

    /// Whether a live transport connection exists.
    pub fn is_connected(&self) -> bool {
        self.inner
            .state
            .try_lock()
            .map(|s| s.transport.as_ref().is_some_and(|t| t.is_connected()))
            .unwrap_or(false)
    }

    /// The capabilities of the transport of the current URL (known without connecting).
    pub fn capabilities(&self) -> Result<Capabilities> {
        let current = self.inner.state.try_lock().map(|s| s.current).unwrap_or(0);
        let url = &self.inner.urls[current % self.inner.urls.len()];
        Ok(kombu_core::registry::lookup_url(url)?.capabilities)
    }

    /// The name of the transport of the current URL (its descriptor's: `"memory"`, `"redis"`),
    /// for spans and metric labels: an atomic load once known; `"unknown"` while no registered
    /// transport serves the scheme.
    pub(crate) fn transport_name(&self) -> &'static str {
        let index = self.inner.current_url.load(Ordering::Relaxed) % self.inner.urls.len();
        let cached = &self.inner.transport_names[index];
        if let Some(name) = cached.get() {
            return name;
        }
        // Cached only once found: a transport may be registered after the connection is made.
        match kombu_core::registry::lookup_url(&self.inner.urls[index]) {
            Ok(descriptor) => cached.get_or_init(|| descriptor.name),
            Err(_) => "unknown",
        }
    }

    /// The options the facade connects to `url` with: its query parameters under the
    /// connection's transport options (explicit options win), timeout and heartbeat.
    fn connect_options(&self, url: &BrokerUrl) -> ConnectOptions {
        let mut options = ConnectOptions::new(url.clone());
        options
            .transport_options
            .extend(self.inner.options.transport_options.clone());
        options.connect_timeout = self.inner.options.connect_timeout;
        options.heartbeat = self.inner.options.heartbeat;
        options
    }

    /// The URLs after `index` in round-robin order, cycling, that `descriptor` serves.
    fn alternate_urls<'a>(
        &'a self,
        index: usize,
        descriptor: &'static kombu_core::registry::TransportDescriptor,
    ) -> impl Iterator<Item = &'a BrokerUrl> + 'a {
        let urls = &self.inner.urls;
        (1..urls.len())
            .map(move |step| &urls[(index + step) % urls.len()])
            .filter(move |alternate| {
                kombu_core::registry::lookup_url(alternate).is_ok_and(|d| std::ptr::eq(d, descriptor))
            })
    }

    /// Connect to URL `index` of the list, once.
    ///
    /// The transport is also given the list's other URLs that `descriptor` serves, in
    /// round-robin order after this one (a shuffling connection hands them over in that order
    /// too), so a transport that recovers by itself (AMQP) can reconnect to another broker of
    /// the list without being replaced. URLs of other transports in a mixed list are left
    /// out: only the facade can switch transports, once this one reports itself disconnected.
    async fn connect_once(&self, index: usize) -> Result<Arc<dyn Transport>> {
        let urls = &self.inner.urls;
        let url = &urls[index % urls.len()];
        let descriptor = kombu_core::registry::lookup_url(url)?;
        let alternates = self
            .alternate_urls(index, descriptor)
            .map(|alternate| self.connect_options(alternate));
        let options = self.connect_options(url).with_alternates(alternates);
        let timeout = options.connect_timeout;
        let span = info_span!("kombu.connect", transport = descriptor.name, url = %url);
        match tokio::time::timeout(timeout, (descriptor.connect)(options).instrument(span)).await {
            Ok(result) => result,
            Err(_) => Err(Error::new(ErrorKind::Timeout, "connect timed out")
                .with_context("url", url)
                .with_context("timeout_ms", timeout.as_millis())
                .set_recoverable(true)),
        }
    }

    /// Connect (if not connected), retrying per `policy` and switching to the next alternate
    /// URL after each failure. Errors that retrying cannot fix (bad URL, unknown scheme,
    /// refused credentials) fail at once.
    pub async fn ensure_connection(&self, policy: &RetryPolicy) -> Result<()> {
        let mut state = self.inner.state.lock().await;
        self.ensure_locked(&mut state, policy).await.map(|_| ())
    }

    async fn ensure_locked(&self, state: &mut State, policy: &RetryPolicy) -> Result<Arc<dyn Transport>> {
        if let Some(t) = state.transport.as_ref().filter(|t| t.is_connected()) {
            return Ok(t.clone());
        }
        if state.transport.take().is_some() {
            // Reconnecting: the old channel is gone and declarations must be made again.
            self.set_default_channel(None);
            self.inner
                .declared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
        let started = Instant::now();
        let mut intervals = policy.intervals();
        let n = self.inner.urls.len();
        loop {
            // One pass over every alternate before waiting.
            let mut last_error = None;
            for _ in 0..n {
                let url = self.inner.urls[state.current % n].clone();
                match self.connect_once(state.current % n).await {
                    Ok(t) => {
                        debug!(url = %url, "connected");
                        state.transport = Some(t.clone());
                        return Ok(t);
                    }
                    Err(e) if !e.is_recoverable() => return Err(e),
                    Err(e) => {
                        warn!(url = %url, error = %e, "connection failed, trying the next URL");
                        state.current = match self.inner.options.failover_strategy {
                            FailoverStrategy::RoundRobin => (state.current + 1) % n,
                            FailoverStrategy::Shuffle => fastrand::usize(..n),
                        };
                        self.inner.current_url.store(state.current, Ordering::Relaxed);
                        last_error = Some(e);
                    }
                }
            }
            let Some(last_error) = last_error else {
                return Err(Error::new(ErrorKind::Connection, "no broker URL"));
            };
            let give_up = |e: Error| {
                Error::new(ErrorKind::Connection, "could not connect to any broker URL")
                    .with_context("attempts_s", format!("{:.1}", started.elapsed().as_secs_f64()))
                    .with_source(e)
                    .set_recoverable(true)
            };
            let Some(wait) = intervals.next() else {
                return Err(give_up(last_error));
            };
            if policy.timeout.is_some_and(|t| started.elapsed() + wait > t) {
                return Err(give_up(last_error));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// The live transport, connecting with the connection's `connect_policy` if needed.
    pub async fn transport(&self) -> Result<Arc<dyn Transport>> {
        let mut state = self.inner.state.lock().await;
        self.ensure_locked(&mut state, &self.inner.options.connect_policy)
            .await
    }

    /// A new channel.
    pub async fn channel(&self) -> Result<Arc<dyn Channel>> {
        self.transport().await?.create_channel().await
    }

    /// The connection's shared channel (created on first use, replaced after a reconnect).
    pub async fn default_channel(&self) -> Result<Arc<dyn Channel>> {
        if let Some(c) = self.open_default_channel() {
            return Ok(c);
        }
        // Boxed: connecting is the cold path, and its state would otherwise be most of the
        // future of every caller (a publish awaits this each time).
        Box::pin(self.create_default_channel()).await
    }

    /// The slow path of [`default_channel`](Self::default_channel): connect if needed, then
    /// open the channel.
    async fn create_default_channel(&self) -> Result<Arc<dyn Channel>> {
        let mut state = self.inner.state.lock().await;
        let transport = self
            .ensure_locked(&mut state, &self.inner.options.connect_policy)
            .await?;
        // Another task may have created it while this one waited for the lock.
        if let Some(c) = self.open_default_channel() {
            return Ok(c);
        }
        let channel = transport.create_channel().await?;
        self.set_default_channel(Some(channel.clone()));
        Ok(channel)
    }

    fn open_default_channel(&self) -> Option<Arc<dyn Channel>> {
        self.inner
            .default_channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|c| c.is_open())
            .cloned()
    }

    fn set_default_channel(&self, channel: Option<Arc<dyn Channel>>) {
        *self
            .inner
            .default_channel
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = channel;
    }

    /// A producer publishing through the default channel.
    pub fn producer(&self) -> Producer {
        Producer::new(self)
    }

    /// A [`Worker`](crate::Worker) builder for `queues`: a long-running consumer that runs a
    /// handler per message.
    pub fn worker(&self, queues: impl IntoIterator<Item = Queue>) -> crate::WorkerBuilder {
        crate::WorkerBuilder::new(self, queues)
    }

    /// A consumer builder for `queues`.
    pub fn consumer(&self, queues: impl IntoIterator<Item = Queue>) -> ConsumerBuilder {
        ConsumerBuilder::new(self, queues)
    }

    /// A [`SimpleQueue`] named `name`.
    pub fn simple_queue(&self, name: &str) -> SimpleQueue {
        SimpleQueue::new(self, name)
    }

    /// A [`SimpleBuffer`] named `name`.
    pub fn simple_buffer(&self, name: &str) -> SimpleBuffer {
        SimpleBuffer::new(self, name)
    }

    /// Declare an entity unless this connection already did (Kombu's `maybe_declare`). Returns
    /// whether a declaration was sent.
    pub async fn maybe_declare(&self, entity: &Declarable, channel: &dyn Channel) -> Result<bool> {
        match entity {
            Declarable::Exchange(e) => self.maybe_declare_exchange(e, channel).await,
            Declarable::Queue(q) => self.maybe_declare_queue(q, channel).await,
        }
    }

    /// Whether every entity of `declare` and `exchange` is in the declaration cache: one
    /// look under one lock, so a publish whose declarations are all cached (nearly every
    /// publish) makes no other check.
    pub(crate) fn all_declared(&self, declare: &[Declarable], exchange: Option<&Exchange>) -> bool {
        let declared = self.inner.declared.lock().unwrap_or_else(|p| p.into_inner());
        let cached = |key: Option<(bool, &str)>| key.is_some_and(|key| declared.contains(key));
        exchange.is_none_or(|e| cached(exchange_key(e)))
            && declare.iter().all(|entity| match entity {
                Declarable::Exchange(e) => cached(exchange_key(e)),
                Declarable::Queue(q) => cached(queue_key(q)),
            })
    }

    fn is_declared(&self, key: Option<(bool, &str)>) -> bool {
        key.is_some_and(|key| {
            self.inner
                .declared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(key)
        })
    }

    fn mark_declared(&self, key: Option<(bool, &str)>) {
        if let Some(key) = key {
            self.inner
                .declared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key);
        }
    }

    /// [`maybe_declare`](Self::maybe_declare) for an exchange, without wrapping it.
    pub async fn maybe_declare_exchange(&self, exchange: &Exchange, channel: &dyn Channel) -> Result<bool> {
        let key = exchange_key(exchange);
        if self.is_declared(key) {
            return Ok(false);
        }
        declare_exchange(channel, exchange).await?;
        self.mark_declared(key);
        Ok(true)
    }

    /// [`maybe_declare`](Self::maybe_declare) for a queue, without wrapping it.
    pub async fn maybe_declare_queue(&self, queue: &Queue, channel: &dyn Channel) -> Result<bool> {
        let key = queue_key(queue);
        if self.is_declared(key) {
            return Ok(false);
        }
        declare_queue(channel, queue).await?;
        self.mark_declared(key);
        Ok(true)
    }

    /// Forget cached declarations (after a queue was deleted elsewhere, say).
    pub fn forget_declarations(&self) {
        self.inner
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Close the connection: every channel closes and restores its unacked messages.
    pub async fn close(&self) -> Result<()> {
        let mut state = self.inner.state.lock().await;
        self.set_default_channel(None);
        self.inner
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        match state.transport.take() {
            Some(t) => t.close().await,
            None => Ok(()),
        }
    }

    /// A pool of up to `limit` connections like this one.
    pub fn pool(&self, limit: usize) -> crate::pool::ConnectionPool {
        crate::pool::ConnectionPool::new_connection_pool(self.clone_fresh(), limit)
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn default_channel_is_shared_and_replaced_after_close() {
        let conn = Connection::new("memory:///conn-default-channel").unwrap();
        let a = conn.default_channel().await.unwrap();
        let b = conn.default_channel().await.unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one default channel per connection");
        conn.close().await.unwrap();
        assert!(!a.is_open(), "closing the connection closes its channels");
        let c = conn.default_channel().await.unwrap();
        assert!(c.is_open(), "a closed default channel is never handed out again");
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn alternates_are_the_urls_the_same_transport_serves_in_rotation_order() {
        let conn = Connection::new("memory:///a;sqlite://:memory:;memory:///b;memory:///c").unwrap();
        let memory = kombu_core::registry::lookup("memory").unwrap();
        let paths = |index| {
            conn.alternate_urls(index, memory)
                .map(|u| u.path().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(paths(0), ["/b", "/c"], "the sqlite URL is no alternate of memory");
        assert_eq!(paths(2), ["/c", "/a"]);
        assert_eq!(paths(3), ["/a", "/b"]);
        let single = Connection::new("memory:///only").unwrap();
        assert_eq!(single.alternate_urls(0, memory).count(), 0);
    }
}
