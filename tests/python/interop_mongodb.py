"""Python Kombu's (and pymongo's) side of the MongoDB-only interop checks.

    interop_mongodb.py fanout-consume URL EXCHANGE QUEUE COUNT
        bind QUEUE to the fanout EXCHANGE (Kombu's tailable cursor on the capped
        messages.broadcast), print {"ready": true}, then one JSON line per message body
    interop_mongodb.py inspect URL QUEUE
        the documents of QUEUE in `messages` and `messages.routing`, as pymongo reads them
    interop_mongodb.py ttl-publish URL QUEUE
        with transport option ttl=True: declare QUEUE with x-message-ttl 600000 and publish
        two messages, one with a 60 s expiration
"""

import json
import sys
import time
import urllib.parse

import pymongo
from kombu import Connection, Exchange, Queue


def database(url):
    parsed = urllib.parse.urlparse(url)
    client = pymongo.MongoClient(f"mongodb://{parsed.netloc}/")
    return client[parsed.path.strip("/") or "kombu_default"]


def fanout_consume(url, exchange, queue, count):
    count = int(count)
    got = []
    with Connection(url) as conn:
        q = Queue(queue, Exchange(exchange, "fanout"))

        def on_message(body, message):
            got.append(body)
            message.ack()

        with conn.Consumer([q], callbacks=[on_message], accept=["json"]):
            print(json.dumps({"ready": True}), flush=True)
            deadline = time.monotonic() + 60
            while len(got) < count:
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out: {len(got)}/{count}")
                try:
                    conn.drain_events(timeout=0.5)
                except (TimeoutError, OSError):
                    pass
    for body in got:
        print(json.dumps(body), flush=True)


def inspect(url, queue):
    db = database(url)
    for doc in db["messages"].find({"queue": queue}).sort([("priority", 1), ("_id", 1)]):
        print(json.dumps({
            "collection": "messages",
            "fields": sorted(doc.keys()),
            "id_type": type(doc["_id"]).__name__,
            "queue": doc["queue"],
            "priority": doc["priority"],
            "payload": json.loads(doc["payload"]),
            "expire_at": doc.get("expire_at") is not None,
        }), flush=True)
    for doc in db["messages.routing"].find({"queue": queue}):
        print(json.dumps({
            "collection": "messages.routing",
            "fields": sorted(k for k in doc.keys() if k != "_id"),
            "exchange": doc["exchange"],
            "routing_key": doc["routing_key"],
            "pattern": doc["pattern"],
        }), flush=True)
    options = db["messages.broadcast"].options()
    print(json.dumps({"collection": "messages.broadcast", "capped": bool(options.get("capped"))}), flush=True)


def ttl_publish(url, queue):
    with Connection(url, transport_options={"ttl": True}) as conn:
        q = Queue(queue, queue_arguments={"x-message-ttl": 600000})
        q(conn.default_channel).declare()
        p = conn.Producer(serializer="json")
        p.publish({"n": 1}, routing_key=queue, expiration=60)
        p.publish({"n": 2}, routing_key=queue)
    db = database(url)
    docs = list(db["messages"].find({"queue": queue}))
    print(json.dumps({"published": 2, "expire_at": [d.get("expire_at") is not None for d in docs]}), flush=True)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {
        "fanout-consume": fanout_consume,
        "inspect": inspect,
        "ttl-publish": ttl_publish,
    }[command](*args)
