#!/usr/bin/env python
"""otel-eda broker benchmark (issues 13, 18): telemetry CPU per record against the contrib instrumentations
(Kafka) and against the fixed hand-written reference (NATS, which has no contrib instrumentation).

Run from the repository root (it starts a Kafka of its own with ``scripts/kafka`` and stops it)::

    .venv/bin/python benchmarks/bench_kafka.py              # full run (a few minutes)
    .venv/bin/python benchmarks/bench_kafka.py --quick      # smoke run (noisy)
    .venv/bin/python benchmarks/bench_kafka.py --json out.json --profile
    .venv/bin/python benchmarks/bench_kafka.py --brokers nats   # only the NATS line (it starts scripts/nats)

Each measurement is a fresh process (``kafka_child.py VARIANT``) that produces and consumes
records against the same broker and reports the process CPU time (all threads) of a fixed
number of records after a warm-up; the cases run interleaved, ``--reps`` times each (method:
``method.py``). One record = one ``send`` (in batches of 100, then ``flush``) and one
``getone``. Added costs are ON minus OFF, paired per repetition:

* otel-eda's aiokafka instrumentation (``AIOKafkaInstrumentor``: PRODUCER and CONSUMER spans
  with links, event ids, the messaging metrics, event age, lag) minus aiokafka alone;
* the contrib ``opentelemetry-instrumentation-aiokafka`` (PRODUCER and CONSUMER spans, no
  metrics, no identity) minus aiokafka alone.

confluent-kafka (issue 14; ``confluent_kafka_child.py``, against the same Kafka): one record = one
``produce`` (in batches of 100, then ``flush``, which runs the delivery reports) and one ``poll``;
otel-eda's ``ConfluentKafkaInstrumentor`` (send, poll and process spans with links, event ids, the
messaging metrics with the send-until-acknowledged duration, event age, lag) against the contrib
``opentelemetry-instrumentation-confluent-kafka`` (a PRODUCER span, a ``recv`` and a ``process``
span per record, no metrics, no identity), each minus confluent-kafka alone.

Goal, printed as met or MISSED (a missed goal prints a profile of otel-eda's case): otel-eda's
added cost <= the contrib's. The other broker issues add their client's three cases here.

NATS (issue 18; ``nats_child.py``, against a nats-server of this run's own, ``scripts/nats``):
one record = one ``js.publish`` (in batches of 100, each awaiting its PubAck) and its handling
from a durable pull consumer's ``fetch`` (an ack). nats-py has no contrib instrumentation, so
otel-eda's ``NATSInstrumentor`` (send, fetch and process spans with links, event ids, the
messaging metrics, event age, the pending gauges' background refresh) minus nats-py alone is
set against the fixed hand-written reference (``reference_nats.py``: the hot-path benchmark's
reference telemetry, by hand around the same calls) minus nats-py alone. Goal: <= 1.2x.

RabbitMQ (issue 15, ``--brokers rabbitmq`` for this line alone): a RabbitMQ node of the run's own
(``scripts/rabbitmq``) and ``rabbitmq_child.py``: one message = one ``Exchange.publish`` with
publisher confirms (batches of 100, concurrent) and its handling by a ``queue.consume`` callback
acknowledging with ``message.process()``; otel-eda's ``AioPikaInstrumentor`` (the same telemetry
as above, plus ``messaging.rabbitmq.*``, settling outcomes, the queue depth gauges) against the
contrib ``opentelemetry-instrumentation-aio-pika`` (PRODUCER and CONSUMER spans, no metrics).

pika (issue 16, ``--brokers pika``; on the same RabbitMQ node as the aio-pika line when both run):
``pika_child.py`` on a ``BlockingConnection``: one message = one ``basic_publish`` with publisher
confirms (batches of 100, each waiting for its confirmation) and its handling by a
``basic_consume`` callback acknowledging with ``basic_ack``; otel-eda's ``PikaInstrumentor`` (send
and process spans with links, event ids, the messaging metrics, event age, settling outcomes)
against the contrib ``opentelemetry-instrumentation-pika`` (two nested PRODUCER spans per publish
and a CONSUMER span, no metrics). Goal: otel-eda's added cost <= the contrib's.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from method import Case, Difference, Goal, Plan, describe_machine, report, run_interleaved

HERE: Final = Path(__file__).resolve().parent
KAFKA_SCRIPT: Final = HERE.parent / "scripts" / "kafka"
CHILD: Final = str(HERE / "kafka_child.py")
CONFLUENT_CHILD: Final = str(HERE / "confluent_kafka_child.py")
RABBITMQ_SCRIPT: Final = HERE.parent / "scripts" / "rabbitmq"
RABBITMQ_CHILD: Final = str(HERE / "rabbitmq_child.py")
PIKA_CHILD: Final = str(HERE / "pika_child.py")
GOAL: Final = 1.0
NATS_SCRIPT: Final = HERE.parent / "scripts" / "nats"
NATS_CHILD: Final = str(HERE / "nats_child.py")
NATS_GOAL: Final = 1.2
BROKERS: Final = ("kafka", "nats", "rabbitmq", "pika")
FULL: Final = Plan(reps=7, ops=5_000, warmup=1_000)
QUICK: Final = Plan(reps=2, ops=500, warmup=200)


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextmanager
def kafka_broker() -> Iterator[str]:
    """A Kafka of this run's own (``scripts/kafka``) on free ports; yields its bootstrap address."""
    port, controller = free_ports(2)
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as directory:
        env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(controller)}
        started = subprocess.run(
            [str(KAFKA_SCRIPT), "start", directory], env=env, capture_output=True, text=True, check=False
        )
        try:
            if started.returncode != 0:
                raise SystemExit(f"scripts/kafka start failed:\n{started.stdout}{started.stderr}")
            print(f"  {started.stdout.strip()}")
            yield f"127.0.0.1:{port}"
        finally:
            subprocess.run([str(KAFKA_SCRIPT), "stop", directory], capture_output=True, check=False)


