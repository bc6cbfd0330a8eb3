//! Observability: the tracing spans of publishes and deliveries, and metrics.
//!
//! # Spans
//!
//! | span | level | fields |
//! | --- | --- | --- |
//! | `kombu.publish` | debug | `transport`, `exchange`, `routing_key`, `message_id`, `error` (on failure) |
//! | `kombu.publish_batch` | debug | `transport`, `messages`, `exchange` and `routing_key` (when every message shares them), `failed`, `error` (the first failure) |
//! | `kombu.deliver` | debug | `transport`, `exchange`, `routing_key`, `queue`, `message_id`, `delivery_tag`, `redelivered`, `outcome` and `error` (recorded by whoever handles the message) |
//!
//! `transport` is the transport's registered name (`"memory"`, `"redis"`, `"amqp"`);
//! `message_id` is the `message_id` property, else the `id` header (a Celery task id), else
//! `correlation_id`, and absent when the message has none of them.
//!
//! # Metrics
//!
//! With the `metrics` feature, through the [`metrics`](https://docs.rs/metrics) facade: they
//! go to whatever recorder (Prometheus exporter, StatsD, …) the application installs. Without
//! one they still cost a little per message (the facade builds and hashes each metric's key
//! before its no-op recorder drops it: about 0.1–0.2 µs a publish on `memory://`). Without the
//! feature nothing is measured and no clock is read.
//!
//! | name | kind | labels | counts or measures |
//! | --- | --- | --- | --- |
//! | `kombu_messages_published_total` | counter | `transport`, `exchange`, `outcome` (`ok`, `error`) | messages published, one per message of a batch |
//! | `kombu_publish_duration_seconds` | histogram | `transport`, `exchange` | one publish call, retries included |
//! | `kombu_publish_batch_duration_seconds` | histogram | `transport` | one batch `send`, retries included |
//! | `kombu_messages_delivered_total` | counter | `transport`, `queue` | messages a consumer handed out |
//! | `kombu_messages_redelivered_total` | counter | `transport`, `queue` | of those, the ones marked redelivered |
//! | `kombu_messages_acked_total` | counter | `transport`, `queue` | messages acknowledged |
//! | `kombu_messages_rejected_total` | counter | `transport`, `queue` | messages rejected (dropped) |
//! | `kombu_messages_requeued_total` | counter | `transport`, `queue` | messages rejected with requeue |
//! | `kombu_messages_parked_total` | counter | `transport`, `queue` | messages set aside (dead-lettered) by a worker |
//! | `kombu_handler_duration_seconds` | histogram | `transport`, `queue` | one run of a worker's handler |
//! | `kombu_messages_in_flight` | gauge | `transport`, `queue` | messages delivered and not yet settled by a worker |
//!
//! Labels are bounded: a transport, an exchange or a queue name, an outcome; never a routing
//! key nor a message id. Settling counts only messages the broker is told about: a message
//! delivered with `no_ack` has nothing to settle.

use std::time::Duration;

use kombu_core::{FieldTable, Properties, Value};
use tracing::field::Empty;

use crate::message::Message;

/// The id of a message for spans: its `message_id` property, else its `id` header (Celery's
/// task id), else its `correlation_id`.
pub(crate) fn message_id<'a>(properties: &'a Properties, headers: &'a FieldTable) -> Option<&'a str> {
    properties
        .message_id
        .as_deref()
        .or_else(|| headers.get("id").and_then(Value::as_str))
        .or(properties.correlation_id.as_deref())
}

/// A `kombu.deliver` span for handling `message` (for a worker to enter while its handler
/// runs). `outcome` and `error` are empty: record them when the message is settled
/// (`span.record("outcome", "acked")`).
pub(crate) fn delivery_span(message: &Message, transport: &str) -> tracing::Span {
    let info = message.delivery_info();
    tracing::debug_span!(
        "kombu.deliver",
        transport,
        exchange = info.exchange(),
        routing_key = info.routing_key(),
        queue = info.queue(),
        message_id = message_id(message.properties(), message.headers()),
        delivery_tag = info.delivery_tag(),
        redelivered = info.redelivered(),
        outcome = Empty,
        error = Empty,
    )
}

/// How a message was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Acknowledged.
    Acked,
    /// Rejected without requeue.
    Rejected,
    /// Rejected with requeue.
    Requeued,
}

/// Measures a duration when metrics are compiled in; reads no clock otherwise.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stopwatch {
    #[cfg(feature = "metrics")]
    started: std::time::Instant,
}

impl Stopwatch {
    /// Start measuring.
    #[inline]
    pub(crate) fn start() -> Stopwatch {
        Stopwatch {
            #[cfg(feature = "metrics")]
            started: std::time::Instant::now(),
        }
    }

    /// The time since [`start`](Self::start) (zero without the `metrics` feature).
    #[inline]
    pub(crate) fn elapsed(&self) -> Duration {
        #[cfg(feature = "metrics")]
        return self.started.elapsed();
        #[cfg(not(feature = "metrics"))]
        Duration::ZERO
    }
}

#[cfg(feature = "metrics")]
mod imp {
    use std::time::Duration;

    use std::sync::Arc;

    use metrics::{counter, gauge, histogram, SharedString};

    use super::Settled;

