//! The handlers in progress, polled by the worker's own task.
//!
//! No task is spawned per message: a spawn, its wake-up and its join cost more than a memory
//! transport's whole delivery (measured: the worker took 4–5× the time of a plain consume
//! loop with a task per message). Handlers still run concurrently, interleaved on the worker's
//! task; one that needs a CPU for long should use `spawn_blocking` (or run several workers).
//! A panic is caught per handler, so one bad handler run does not take the worker down.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};

use super::report::Counters;
use crate::message::Message;
use crate::observe;

/// `work` with its panic caught and its message counted in flight until it ends.
fn guarded(
    message: Arc<Message>,
    counters: Arc<Counters>,
    work: impl Future<Output = ()> + Send + 'static,
) -> BoxFuture<'static, Finished> {
    let mut in_flight = InFlight::new(message, counters);
    Box::pin(async move {
        let panicked = AssertUnwindSafe(work).catch_unwind().await.err();
        in_flight.ended = true;
        Finished {
            message: in_flight.message.clone(),
            panic: panicked.map(|payload| panic_message(payload.as_ref())),
        }
    })
}

/// A handler run that ended.
pub(crate) struct Finished {
    /// Its message.
    pub(crate) message: Arc<Message>,
    /// What it panicked with, if it did.
    pub(crate) panic: Option<String>,
}

/// The handler runs in progress.
#[derive(Default)]
pub(crate) struct Running {
    handlers: FuturesUnordered<BoxFuture<'static, Finished>>,
}

impl Running {
    pub(crate) fn len(&self) -> usize {
        self.handlers.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }

    /// Run `work` for `message` (counted in flight until it ends or is abandoned).
    pub(crate) fn start(
        &mut self,
        message: Arc<Message>,
        counters: Arc<Counters>,
        work: impl Future<Output = ()> + Send + 'static,
    ) {
        self.handlers.push(guarded(message, counters, work));
    }

    /// Start `work` and poll it once right away, on the caller's task: a handler that
    /// finishes without waiting (most do on a fast transport) is done there, and never pays
    /// for a place in the set and its wake-up (measured on the memory transport: about a
    /// third of the worker's cost per message). One that waits joins the others.
    pub(crate) async fn start_now(
        &mut self,
        message: Arc<Message>,
        counters: Arc<Counters>,
        work: impl Future<Output = ()> + Send + 'static,
    ) -> Option<Finished> {
        let mut run = guarded(message, counters, work);
        match std::future::poll_fn(|cx| Poll::Ready(run.as_mut().poll(cx))).await {
            Poll::Ready(finished) => Some(finished),
            Poll::Pending => {
                self.handlers.push(run);
                None
            }
        }
    }

    /// The next run to end; `None` when none runs (never pending then).
    pub(crate) async fn next(&mut self) -> Option<Finished> {
        self.handlers.next().await
    }

    /// Drop every run still in progress: their messages count as abandoned, and stay
    /// unsettled for the channel's close to give back.
    pub(crate) fn abandon(&mut self) {
        self.handlers.clear();
    }
}

/// A message in a handler's hands: the in-flight gauge, and the abandoned count if its run is
/// dropped before it ends.
struct InFlight {
    message: Arc<Message>,
    counters: Arc<Counters>,
    ended: bool,
}

impl InFlight {
    fn new(message: Arc<Message>, counters: Arc<Counters>) -> Self {
        observe::in_flight(message.transport(), message.delivery_info().queue(), 1.0);
        InFlight {
            message,
            counters,
            ended: false,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        observe::in_flight(
            self.message.transport(),
            self.message.delivery_info().queue(),
            -1.0,
        );
        if !self.ended && !self.message.acknowledged() {
            self.counters.abandoned.inc();
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".into())
}
