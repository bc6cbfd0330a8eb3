"""Python Kombu's side of the scripted interop scenarios (kombu-rs <-> Python Kombu).

    interop_scenarios.py publish URL PREFIX      publish every scenario
    interop_scenarios.py consume URL PREFIX      consume every scenario (published by
                                                 kombu-rs), one JSON line per message
    interop_scenarios.py fanout-publish URL EXCHANGE COUNT
    interop_scenarios.py reject-requeue URL QUEUE
                                                 take one message, reject it with requeue
    interop_scenarios.py drain URL QUEUE COUNT [VISIBILITY_TIMEOUT]
                                                 consume and ack COUNT messages (restoring
                                                 expired deliveries as Kombu does)

The scenarios (names prefixed with PREFIX, so runs do not collide):

* direct: exchange PREFIX.direct (direct), queue PREFIX.q.direct, key `d`; a JSON body with a
  datetime (Kombu's `__type__` tag), headers and properties.
* topic: exchange PREFIX.topic (topic), queue PREFIX.q.topic bound with `a.*.c`; keys
  `a.b.c` (routed), `a.b.b.c` and `x.y` (not routed).
* serializers: queue PREFIX.q.ser (default exchange): msgpack, yaml, raw bytes, text.
* compression: queue PREFIX.q.comp: zlib, bzip2, lzma.
* priorities: queue PREFIX.q.prio: priorities 9, 0, 5 (Redis serves 0 first; on AMQP the
  queue is declared with x-max-priority 10 and 9 is served first).
* celery: queue PREFIX.celery: a Celery protocol 2 task message (exchange '', key = queue).
"""

import datetime
import json
import sys
import time
import uuid

from kombu import Connection, Exchange, Queue

WHEN = datetime.datetime(2026, 11, 26, 12, 30, 45, 123456)


def queues(prefix, url=""):
    # AMQP applies priorities only to queues declared with x-max-priority.
    max_priority = 10 if url.split("://", 1)[0] in ("amqp", "pyamqp", "amqps") else None
    direct = Exchange(prefix + ".direct", "direct")
    topic = Exchange(prefix + ".topic", "topic")
    return {
        "direct": Queue(prefix + ".q.direct", direct, routing_key="d"),
        "topic": Queue(prefix + ".q.topic", topic, routing_key="a.*.c"),
        "ser": Queue(prefix + ".q.ser"),
        "comp": Queue(prefix + ".q.comp"),
        "prio": Queue(prefix + ".q.prio", max_priority=max_priority),
        "celery": Queue(prefix + ".celery"),
    }


# (queue key, expected count) in the order they are consumed.
EXPECTED = [("direct", 1), ("topic", 1), ("ser", 4), ("comp", 3), ("prio", 3), ("celery", 1)]


def publish(url, prefix):
    qs = queues(prefix, url)
    with Connection(url) as conn:
        for q in qs.values():
            q(conn.default_channel).declare()
        p = conn.Producer(serializer="json")
        p.publish(
            {"kind": "direct", "when": WHEN},
            exchange=qs["direct"].exchange,
            routing_key="d",
            headers={"x-origin": "python", "n": 1, "nested": {"a": [1, "b"]}},
            correlation_id="cid-1",
            reply_to=prefix + ".reply",
            message_id="mid-1",
        )
        for n, key in [(1, "a.b.c"), (2, "a.b.b.c"), (3, "x.y")]:
            p.publish({"kind": "topic", "n": n}, exchange=qs["topic"].exchange, routing_key=key)
        ser = qs["ser"].name
        p.publish({"kind": "msgpack", "v": [1, 2]}, routing_key=ser, serializer="msgpack")
        p.publish({"kind": "yaml", "v": "y"}, routing_key=ser, serializer="yaml")
        p.publish(b"\x00\x01raw", routing_key=ser, content_type="application/data", content_encoding="binary")
        p.publish("plain text \u2713", routing_key=ser, content_type="text/plain", content_encoding="utf-8")
        for method in ["zlib", "bzip2", "lzma"]:
            p.publish({"kind": "comp", "method": method}, routing_key=qs["comp"].name, compression=method)
        for prio in [9, 0, 5]:
            p.publish({"kind": "prio", "p": prio}, routing_key=qs["prio"].name, priority=prio)
        task_id = str(uuid.uuid4())
        p.publish(
            [[2, 3], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}],
            exchange="",
            routing_key=qs["celery"].name,
            headers={
                "lang": "py",
                "task": "proj.tasks.add",
                "id": task_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": task_id,
                "parent_id": None,
                "argsrepr": "(2, 3)",
                "kwargsrepr": "{}",
                "origin": "gen1@python",
                "ignore_result": False,
            },
            correlation_id=task_id,
            reply_to="",
        )
    print(json.dumps({"published": True}), flush=True)


