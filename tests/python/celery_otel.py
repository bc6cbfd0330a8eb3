"""Celery with its OpenTelemetry instrumentation, for kombu-celery's trace tests
(crates/kombu-celery/tests/otel.rs): the trace context kombu-rs writes into a task message
continues in a traced Celery worker, and the one a traced Celery client writes continues in
a kombu-rs worker.

The app's broker is `CELERY_BROKER_URL`; no result backend. `CeleryInstrumentor` is
installed at import, with an SDK tracer provider (no exporter: the spans only have to exist).

    python -m celery -A celery_otel worker --pool solo -Q celery \
        --without-heartbeat --without-gossip --without-mingle
        runs `otel.record(path)`: writes {"trace_id", "parent_span_id"} of the span the
        instrumentation opened for the task run to `path`
    celery_otel.py send NAME QUEUE
        inside a span of its own, `app.send_task(NAME, queue=QUEUE)` (the instrumentation
        opens the publish span and writes its context into the message headers); prints
        {"id", "trace_id"}
"""

import json
import os
import sys

from celery import Celery
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider

trace.set_tracer_provider(TracerProvider())
CeleryInstrumentor().instrument()

app = Celery("celery_otel", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
)


@app.task(name="otel.record")
def record(path):
    context = trace.get_current_span().get_span_context()
    parent = getattr(trace.get_current_span(), "parent", None)
    with open(path + ".tmp", "w") as out:
        json.dump({
            "trace_id": format(context.trace_id, "032x"),
            "parent_span_id": format(parent.span_id, "016x") if parent else None,
        }, out)
    os.replace(path + ".tmp", path)


def send(name, queue):
    with trace.get_tracer("celery_otel").start_as_current_span("client") as span:
        result = app.send_task(name, queue=queue)
        trace_id = format(span.get_span_context().trace_id, "032x")
    print(json.dumps({"id": result.id, "trace_id": trace_id}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {sys.argv[1]!r}")
