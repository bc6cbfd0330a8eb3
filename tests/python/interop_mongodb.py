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


def reopen_dead_broadcast_cursors():
    """Kombu's fanout consumer reads one tailable cursor that it never reopens. FerretDB 1.x
    closes a tailable cursor once it has returned everything (mongod keeps it open), and
    so does mongod when the capped collection is empty at the first read (Kombu's known
    flaw): then Kombu's consumer sees nothing, ever. A test-harness workaround: a dead
    cursor is opened again at Kombu's own offset. Kombu's documents and offsets are
    unchanged."""
    from kombu.transport import mongodb as kombu_mongodb
    from pymongo.cursor import CursorType

    class ReopeningBroadcastCursor(kombu_mongodb.BroadcastCursor):
        def __init__(self, cursor, exchange):
            self._exchange = exchange
            super().__init__(cursor)

        def __next__(self):
            try:
                return super().__next__()
            except StopIteration:
                if self._cursor.alive:
                    raise
                self._cursor = self._cursor.collection.find(
                    {"queue": self._exchange}, cursor_type=CursorType.TAILABLE
                ).skip(self._offset)
                return super().__next__()

    def create_broadcast_cursor(self, exchange, routing_key, pattern, queue):
        cursor = self.broadcast.find(filter={"queue": exchange}, cursor_type=CursorType.TAILABLE)
        ret = self._broadcast_cursors[queue] = ReopeningBroadcastCursor(cursor, exchange)
        return ret

    kombu_mongodb.Channel._create_broadcast_cursor = create_broadcast_cursor


def fanout_consume(url, exchange, queue, count):
    reopen_dead_broadcast_cursors()
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


def tolerate_missing_ttl_indexes():
    """FerretDB 1.x has no TTL indexes (`expireAfterSeconds` is NotImplemented, code 238),
    and Kombu's ttl=True creates three at connect: a test-harness workaround for that
    server only (a real mongod creates them)."""
    create_index = pymongo.collection.Collection.create_index

    def create_index_or_skip_ttl(self, keys, **kwargs):
        try:
            return create_index(self, keys, **kwargs)
        except pymongo.errors.OperationFailure as exc:
            if "expireAfterSeconds" in kwargs and exc.code == 238:
                return None
            raise

    pymongo.collection.Collection.create_index = create_index_or_skip_ttl


def ttl_publish(url, queue):
    tolerate_missing_ttl_indexes()
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