def describe(scenario, body, message):
    if isinstance(body, (bytes, bytearray)):
        body = {"__bytes__": list(body)}
    elif isinstance(body, datetime.datetime):
        body = body.isoformat()
    elif isinstance(body, dict):
        body = {k: (v.isoformat() if isinstance(v, datetime.datetime) else v) for k, v in body.items()}
    props = message.properties
    return {
        "scenario": scenario,
        "body": body,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "headers": message.headers,
        "correlation_id": props.get("correlation_id"),
        "reply_to": props.get("reply_to"),
        "message_id": props.get("message_id"),
        "priority": props.get("priority"),
        "delivery_info": {
            "exchange": message.delivery_info.get("exchange"),
            "routing_key": message.delivery_info.get("routing_key"),
        },
        "redelivered": bool(message.delivery_info.get("redelivered")),
    }


def drain_queue(conn, queue, count, timeout, scenario, transport_options_restore=False):
    got = []

    def on_message(body, message):
        got.append(describe(scenario, body, message))
        message.ack()

    deadline = time.monotonic() + timeout
    with conn.Consumer(
        [queue], callbacks=[on_message], accept=["json", "msgpack", "yaml", "application/data", "text/plain"]
    ):
        while len(got) < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out on {queue.name}: {len(got)}/{count}")
            try:
                conn.drain_events(timeout=0.5)
            except TimeoutError:
                pass
            except OSError:
                pass
    return got


def consume(url, prefix):
    qs = queues(prefix, url)
    with Connection(url) as conn:
        for key, count in EXPECTED:
            for line in drain_queue(conn, qs[key], count, 30, key):
                print(json.dumps(line), flush=True)
        # Nothing else may have arrived.
        for key, _ in EXPECTED:
            left = qs[key](conn.default_channel).queue_declare(passive=False).message_count
            if left:
                raise SystemExit(f"{left} unexpected message(s) left in {qs[key].name}")


def fanout_publish(url, exchange, count):
    ex = Exchange(exchange, "fanout")
    with Connection(url) as conn:
        p = conn.Producer(serializer="json")
        for i in range(int(count)):
            p.publish({"kind": "fanout", "n": i}, exchange=ex, declare=[ex])
    print(json.dumps({"published": int(count)}), flush=True)


def reject_requeue(url, queue_name):
    with Connection(url) as conn:
        simple = conn.SimpleQueue(queue_name)
        message = simple.get(timeout=30)
        message.requeue()
        print(json.dumps({"rejected": message.payload}), flush=True)
        simple.close()


def drain(url, queue_name, count, visibility_timeout=None):
    options = {}
    if visibility_timeout is not None:
        options["visibility_timeout"] = float(visibility_timeout)
    with Connection(url, transport_options=options) as conn:
        for line in drain_queue(conn, Queue(queue_name), int(count), 60, "drain"):
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {
        "publish": publish,
        "consume": consume,
        "fanout-publish": fanout_publish,
        "reject-requeue": reject_requeue,
        "drain": drain,
    }[command](*args)
