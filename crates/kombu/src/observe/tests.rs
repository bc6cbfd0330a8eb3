//! What the spans and metrics of publishes and deliveries carry.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

use super::*;
use crate::{Connection, Exchange, PublishOptions, Queue};

/// A span as the layer saw it: its name and every field recorded, as text.
#[derive(Debug, Clone)]
struct SeenSpan {
    name: &'static str,
    fields: BTreeMap<&'static str, String>,
}

impl SeenSpan {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// Captures spans (by id) and their fields, those given at creation and those recorded later.
#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<(Id, SeenSpan)>>>,
}

struct Fields<'a>(&'a mut BTreeMap<&'static str, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let span = SeenSpan {
            name: attrs.metadata().name(),
            fields,
        };
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id.clone(), span));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        // Ids are reused once a span closes: the latest span of that id.
        if let Some((_, span)) = spans.iter_mut().rev().find(|(seen, _)| seen == id) {
            values.record(&mut Fields(&mut span.fields));
        }
    }
}

impl Capture {
    /// Every captured span named `name`, in creation order.
    fn named(&self, name: &str) -> Vec<SeenSpan> {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, s)| s.name == name)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Capture the spans of this thread until the guard drops (tests run on a
    /// current-thread runtime, so every span of the test is on this thread).
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }
}

#[tokio::test]
async fn a_publish_span_names_transport_exchange_routing_key_and_message_id() {
    let capture = Capture::default();
    let _guard = capture.install();
    let conn = Connection::new("memory:///observe-publish-span").unwrap();
    let exchange = Exchange::direct("obs-media");
    let queue = Queue::new("obs-video")
        .exchange(exchange.clone())
        .routing_key("video");
    conn.producer()
        .exchange(exchange)
        .publish(
            &"cat.mp4",
            PublishOptions::new()
                .routing_key("video")
                .message_id("m-1")
                .declare(queue),
        )
        .await
        .unwrap();

    let spans = capture.named("kombu.publish");
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(span.field("transport"), Some("memory"));
    assert_eq!(span.field("exchange"), Some("obs-media"));
    assert_eq!(span.field("routing_key"), Some("video"));
    assert_eq!(span.field("message_id"), Some("m-1"));
    assert_eq!(
        span.field("error"),
        None,
        "a publish that succeeded records no error"
    );
}

#[tokio::test]
async fn a_failed_publish_records_its_error_on_the_span() {
    let capture = Capture::default();
    let _guard = capture.install();
    let conn = Connection::new("memory:///observe-publish-error").unwrap();
    // Mandatory and routed to no queue: the memory transport refuses it.
    let error = conn
        .producer()
        .exchange(Exchange::direct("obs-unbound"))
        .publish(&1, PublishOptions::new().routing_key("nowhere").mandatory(true))
        .await
        .unwrap_err();

    let spans = capture.named("kombu.publish");
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0].field("routing_key"), Some("nowhere"));
    assert_eq!(spans[0].field("message_id"), None, "the message has no id");
    assert_eq!(spans[0].field("error"), Some(error.to_string().as_str()));
}

#[tokio::test]
async fn a_body_that_cannot_be_serialized_fails_the_publish_span_too() {
    let capture = Capture::default();
    let _guard = capture.install();
    let conn = Connection::new("memory:///observe-publish-encode").unwrap();
    let error = conn
        .producer()
        .publish(
            &1,
            PublishOptions::new()
                .routing_key("q")
                .serializer("no-such-serializer"),
        )
        .await
        .unwrap_err();
    let spans = capture.named("kombu.publish");
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0].field("error"), Some(error.to_string().as_str()));
}

