//! What a worker tells: the counts of what it did, and the incidents it handled on its own.

use std::sync::atomic::{AtomicU64, Ordering};

use kombu_core::Error;

use crate::message::{Message, MessageState};

/// The counts of what a [`Worker`](super::Worker) did, from [`Worker::run`](super::Worker::run)
/// or, while it runs, [`WorkerHandle::report`](super::WorkerHandle::report).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Handler runs that ended (returned or panicked).
    pub handled: u64,
    /// Messages acked (by the worker or by their handler).
    pub acked: u64,
    /// Messages rejected without requeue.
    pub rejected: u64,
    /// Messages given back to be delivered again.
    pub requeued: u64,
    /// Poison messages parked (or rejected, per [`Poison`](super::Poison)).
    pub poisoned: u64,
    /// Handler runs that failed with an error that is not about the message, or panicked.
    pub failed: u64,
    /// Stored messages the transport could not parse (it parked them).
    pub malformed: u64,
    /// Times the consumer was rebuilt on a new connection.
    pub reconnects: u64,
    /// Messages whose handler was still running when the worker stopped: given back unfinished.
    pub abandoned: u64,
}

/// Something the worker handled on its own, given to the
/// [`on_incident`](super::WorkerBuilder::on_incident) hook (and logged).
#[derive(Debug)]
#[non_exhaustive]
pub enum Incident<'a> {
    /// A stored message the transport cannot parse; the transport parked it (see its docs).
    Malformed {
        /// The transport's error, with where it parked the message.
        error: &'a Error,
    },
    /// A message no handler can use (undecodable, or a content type not accepted).
    Poison {
        /// The message.
        message: &'a Message,
        /// Why it is unusable.
        error: &'a Error,
        /// The queue it was parked in; `None` when it was rejected.
        parked_in: Option<&'a str>,
    },
    /// A handler failed (or panicked); the failure outcome was applied.
    HandlerFailed {
        /// The message.
        message: &'a Message,
        /// The handler's error.
        error: &'a Error,
    },
    /// Settling or parking a message failed: the broker delivers it again.
    SettleFailed {
        /// The message.
        message: &'a Message,
        /// What failed.
        error: &'a Error,
    },
    /// The consumer lost its broker; the worker reconnects.
    Reconnecting {
        /// Why the consumer ended.
        error: &'a Error,
    },
}

impl Incident<'_> {
    pub(crate) fn log(&self) {
        match self {
            Incident::Malformed { error } => {
                tracing::warn!(error = %error, "worker: the transport parked a malformed message")
            }
            Incident::Poison {
                message,
                error,
                parked_in,
            } => tracing::warn!(
                error = %error,
                queue = message.delivery_info().queue(),
                delivery_tag = message.delivery_tag(),
                parked_in = parked_in.unwrap_or("(rejected)"),
                "worker: poison message set aside"
            ),
            Incident::HandlerFailed { message, error } => tracing::warn!(
                error = %error,
                queue = message.delivery_info().queue(),
                delivery_tag = message.delivery_tag(),
                "worker: handler failed"
            ),
            Incident::SettleFailed { message, error } => tracing::warn!(
                error = %error,
                queue = message.delivery_info().queue(),
                delivery_tag = message.delivery_tag(),
                "worker: settling failed; the message will be delivered again"
            ),
            Incident::Reconnecting { error } => {
                tracing::warn!(error = %error, "worker: consumer lost, reconnecting")
            }
        }
    }
}

/// One count of [`WorkerReport`], shared by the worker's tasks.
#[derive(Debug, Default)]
pub(crate) struct Count(AtomicU64);

impl Count {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The live counts behind [`WorkerReport`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) handled: Count,
    pub(crate) acked: Count,
    pub(crate) rejected: Count,
    pub(crate) requeued: Count,
    pub(crate) poisoned: Count,
    pub(crate) failed: Count,
    pub(crate) malformed: Count,
    pub(crate) reconnects: Count,
    pub(crate) abandoned: Count,
}

impl Counters {
    /// Count a settled message by how it was settled.
    pub(crate) fn count_settled(&self, message: &Message) {
        match message.state() {
            MessageState::Acked => self.acked.inc(),
            MessageState::Rejected => self.rejected.inc(),
            MessageState::Requeued => self.requeued.inc(),
            MessageState::Received => {}
        }
    }

    pub(crate) fn report(&self) -> WorkerReport {
        WorkerReport {
            handled: self.handled.get(),
            acked: self.acked.get(),
            rejected: self.rejected.get(),
            requeued: self.requeued.get(),
            poisoned: self.poisoned.get(),
            failed: self.failed.get(),
            malformed: self.malformed.get(),
            reconnects: self.reconnects.get(),
            abandoned: self.abandoned.get(),
        }
    }
}
