//! Asking a worker to stop: a handle any task can hold, and the signals that use it.

use std::sync::Arc;

use kombu_core::{Error, ErrorKind, Result};
use tokio::sync::watch;

use super::report::{Counters, WorkerReport};

/// How far a stop has gone. Ordered: a request only ever moves it forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stop {
    Running,
    /// Take no new message; let running handlers finish (within the drain timeout).
    Graceful,
    /// Stop handlers now; give everything back.
    Now,
}

/// Stops a [`Worker`](super::Worker) from another task (clone it freely).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu::Result<()> {
/// use kombu::{Connection, Outcome, Queue, Worker};
/// let conn = Connection::new("memory:///handle-doc")?;
/// let worker = Worker::builder(&conn, [Queue::new("jobs")])
///     .build(|_message| async { Ok(Outcome::Ack) });
/// let handle = worker.handle();
/// let running = tokio::spawn(worker.run());
/// handle.shutdown();
/// let report = running.await.expect("the worker task")?;
/// assert_eq!(report.handled, 0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    stop: Arc<watch::Sender<Stop>>,
    counters: Arc<Counters>,
}

impl WorkerHandle {
    pub(crate) fn new() -> Self {
        WorkerHandle {
            stop: Arc::new(watch::Sender::new(Stop::Running)),
            counters: Arc::default(),
        }
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    pub(crate) fn shared_counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// The counts so far.
    pub fn report(&self) -> WorkerReport {
        self.counters.report()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Stop> {
        self.stop.subscribe()
    }

    fn advance(&self, to: Stop) {
        self.stop.send_if_modified(|now| {
            let moved = *now < to;
            if moved {
                *now = to;
            }
            moved
        });
    }

    /// Graceful stop: take no new message, let running handlers finish within the drain
    /// timeout, give every other delivery back to the broker, and return.
    pub fn shutdown(&self) {
        self.advance(Stop::Graceful);
    }

    /// Immediate stop: abandon running handlers and give every delivery back at once.
    pub fn shutdown_now(&self) {
        self.advance(Stop::Now);
    }

    /// Whether a stop was asked for.
    pub fn is_stopping(&self) -> bool {
        *self.stop.borrow() != Stop::Running
    }

    /// Stop on SIGINT (Ctrl-C) or SIGTERM: the first is a graceful [`shutdown`](Self::shutdown),
    /// a second one [`shutdown_now`](Self::shutdown_now). Spawns a task on the current tokio
    /// runtime; the signal handlers are installed before this returns, so a signal that comes
    /// right after is not missed. An error if they cannot be installed.
    pub fn shutdown_on_signals(&self) -> Result<()> {
        let mut signals = Signals::install()?;
        let handle = self.clone();
        tokio::spawn(async move {
            if signals.next().await {
                tracing::info!("signal received: stopping gracefully (a second signal stops at once)");
                handle.shutdown();
            }
            if signals.next().await {
                tracing::warn!("second signal: stopping now, giving every delivery back");
                handle.shutdown_now();
            }
        });
        Ok(())
    }
}

/// Waits until `stop` reaches `at_least` (at once if it already has). A dropped handle
/// cannot happen while the worker holds its own copy, so this never ends otherwise.
pub(crate) async fn reached(stop: &mut watch::Receiver<Stop>, at_least: Stop) {
    let _ = stop.wait_for(|now| *now >= at_least).await;
}

/// SIGINT and SIGTERM (Ctrl-C only where there is no SIGTERM).
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let install = |kind: SignalKind, name: &str| {
                signal(kind).map_err(|e| {
                    Error::new(ErrorKind::Unexpected, format!("cannot install a {name} handler"))
                        .with_source(e)
                })
            };
            Ok(Signals {
                interrupt: install(SignalKind::interrupt(), "SIGINT")?,
                terminate: install(SignalKind::terminate(), "SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// The next signal; `false` if no more can come.
    async fn next(&mut self) -> bool {
        #[cfg(unix)]
        {
            tokio::select! {
                got = self.interrupt.recv() => got.is_some(),
                got = self.terminate.recv() => got.is_some(),
            }
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c().await.is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_only_moves_forward() {
        let handle = WorkerHandle::new();
        assert!(!handle.is_stopping());
        handle.shutdown_now();
        handle.shutdown();
        assert_eq!(*handle.subscribe().borrow(), Stop::Now);
    }
}
