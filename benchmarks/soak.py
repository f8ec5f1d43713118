#!/usr/bin/env python
"""Soak: a fixed event rate for 10 minutes; does memory stay flat, and do the counts add up?

Run from the repository root (the OTLP backend is otel-eda's Collector, built once by
``scripts/otelcol install``; ``--exporter zipkin`` uses a real Zipkin instead)::

    .venv/bin/python benchmarks/soak.py                     # 10 minutes
    .venv/bin/python benchmarks/soak.py --duration 60       # the short form the test suite runs
    .venv/bin/python benchmarks/soak.py --json out.json
    .venv/bin/python benchmarks/soak.py --transport kafka   # through a real Kafka (scripts/kafka)

One process set up by ``otel_eda.configure()`` (the anomaly reader on, evaluating every
second; spans to the backend over OTLP/HTTP, the SDK's default batch settings) publishes
``--rate`` events a second on an ``EventBus`` for ``--duration`` seconds. The handler fails
on purpose: one event in 20 fails every attempt (dead-lettered after 3), one in 20 fails its
first attempt only (retried, then handled). The process's RSS is sampled every
``--sample-interval`` seconds (10).

``--transport kafka`` sends the same load through a real Kafka of the run's own
(``scripts/kafka``, as ``bench_kafka.py`` starts it) with otel-eda's aiokafka
instrumentation: an ``AIOKafkaProducer`` sends ``--rate`` records a second, an
``AIOKafkaConsumer`` in a consumer group handles each in a ``with processing(msg):`` block,
retrying a failed attempt in place (Kafka has no redelivery of its own) and producing a
record that failed its last attempt to a dead-letter topic (its process span settled
``dead_lettered``).

Printed: the RSS samples, the slope of RSS over time after the warm-up (the first fifth of
the run, at most 120 s), by least squares, in KB/min, against the goal (<= 50 KB/min: none
beyond noise), and the counts, with the identities they must satisfy:

* events published = handled + dead-lettered (every event ends one way or the other);
* failed attempts = retried + dead-lettered (each failure is retried or is the last one);
* spans ended = spans exported + spans lost (lost by reason: queue full, export failed,
  shutdown), after the bounded shutdown (``otel_eda.shutdown()``).

The exit status is 1 when an identity does not hold (``--check``), 0 otherwise: the slope is
a measurement, not a pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
GOAL_KB_PER_MIN: Final = 50.0
MAX_ATTEMPTS: Final = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kb() -> int:
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def slope_kb_per_min(samples: Sequence[tuple[float, int]]) -> float:
    """Least-squares slope of RSS (KB) over time (s), in KB per minute."""
    n = len(samples)
    if n < 2:
        return float("nan")
    mean_t = sum(t for t, _ in samples) / n
    mean_r = sum(r for _, r in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    cov = sum((t - mean_t) * (r - mean_r) for t, r in samples)
    return cov / var * 60 if var else float("nan")


class Backend:
    """The span backend, started and stopped with the project's scripts."""

    def __init__(self, exporter: str) -> None:
        self.exporter = exporter
        self.directory = Path(tempfile.mkdtemp(prefix=f"soak-{exporter}-"))
        self.port = free_port()
        self.env = dict(os.environ)
        self.script = ROOT / "scripts" / ("otelcol" if exporter == "otlp" else "zipkin")
        if exporter == "otlp":
            self.env.update(
                OTELCOL_OTLP_HTTP_ENDPOINT=f"127.0.0.1:{self.port}",
                OTELCOL_OTLP_GRPC_ENDPOINT=f"127.0.0.1:{free_port()}",
                OTELCOL_HEALTH_ENDPOINT=f"127.0.0.1:{free_port()}",
            )

    def otel_env(self) -> dict[str, str]:
        if self.exporter == "otlp":
            return {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
            }
        return {
            "OTEL_TRACES_EXPORTER": "zipkin_json",
            "OTEL_EXPORTER_ZIPKIN_ENDPOINT": f"http://127.0.0.1:{self.port}/api/v2/spans",
        }

    def _run(self, *args: str) -> None:
        proc = subprocess.run(
            [str(self.script), *args], capture_output=True, text=True, timeout=300, env=self.env, check=False
        )
        if proc.returncode != 0:
            sys.exit(f"{self.script.name} {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")

    def start(self) -> None:
        if self.exporter == "otlp":
            self._run("start", str(self.directory), str(ROOT / "benchmarks" / "outage-collector.yaml"))
        else:
            self._run("start", str(self.directory), str(self.port))

    def stop(self) -> None:
        self._run("stop", str(self.directory))


