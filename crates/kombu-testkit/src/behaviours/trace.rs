//! W3C trace context through every transport: the `traceparent` a publish writes arrives
//! unchanged in the message headers, and a worker's handler runs in that trace.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kombu::{Outcome, Queue, Value, Worker};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;

use super::{declare, publish_to};
use crate::check_eq;
use crate::harness::{Ctx, Failure, TestResult};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

pub(super) async fn trace_context_crosses_the_transport(ctx: Ctx) -> TestResult {
    // Process-wide, and harmless to the other behaviours: nothing is written without a
    // current span.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let conn = ctx.conn()?;
    let queue = ctx.name("traced");
    declare(&conn, &Queue::new(&queue)).await?;
    let trace = TraceId::from_hex(TRACE).map_err(|e| Failure(e.to_string()))?;
    let span = SpanId::from_hex(SPAN).map_err(|e| Failure(e.to_string()))?;
    let remote = Context::new().with_remote_span_context(SpanContext::new(
        trace,
        span,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ));
    // The publish runs in the remote span's context (as under an instrumented caller).
    opentelemetry::context::FutureExt::with_context(
        publish_to(&conn, &queue, serde_json::json!("traced")),
        remote,
    )
    .await?;

    let seen = Arc::new(Mutex::new(None));
    let record = seen.clone();
    let worker = Worker::builder(&conn, [Queue::new(&queue)])
        .limit(1)
        .build(move |message| {
            let record = record.clone();
            async move {
                let span_context = Context::current().span().span_context().clone();
                let header = message.headers().get("traceparent").cloned();
                if let Ok(mut seen) = record.lock() {
                    *seen = Some((span_context.trace_id(), header));
                }
                Ok(Outcome::Ack)
            }
        });
    tokio::time::timeout(ctx.patience().max(Duration::from_secs(5)), worker.run())
        .await
        .map_err(|_| Failure("the worker did not take the traced message within the patience".into()))??;
    let seen = seen.lock().map_err(|e| Failure(e.to_string()))?.clone();
    let (handler_trace, header) = seen.ok_or("the handler never ran")?;
    check_eq!(
        header,
        Some(Value::String(format!("00-{TRACE}-{SPAN}-01"))),
        "the traceparent header as delivered"
    );
    check_eq!(handler_trace, trace, "the trace the handler ran in");
    Ok(())
}
