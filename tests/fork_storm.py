"""Fork children at random moments while the anomaly reader evaluates (run by test_fork_safety).

``python tests/fork_storm.py CHILDREN INTERVAL_S``: ``configure()`` with the anomaly reader
collecting every ``INTERVAL_S`` seconds over a few hundred series, then ``CHILDREN`` forks,
each at a random moment. A child records a histogram point (the SDK's metric locks), starts
and ends a span, and exits through ``sys.exit`` (atexit: the providers' shutdown joins the
reader's thread and evaluates once more). Each child arms ``SIGALRM`` so a hung one dies
instead of lingering. The parent waits for every child with a deadline and prints one JSON
line: how many exited cleanly, how many it had to kill, the exit codes, and how many of the
forks landed while the reader was collecting.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time

CHILD_DEADLINE_S = 20.0


def main() -> int:
    children, interval = int(sys.argv[1]), sys.argv[2]
    os.environ.update(
        OTEL_EDA_ANOMALY_INTERVAL=interval,
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_EDA_HANDLE_SIGTERM="false",
    )
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import Observation

    import otel_eda
    from otel_eda.installation.configuration import anomaly_reader

    otel_eda.configure()
    meter = metrics.get_meter("fork-storm")
    histogram = meter.create_histogram("fork.storm.duration", unit="s")
    counter = meter.create_counter("fork.storm.events")
    tracer = trace.get_tracer("fork-storm")
    reader = anomaly_reader(metrics.get_meter_provider())
    assert reader is not None and reader.started

    def observe(_options: object) -> list[Observation]:  # runs inside each collection
        return [Observation(i * 0.5, {"series": i}) for i in range(300)]

    meter.create_observable_gauge("fork.storm.depth", callbacks=[observe])

    def load() -> None:  # many series: each collection and evaluation takes a while
        for i in range(300):
            histogram.record(0.001 * (i % 7), {"series": i})
            counter.add(1, {"series": i})

    # Only this thread records (between forks): a thread of the application's own that is
    # inside histogram.record at fork time holds the SDK's locks, which no hook of
    # otel-eda's can free; this test is about the reader's collections.
    load()
    time.sleep(0.2)
    pids = []
    rng = random.Random()
    busy_at_fork = 0
    for _ in range(children):
        load()
        time.sleep(rng.uniform(0, 2 * float(interval)))
        busy_at_fork += reader_busy(reader)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(int(CHILD_DEADLINE_S) + 10)
            if os.environ.get("FORK_STORM_DEBUG"):
                import faulthandler

                faulthandler.dump_traceback_later(8, exit=True)
            histogram.record(0.5, {"series": "child"})
            counter.add(1, {"series": "child"})
            with tracer.start_as_current_span("child"):
                pass
            sys.exit(0)  # atexit: the providers' shutdown
        pids.append(pid)

    codes: dict[int, int] = {}
    killed = 0
    deadline = time.monotonic() + CHILD_DEADLINE_S
    waiting = set(pids)
    while waiting and time.monotonic() < deadline:
        for pid in list(waiting):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                waiting.discard(pid)
                codes[pid] = os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    for pid in waiting:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        killed += 1
    clean = sum(code == 0 for code in codes.values())
    print(
        json.dumps(
            {
                "children": children,
                "clean": clean,
                "killed": killed,
                "codes": sorted(codes.values()),
                "busy_at_fork": busy_at_fork,
            }
        )
    )
    return 0


def reader_busy(reader: object) -> int:
    """1 if the reader's thread is inside a collection right now (best effort, for the report)."""
    lock = getattr(reader, "_collecting", None) or getattr(reader, "_evaluating", None)
    return int(bool(lock is not None and lock.locked()))


if __name__ == "__main__":
    sys.exit(main())
