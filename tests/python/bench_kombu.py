#!/usr/bin/env python3
"""Python Kombu side of ``cargo xtask bench``.

Runs the same workload as ``kombu bench`` (the Rust benchmark, a command of the
``kombu`` CLI) against Python Kombu 5.7 and prints one JSON object on stdout:

    {"name": "Python Kombu 5.7 memory://", "transport": "memory",
     "messages": N, "size": S,
     "publish_msgs_per_s": f, "consume_msgs_per_s": f, "total_msgs_per_s": f,
     "latency_p50_ms": f, "latency_p99_ms": f}

Workload
--------
* body: a JSON object ``{"n": i, "pad": "xxx..."}`` padded so the serialized
  JSON is ~SIZE bytes (serializer ``json``);
* phase 1 (publish): declare the direct exchange ``bench`` and the queue
  ``bench-<uuid>`` bound with routing key ``bench`` (through ``declare=[queue]``
  on ``Producer.publish``, which Kombu caches after the first call), then
  publish N messages;
* phase 2 (consume+ack): a ``Consumer`` on the queue whose callback acks each
  message; ``conn.drain_events(timeout=...)`` until N messages were received;
* phase 3 (latency): M round trips, each publishing one message carrying its
  send time and draining until it is received; p50/p99 in milliseconds
  (nearest-rank percentiles).

``total_msgs_per_s`` is N / (publish seconds + consume seconds).

Only Kombu itself is used, so any Kombu URL works (``memory://``,
``redis://127.0.0.1:6379/0`` ...). For the SQLAlchemy transport use
``sqla+sqlite:////abs/path/bench.db`` (four slashes for an absolute path,
SQLAlchemy's rule); it needs ``SQLAlchemy`` from ``requirements.txt``. Give it a
file of its own: the tables are created on first use.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
import time
import uuid

import kombu
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.utils.url import maybe_sanitize_url

#: Seconds ``drain_events`` may wait for one message before the run is
#: declared stuck (a healthy broker delivers in well under a millisecond).
DRAIN_TIMEOUT_S = 10.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="memory://", help="Kombu broker URL (default: memory://)")
    parser.add_argument("--messages", type=int, default=100_000, help="messages in phases 1-2")
    parser.add_argument("--latency-samples", type=int, default=2_000, help="round trips in phase 3")
    parser.add_argument("--size", type=int, default=100, help="approximate serialized body size in bytes")
    args = parser.parse_args(argv)
    for name in ("messages", "latency_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.size < 0:
        parser.error("--size must not be negative")
    return args


def transport_options(url: str) -> dict:
    # memory://: kombu's virtual Transport.drain_events only sleeps
    # `polling_interval` (default 1.0 s) after *every* queue came up empty:
    # FairCycle.get tries each channel/queue and Channel._get on the memory
    # transport is a non-blocking Queue.get, so when the queue holds a message
    # drain_events delivers it immediately without sleeping. Every phase below
    # drains only after the messages were published (same thread, synchronous
    # put), so the queue is never empty when we drain and the sleep never
    # happens. We therefore keep Kombu's defaults (no polling_interval=0) so the
    # numbers reflect a stock Kombu configuration.
    #
    # sqla+sqlite:// is a virtual transport too and behaves the same way: its
    # `_get` is one SELECT, and the 1 s `polling_interval` sleep only follows an
    # empty poll, which none of the phases below ever meets.
    return {}


def is_amqp(url: str) -> bool:
    return url.split("://", 1)[0] in ("amqp", "pyamqp", "amqps")


def split_confirm(url: str) -> tuple[str, dict]:
    """AMQP: ``?confirm_publish=true|false`` in the URL (kombu-rs reads it from there) becomes
    py-amqp's ``confirm_publish`` transport option; the URL loses the parameter."""
    if not is_amqp(url) or "?" not in url:
        return url, {}
    base, query = url.split("?", 1)
    options, rest = {}, []
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == "confirm_publish":
            options["confirm_publish"] = value.lower() in ("1", "true", "yes", "on")
        elif pair:
            rest.append(pair)
    return (base + ("?" + "&".join(rest) if rest else "")), options


