//! The runtime behind a blocking [`Connection`](super::Connection): one tokio
//! `current_thread` runtime driven by a thread of its own, shared by every clone of the
//! connection and everything made from it, and stopped (its thread joined) when the last of
//! them drops.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use kombu_core::{Error, ErrorKind, Result};
use tokio::runtime::{EnterGuard, Handle};
use tokio::sync::oneshot;

/// How long the last drop waits for blocking handlers still running before it lets the
/// runtime go without them (their threads then end when the handlers return).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The message of the error every entry point returns inside an async context.
pub(crate) const IN_ASYNC_CONTEXT: &str =
    "kombu::blocking called from inside an async runtime; use the async API";

/// Numbers the runtimes, so a thread knows whose it is.
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// What a thread is to the kombu::blocking runtimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Not one of their threads.
    Foreign,
    /// The thread driving runtime `serial` (async tasks run there).
    Driver(u64),
    /// A thread of runtime `serial`'s blocking pool (where the blocking worker's handlers run).
    Pool(u64),
}

thread_local! {
    static ROLE: Cell<Role> = const { Cell::new(Role::Foreign) };
}

/// `Ok` unless the calling thread is inside an async context, where blocking would stall a
/// runtime (and tokio would panic): there, the typed error every entry point returns.
///
/// The threads of a blocking runtime's pool count as outside: a blocking worker's handler
/// runs there and may publish, settle or open queues through the blocking API.
pub(crate) fn ensure_blocking_allowed() -> Result<()> {
    let pool_thread = matches!(ROLE.with(Cell::get), Role::Pool(_));
    if !pool_thread && Handle::try_current().is_ok() {
        return Err(Error::new(ErrorKind::InvalidArgument, IN_ASYNC_CONTEXT));
    }
    Ok(())
}

/// A shared runtime; cheap to clone. The runtime stops when the last clone drops.
#[derive(Clone)]
pub(crate) struct Runtime {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("serial", &self.shared.serial)
            .finish()
    }
}

struct Shared {
    handle: Handle,
    serial: u64,
    /// Dropping it tells the driver thread to shut the runtime down.
    stop: Option<oneshot::Sender<()>>,
    driver: Option<JoinHandle<()>>,
    /// Threads of this runtime alive now: the driver and the blocking pool's.
    threads: Arc<AtomicUsize>,
}

impl Runtime {
    /// Start a runtime and its driver thread.
    pub(crate) fn start() -> Result<Runtime> {
        ensure_blocking_allowed()?;
        let serial = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed);
        let threads = Arc::new(AtomicUsize::new(0));
        let started = threads.clone();
        let stopped = threads.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(format!("kombu-blocking-{serial}"))
            .on_thread_start(move || {
                ROLE.with(|role| role.set(Role::Pool(serial)));
                started.fetch_add(1, Ordering::SeqCst);
            })
            .on_thread_stop(move || {
                stopped.fetch_sub(1, Ordering::SeqCst);
            })
            .build()
            .map_err(|e| {
                Error::new(ErrorKind::Unexpected, "cannot build the kombu::blocking runtime").with_source(e)
            })?;
        let handle = runtime.handle().clone();
        let (stop, stopping) = oneshot::channel::<()>();
        threads.fetch_add(1, Ordering::SeqCst);
        let driver_threads = threads.clone();
        let driver = std::thread::Builder::new()
            .name(format!("kombu-rt-{serial}"))
            .spawn(move || {
                ROLE.with(|role| role.set(Role::Driver(serial)));
                // Sent or dropped: either way, time to stop.
                runtime.block_on(async {
                    let _ = stopping.await;
                });
                runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
                driver_threads.fetch_sub(1, Ordering::SeqCst);
            });
        let driver = match driver {
            Ok(driver) => driver,
            Err(e) => {
                threads.fetch_sub(1, Ordering::SeqCst);
                return Err(Error::new(
                    ErrorKind::Unexpected,
                    "cannot start the kombu::blocking runtime thread",
                )
                .with_source(e));
            }
        };
        Ok(Runtime {
            shared: Arc::new(Shared {
                handle,
                serial,
                stop: Some(stop),
                driver: Some(driver),
                threads,
            }),
        })
    }

    /// Run `future` to completion from this (blocking) thread; its I/O, timers and the tasks
    /// it spawns are driven by the runtime's thread. The async-context error instead if this
    /// thread is inside an async runtime.
    pub(crate) fn block_on<T>(&self, future: impl Future<Output = Result<T>>) -> Result<T> {
        ensure_blocking_allowed()?;
        self.shared.handle.block_on(future)
    }

    /// Enter the runtime's context (to spawn onto it, or drop what may spawn when dropped).
    pub(crate) fn enter(&self) -> EnterGuard<'_> {
        self.shared.handle.enter()
    }

    /// The count of this runtime's live threads (for tests).
    #[cfg(test)]
    pub(crate) fn thread_count(&self) -> Arc<AtomicUsize> {
        self.shared.threads.clone()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        drop(self.stop.take());
        let own_thread = match ROLE.with(Cell::get) {
            Role::Driver(serial) | Role::Pool(serial) => serial == self.serial,
            Role::Foreign => false,
        };
        if let Some(driver) = self.driver.take() {
            // On one of the runtime's own threads the driver cannot be waited for (it waits
            // for this thread); it ends by itself once told to stop.
            if !own_thread && driver.join().is_err() {
                tracing::warn!(
                    serial = self.serial,
                    "the kombu::blocking runtime thread panicked"
                );
            }
        }
        tracing::debug!(
            serial = self.serial,
            threads_left = self.threads.load(Ordering::SeqCst),
            "kombu::blocking runtime stopped"
        );
    }
}

/// A value whose drop happens inside the runtime's context (async objects may spawn a task
/// when dropped), and which keeps the runtime alive as long as it lives.
pub(crate) struct InRuntime<T> {
    value: Option<T>,
    runtime: Runtime,
}

impl<T> InRuntime<T> {
    pub(crate) fn new(value: T, runtime: Runtime) -> Self {
        InRuntime {
            value: Some(value),
            runtime,
        }
    }

    pub(crate) fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub(crate) fn get(&self) -> &T {
        self.value
            .as_ref()
            .unwrap_or_else(|| unreachable!("the value is only taken on drop"))
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.value
            .as_mut()
            .unwrap_or_else(|| unreachable!("the value is only taken on drop"))
    }

    /// Take the value out (the caller keeps the runtime alive as long as it needs it).
    pub(crate) fn into_parts(mut self) -> (T, Runtime) {
        let value = self
            .value
            .take()
            .unwrap_or_else(|| unreachable!("the value is only taken on drop"));
        (value, self.runtime.clone())
    }

    /// Replace the value by `f` of it (for builder methods).
    pub(crate) fn map(self, f: impl FnOnce(T) -> T) -> Self {
        let (value, runtime) = self.into_parts();
        InRuntime::new(f(value), runtime)
    }
}

impl<T: Clone> Clone for InRuntime<T> {
    fn clone(&self) -> Self {
        InRuntime::new(self.get().clone(), self.runtime.clone())
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for InRuntime<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(value) => value.fmt(f),
            None => f.write_str("(dropped)"),
        }
    }
}

impl<T> Drop for InRuntime<T> {
    fn drop(&mut self) {
        if let Some(value) = self.value.take() {
            let _entered = self.runtime.enter();
            drop(value);
        }
    }
}