#[tokio::test]
async fn a_batch_span_counts_messages_and_failures() {
    let capture = Capture::default();
    let _guard = capture.install();
    let conn = Connection::new("memory:///observe-batch-span").unwrap();
    let queue = Queue::new("obs-batch");
    let producer = conn.producer();
    let mut batch = producer.batch();
    for n in 0..3 {
        batch.add(
            &n,
            PublishOptions::new()
                .routing_key("obs-batch")
                .declare(queue.clone()),
        );
    }
    batch.add(
        &3,
        PublishOptions::new()
            .routing_key("obs-batch")
            .serializer("no-such-serializer"),
    );
    let outcome = batch.send().await;
    assert_eq!(outcome.confirmed(), 3);

    let spans = capture.named("kombu.publish_batch");
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(span.field("transport"), Some("memory"));
    assert_eq!(span.field("messages"), Some("4"));
    assert_eq!(
        span.field("exchange"),
        Some(""),
        "every message goes to the default exchange"
    );
    assert_eq!(span.field("routing_key"), Some("obs-batch"));
    assert_eq!(span.field("failed"), Some("1"));
    let first_failure = outcome.failures().next().unwrap().1.to_string();
    assert_eq!(span.field("error"), Some(first_failure.as_str()));
}

#[tokio::test]
async fn a_delivery_span_describes_the_message_and_takes_its_outcome_later() {
    let conn = Connection::new("memory:///observe-delivery-span").unwrap();
    let queue = conn.simple_queue("obs-deliver");
    queue
        .put_with(&1, PublishOptions::new().header("id", "task-7"))
        .await
        .unwrap();
    let message = queue.get_nowait().await.unwrap().unwrap();

    let capture = Capture::default();
    let _guard = capture.install();
    let span = delivery_span(&message, "memory");
    span.record("outcome", "acked");
    drop(span);

    let spans = capture.named("kombu.deliver");
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(span.field("transport"), Some("memory"));
    assert_eq!(span.field("queue"), Some("obs-deliver"));
    assert_eq!(span.field("routing_key"), Some("obs-deliver"));
    assert_eq!(
        span.field("exchange"),
        Some("obs-deliver"),
        "a simple queue's own exchange"
    );
    assert_eq!(span.field("message_id"), Some("task-7"), "Celery's id header");
    assert_eq!(span.field("delivery_tag"), Some(message.delivery_tag()));
    assert_eq!(span.field("redelivered"), Some("false"));
    assert_eq!(span.field("outcome"), Some("acked"));
    assert_eq!(span.field("error"), None);
}

#[test]
fn the_message_id_is_the_property_then_the_id_header_then_the_correlation_id() {
    let mut properties = Properties::default();
    let mut headers = FieldTable::new();
    assert_eq!(message_id(&properties, &headers), None);
    properties.correlation_id = Some("corr".into());
    assert_eq!(message_id(&properties, &headers), Some("corr"));
    headers.insert("id".into(), Value::String("task".into()));
    assert_eq!(message_id(&properties, &headers), Some("task"));
    properties.message_id = Some("msg".into());
    assert_eq!(message_id(&properties, &headers), Some("msg"));
}

#[test]
fn the_transport_name_is_the_descriptors_or_unknown() {
    let conn = Connection::new("memory:///observe-name").unwrap();
    assert_eq!(conn.transport_name(), "memory");
    assert_eq!(conn.transport_name(), "memory", "cached, still the same");
    let conn = Connection::new("no-such-scheme://localhost/").unwrap();
    assert_eq!(conn.transport_name(), "unknown");
}

#[cfg(feature = "metrics")]
mod metrics {
    use ::metrics::{SharedString, Unit};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use metrics_util::{CompositeKey, MetricKind};

    use super::*;

