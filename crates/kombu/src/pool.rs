//! Connection and producer pools with a limit and an acquire timeout.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kombu_core::{Error, ErrorKind, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::connection::Connection;
use crate::producer::Producer;

type Factory<T> = Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<T>> + Send>> + Send + Sync>;

struct PoolInner<T> {
    limit: usize,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<T>>,
    factory: Factory<T>,
    acquire_timeout: Option<Duration>,
}

/// A pool of at most `limit` resources (Kombu's `Resource`). Cheap to clone.
pub struct Pool<T: Send + 'static> {
    inner: Arc<PoolInner<T>>,
}

impl<T: Send + 'static> Clone for Pool<T> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

impl<T: Send + 'static> fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("limit", &self.inner.limit)
            .field("available", &self.inner.permits.available_permits())
            .finish()
    }
}

impl<T: Send + 'static> Pool<T> {
    /// A pool creating resources with `factory`.
    pub fn new<F, Fut>(limit: usize, factory: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        Pool {
            inner: Arc::new(PoolInner {
                limit,
                permits: Arc::new(Semaphore::new(limit)),
                idle: Mutex::new(Vec::new()),
                factory: Box::new(move || Box::pin(factory())),
                acquire_timeout: None,
            }),
        }
    }

    /// Fail `acquire` with [`ErrorKind::LimitExceeded`] after waiting this long (default: wait
    /// forever). Must be called before the pool is cloned.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.acquire_timeout = Some(timeout);
        }
        self
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Resources that can be acquired right now without waiting.
    pub fn available(&self) -> usize {
        self.inner.permits.available_permits()
    }

    /// Take a resource (an idle one, or a new one), waiting for a release when the pool is
    /// exhausted. It goes back to the pool when the guard drops.
    pub async fn acquire(&self) -> Result<Pooled<T>> {
        let permits = self.inner.permits.clone();
        let permit = match self.inner.acquire_timeout {
            None => permits.acquire_owned().await,
            Some(t) => tokio::time::timeout(t, permits.acquire_owned())
                .await
                .map_err(|_| {
                    Error::new(
                        ErrorKind::LimitExceeded,
                        "pool exhausted: no resource released in time",
                    )
                    .with_context("limit", self.inner.limit)
                    .with_context("timeout_ms", t.as_millis())
                })?,
        }
        .map_err(|_| Error::new(ErrorKind::Closed, "pool is closed"))?;
        let idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let item = match idle {
            Some(item) => item,
            None => (self.inner.factory)().await?,
        };
        Ok(Pooled {
            item: Some(item),
            pool: self.inner.clone(),
            _permit: permit,
        })
    }
}

/// A resource on loan from a [`Pool`].
pub struct Pooled<T: Send + 'static> {
    item: Option<T>,
    pool: Arc<PoolInner<T>>,
    _permit: OwnedSemaphorePermit,
}

impl<T: Send + 'static> Pooled<T> {
    /// Do not return the resource to the pool (it was broken); a new one will be made.
    pub fn discard(mut self) {
        self.item = None;
    }
}

impl<T: Send + fmt::Debug + 'static> fmt::Debug for Pooled<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pooled").field(&self.item).finish()
    }
}

impl<T: Send + 'static> Deref for Pooled<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // Only `discard` (which consumes the guard) takes the item out.
        match &self.item {
            Some(item) => item,
            None => unreachable!("pooled item taken before drop"),
        }
    }
}

impl<T: Send + 'static> Drop for Pooled<T> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(item);
        }
    }
}

/// A pool of connections to the same broker.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu::Result<()> {
/// use std::time::Duration;
/// let pool = kombu::Connection::new("memory:///pool-doc")?.pool(2).acquire_timeout(Duration::from_millis(10));
/// let a = pool.acquire().await?;
/// let _b = pool.acquire().await?;
/// assert_eq!(pool.acquire().await.unwrap_err().kind(), kombu::ErrorKind::LimitExceeded);
/// drop(a);
/// assert!(pool.acquire().await.is_ok());
/// # Ok(()) }
/// ```
pub type ConnectionPool = Pool<Connection>;

impl Pool<Connection> {
    /// Up to `limit` connections cloned (unconnected) from `template`.
    pub fn for_connection(template: Connection, limit: usize) -> Self {
        Pool::new(limit, move || {
            let c = template.clone_fresh();
            async move { Ok(c) }
        })
    }
}

impl ConnectionPool {
    pub(crate) fn new_connection_pool(template: Connection, limit: usize) -> Self {
        Pool::for_connection(template, limit)
    }
}

/// A pool of producers, each on its own connection.
pub type ProducerPool = Pool<Producer>;

impl Pool<Producer> {
    /// Up to `limit` producers, each on a fresh connection cloned from `template`.
    pub fn for_producers(template: Connection, limit: usize) -> Self {
        Pool::new(limit, move || {
            let p = template.clone_fresh().producer();
            async move { Ok(p) }
        })
    }
}
