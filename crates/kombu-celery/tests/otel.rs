//! Trace context between kombu-rs and Celery's own OpenTelemetry instrumentation
//! (`opentelemetry-instrumentation-celery`, `tests/python/celery_otel.py`), on one SQLite
//! broker: a task kombu-rs sends from inside a trace runs in that trace on a traced Celery
//! worker, and a task a traced Celery client sends runs its kombu-rs handler in the client's
//! trace. Needs the project venv (`tests/python/requirements.txt`) or `KOMBU_PYTHON`.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs, reason = "tests")]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kombu::{Connection, Outcome, Worker};
use kombu_celery::{celery_queue, send_task, TaskOptions};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde_json::Value;

use common::{CeleryEnv, CeleryWorker};

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const SPAN: &str = "b7ad6b7169203331";

/// A temp dir with the SQLite broker's file; Kombu's URL spelling serves both languages.
fn broker() -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("kombu-celery-otel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqla+sqlite:///{}", dir.join("broker.db").display());
    (dir, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_crosses_between_kombu_rs_and_traced_celery_both_ways() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let (dir, broker) = broker();
    let conn = Connection::new(&broker).expect("connection");

    // Rust → a traced Celery worker: the task runs in the trace Rust sent it from.
    let recorded = dir.join("record.json");
    let _ = std::fs::remove_file(&recorded);
    {
        let _attached = Context::new()
            .with_remote_span_context(SpanContext::new(
                TraceId::from_hex(TRACE).unwrap(),
                SpanId::from_hex(SPAN).unwrap(),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            ))
            .attach();
        let path = recorded.display().to_string();
        let future = send_task(&conn, "otel.record", (path,), (), TaskOptions::new());
        future.await.expect("send");
    }
    let env = CeleryEnv::new(broker.clone(), None);
    let celery = CeleryWorker::start(&env, "celery_otel", "kombu-celery-otel");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !recorded.exists() {
        assert!(
            Instant::now() < deadline,
            "the Celery worker never ran otel.record"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(celery);
    let record: Value = serde_json::from_slice(&std::fs::read(&recorded).expect("record")).expect("json");
    assert_eq!(
        record["trace_id"], TRACE,
        "the Celery task ran in Rust's trace: {record}"
    );
    assert_eq!(
        record["parent_span_id"], SPAN,
        "the task's span is a child of the span Rust sent it from: {record}"
    );

    // A traced Celery client → a kombu-rs worker: the handler runs in the client's trace.
    let sent = env
        .json(&["celery_otel.py", "send", "rust.traced", "celery"])
        .await;
    let seen = Arc::new(Mutex::new(None));
    let record = seen.clone();
    let worker = Worker::builder(&conn, [celery_queue("celery")])
        .limit(1)
        .build(move |message| {
            let record = record.clone();
            async move {
                let span_context = Context::current().span().span_context().clone();
                *record.lock().unwrap() = Some((
                    message.headers().get("task").cloned(),
                    span_context
                        .is_valid()
                        .then(|| span_context.trace_id().to_string()),
                ));
                Ok(Outcome::Ack)
            }
        });
    tokio::time::timeout(Duration::from_secs(30), worker.run())
        .await
        .expect("the worker takes the Celery task")
        .expect("run");
    let (task, trace_id) = seen.lock().unwrap().clone().expect("the handler ran");
    assert_eq!(task, Some(kombu::Value::String("rust.traced".into())));
    assert_eq!(
        trace_id.as_deref(),
        sent["trace_id"].as_str(),
        "the Rust handler ran in the Celery client's trace"
    );
    conn.close().await.expect("close");
    let _ = std::fs::remove_dir_all(&dir);
}
