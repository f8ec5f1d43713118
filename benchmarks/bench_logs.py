#!/usr/bin/env python
"""Cost of the event ids on log records (issue 21).

Run from the repository root::

    .venv/bin/python benchmarks/bench_logs.py            # full run (about 30 s)
    .venv/bin/python benchmarks/bench_logs.py --quick    # smoke run, a few seconds
    .venv/bin/python benchmarks/bench_logs.py --json out.json

One ``logger.info("order %s shipped", n)`` through a ``StreamHandler`` writing to an
``io.StringIO`` with the format ``%(asctime)s %(levelname)s %(name)s %(message)s``, in
these cases:

* ``plain``: the standard ``logging.LogRecord`` factory, nothing current;
* ``factory.no_event``: otel-eda's record factory (:mod:`otel_eda.logs.correlation`), with
  nothing in the OpenTelemetry context. Goal: within 5 % of ``plain``;
* ``filter.no_event``: the other mechanism considered, a ``logging.Filter`` on the handler
  setting the same fields (what it would cost; otel-eda does not ship it: a filter on the
  root handler misses handlers added later and every non-root handler);
* ``factory.event`` / ``filter.event``: an event and a span current (as in a handler);
  the line shows the added cost per record against ``plain``;
* ``factory.event.eda_format``: the same, with ``[%(eda_correlation_id)s]`` in the format.

Cases are interleaved round-robin (the order rotates each repetition); each line gives the
wall-time median and min-max and the CPU-time median in microseconds per call; the goal is
judged on CPU time (the benchmark is single-threaded, and on a shared machine the wall time
mostly measures the neighbours). The exit status is 0 whatever the numbers say: this is a
measurement, not a test.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from otel_eda.identity import EventContext, with_event
from otel_eda.logs import correlation

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
EDA_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(eda_correlation_id)s %(otelTraceID)s] %(message)s"
GOAL = 1.05


class _FieldsFilter(logging.Filter):
    """The filter mechanism, for comparison: the same fields, set at the handler."""

    def __init__(self) -> None:
        super().__init__()
        self._read = correlation._context_reader()

    def filter(self, record: logging.LogRecord) -> bool:
        r: Any = record
        context = self._read()
        if not context:
            r.eda_event_id = ""
            r.eda_correlation_id = ""
            r.eda_causation_id = ""
            r.eda_event_type = ""
            r.eda_business_key = ""
        else:
            (
                r.eda_event_id,
                r.eda_correlation_id,
                r.eda_causation_id,
                r.eda_event_type,
                r.eda_business_key,
                r.otelTraceID,
                r.otelSpanID,
            ) = correlation._current_values(context)
        return True


def _logger(name: str, fmt: str, *, with_filter: bool) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(fmt))
    if with_filter:
        handler.addFilter(_FieldsFilter())
    logger = logging.getLogger(f"bench.{name}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def _event_context() -> Context:
    span = NonRecordingSpan(SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)))
    event = EventContext.root("order_placed", business_key="order-1").child("payment_authorized")
    return with_event(event, trace.set_span_in_context(span))


def _case(
    name: str, factory: Callable[..., logging.LogRecord], fmt: str, *, with_filter: bool, event: bool
) -> Callable[[int], tuple[float, float]]:
    logger, stream = _logger(name, fmt, with_filter=with_filter)
    context = _event_context() if event else None

    def run(n: int) -> tuple[float, float]:
        logging.setLogRecordFactory(factory)
        token = attach(context) if context is not None else None
        try:
            stream.seek(0)
            stream.truncate()
            info = logger.info
            cpu = time.process_time()
            start = time.perf_counter()
            for i in range(n):
                info("order %s shipped", i)
            return time.perf_counter() - start, time.process_time() - cpu
        finally:
            if token is not None:
                detach(token)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run (noisy)")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--n", type=int, default=20_000, help="log calls per case and repetition")
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args()
    reps, n = (5, 2_000) if args.quick else (max(5, args.reps), args.n)

    plain_factory = logging.getLogRecordFactory()
    eda_factory = correlation._factory(plain_factory)
    cases = {
        "plain": _case("plain", plain_factory, FORMAT, with_filter=False, event=False),
        "factory.no_event": _case("f0", eda_factory, FORMAT, with_filter=False, event=False),
        "filter.no_event": _case("h0", plain_factory, FORMAT, with_filter=True, event=False),
        "factory.event": _case("f1", eda_factory, FORMAT, with_filter=False, event=True),
        "filter.event": _case("h1", plain_factory, FORMAT, with_filter=True, event=True),
        "factory.event.eda_format": _case("f2", eda_factory, EDA_FORMAT, with_filter=False, event=True),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    cpu_samples: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for run in cases.values():  # warm up
        run(n // 10)
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            wall, cpu = cases[name](n)
            samples[name].append(wall / n * 1e6)
            cpu_samples[name].append(cpu / n * 1e6)
    logging.setLogRecordFactory(plain_factory)

    result: dict[str, Any] = {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "reps": reps,
        "calls_per_rep": n,
        "cases": {},
    }
    plain = statistics.median(samples["plain"])
    plain_cpu = statistics.median(cpu_samples["plain"])
    print(f"python {result['python']}, {reps} repetitions x {n} log calls, per call: wall median (min-max), CPU median")
    for name in names:
        median = statistics.median(samples[name])
        cpu = statistics.median(cpu_samples[name])
        result["cases"][name] = {
            "median_us": median,
            "min_us": min(samples[name]),
            "max_us": max(samples[name]),
            "cpu_median_us": cpu,
            "samples_us": samples[name],
            "cpu_samples_us": cpu_samples[name],
        }
        print(
            f"  {name:26s} wall {median:7.3f} us ({min(samples[name]):.3f}-{max(samples[name]):.3f})"
            f" x{median / plain:.3f}"
            f"  cpu {cpu:7.3f} us x{cpu / plain_cpu:.3f}  added {cpu - plain_cpu:+.3f} us cpu"
        )
    ratio = result["cases"]["factory.no_event"]["cpu_median_us"] / plain_cpu
    result["goal"] = {
        "case": "factory.no_event",
        "baseline": "plain",
        "ratio": ratio,
        "max": GOAL,
        "met": ratio <= GOAL,
    }
    verdict = "met" if ratio <= GOAL else "MISSED"
    print(f"no event current: factory / plain CPU time = {ratio:.3f} (goal <= {GOAL}): {verdict}")
    added = result["cases"]["factory.event"]["cpu_median_us"] - plain_cpu
    result["event_added_us"] = added
    print(f"event current: {added:+.3f} us CPU added per record")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=1)


if __name__ == "__main__":
    main()
