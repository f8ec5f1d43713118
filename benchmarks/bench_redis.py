#!/usr/bin/env python
"""otel-eda broker benchmark, Redis Streams line (issue 17): telemetry CPU per event against the
fixed hand-written reference on the same client.

Run from the repository root (it starts a redis-server of its own with ``scripts/redis`` and
stops it)::

    .venv/bin/python benchmarks/bench_redis.py              # full run (about 2 minutes)
    .venv/bin/python benchmarks/bench_redis.py --quick      # smoke run (noisy)
    .venv/bin/python benchmarks/bench_redis.py --json out.json --profile

The method is the broker benchmark's (``bench_kafka.py``, ``method.py``): each measurement is
a fresh process (``redis_child.py VARIANT``) that adds and reads events against the same
server and reports the process CPU time (all threads) of a fixed number of events after a
warm-up; the cases run interleaved, ``--reps`` times each. One event = one ``XADD`` (in
batches of 100), its share of one ``XREADGROUP COUNT 100``, a no-op handler and one
``XACK``, on redis-py's asyncio client. Added costs are ON minus OFF, paired per repetition:

* otel-eda's instrumentation (``RedisStreamsInstrumentor``: PRODUCER, receive and CONSUMER
  spans with links, event ids in reserved fields, the messaging metrics, event age, the
  consumer-group gauges) minus the client alone;
* the fixed hand-written reference (``reference_redis.py``: the telemetry of
  ``reference_queue.py``, the hot-path issue's reference, on this client) minus the client alone.

Goal, printed as met or MISSED (a missed goal prints a profile of otel-eda's case): otel-eda's
added cost <= 1.2x the reference's.
"""

from __future__ import annotations

import argparse
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
REDIS_SCRIPT: Final = HERE.parent / "scripts" / "redis"
CHILD: Final = str(HERE / "redis_child.py")
GOAL: Final = 1.2
FULL: Final = Plan(reps=7, ops=5_000, warmup=1_000)
QUICK: Final = Plan(reps=2, ops=500, warmup=200)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[int]:
    """A redis-server of this run's own (``scripts/redis``) on a free port; yields the port."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as directory:
        env = {**os.environ, "REDIS_PORT": str(port)}
        subprocess.run([str(REDIS_SCRIPT), "install"], capture_output=True, text=True, check=False)
        started = subprocess.run(
            [str(REDIS_SCRIPT), "start", directory], env=env, capture_output=True, text=True, check=False
        )
        try:
            if started.returncode != 0:
                raise SystemExit(f"scripts/redis start failed:\n{started.stdout}{started.stderr}")
            print(f"  {started.stdout.strip()}")
            yield port
        finally:
            subprocess.run([str(REDIS_SCRIPT), "stop", directory], capture_output=True, check=False)


def cases(port: int) -> list[Case]:
    py, env = sys.executable, {"REDIS_PORT": str(port)}
    return [
        Case("redis_off", "redis-py asyncio, no telemetry", [py, CHILD, "off"], env),
        Case("redis_eda", "redis-py asyncio, otel-eda instrumentation", [py, CHILD, "eda"], env),
        Case("redis_reference", "redis-py asyncio, hand-written reference", [py, CHILD, "reference"], env),
    ]


DIFFERENCES: Final = [
    Difference("redis_eda_added", "otel-eda redis telemetry", on="redis_eda", off="redis_off"),
    Difference("redis_reference_added", "hand-written reference telemetry", on="redis_reference", off="redis_off"),
]
GOALS: Final = [
    Goal(
        "redis_eda_vs_reference",
        "redis: otel-eda added / reference added",
        "redis_eda_added",
        "redis_reference_added",
        GOAL,
        profile="redis_eda",
    ),
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", metavar="FILE", help="also write every number to FILE")
    parser.add_argument("--quick", action="store_true", help="short smoke run (numbers are noisy)")
    parser.add_argument("--profile", action="store_true", help="print the profiles even for met goals")
    parser.add_argument("--reps", type=int, help="repetitions per case")
    parser.add_argument("--ops", type=int, help="events measured per process")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.reps is not None:
        plan = Plan(max(1, args.reps), plan.ops, plan.warmup, plan.timeout_s)
    if args.ops is not None:
        plan = Plan(plan.reps, max(1, args.ops), plan.warmup, plan.timeout_s)
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in ("redis", "opentelemetry-sdk"))
    print(
        f"otel-eda broker benchmark (Redis Streams): {describe_machine()}, {versions}; {plan.ops} events measured "
        f"per process after {plan.warmup} of warm-up"
        + (" (QUICK smoke run: numbers are indicative only)" if args.quick else "")
    )
    print(
        "  one event = XADD (batches of 100) + its share of XREADGROUP COUNT 100 + XACK; exporters: "
        "BatchSpanProcessor + discarding span exporter, MeterProvider + PeriodicExportingMetricReader + "
        "discarding metric exporter"
    )
    with redis_server() as port:
        measurements = run_interleaved(cases(port), plan)
        results = report(measurements, DIFFERENCES, GOALS, profile_always=args.profile, profile_ops=plan.ops)
    for key, case in results["cases"].items():
        spans = case["extra"].get("spans_per_event")
        if spans is not None:
            print(f"  {key}: {spans['median']:.2f} spans per event")
    print(f"  total {results['seconds']:.0f} s; {describe_machine()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
