"""W3C trace context through Kombu message headers, as Python's OpenTelemetry writes and reads
it (the opentelemetry-api default propagators: tracecontext and baggage).

    interop_otel.py publish URL QUEUE TRACE_ID SPAN_ID   publish one message whose headers carry
                                                         that span as its trace context
    interop_otel.py consume URL QUEUE TIMEOUT           take one message, print its trace id
                                                         (32 hex digits, or "none")
"""
import json
import sys

from kombu import Connection, Queue
from opentelemetry import propagate, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags


def publish(url, queue_name, trace_id, span_id):
    context = trace.set_span_in_context(
        NonRecordingSpan(
            SpanContext(
                trace_id=int(trace_id, 16),
                span_id=int(span_id, 16),
                is_remote=False,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
        )
    )
    headers = {}
    propagate.inject(headers, context=context)
    queue = Queue(queue_name)
    with Connection(url) as conn:
        conn.Producer().publish(
            {"traced": True}, routing_key=queue_name, declare=[queue], headers=headers
        )
    print(json.dumps(headers), flush=True)


def consume(url, queue_name, timeout):
    got = []

    def on_message(body, message):
        context = propagate.extract(message.headers or {})
        span_context = trace.get_current_span(context).get_span_context()
        got.append(
            format(span_context.trace_id, "032x") if span_context.is_valid else "none"
        )
        message.ack()

    with Connection(url) as conn:
        with conn.Consumer([Queue(queue_name)], callbacks=[on_message], accept=["json"]):
            conn.drain_events(timeout=timeout)
    print(got[0], flush=True)


def main(argv):
    if len(argv) >= 6 and argv[1] == "publish":
        publish(argv[2], argv[3], argv[4], argv[5])
    elif len(argv) >= 5 and argv[1] == "consume":
        consume(argv[2], argv[3], float(argv[4]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
