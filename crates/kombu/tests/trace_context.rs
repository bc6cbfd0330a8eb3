//! W3C trace context across the broker (feature `opentelemetry`): a publish carries the
//! current context as `traceparent`, a worker's handler runs in the context its message
//! carried — between kombu-rs processes and with Python's OpenTelemetry (opentelemetry-api's
//! default propagators) on the same SQLite broker, both ways.
#![cfg(all(feature = "opentelemetry", feature = "memory", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test scaffolding

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use kombu::{Connection, Outcome, PublishOptions, Queue, Value, Worker};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

fn remote_context(trace: &str, span: &str) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_hex(trace).unwrap(),
        SpanId::from_hex(span).unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// Run a worker for one message of `queue`; the trace id its handler ran under (`None`: no
/// valid span context).
async fn trace_id_seen_by_a_worker(conn: &Connection, queue: &str) -> Option<String> {
    let seen = Arc::new(Mutex::new(None));
    let record = seen.clone();
    let worker = Worker::builder(conn, [Queue::new(queue)])
        .limit(1)
        .build(move |_message| {
            let record = record.clone();
            async move {
                let span_context = Context::current().span().span_context().clone();
                *record.lock().unwrap() = span_context
                    .is_valid()
                    .then(|| span_context.trace_id().to_string());
                Ok(Outcome::Ack)
            }
        });
    tokio::time::timeout(std::time::Duration::from_secs(10), worker.run())
        .await
        .expect("the worker takes its one message")
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    seen
}

fn python() -> PathBuf {
    std::env::var_os("KOMBU_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"),
        PathBuf::from,
    )
}

fn run_python(args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/interop_otel.py");
    let output = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("run Python (the project venv: cargo xtask test-matrix creates it, or set KOMBU_PYTHON)");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test]
async fn the_trace_context_crosses_the_broker_and_python_both_ways() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    // kombu-rs to kombu-rs: the header, then the handler's context.
    let conn = Connection::new("memory:///trace-context").unwrap();
    let options = PublishOptions::new()
        .routing_key("traced")
        .declare(Queue::new("traced"));
    {
        let _attached = remote_context(TRACE, SPAN).attach();
        conn.producer().publish(&1, options.clone()).await.unwrap();
    }
    let channel = conn.channel().await.unwrap();
    let delivery = channel
        .get("traced", Default::default())
        .await
        .unwrap()
        .expect("the message");
    assert_eq!(
        delivery.message.headers.get("traceparent"),
        Some(&Value::String(format!("00-{TRACE}-{SPAN}-01")))
    );
    channel.close().await.unwrap(); // gives it back
    assert_eq!(
        trace_id_seen_by_a_worker(&conn, "traced").await.as_deref(),
        Some(TRACE)
    );
    // Without a current span nothing is written, and the handler runs in no trace (the
    // checks above are its positive control).
    conn.producer().publish(&2, options).await.unwrap();
    assert_eq!(trace_id_seen_by_a_worker(&conn, "traced").await, None);

    // Python → kombu-rs and kombu-rs → Python, on one SQLite file.
    let dir = std::env::temp_dir().join(format!("kombu-trace-context-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("broker.db");
    let rust_url = format!("sqlite://{}", db.display());
    let python_url = format!("sqla+sqlite:///{}", db.display());
    let conn = Connection::new(&rust_url).unwrap();

    let python_trace = "0af7651916cd43dd8448eb211c80319c";
    run_python(&[
        "publish",
        &python_url,
        "from-python",
        python_trace,
        "b7ad6b7169203331",
    ]);
    assert_eq!(
        trace_id_seen_by_a_worker(&conn, "from-python").await.as_deref(),
        Some(python_trace),
        "a Rust handler runs in the trace Python's message carried"
    );

    let rust_trace = "5b8efff798038103d269b633813fc60c";
    {
        let _attached = remote_context(rust_trace, "eee19b7ec3c1b174").attach();
        conn.producer()
            .publish(
                &3,
                PublishOptions::new()
                    .routing_key("from-rust")
                    .declare(Queue::new("from-rust")),
            )
            .await
            .unwrap();
    }
    assert_eq!(
        run_python(&["consume", &python_url, "from-rust", "10"]),
        rust_trace,
        "Python's OpenTelemetry reads the trace a Rust publish carried"
    );
    conn.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
