#!/usr/bin/env python
"""otel-eda hot-path benchmark (issue 11): CPU time per event against a fixed reference.

Run from the repository root::

    .venv/bin/python benchmarks/bench_hotpath.py              # full run, 9 repetitions (a few minutes)
    .venv/bin/python benchmarks/bench_hotpath.py --quick      # smoke run (noisy)
    .venv/bin/python benchmarks/bench_hotpath.py --json out.json --profile

Each measurement is a fresh process (``hotpath_child.py VARIANT``) that publishes and
consumes events one at a time (publish, then wait until the handler ran) and reports the
process CPU time (all threads) of a fixed number of events after a warm-up; the five cases
run interleaved, ``--reps`` times each (method: ``method.py``). Added costs are ON minus
OFF, paired per repetition:

* the fixed hand-written reference (``reference_queue.py``, pinned by hash) minus the same
  queue with telemetry off, a bare ``asyncio.Queue``;
* otel-eda's ``EventBus`` with what ``configure()`` installs minus the same bus with
  telemetry off (``OTEL_SDK_DISABLED=true``), with and without the anomaly engine.

Goals, printed as met or MISSED (a missed goal prints a profile of its slower case):
otel-eda's added cost <= 1.2x the reference's; the bus with telemetry off <= 3x a bare
``asyncio.Queue``. Events per second are 1 / the wall time per event of a case.

Every otel-eda case runs with ``OTEL_EDA_STORE_MAX_EVENTS`` smaller than the warm-up, so
the measured events evict from a full store as in a long-running service.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from method import Case, Difference, Goal, Plan, describe_machine, report, run_interleaved

HERE: Final = Path(__file__).resolve().parent
CHILD: Final = str(HERE / "hotpath_child.py")
ADDED_GOAL: Final = 1.2
TELEMETRY_OFF_GOAL: Final = 3.0
STORE_MAX_EVENTS: Final = "1000"
FULL: Final = Plan(reps=9, ops=20_000, warmup=2_000)
QUICK: Final = Plan(reps=3, ops=500, warmup=1_100)


def cases() -> list[Case]:
    py = sys.executable
    eda_env = {"OTEL_EDA_STORE_MAX_EVENTS": STORE_MAX_EVENTS}
    return [
        Case("reference", "reference, telemetry on", [py, CHILD, "reference"]),
        Case("bare", "bare asyncio.Queue (reference, telemetry off)", [py, CHILD, "bare"]),
        Case("eda", "otel-eda bus, configure()", [py, CHILD, "eda"], eda_env),
        Case(
            "eda_no_anomaly", "otel-eda bus, configure() without anomaly engine", [py, CHILD, "eda-no-anomaly"], eda_env
        ),
        Case(
            "eda_off", "otel-eda bus, telemetry off", [py, CHILD, "eda-off"], {**eda_env, "OTEL_SDK_DISABLED": "true"}
        ),
    ]


DIFFERENCES: Final = [
    Difference("reference_added", "reference telemetry", on="reference", off="bare"),
    Difference("eda_added", "otel-eda telemetry (configure())", on="eda", off="eda_off"),
    Difference("eda_added_no_anomaly", "otel-eda telemetry without anomaly engine", on="eda_no_anomaly", off="eda_off"),
    Difference("anomaly_engine", "the anomaly engine's share", on="eda", off="eda_no_anomaly"),
    Difference("eda_total", "otel-eda bus on vs a bare queue", on="eda", off="bare"),
]
GOALS: Final = [
    Goal(
        "added_vs_reference",
        "otel-eda added / reference added",
        "eda_added",
        "reference_added",
        ADDED_GOAL,
        profile="eda",
    ),
    Goal(
        "telemetry_off_vs_bare",
        "otel-eda bus telemetry off / bare asyncio.Queue",
        "eda_off",
        "bare",
        TELEMETRY_OFF_GOAL,
        profile="eda_off",
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
    sdk = importlib.metadata.version("opentelemetry-sdk")
    print(
        f"otel-eda hot-path benchmark: {describe_machine()}, opentelemetry-sdk {sdk}; {plan.ops} events "
        f"measured per process after {plan.warmup} of warm-up"
        + (" (QUICK smoke run: numbers are indicative only)" if args.quick else "")
    )
    print(
        "  one event = publish + consume by one subscriber whose handler does nothing, one at a time; "
        "exporters on both sides: BatchSpanProcessor + discarding span exporter, MeterProvider + "
        "PeriodicExportingMetricReader + discarding metric exporter"
    )
    measurements = run_interleaved(cases(), plan)
    results = report(measurements, DIFFERENCES, GOALS, profile_always=args.profile, profile_ops=plan.ops)
    for key, case in results["cases"].items():
        spans = case["extra"].get("spans_per_event")
        dropped = case["extra"].get("spans_dropped")
        if spans is not None and (spans["min"] != 2.0 or spans["max"] != 2.0 or dropped["max"] != 0):
            print(f"  WARNING: {key} exported {spans['median']} spans per event, dropped up to {dropped['max']}")
    print(f"  total {results['seconds']:.0f} s; {describe_machine()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