@contextmanager
def nats_server() -> Iterator[str]:
    """A nats-server of this run's own (``scripts/nats``) on free ports; yields its URL."""
    port, monitor = free_ports(2)
    with tempfile.TemporaryDirectory(prefix="bench-nats-") as directory:
        env = {**os.environ, "NATS_PORT": str(port), "NATS_MONITOR_PORT": str(monitor)}
        started = subprocess.run(
            [str(NATS_SCRIPT), "start", directory], env=env, capture_output=True, text=True, check=False
        )
        try:
            if started.returncode != 0:
                raise SystemExit(f"scripts/nats start failed:\n{started.stdout}{started.stderr}")
            print(f"  {started.stdout.strip()}")
            yield f"nats://127.0.0.1:{port}"
        finally:
            subprocess.run([str(NATS_SCRIPT), "stop", directory], capture_output=True, check=False)


def nats_cases(url: str) -> list[Case]:
    py, env = sys.executable, {"NATS_URL": url}
    return [
        Case("nats_off", "nats-py, no instrumentation", [py, NATS_CHILD, "off"], env, unit="record"),
        Case("nats_eda", "nats-py, otel-eda instrumentation", [py, NATS_CHILD, "eda"], env, unit="record"),
        Case("nats_reference", "nats-py, hand-written reference", [py, NATS_CHILD, "reference"], env, unit="record"),
    ]


NATS_DIFFERENCES: Final = [
    Difference("nats_eda_added", "otel-eda nats-py telemetry", on="nats_eda", off="nats_off"),
    Difference("nats_reference_added", "reference nats-py telemetry", on="nats_reference", off="nats_off"),
]
NATS_GOALS: Final = [
    Goal(
        "nats_eda_vs_reference",
        "nats-py: otel-eda added / reference added",
        "nats_eda_added",
        "nats_reference_added",
        NATS_GOAL,
        profile="nats_eda",
    ),
]


@contextmanager
def rabbitmq_node() -> Iterator[str]:
    """A RabbitMQ node of this run's own (``scripts/rabbitmq``) on free ports; yields its URL."""
    ports = free_ports(4)
    names = ("RABBITMQ_PORT", "RABBITMQ_DIST_PORT", "RABBITMQ_EPMD_PORT", "RABBITMQ_CTL_PORT")
    env = {**os.environ, **{name: str(port) for name, port in zip(names, ports, strict=True)}}
    with tempfile.TemporaryDirectory(prefix="bench-rabbitmq-") as directory:
        started = subprocess.run(
            [str(RABBITMQ_SCRIPT), "start", directory], env=env, capture_output=True, text=True, check=False
        )
        try:
            if started.returncode != 0:
                raise SystemExit(f"scripts/rabbitmq start failed:\n{started.stdout}{started.stderr}")
            print(f"  {started.stdout.strip()}")
            yield f"amqp://guest:guest@127.0.0.1:{ports[0]}/"
        finally:
            subprocess.run([str(RABBITMQ_SCRIPT), "stop", directory], env=env, capture_output=True, check=False)