class Counts:
    def __init__(self) -> None:
        self.published = 0
        self.handled = 0
        self.failed_attempts = 0
        self.retried = 0
        self.dead_lettered = 0
        self.spans_ended = 0
        self._lock = threading.Lock()

    def span_ended(self) -> None:
        with self._lock:
            self.spans_ended += 1


def fails(i: int, attempt: int) -> bool:
    """Whether attempt ``attempt`` of event ``i`` fails: every attempt of 1 in 20, the first of another 1 in 20."""
    return i % 20 == 0 or (i % 20 == 1 and attempt == 1)


async def paced(args: argparse.Namespace, counts: Counts, send: Callable[[int], Awaitable[None]]) -> None:
    """Call ``send(i)`` ``args.rate`` times a second for ``args.duration`` seconds."""
    period = 1.0 / args.rate
    next_at = time.perf_counter()
    end_at = time.monotonic() + args.duration
    while time.monotonic() < end_at:
        await send(counts.published)
        counts.published += 1
        next_at += period
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            next_at = time.perf_counter()
            await asyncio.sleep(0)


async def through_bus(args: argparse.Namespace, counts: Counts, results: dict[str, Any]) -> None:
    from otel_eda import DeadLetter, Delivery, EventBus, RetryPolicy

    async def handle(delivery: Delivery) -> None:
        if fails(delivery.payload, delivery.attempt):
            counts.failed_attempts += 1
            if delivery.attempt < MAX_ATTEMPTS:  # the bus retries it; the last failure dead-letters it
                counts.retried += 1
            raise RuntimeError("failing on purpose (soak)")
        counts.handled += 1

    def dead(letter: DeadLetter) -> None:
        counts.dead_lettered += 1

    retry = RetryPolicy(max_attempts=MAX_ATTEMPTS, initial_backoff_s=0.005, max_backoff_s=0.05)
    async with EventBus(retry=retry) as bus:
        bus.subscribe("order_placed", handle, subscriber="billing")
        bus.subscribe_dead_letters(dead)

        async def publish(i: int) -> None:
            await bus.publish("order_placed", i, business_key=f"order-{i % 1000}")

        await paced(args, counts, publish)
        await bus.join()
        results["store_events"] = len(bus.store)


async def through_kafka(args: argparse.Namespace, counts: Counts, results: dict[str, Any]) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

    from otel_eda.messaging import Outcome, current_processing
    from otel_eda.transports.aiokafka.instrumentor import AIOKafkaInstrumentor, processing

    AIOKafkaInstrumentor().instrument()  # on the providers configure() installed
    bootstrap = os.environ["SOAK_KAFKA_BOOTSTRAP"]
    topic = f"soak-order-placed-{uuid.uuid4().hex[:8]}"  # its own topics and group on a shared broker
    dead_topic = f"{topic}.dead"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, num_partitions=2, replication_factor=1) for t in (topic, dead_topic)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"billing-{topic}", auto_offset_reset="earliest"
    )
    await producer.start()
    await consumer.start()

    async def consume() -> None:
        async for msg in consumer:
            i = int(msg.value)
            with processing(msg):
                for attempt in range(1, MAX_ATTEMPTS + 1):
                    if not fails(i, attempt):
                        counts.handled += 1
                        break
                    counts.failed_attempts += 1
                    if attempt < MAX_ATTEMPTS:
                        counts.retried += 1
                        continue
                    await producer.send(dead_topic, msg.value, headers=[("soak-error", b"failing on purpose")])
                    counts.dead_lettered += 1
                    handling = current_processing()
                    if handling is not None:
                        handling.settle(Outcome.DEAD_LETTERED, RuntimeError("failing on purpose (soak)"))

    consuming = asyncio.create_task(consume())
    try:

        async def send(i: int) -> None:
            await producer.send(topic, str(i).encode(), key=str(i % 1000).encode())

        await paced(args, counts, send)
        await producer.flush()
        deadline = time.monotonic() + 120
        while counts.handled + counts.dead_lettered < counts.published and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
        await consumer.stop()
        await producer.stop()
    results["store_events"] = "n/a (no bus)"