    fn outcome(ok: bool) -> &'static str {
        if ok {
            "ok"
        } else {
            "error"
        }
    }

    pub(crate) fn published(transport: &'static str, exchange: Arc<str>, ok: bool, elapsed: Duration) {
        // Shared: both labels point at one string.
        let exchange = SharedString::from(exchange);
        counter!(
            "kombu_messages_published_total",
            "transport" => transport,
            "exchange" => exchange.clone(),
            "outcome" => outcome(ok),
        )
        .increment(1);
        histogram!("kombu_publish_duration_seconds", "transport" => transport, "exchange" => exchange)
            .record(elapsed.as_secs_f64());
    }

    pub(crate) fn published_in_batch(transport: &'static str, exchange: &str, ok: bool, messages: u64) {
        counter!(
            "kombu_messages_published_total",
            "transport" => transport,
            "exchange" => exchange.to_owned(),
            "outcome" => outcome(ok),
        )
        .increment(messages);
    }

    pub(crate) fn batch_published(transport: &'static str, elapsed: Duration) {
        histogram!("kombu_publish_batch_duration_seconds", "transport" => transport)
            .record(elapsed.as_secs_f64());
    }

    pub(crate) fn settled(transport: &'static str, queue: &str, how: Settled) {
        let name = match how {
            Settled::Acked => "kombu_messages_acked_total",
            Settled::Rejected => "kombu_messages_rejected_total",
            Settled::Requeued => "kombu_messages_requeued_total",
        };
        counter!(name, "transport" => transport, "queue" => queue.to_owned()).increment(1);
    }

    pub(crate) fn delivered(transport: &'static str, queue: &str, redelivered: bool) {
        counter!("kombu_messages_delivered_total", "transport" => transport, "queue" => queue.to_owned())
            .increment(1);
        if redelivered {
            counter!("kombu_messages_redelivered_total", "transport" => transport, "queue" => queue.to_owned())
                .increment(1);
        }
    }

    pub(crate) fn parked(transport: &'static str, queue: &str) {
        counter!("kombu_messages_parked_total", "transport" => transport, "queue" => queue.to_owned())
            .increment(1);
    }

    pub(crate) fn handler_finished(transport: &'static str, queue: &str, elapsed: Duration) {
        histogram!("kombu_handler_duration_seconds", "transport" => transport, "queue" => queue.to_owned())
            .record(elapsed.as_secs_f64());
    }

    pub(crate) fn in_flight(transport: &'static str, queue: &str, delta: f64) {
        let gauge = gauge!("kombu_messages_in_flight", "transport" => transport, "queue" => queue.to_owned());
        if delta >= 0.0 {
            gauge.increment(delta);
        } else {
            gauge.decrement(-delta);
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use std::time::Duration;

    use super::Settled;

    #[inline]
    pub(crate) fn settled(_: &'static str, _: &str, _: Settled) {}
    #[inline]
    pub(crate) fn delivered(_: &'static str, _: &str, _: bool) {}
    #[inline]
    pub(crate) fn parked(_: &'static str, _: &str) {}
    #[inline]
    pub(crate) fn handler_finished(_: &'static str, _: &str, _: Duration) {}
    #[inline]
    pub(crate) fn in_flight(_: &'static str, _: &str, _: f64) {}
}

/// A publish of one message to `exchange` finished after `elapsed`:
/// `kombu_messages_published_total` and `kombu_publish_duration_seconds`. (Only with the
/// feature: the caller does not even read the clock without it.)
#[cfg(feature = "metrics")]
pub(crate) fn published(transport: &'static str, exchange: std::sync::Arc<str>, ok: bool, elapsed: Duration) {
    imp::published(transport, exchange, ok, elapsed);
}

/// `messages` messages of a batch were published to `exchange` (or failed):
/// `kombu_messages_published_total`.
#[cfg(feature = "metrics")]
pub(crate) fn published_in_batch(transport: &'static str, exchange: &str, ok: bool, messages: u64) {
    imp::published_in_batch(transport, exchange, ok, messages);
}

/// A batch was sent in `elapsed`: `kombu_publish_batch_duration_seconds`.
#[cfg(feature = "metrics")]
pub(crate) fn batch_published(transport: &'static str, elapsed: Duration) {
    imp::batch_published(transport, elapsed);
}

/// A message from `queue` was acked, rejected or requeued: `kombu_messages_<how>_total`.
#[inline]
pub(crate) fn settled(transport: &'static str, queue: &str, how: Settled) {
    imp::settled(transport, queue, how);
}

/// A consumer handed out a message from `queue`: `kombu_messages_delivered_total`, and
/// `kombu_messages_redelivered_total` when it was `redelivered`.
#[inline]
pub(crate) fn delivered(transport: &'static str, queue: &str, redelivered: bool) {
    imp::delivered(transport, queue, redelivered);
}

/// A worker set a message from `queue` aside: `kombu_messages_parked_total`.
#[inline]
pub(crate) fn parked(transport: &'static str, queue: &str) {
    imp::parked(transport, queue);
}

/// A worker's handler ran for `elapsed` on a message from `queue`:
/// `kombu_handler_duration_seconds`.
#[inline]
pub(crate) fn handler_finished(transport: &'static str, queue: &str, elapsed: Duration) {
    imp::handler_finished(transport, queue, elapsed);
}

/// Messages from `queue` in a worker's hands changed by `delta` (+1 taken, -1 settled):
/// `kombu_messages_in_flight`.
#[inline]
pub(crate) fn in_flight(transport: &'static str, queue: &str, delta: f64) {
    imp::in_flight(transport, queue, delta);
}

#[cfg(all(test, feature = "memory"))]
mod tests;