def rabbitmq_cases(url: str) -> list[Case]:
    py, env, unit = sys.executable, {"AMQP_URL": url}, "message"
    return [
        Case("aio_pika_off", "aio-pika, no instrumentation", [py, RABBITMQ_CHILD, "off"], env, unit=unit),
        Case("aio_pika_eda", "aio-pika, otel-eda instrumentation", [py, RABBITMQ_CHILD, "eda"], env, unit=unit),
        Case("aio_pika_contrib", "aio-pika, contrib instrumentation", [py, RABBITMQ_CHILD, "contrib"], env, unit=unit),
    ]


RABBITMQ_DIFFERENCES: Final = [
    Difference("aio_pika_eda_added", "otel-eda aio-pika telemetry", on="aio_pika_eda", off="aio_pika_off"),
    Difference("aio_pika_contrib_added", "contrib aio-pika telemetry", on="aio_pika_contrib", off="aio_pika_off"),
]
RABBITMQ_GOALS: Final = [
    Goal(
        "aio_pika_eda_vs_contrib",
        "aio-pika: otel-eda added / contrib added",
        "aio_pika_eda_added",
        "aio_pika_contrib_added",
        GOAL,
        profile="aio_pika_eda",
    ),
]


def pika_cases(url: str) -> list[Case]:
    py, env, unit = sys.executable, {"AMQP_URL": url}, "message"
    return [
        Case("pika_off", "pika, no instrumentation", [py, PIKA_CHILD, "off"], env, unit=unit),
        Case("pika_eda", "pika, otel-eda instrumentation", [py, PIKA_CHILD, "eda"], env, unit=unit),
        Case("pika_contrib", "pika, contrib instrumentation", [py, PIKA_CHILD, "contrib"], env, unit=unit),
    ]


PIKA_DIFFERENCES: Final = [
    Difference("pika_eda_added", "otel-eda pika telemetry", on="pika_eda", off="pika_off"),
    Difference("pika_contrib_added", "contrib pika telemetry", on="pika_contrib", off="pika_off"),
]
PIKA_GOALS: Final = [
    Goal(
        "pika_eda_vs_contrib",
        "pika: otel-eda added / contrib added",
        "pika_eda_added",
        "pika_contrib_added",
        GOAL,
        profile="pika_eda",
    ),
]


def cases(bootstrap: str) -> list[Case]:
    py, env = sys.executable, {"KAFKA_BOOTSTRAP": bootstrap}
    return [
        Case("aiokafka_off", "aiokafka, no instrumentation", [py, CHILD, "off"], env, unit="record"),
        Case("aiokafka_eda", "aiokafka, otel-eda instrumentation", [py, CHILD, "eda"], env, unit="record"),
        Case("aiokafka_contrib", "aiokafka, contrib instrumentation", [py, CHILD, "contrib"], env, unit="record"),
        Case("confluent_off", "confluent-kafka, no instrumentation", [py, CONFLUENT_CHILD, "off"], env, unit="record"),
        Case(
            "confluent_eda",
            "confluent-kafka, otel-eda instrumentation",
            [py, CONFLUENT_CHILD, "eda"],
            env,
            unit="record",
        ),
        Case(
            "confluent_contrib",
            "confluent-kafka, contrib instrumentation",
            [py, CONFLUENT_CHILD, "contrib"],
            env,
            unit="record",
        ),
    ]