def pad_for(size: int, template: dict) -> str:
    """Padding that makes ``json.dumps(template | {"pad": pad})`` ~``size`` bytes."""
    overhead = len(json.dumps({**template, "pad": ""}))
    return "x" * max(0, size - overhead)


def display_url(url: str) -> str:
    """The URL as given, with any password masked (kombu would also add a trailing '/')."""
    return maybe_sanitize_url(url) if "@" in url else url


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def drain_until(conn: Connection, done, what: str) -> None:
    while not done():
        try:
            conn.drain_events(timeout=DRAIN_TIMEOUT_S)
        except socket.timeout:
            raise SystemExit(
                f"bench_kombu.py: error: no message for {DRAIN_TIMEOUT_S:.0f}s while {what}"
            ) from None


def run(args: argparse.Namespace) -> dict:
    n, m, size = args.messages, args.latency_samples, args.size
    exchange = Exchange("bench", type="direct")
    queue = Queue(f"bench-{uuid.uuid4()}", exchange=exchange, routing_key="bench")

    url, confirm = split_confirm(args.url)
    with Connection(url, transport_options={**transport_options(url), **confirm}) as conn:
        conn.connect()
        producer = Producer(conn.channel(), exchange=exchange, routing_key="bench", serializer="json")
        # Bind the queue once: `maybe_declare` (behind `declare=[...]`) clones an
        # *unbound* entity on every call, which halved publish throughput in a
        # measurement; with a bound queue every publish after the first is a
        # cache hit in `declared_entities`.
        queue = queue(producer.channel)

        # Phase 1: publish N messages. The widest `n` sizes the padding, so
        # every body is at most ~size bytes.
        pad = pad_for(size, {"n": n})
        start = time.perf_counter()
        for i in range(n):
            producer.publish({"n": i, "pad": pad}, declare=[queue])
        publish_s = time.perf_counter() - start

        # Phase 2: consume and ack them.
        received = 0

        def on_message(body, message):
            nonlocal received
            message.ack()
            received += 1

        # AMQP: prefetch 100, as `kombu bench --prefetch 100` and the raw lapin baseline.
        prefetch = 100 if is_amqp(url) else None
        consumer = Consumer(
            conn.channel(), queues=[queue], callbacks=[on_message], accept=["json"], prefetch_count=prefetch
        )
        with consumer:
            start = time.perf_counter()
            drain_until(conn, lambda: received >= n, f"consuming ({received} of {n} received)")
            consume_s = time.perf_counter() - start
            if received != n:
                raise SystemExit(f"bench_kombu.py: error: received {received} messages, expected {n}")

            # Phase 3: latency round trips (the body carries its send time).
            latencies: list[float] = []

            def on_latency(body, message):
                message.ack()
                latencies.append(time.perf_counter() - body["t"])

            consumer.callbacks = [on_latency]
            latency_pad = pad_for(size, {"n": m, "t": time.perf_counter()})
            for i in range(m):
                producer.publish({"n": i, "t": time.perf_counter(), "pad": latency_pad}, declare=[queue])
                drain_until(conn, lambda: len(latencies) > i, f"waiting for latency sample {i + 1} of {m}")

        queue.delete()

    latencies.sort()
    major_minor = ".".join(kombu.__version__.split(".")[:2])
    return {
        "name": f"Python Kombu {major_minor} {display_url(args.url)}",
        "transport": conn.transport_cls if isinstance(conn.transport_cls, str) else args.url.split(":")[0],
        "messages": n,
        "size": size,
        "publish_msgs_per_s": n / publish_s,
        "consume_msgs_per_s": n / consume_s,
        "total_msgs_per_s": n / (publish_s + consume_s),
        "latency_p50_ms": percentile(latencies, 50) * 1000.0,
        "latency_p99_ms": percentile(latencies, 99) * 1000.0,
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except SystemExit:
        raise
    except Exception as exc:  # one clear line instead of a traceback
        print(f"bench_kombu.py: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
