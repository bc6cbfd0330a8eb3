"""Python Kombu's side of the SQS-specific interop scenarios (kombu-rs <-> Kombu's SQS transport).

    interop_sqs.py publish URL PREFIX     publish every scenario
    interop_sqs.py consume URL PREFIX     consume every scenario (published by kombu-rs), one
                                          JSON line per message

URL is a plain `sqs://KEY:SECRET@host:port` of a moto server. The scenarios (queues prefixed
with PREFIX):

* raw: queue PREFIX-raw, published with sqs_base64_encoding=False (raw JSON SQS bodies).
* fifo: queue PREFIX-group.fifo, groups g1 (3 messages) and g2 (2) interleaved; each group
  must arrive in order.
* delay: queue PREFIX-delay, one message with DelaySeconds=2 (the line carries the time it
  was published or received).
* attrs: queue PREFIX-attrs, one message with the SQS message attribute color=blue.
* predefined: queue PREFIX-pre, created here with boto3 and used through predefined_queues
  (by URL, never listed or created by Kombu).

SNS fanout (transport option supports_fanout=True):

    interop_sqs.py fanout-publish URL EXCHANGE          publish {"kind": "fanout"} to the
                                                        fanout exchange EXCHANGE (an SNS topic)
    interop_sqs.py fanout-subscribe URL EXCHANGE Q...   bind the queues to EXCHANGE and start
                                                        consuming them (Kombu subscribes a queue
                                                        to the topic when it consumes it)
    interop_sqs.py fanout-consume URL EXCHANGE Q...     one message from each queue, one JSON
                                                        line each
"""

import json
import sys
import time

import boto3
from kombu import Connection, Exchange, Queue

from interop_scenarios import describe

ACCEPT = ["json", "msgpack", "yaml", "application/data", "text/plain"]


def endpoint(url):
    rest = url.split("@", 1)[1]
    return "http://" + rest.split("/", 1)[0].split("?", 1)[0]


def predefined_url(url, prefix):
    client = boto3.client(
        "sqs",
        endpoint_url=endpoint(url),
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return client.create_queue(QueueName=prefix + "-pre")["QueueUrl"]


def options(url, prefix, **extra):
    opts = {
        "region": "us-east-1",
        "wait_time_seconds": 1,
        "fetch_message_attributes": {"MessageAttributeNames": ["color"]},
    }
    opts.update(extra)
    return opts


def publish(url, prefix):
    with Connection(url, transport_options=options(url, prefix, sqs_base64_encoding=False)) as conn:
        p = conn.Producer(serializer="json")
        p.publish({"kind": "raw"}, routing_key=prefix + "-raw", declare=[Queue(prefix + "-raw")])
    with Connection(url, transport_options=options(url, prefix)) as conn:
        p = conn.Producer(serializer="json")
        fifo = Queue(prefix + "-group.fifo")
        for group, n in [("g1", 0), ("g2", 0), ("g1", 1), ("g2", 1), ("g1", 2)]:
            p.publish(
                {"kind": "fifo", "group": group, "n": n},
                routing_key=fifo.name,
                declare=[fifo],
                MessageGroupId=group,
            )
        delay = Queue(prefix + "-delay")
        p.publish({"kind": "delay", "published": time.time()}, routing_key=delay.name, declare=[delay], DelaySeconds=2)
        attrs = Queue(prefix + "-attrs")
        p.publish(
            {"kind": "attrs"},
            routing_key=attrs.name,
            declare=[attrs],
            message_attributes={"color": {"DataType": "String", "StringValue": "blue"}},
        )
    pre = predefined_url(url, prefix)
    with Connection(url, transport_options=options(url, prefix, predefined_queues={prefix + "-pre": {"url": pre}})) as conn:
        p = conn.Producer(serializer="json")
        p.publish({"kind": "predefined"}, routing_key=prefix + "-pre")
    print(json.dumps({"published": True, "predefined_url": pre}), flush=True)


def drain(conn, queue, count, scenario):
    got = []

    def on_message(body, message):
        line = describe(scenario, body, message)
        line["received"] = time.time()
        sqs = message.delivery_info.get("sqs_message") or {}
        attrs = sqs.get("MessageAttributes") or {}
        line["attributes"] = {k: v.get("StringValue") for k, v in attrs.items()}
        line["receive_count"] = (sqs.get("Attributes") or {}).get("ApproximateReceiveCount")
        got.append(line)
        message.ack()

    deadline = time.monotonic() + 30
    with conn.Consumer([queue], callbacks=[on_message], accept=ACCEPT):
        while len(got) < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out on {queue.name}: {len(got)}/{count}")
            try:
                conn.drain_events(timeout=1)
            except (TimeoutError, OSError):
                pass
    return got


def consume(url, prefix):
    pre = predefined_url(url, prefix)
    lines = []
    with Connection(url, transport_options=options(url, prefix)) as conn:
        lines += drain(conn, Queue(prefix + "-raw"), 1, "raw")
        lines += drain(conn, Queue(prefix + "-group.fifo"), 5, "fifo")
        lines += drain(conn, Queue(prefix + "-delay"), 1, "delay")
        lines += drain(conn, Queue(prefix + "-attrs"), 1, "attrs")
    with Connection(url, transport_options=options(url, prefix, predefined_queues={prefix + "-pre": {"url": pre}})) as conn:
        lines += drain(conn, Queue(prefix + "-pre"), 1, "predefined")
    for line in lines:
        print(json.dumps(line), flush=True)


def fanout_options():
    return {"region": "us-east-1", "wait_time_seconds": 1, "supports_fanout": True}


def fanout_queues(exchange, names):
    ex = Exchange(exchange, type="fanout")
    return ex, [Queue(name, exchange=ex, routing_key="") for name in names]


def fanout_publish(url, exchange):
    with Connection(url, transport_options=fanout_options()) as conn:
        ex, _ = fanout_queues(exchange, [])
        conn.Producer(serializer="json").publish({"kind": "fanout", "from": "python"}, exchange=ex, declare=[ex])
    print(json.dumps({"published": True}), flush=True)


def fanout_subscribe(url, exchange, *names):
    with Connection(url, transport_options=fanout_options()) as conn:
        _, queues = fanout_queues(exchange, names)
        with conn.Consumer(queues, callbacks=[], accept=ACCEPT):
            try:
                conn.drain_events(timeout=0.5)
            except (TimeoutError, OSError):
                pass
    print(json.dumps({"subscribed": list(names)}), flush=True)


def fanout_consume(url, exchange, *names):
    lines = []
    with Connection(url, transport_options=fanout_options()) as conn:
        _, queues = fanout_queues(exchange, names)
        for queue in queues:
            for line in drain(conn, queue, 1, "fanout"):
                line["queue"] = queue.name
                lines.append(line)
    for line in lines:
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {
        "publish": publish,
        "consume": consume,
        "fanout-publish": fanout_publish,
        "fanout-subscribe": fanout_subscribe,
        "fanout-consume": fanout_consume,
    }[command](*args)
