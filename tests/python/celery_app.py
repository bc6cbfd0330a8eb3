"""Python Celery's side of the kombu-celery tests (Celery 5.7).

The app: broker and result backend from the environment (`CELERY_BROKER_URL`,
`CELERY_RESULT_BACKEND`), tasks sent with `CELERY_TASK_SERIALIZER` (default json), json
and msgpack accepted, results in JSON; tasks `tasks.add(x, y)` and `tasks.fail()`.
Run a worker with

    python -m celery -A celery_app worker --pool solo -Q celery \
        --without-heartbeat --without-gossip --without-mingle

The client commands (one JSON line on stdout each):

    celery_app.py call NAME ARGS_JSON [KWARGS_JSON]
        app.send_task(NAME, ARGS, KWARGS), then AsyncResult.get(timeout=10):
        {"id", "state", "result"} or, if the task failed,
        {"id", "state", "exc_type", "error"}
    celery_app.py chain FIRST_NAME FIRST_QUEUE ARGS_JSON NEXT_NAME NEXT_ARGS_JSON
        chain(FIRST(*ARGS) on FIRST_QUEUE, NEXT(*NEXT_ARGS)).apply_async(), then the
        chain's get(timeout=10): {"id", "state", "result"}
    celery_app.py send NAME ARGS_JSON QUEUE
        app.send_task(NAME, ARGS, queue=QUEUE) without waiting: {"id"}
    celery_app.py declare-reply-queue OID
        (with CELERY_RESULT_BACKEND=rpc://) declare the rpc backend's reply queue as
        Celery does (`RPCBackend.binding`), named OID instead of this process's oid; the
        broker refuses it if a queue OID was declared otherwise:
        {"queue", "durable", "auto_delete", "expires"}
"""

import json
import os
import sys

from celery import Celery, chain

app = Celery(
    "celery_app",
    broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/1"),
)
app.conf.update(
    task_serializer=os.environ.get("CELERY_TASK_SERIALIZER", "json"),
    result_serializer="json",
    accept_content=["json", "msgpack"],
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
)


@app.task(name="tasks.add")
def add(x, y):
    return x + y


@app.task(name="tasks.fail")
def fail():
    raise ValueError("tasks.fail failed on purpose")


def call(name, args, kwargs):
    result = app.send_task(name, args=args, kwargs=kwargs)
    try:
        value = result.get(timeout=10)
    except Exception as exc:  # the task's own error, re-raised by get()
        print(json.dumps({"id": result.id, "state": result.state,
                          "exc_type": type(exc).__name__, "error": str(exc)}), flush=True)
        return
    print(json.dumps({"id": result.id, "state": result.state, "result": value}), flush=True)


def main(argv):
    if argv[0] == "call":
        call(argv[1], tuple(json.loads(argv[2])), json.loads(argv[3]) if len(argv) > 3 else {})
    elif argv[0] == "chain":
        first = app.signature(argv[1], args=tuple(json.loads(argv[3])), queue=argv[2])
        after = app.signature(argv[4], args=tuple(json.loads(argv[5])))
        result = chain(first, after).apply_async()
        value = result.get(timeout=10)
        print(json.dumps({"id": result.id, "state": result.state, "result": value}), flush=True)
    elif argv[0] == "send":
        result = app.send_task(argv[1], args=tuple(json.loads(argv[2])), queue=argv[3])
        print(json.dumps({"id": result.id}), flush=True)
    elif argv[0] == "declare-reply-queue":
        app.backend.__dict__["oid"] = argv[1]  # the cached_property RPCBackend.oid
        with app.connection_for_write() as conn:
            queue = app.backend.binding(conn.default_channel)
            queue.declare()
        print(json.dumps({"queue": queue.name, "durable": queue.durable,
                          "auto_delete": queue.auto_delete, "expires": queue.expires}), flush=True)
    else:
        sys.exit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