DIFFERENCES: Final = [
    Difference("aiokafka_eda_added", "otel-eda aiokafka telemetry", on="aiokafka_eda", off="aiokafka_off"),
    Difference("aiokafka_contrib_added", "contrib aiokafka telemetry", on="aiokafka_contrib", off="aiokafka_off"),
    Difference("confluent_eda_added", "otel-eda confluent-kafka telemetry", on="confluent_eda", off="confluent_off"),
    Difference(
        "confluent_contrib_added", "contrib confluent-kafka telemetry", on="confluent_contrib", off="confluent_off"
    ),
]
GOALS: Final = [
    Goal(
        "aiokafka_eda_vs_contrib",
        "aiokafka: otel-eda added / contrib added",
        "aiokafka_eda_added",
        "aiokafka_contrib_added",
        GOAL,
        profile="aiokafka_eda",
    ),
    Goal(
        "confluent_eda_vs_contrib",
        "confluent-kafka: otel-eda added / contrib added",
        "confluent_eda_added",
        "confluent_contrib_added",
        GOAL,
        profile="confluent_eda",
    ),
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", metavar="FILE", help="also write every number to FILE")
    parser.add_argument("--quick", action="store_true", help="short smoke run (numbers are noisy)")
    parser.add_argument("--profile", action="store_true", help="print the profiles even for met goals")
    parser.add_argument("--reps", type=int, help="repetitions per case")
    parser.add_argument("--ops", type=int, help="records measured per process")
    parser.add_argument(
        "--brokers", default=",".join(BROKERS), help=f"comma-separated, of {', '.join(BROKERS)} (default: all)"
    )
    args = parser.parse_args(argv)
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if not brokers or set(brokers) - set(BROKERS):
        parser.error(f"--brokers takes {', '.join(BROKERS)}")
    plan = QUICK if args.quick else FULL
    if args.reps is not None:
        plan = Plan(max(1, args.reps), plan.ops, plan.warmup, plan.timeout_s)
    if args.ops is not None:
        plan = Plan(plan.reps, max(1, args.ops), plan.warmup, plan.timeout_s)
    clients = {
        "kafka": (
            "aiokafka",
            "opentelemetry-instrumentation-aiokafka",
            "confluent-kafka",
            "opentelemetry-instrumentation-confluent-kafka",
        ),
        "nats": ("nats-py",),
        "rabbitmq": ("aio-pika", "opentelemetry-instrumentation-aio-pika"),
        "pika": ("pika", "opentelemetry-instrumentation-pika"),
    }
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("opentelemetry-sdk", *(c for b in brokers for c in clients[b]))
    )
    print(
        f"otel-eda broker benchmark: {describe_machine()}, {versions}; {plan.ops} records measured per "
        f"process after {plan.warmup} of warm-up"
        + (" (QUICK smoke run: numbers are indicative only)" if args.quick else "")
    )
    print(
        "  one record = send (batches of 100, then flush) + getone (aiokafka), produce (batches of 100, then "
        "flush) + poll (confluent-kafka), js.publish (batches of 100) + fetch "
        "+ ack (NATS), publish with confirms (batches of 100) + a consume callback's ack (RabbitMQ: aio-pika, pika); "
        "exporters: BatchSpanProcessor + discarding span exporter, MeterProvider + "
        "PeriodicExportingMetricReader + discarding metric exporter"
    )
    with contextlib.ExitStack() as servers:
        measured: list[Case] = []
        differences: list[Difference] = []
        goals: list[Goal] = []
        if "kafka" in brokers:
            measured += cases(servers.enter_context(kafka_broker()))
            differences += DIFFERENCES
            goals += GOALS
        if "nats" in brokers:
            measured += nats_cases(servers.enter_context(nats_server()))
            differences += NATS_DIFFERENCES
            goals += NATS_GOALS
        amqp_url = servers.enter_context(rabbitmq_node()) if {"rabbitmq", "pika"} & set(brokers) else ""
        if "rabbitmq" in brokers:
            measured += rabbitmq_cases(amqp_url)
            differences += RABBITMQ_DIFFERENCES
            goals += RABBITMQ_GOALS
        if "pika" in brokers:
            measured += pika_cases(amqp_url)
            differences += PIKA_DIFFERENCES
            goals += PIKA_GOALS
        measurements = run_interleaved(measured, plan)
        results = report(measurements, differences, goals, profile_always=args.profile, profile_ops=plan.ops)
    for key, case in results["cases"].items():
        spans = case["extra"].get("spans_per_event")
        if spans is not None:
            print(f"  {key}: {spans['median']:.2f} spans per record")
    print(f"  total {results['seconds']:.0f} s; {describe_machine()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
