//! W3C trace context across the broker (feature `opentelemetry`): a publish carries the
//! current OpenTelemetry context in the message headers (`traceparent`, `tracestate`, and
//! whatever else the application's global propagator writes), and a [`Worker`](crate::Worker)
//! runs each handler inside the context its message carried, so a trace crosses from producer
//! to consumer.
//!
//! The header names are the propagator's: with OpenTelemetry's `TraceContextPropagator` they
//! are W3C's `traceparent`/`tracestate`, the headers Python's OpenTelemetry instrumentation of
//! Celery and Kombu writes and reads, so a trace crosses between Python and Rust too. Nothing
//! is written until the application installs a propagator (the global default propagates
//! nothing), and a header a producer set itself is never overwritten.
//!
//! The context is OpenTelemetry's current one (`opentelemetry::Context::current()`). An
//! application that traces through `tracing` with `tracing-opentelemetry` makes its span's
//! context current around the publish (`let _guard = span.context().attach();`).

use kombu_core::{FieldTable, Value};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::{global, Context};

/// Write the current context into `headers` with the global propagator.
pub(crate) fn inject(headers: &mut FieldTable) {
    global::get_text_map_propagator(|propagator| propagator.inject(&mut Headers(headers)));
}

/// The context `headers` carry (the current context if they carry none).
pub(crate) fn extract(headers: &FieldTable) -> Context {
    global::get_text_map_propagator(|propagator| propagator.extract(&ReadHeaders(headers)))
}

struct Headers<'a>(&'a mut FieldTable);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.entry(key.to_owned()).or_insert(Value::String(value));
    }
}

struct ReadHeaders<'a>(&'a FieldTable);

impl Extractor for ReadHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.get(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}
