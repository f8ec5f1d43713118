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

Two more sections, the same way: the ``EventSpanProcessor``'s added cost per span (a
CLIENT span inside a flow, with and without the processor; goal <= 10 %), and otel-eda's
part of one anomaly-reader collection of 100,000 counter series with the z-score detector
(goal < 0.5 s of CPU time).

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
PROCESSOR_GOAL: Final = 1.10
COLLECTION_GOAL_US: Final = 500_000.0
FULL: Final = Plan(reps=9, ops=5_000, warmup=2_000)  # --ops 20000: more anomaly collections per window
QUICK: Final = Plan(reps=3, ops=500, warmup=1_100)
SPANS_FULL: Final = Plan(reps=9, ops=20_000, warmup=2_000)
SPANS_QUICK: Final = Plan(reps=3, ops=1_000, warmup=200)
COLLECTION_FULL: Final = Plan(reps=9, ops=2, warmup=1)
COLLECTION_QUICK: Final = Plan(reps=3, ops=1, warmup=1)
SERIES_FULL: Final = 100_000
SERIES_QUICK: Final = 5_000


def cases() -> list[Case]:
    py = sys.executable
    eda_env = {"OTEL_EDA_STORE_MAX_EVENTS": STORE_MAX_EVENTS}
    return [
        Case("reference", "reference, telemetry on", [py, CHILD, "reference"]),
        Case("bare", "bare asyncio.Queue (reference, telemetry off)", [py, CHILD, "bare"]),
        Case("eda", "otel-eda bus, configure()", [py, CHILD, "eda"], eda_env),
        Case(
            "eda_span_events",
            "otel-eda bus, configure(), OTEL_EDA_SPAN_EVENTS=true",
            [py, CHILD, "eda"],
            {**eda_env, "OTEL_EDA_SPAN_EVENTS": "true"},
        ),
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
    Difference("span_events", "stage span events (OTEL_EDA_SPAN_EVENTS=true)", on="eda_span_events", off="eda"),
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


def span_cases() -> list[Case]:
    py = sys.executable
    return [
        Case("span_with_processor", "span with EventSpanProcessor", [py, CHILD, "span-with-processor"], unit="span"),
        Case("span_without_processor", "span without it", [py, CHILD, "span-without-processor"], unit="span"),
    ]


SPAN_DIFFERENCES: Final = [
    Difference("processor_added", "EventSpanProcessor", on="span_with_processor", off="span_without_processor")
]
SPAN_GOALS: Final = [
    Goal(
        "processor",
        "span with / without EventSpanProcessor",
        "span_with_processor",
        "span_without_processor",
        PROCESSOR_GOAL,
        profile="span_with_processor",
    )
]


def collection_cases(series: int) -> list[Case]:
    return [
        Case(
            "collection",
            f"otel-eda's part of one collection of {series:,} series",
            [sys.executable, CHILD, "collection"],
            {"BENCH_SERIES": str(series)},
            unit="collection",
        )
    ]


def collection_goals(series: int) -> list[Goal]:
    return [
        Goal(
            "collection",
            f"otel-eda's part of one collection of {series:,} series (CPU)",
            "collection",
            None,
            COLLECTION_GOAL_US * series / SERIES_FULL,  # 0.5 s for 100,000 series, in proportion for fewer
            profile="collection",
        )
    ]


def _with(plan: Plan, reps: int | None, ops: int | None) -> Plan:
    return Plan(
        max(1, reps) if reps is not None else plan.reps,
        max(1, ops) if ops is not None else plan.ops,
        plan.warmup,
        plan.timeout_s,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", metavar="FILE", help="also write every number to FILE")
    parser.add_argument("--quick", action="store_true", help="short smoke run (numbers are noisy)")
    parser.add_argument("--profile", action="store_true", help="print the profiles even for met goals")
    parser.add_argument("--reps", type=int, help="repetitions per case")
    parser.add_argument("--ops", type=int, help="events measured per process")
    args = parser.parse_args(argv)
    plan = _with(QUICK if args.quick else FULL, args.reps, args.ops)
    sdk = importlib.metadata.version("opentelemetry-sdk")
    print(
        f"otel-eda hot-path benchmark: {describe_machine()}, opentelemetry-sdk {sdk}"
        + (" (QUICK smoke run: numbers are indicative only)" if args.quick else "")
    )
    print()
    print(
        f"events: {plan.ops} events measured per process after {plan.warmup} of warm-up; one event = publish + "
        "consume by one subscriber whose handler does nothing, one at a time; exporters on both sides: "
        "BatchSpanProcessor + discarding span exporter, MeterProvider + PeriodicExportingMetricReader + "
        "discarding metric exporter"
    )
    measurements = run_interleaved(cases(), plan)
    results = {"events": report(measurements, DIFFERENCES, GOALS, profile_always=args.profile)}
    for key, case in results["events"]["cases"].items():
        spans = case["extra"].get("spans_per_event")
        dropped = case["extra"].get("spans_dropped")
        if spans is not None and (spans["min"] != 2.0 or spans["max"] != 2.0 or dropped["max"] != 0):
            print(f"  WARNING: {key} exported {spans['median']} spans per event, dropped up to {dropped['max']}")

    span_plan = _with(SPANS_QUICK if args.quick else SPANS_FULL, args.reps, None)
    print()
    print(
        f"spans: {span_plan.ops} spans measured per process after {span_plan.warmup} of warm-up; one CLIENT span "
        "inside a flow (current event, parent span, 5 attributes, 1 link carrying messaging.message.id)"
    )
    span_measurements = run_interleaved(span_cases(), span_plan)
    results["spans"] = report(span_measurements, SPAN_DIFFERENCES, SPAN_GOALS, profile_always=args.profile)

    series = SERIES_QUICK if args.quick else SERIES_FULL
    collection_plan = _with(COLLECTION_QUICK if args.quick else COLLECTION_FULL, args.reps, None)
    print()
    print(
        f"collection: {collection_plan.ops} collections of {series:,} counter series measured per process after "
        f"{collection_plan.warmup} (that creates the series); otel-eda's part only (conversion, zero fill, "
        "AnomalyEngine.evaluate with a z-score rule on every series)"
    )
    collection_measurements = run_interleaved(collection_cases(series), collection_plan)
    results["collection"] = report(collection_measurements, (), collection_goals(series), profile_always=args.profile)
    seconds = sum(section["seconds"] for section in results.values())
    print()
    print(f"total {seconds:.0f} s; {describe_machine()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
