//! What a handler decides for its message, and what the worker does with a message no handler
//! can use.

use std::time::Duration;

use kombu_core::{Error, ErrorKind};

/// What becomes of a message after its handler ran (the handler's `Ok` value).
///
/// A handler that settles the message itself (`message.ack()`) may return anything: the worker
/// settles only messages still unsettled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Done: the broker forgets the message.
    Ack,
    /// Refused: `reject(requeue=false)` — dead-lettered where the queue has a dead-letter
    /// exchange (RabbitMQ) or a redrive policy (SQS), deleted elsewhere.
    Reject,
    /// Deliver it again, at once (marked redelivered).
    Requeue,
    /// Deliver it again after a pause. The worker holds the message meanwhile (it counts
    /// against the concurrency limit, which slows a failing stream of messages down) and gives it
    /// back at once if asked to stop.
    RequeueAfter(Duration),
    /// Leave it unsettled: it counts against the prefetch until the worker stops, which gives
    /// it back with every other delivery (in order, where the transport keeps order). For tools
    /// that look at a queue without taking from it, as `kombu consume --requeue` does.
    Hold,
}

impl Outcome {
    /// The outcome of a handler error that is not about the message itself (a database down, a
    /// timeout): retry it later (the default of [`WorkerBuilder::on_failure`](super::WorkerBuilder::on_failure)).
    pub const RETRY_LATER: Outcome = Outcome::RequeueAfter(Duration::from_secs(1));
}

/// Where a *poison* message goes: one that no retry can help, because its body cannot be read
/// (decompression or deserialization failed, a content type outside the `accept` list).
///
/// Python Kombu's `ConsumerMixin` logs these and acks them — the message is gone. The worker
/// never drops one: it parks it where an operator can look at it, or hands it to the broker's
/// dead-lettering. (A stored envelope that cannot be parsed at all never reaches the worker:
/// the transport parks it in its own place and reports it; see each transport's docs.)
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Poison {
    /// Publish an unchanged copy to the queue named by the source queue's name plus this
    /// suffix (declared on first use), with headers `x-kombu-parked-from` (the queue) and
    /// `x-kombu-park-reason` (the error), then ack the original. The default, with suffix
    /// `.poison`.
    ParkWithSuffix(String),
    /// As `ParkWithSuffix`, into one queue for every source queue.
    ParkIn(String),
    /// `reject(requeue=false)`: dead-lettered where the queue has a dead-letter exchange or a
    /// redrive policy — and deleted where it has none. Choose it only with dead-lettering set
    /// up.
    Reject,
}

impl Default for Poison {
    fn default() -> Self {
        Poison::ParkWithSuffix(".poison".into())
    }
}

impl Poison {
    /// The parking queue for a message of `queue`, or `None` when poison is rejected.
    pub(crate) fn parking_queue(&self, queue: &str) -> Option<String> {
        match self {
            Poison::ParkWithSuffix(suffix) => Some(format!("{queue}{suffix}")),
            Poison::ParkIn(name) => Some(name.clone()),
            Poison::Reject => None,
        }
    }
}

/// Whether `error` (a handler's) says the message itself is unusable, so retrying is
/// pointless: it cannot be decoded, or its content type is refused.
pub(crate) fn is_poison(error: &Error) -> bool {
    matches!(error.kind(), ErrorKind::Decode | ErrorKind::ContentDisallowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parking_queues_follow_the_policy() {
        assert_eq!(
            Poison::default().parking_queue("tasks").as_deref(),
            Some("tasks.poison")
        );
        assert_eq!(
            Poison::ParkIn("dead".into()).parking_queue("tasks").as_deref(),
            Some("dead")
        );
        assert_eq!(Poison::Reject.parking_queue("tasks"), None);
    }

    #[test]
    fn only_unreadable_messages_are_poison() {
        assert!(is_poison(&Error::new(ErrorKind::Decode, "bad json")));
        assert!(is_poison(&Error::new(ErrorKind::ContentDisallowed, "pickle")));
        assert!(!is_poison(&Error::new(ErrorKind::Connection, "gone")));
        assert!(!is_poison(&Error::new(ErrorKind::Unexpected, "handler failed")));
    }
}
