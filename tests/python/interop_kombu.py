"""Python Kombu's side of the kombu-rs interop tests.

    interop_kombu.py publish URL QUEUE COUNT   publish COUNT messages to QUEUE
    interop_kombu.py consume URL QUEUE COUNT [TIMEOUT]
                                               consume and ack COUNT messages, one JSON
                                               line per message on stdout
    interop_kombu.py drain URL QUEUE IDLE      print {"ready": true} once consuming, then
                                               consume and ack until no message came for
                                               IDLE seconds, one JSON line per message

Messages published here are `{"n": i, "text": "héllo ✓", "from": "python"}` with
header `x-origin: python` and priority `i % 10`, to the default exchange with the
queue name as routing key (Celery's path). Consumed messages are printed as
`{"body": <decoded>, "content_type", "content_encoding", "headers",
"delivery_info", "redelivered"}`. Exits non-zero on timeout.
"""

import json
import sys
import time

from kombu import Connection, Queue


def publish(url, queue_name, count):
    queue = Queue(queue_name)
    with Connection(url) as conn:
        producer = conn.Producer(serializer="json")
        for i in range(count):
            producer.publish(
                {"n": i, "text": "h\u00e9llo \u2713", "from": "python"},
                routing_key=queue_name,
                declare=[queue],
                headers={"x-origin": "python"},
                priority=i % 10,
            )
    print(json.dumps({"published": count}), flush=True)


def message_line(body, message):
    return {
        "body": body,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "headers": message.headers,
        "delivery_info": {
            "exchange": message.delivery_info.get("exchange"),
            "routing_key": message.delivery_info.get("routing_key"),
        },
        "redelivered": bool(message.delivery_info.get("redelivered")),
    }


def drain(url, queue_name, idle):
    """Compete with other consumers: take what comes until the queue stays quiet."""
    last = [time.monotonic()]

    def on_message(body, message):
        print(json.dumps(message_line(body, message)), flush=True)
        message.ack()
        last[0] = time.monotonic()

    with Connection(url) as conn:
        conn.transport.polling_interval = 0.05
        with conn.Consumer([Queue(queue_name)], callbacks=[on_message], accept=["json"]):
            print(json.dumps({"ready": True}), flush=True)
            last[0] = time.monotonic()
            while time.monotonic() - last[0] < idle:
                try:
                    conn.drain_events(timeout=0.2)
                except TimeoutError:
                    pass
                except OSError as e:  # socket.timeout on older Pythons
                    if "timed out" not in str(e):
                        raise


def consume(url, queue_name, count, timeout):
    received = []

    def on_message(body, message):
        line = message_line(body, message)
        print(json.dumps(line), flush=True)
        message.ack()
        received.append(line)

    queue = Queue(queue_name)
    deadline = time.monotonic() + timeout
    with Connection(url) as conn:
        # sqla passes transport_options to create_engine, so poll faster this way.
        conn.transport.polling_interval = 0.05
        with conn.Consumer([queue], callbacks=[on_message], accept=["json", "text/plain", "application/data"]):
            while len(received) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    print(f"timeout: {len(received)} of {count} messages", file=sys.stderr)
                    sys.exit(2)
                try:
                    conn.drain_events(timeout=min(remaining, 1.0))
                except TimeoutError:
                    pass
                except OSError as e:  # socket.timeout on older Pythons
                    if "timed out" not in str(e):
                        raise


def main(argv):
    if len(argv) < 5 or argv[1] not in ("publish", "consume", "drain"):
        print(__doc__, file=sys.stderr)
        return 64
    if argv[1] == "drain":
        drain(argv[2], argv[3], float(argv[4]))
        return 0
    command, url, queue, count = argv[1], argv[2], argv[3], int(argv[4])
    if command == "publish":
        publish(url, queue, count)
    else:
        consume(url, queue, count, float(argv[5]) if len(argv) > 5 else 30.0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