    /// Run `test` on a current-thread runtime with `recorder` as this thread's recorder.
    fn with_recorder<F: std::future::Future<Output = ()>>(
        recorder: &DebuggingRecorder,
        test: F,
    ) -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        ::metrics::with_local_recorder(recorder, || runtime.block_on(test));
        Ok(())
    }

    /// What the recorder holds. (A snapshot resets the counters: take one per test.)
    type Seen = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

    /// The value of the metric `name` of `kind` whose labels are exactly `labels`.
    fn value<'a>(
        seen: &'a Seen,
        kind: MetricKind,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Option<&'a DebugValue> {
        seen.iter()
            .find(|(key, _, _, _)| {
                let mut have: Vec<(&str, &str)> = key.key().labels().map(|l| (l.key(), l.value())).collect();
                let mut want = labels.to_vec();
                have.sort_unstable();
                want.sort_unstable();
                key.kind() == kind && key.key().name() == name && have == want
            })
            .map(|(_, _, _, value)| value)
    }

    fn counter(seen: &Seen, name: &str, labels: &[(&str, &str)]) -> u64 {
        match value(seen, MetricKind::Counter, name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            other => panic!("{name} is not a counter: {other:?}"),
        }
    }

    fn samples(seen: &Seen, name: &str, labels: &[(&str, &str)]) -> usize {
        match value(seen, MetricKind::Histogram, name, labels) {
            Some(DebugValue::Histogram(samples)) => samples.len(),
            None => 0,
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }

    #[test]
    fn publishes_are_counted_and_timed_by_transport_exchange_and_outcome() -> std::io::Result<()> {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        with_recorder(&recorder, async {
            let conn = Connection::new("memory:///observe-metrics-publish").unwrap();
            let exchange = Exchange::direct("obs-m-ex");
            let queue = Queue::new("obs-m-q").exchange(exchange.clone()).routing_key("k");
            let producer = conn.producer().exchange(exchange);
            for n in 0..5 {
                producer
                    .publish(&n, PublishOptions::new().routing_key("k").declare(queue.clone()))
                    .await
                    .unwrap();
            }
            producer
                .publish(&0, PublishOptions::new().routing_key("nowhere").mandatory(true))
                .await
                .unwrap_err();
        })?;
        let seen = snapshotter.snapshot().into_vec();
        let ok = [
            ("transport", "memory"),
            ("exchange", "obs-m-ex"),
            ("outcome", "ok"),
        ];
        let error = [
            ("transport", "memory"),
            ("exchange", "obs-m-ex"),
            ("outcome", "error"),
        ];
        assert_eq!(counter(&seen, "kombu_messages_published_total", &ok), 5);
        assert_eq!(counter(&seen, "kombu_messages_published_total", &error), 1);
        let timed = [("transport", "memory"), ("exchange", "obs-m-ex")];
        assert_eq!(samples(&seen, "kombu_publish_duration_seconds", &timed), 6);
        Ok(())
    }

    #[test]
    fn a_batch_counts_each_message_once_and_is_timed_once() -> std::io::Result<()> {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        with_recorder(&recorder, async {
            let conn = Connection::new("memory:///observe-metrics-batch").unwrap();
            let queue = Queue::new("obs-mb-q");
            let other = Exchange::direct("obs-mb-other");
            let bound = Queue::new("obs-mb-other-q")
                .exchange(other.clone())
                .routing_key("k");
            let producer = conn.producer();
            let mut batch = producer.batch();
            for n in 0..4 {
                batch.add(
                    &n,
                    PublishOptions::new()
                        .routing_key("obs-mb-q")
                        .declare(queue.clone()),
                );
            }
            for n in 0..2 {
                batch.add(
                    &n,
                    PublishOptions::new()
                        .exchange(other.clone())
                        .routing_key("k")
                        .declare(bound.clone()),
                );
            }
            batch.add(&0, PublishOptions::new().serializer("no-such-serializer"));
            assert_eq!(batch.send().await.confirmed(), 6);
        })?;
        let seen = snapshotter.snapshot().into_vec();
        let labels = |exchange, outcome| {
            [
                ("transport", "memory"),
                ("exchange", exchange),
                ("outcome", outcome),
            ]
        };
        assert_eq!(
            counter(&seen, "kombu_messages_published_total", &labels("", "ok")),
            4
        );
        assert_eq!(
            counter(&seen, "kombu_messages_published_total", &labels("", "error")),
            1
        );
        assert_eq!(
            counter(
                &seen,
                "kombu_messages_published_total",
                &labels("obs-mb-other", "ok")
            ),
            2
        );
        let transport = [("transport", "memory")];
        assert_eq!(
            samples(&seen, "kombu_publish_batch_duration_seconds", &transport),
            1
        );
        assert_eq!(
            samples(
                &seen,
                "kombu_publish_duration_seconds",
                &[("transport", "memory"), ("exchange", "")]
            ),
            0,
            "a batch is not timed as single publishes"
        );
        Ok(())
    }

    #[test]
    fn acks_rejects_and_requeues_are_counted_by_transport_and_queue() -> std::io::Result<()> {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        with_recorder(&recorder, async {
            let conn = Connection::new("memory:///observe-metrics-settle").unwrap();
            let queue = conn.simple_queue("obs-settle");
            for n in 0..6 {
                queue.put(&n).await.unwrap();
            }
            for _ in 0..3 {
                queue.get_nowait().await.unwrap().unwrap().ack().await.unwrap();
            }
            let message = queue.get_nowait().await.unwrap().unwrap();
            message.reject(false).await.unwrap();
            message.ack().await.unwrap_err(); // settled once: a second settle counts nothing
            queue
                .get_nowait()
                .await
                .unwrap()
                .unwrap()
                .requeue()
                .await
                .unwrap();
        })?;
        let seen = snapshotter.snapshot().into_vec();
        let labels = [("transport", "memory"), ("queue", "obs-settle")];
        assert_eq!(counter(&seen, "kombu_messages_acked_total", &labels), 3);
        assert_eq!(counter(&seen, "kombu_messages_rejected_total", &labels), 1);
        assert_eq!(counter(&seen, "kombu_messages_requeued_total", &labels), 1);
        Ok(())
    }

    #[test]
    fn delivery_and_worker_metrics_carry_transport_and_queue() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        ::metrics::with_local_recorder(&recorder, || {
            delivered("memory", "q", false);
            delivered("memory", "q", true);
            parked("memory", "q");
            handler_finished("memory", "q", Duration::from_millis(3));
            in_flight("memory", "q", 1.0);
            in_flight("memory", "q", 1.0);
            in_flight("memory", "q", -1.0);
        });
        let seen = snapshotter.snapshot().into_vec();
        let labels = [("transport", "memory"), ("queue", "q")];
        assert_eq!(counter(&seen, "kombu_messages_delivered_total", &labels), 2);
        assert_eq!(counter(&seen, "kombu_messages_redelivered_total", &labels), 1);
        assert_eq!(counter(&seen, "kombu_messages_parked_total", &labels), 1);
        assert_eq!(samples(&seen, "kombu_handler_duration_seconds", &labels), 1);
        match value(&seen, MetricKind::Gauge, "kombu_messages_in_flight", &labels) {
            Some(DebugValue::Gauge(v)) => assert_eq!(v.into_inner(), 1.0),
            other => panic!("in flight: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_worker_records_each_handler_runs_outcome_and_error_on_its_delivery_span() {
    use crate::{Outcome, Worker};
    let conn = Connection::new("memory:///observe-worker-spans").unwrap();
    let producer = conn.producer();
    for n in [1, 2] {
        producer
            .publish(
                &n,
                PublishOptions::new()
                    .routing_key("obs-work")
                    .declare(Queue::new("obs-work")),
            )
            .await
            .unwrap();
    }
    let capture = Capture::default();
    let _guard = capture.install();
    let worker = Worker::builder(&conn, [Queue::new("obs-work")])
        .on_failure(Outcome::Reject)
        .limit(2)
        .build(|message| async move {
            match message.decode::<u32>()? {
                1 => Ok(Outcome::Ack),
                _ => Err(kombu_core::Error::new(
                    kombu_core::ErrorKind::Unexpected,
                    "no twos",
                )),
            }
        });
    let report = worker.run().await.unwrap();
    assert_eq!((report.acked, report.rejected, report.failed), (1, 1, 1));

    let spans = capture.named("kombu.deliver");
    assert_eq!(spans.len(), 2, "one span per handler run: {spans:?}");
    for span in &spans {
        assert_eq!(span.field("transport"), Some("memory"));
        assert_eq!(span.field("queue"), Some("obs-work"));
    }
    let outcomes: Vec<(Option<&str>, Option<&str>)> = spans
        .iter()
        .map(|s| (s.field("outcome"), s.field("error")))
        .collect();
    assert_eq!(
        outcomes,
        [
            (Some("acked"), None),
            (Some("rejected"), Some("unexpected: no twos"))
        ]
    );
}
