"""Python Kombu's side of the kombu.common interop tests (kombu-testkit's common_interop, run by
the redis, amqp and mongodb crates' tests/common_interop.rs).

    interop_common.py broadcast-consume URL NAME COUNT [TIMEOUT]
        consume COUNT messages from a `Broadcast(NAME)` queue: print {"ready": true, "queue"}
        once subscribed, then one JSON line per message {"body", "queue"}
    interop_common.py broadcast-publish URL NAME COUNT
        publish {"n": i, "from": "python"} to the fanout exchange NAME
    interop_common.py respond URL QUEUE COUNT [TIMEOUT]
        print {"ready": true}, then answer COUNT requests on QUEUE with
        `send_reply(Exchange(""), req, {"reply_to_n": body["n"], "from": "python"}, producer)`,
        one line {"request": body, "reply_to", "correlation_id"} per request
    interop_common.py request URL QUEUE N [TIMEOUT]
        send {"n": N, "from": "python"} to QUEUE with reply_to (an exclusive auto-delete
        queue) and a uuid4 correlation_id, wait for the reply with that correlation_id and
        print {"sent_correlation_id", "body", "correlation_id", "content_type"}

Exits non-zero on timeout.
"""

import json
import socket
import sys
import time
import uuid

from kombu import Connection, Exchange, Queue
from kombu.common import Broadcast, send_reply


def drain_until(conn, done, timeout):
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            sys.exit("timed out")
        try:
            conn.drain_events(timeout=min(left, 1.0))
        except socket.timeout:
            pass


def subscribe(conn):
    """One drain: Kombu's Redis transport subscribes fanout queues on the first poll."""
    try:
        conn.drain_events(timeout=0.5)
    except socket.timeout:
        pass


def broadcast_consume(url, name, count, timeout):
    got = []
    queue = Broadcast(name)

    def on_message(body, message):
        print(json.dumps({"body": body, "queue": queue.name}), flush=True)
        message.ack()
        got.append(body)

    with Connection(url) as conn:
        with conn.Consumer([queue], callbacks=[on_message], accept=["json"]):
            subscribe(conn)
            print(json.dumps({"ready": True, "queue": queue.name}), flush=True)
            drain_until(conn, lambda: len(got) >= count, timeout)


def broadcast_publish(url, name, count):
    exchange = Exchange(name, type="fanout")
    with Connection(url) as conn:
        producer = conn.Producer(serializer="json")
        for i in range(count):
            producer.publish({"n": i, "from": "python"}, exchange=exchange, declare=[exchange])
    print(json.dumps({"published": count}), flush=True)


def respond(url, queue_name, count, timeout):
    answered = []
    with Connection(url) as conn:
        producer = conn.Producer()

        def on_message(body, message):
            send_reply(Exchange(""), message, {"reply_to_n": body["n"], "from": "python"},
                       producer=producer)
            message.ack()
            print(json.dumps({
                "request": body,
                "reply_to": message.properties.get("reply_to"),
                "correlation_id": message.properties.get("correlation_id"),
            }), flush=True)
            answered.append(body)

        with conn.Consumer([Queue(queue_name)], callbacks=[on_message], accept=["json"]):
            print(json.dumps({"ready": True}), flush=True)
            drain_until(conn, lambda: len(answered) >= count, timeout)


def request(url, queue_name, n, timeout):
    correlation_id = str(uuid.uuid4())
    reply_queue = Queue(f"py.reply.{uuid.uuid4()}", exclusive=True, auto_delete=True,
                        durable=False)
    replies = []

    def on_reply(body, message):
        message.ack()
        if message.properties.get("correlation_id") == correlation_id:
            replies.append({
                "sent_correlation_id": correlation_id,
                "body": body,
                "correlation_id": message.properties.get("correlation_id"),
                "content_type": message.content_type,
            })

    with Connection(url) as conn:
        with conn.Consumer([reply_queue], callbacks=[on_reply], accept=["json"]):
            conn.Producer(serializer="json").publish(
                {"n": n, "from": "python"},
                routing_key=queue_name,
                declare=[Queue(queue_name)],
                reply_to=reply_queue.name,
                correlation_id=correlation_id,
            )
            drain_until(conn, lambda: replies, timeout)
    print(json.dumps(replies[0]), flush=True)


def main(argv):
    command, url, name, arg = argv[1], argv[2], argv[3], int(argv[4])
    timeout = float(argv[5]) if len(argv) > 5 else 30.0
    if command == "broadcast-consume":
        broadcast_consume(url, name, arg, timeout)
    elif command == "broadcast-publish":
        broadcast_publish(url, name, arg)
    elif command == "respond":
        respond(url, name, arg, timeout)
    elif command == "request":
        request(url, name, arg, timeout)
    else:
        sys.exit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv)