async def soak(args: argparse.Namespace, results: dict[str, Any]) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

    import otel_eda
    from otel_eda.sdk.exportloss import LossCountingSpanExporter, exporter_of, span_loss_tallies, span_processors

    counts = Counts()

    class CountEnded(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            counts.span_ended()

    otel_eda.configure()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), provider
    provider.add_span_processor(CountEnded())
    (exporter,) = [e for e in map(exporter_of, span_processors(provider)) if isinstance(e, LossCountingSpanExporter)]
    (tally,) = span_loss_tallies(provider)

    samples: list[tuple[float, int]] = []
    began = time.monotonic()
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic() - began, rss_kb()))
            print(f"  {samples[-1][0]:6.0f} s  RSS {samples[-1][1] / 1024:7.1f} MB  published {counts.published}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.sample_interval)
        samples.append((time.monotonic() - began, rss_kb()))

    sampler = asyncio.create_task(sample())
    if args.transport == "kafka":
        await through_kafka(args, counts, results)
    else:
        await through_bus(args, counts, results)
    stop.set()
    await sampler
    report = otel_eda.shutdown()
    results["shutdown"] = report.describe()
    warmup = min(args.duration / 5, 120.0)
    steady = [(t, r) for t, r in samples if t >= warmup]
    results.update(
        duration_s=time.monotonic() - began,
        rate=args.rate,
        published=counts.published,
        handled=counts.handled,
        failed_attempts=counts.failed_attempts,
        retried=counts.retried,
        dead_lettered=counts.dead_lettered,
        spans_ended=counts.spans_ended,
        spans_exported=exporter.exported,
        spans_lost=tally.totals(),
        rss_samples=samples,
        rss_start_mb=samples[0][1] / 1024,
        rss_end_mb=samples[-1][1] / 1024,
        warmup_s=warmup,
        slope_kb_per_min=slope_kb_per_min(steady),
    )
    results["identities"] = {
        "published = handled + dead_lettered": counts.published == counts.handled + counts.dead_lettered,
        "failed attempts = retried + dead_lettered": counts.failed_attempts == counts.retried + counts.dead_lettered,
        "spans ended = exported + lost": counts.spans_ended == exporter.exported + tally.total,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--rate", type=int, default=200, help="events a second (default 200)")
    parser.add_argument("--sample-interval", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--exporter", choices=("otlp", "zipkin"), default="otlp")
    parser.add_argument(
        "--transport", choices=("bus", "kafka"), default="bus", help="the embedded bus, or a real Kafka (aiokafka)"
    )
    parser.add_argument(
        "--kafka-bootstrap", metavar="HOST:PORT", help="with --transport kafka: a running Kafka (default: start one)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    parser.add_argument("--check", action="store_true", help="exit 1 when a count identity does not hold")
    args = parser.parse_args(argv)

    backend = Backend(args.exporter)
    os.environ.update(
        OTEL_SERVICE_NAME="otel-eda-soak",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_EDA_ANOMALY_INTERVAL="1",
        **backend.otel_env(),
    )
    print(
        f"otel-eda soak: Python {platform.python_version()}, opentelemetry-sdk "
        f"{importlib.metadata.version('opentelemetry-sdk')}, {os.cpu_count()} CPUs (load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}); {args.rate} events/s for {args.duration:g} s through "
        f"{'a real Kafka (aiokafka)' if args.transport == 'kafka' else 'the bus'}, 1 in 20 dead-lettered after "
        f"{MAX_ATTEMPTS} attempts, 1 in 20 retried once; anomaly reader every 1 s; spans over {args.exporter} "
        f"to a real {'Collector' if args.exporter == 'otlp' else 'Zipkin'}"
    )
    results: dict[str, Any] = {"exporter": args.exporter, "transport": args.transport}
    with contextlib.ExitStack() as servers:
        if args.transport == "kafka" and args.kafka_bootstrap:
            os.environ["SOAK_KAFKA_BOOTSTRAP"] = args.kafka_bootstrap
        elif args.transport == "kafka":
            from bench_kafka import kafka_broker

            os.environ["SOAK_KAFKA_BOOTSTRAP"] = servers.enter_context(kafka_broker())
        backend.start()
        servers.callback(backend.stop)
        asyncio.run(soak(args, results))
    lost = results["spans_lost"]
    slope = results["slope_kb_per_min"]
    print()
    print(
        f"RSS {results['rss_start_mb']:.1f} MB -> {results['rss_end_mb']:.1f} MB; slope after the "
        f"{results['warmup_s']:.0f} s warm-up {slope:+.1f} KB/min (goal <= {GOAL_KB_PER_MIN:g}): "
        f"{'met' if slope <= GOAL_KB_PER_MIN else 'MISSED'}"
    )
    print(
        f"events published {results['published']}, handled {results['handled']}, retried {results['retried']}, "
        f"dead-lettered {results['dead_lettered']} (failed attempts {results['failed_attempts']}); "
        f"store holds {results['store_events']}"
    )
    print(
        f"spans ended {results['spans_ended']}, exported {results['spans_exported']}, lost {sum(lost.values())} "
        f"({', '.join(f'{k} {v}' for k, v in lost.items())})"
    )
    print(results["shutdown"])
    for identity, holds in results["identities"].items():
        print(f"{identity}: {'holds' if holds else 'DOES NOT HOLD'}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 1 if args.check and not all(results["identities"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
