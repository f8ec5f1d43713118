#!/usr/bin/env python
"""p99 handler latency during a Zipkin outage, as a ratio to before (issue 4, section 4).

Run from the repository root (needs Java 17+; ``scripts/zipkin`` downloads Zipkin once)::

    .venv/bin/python benchmarks/bench_outage.py              # full run, about 3 minutes
    .venv/bin/python benchmarks/bench_outage.py --json out.json
    .venv/bin/python benchmarks/bench_outage.py --quick      # smoke run, about a minute (noisy)

One process, set up by ``otel_eda.configure()`` with ``OTEL_TRACES_EXPORTER=zipkin_json`` to a
real Zipkin (``scripts/zipkin``, in-memory, 127.0.0.1) and the SDK's default batch settings
(``OTEL_BSP_*`` from the environment if set), publishes ``--rate`` events a second on an
``EventBus`` (one subscriber; the handler does about 50 us of arithmetic; two spans an
event). An event's latency is the time from just before ``publish()`` to the end of its
handler: the PRODUCER span, the bus queue, the CONSUMER span's start, the handler.

Windows of ``--window`` seconds alternate, in one run, side by side: Zipkin up ("before"),
Zipkin stopped ("during": every export is refused and its spans counted lost), Zipkin up
again, ... (``--cycles`` outages). The stop, the restart (a JVM start: it takes the CPU for
10-40 s) and a settling time after each are not measured. The goal is judged on the p99 of
all "during" windows against the p99 of all "before" windows (the window just before each
outage): ratio <= 1.2, printed as met or MISSED. The last window (after the last restart) is
shown too. The exit status is 0 whatever the goal says: this is a measurement, not a test.

Caveat: on a small machine the Zipkin JVM competes for the CPU while it is up (it ingests
the spans) and not while it is stopped, which favours the "during" windows a little; the
CPU column (process time of this process per event, every thread) shows the application's
own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
ZIPKIN: Final = ROOT / "scripts" / "zipkin"
GOAL: Final = 1.20  # p99 during the outage / p99 before
WARMUP_S: Final = 5.0
SETTLE_AFTER_STOP_S: Final = 1.0
SETTLE_AFTER_START_S: Final = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def zipkin(*args: str) -> float:
    """Run ``scripts/zipkin``; the seconds it took. Fails loudly (this is not a test)."""
    began = time.perf_counter()
    proc = subprocess.run([str(ZIPKIN), *args], capture_output=True, text=True, check=False, timeout=300)
    if proc.returncode != 0:
        sys.exit(f"scripts/zipkin {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return time.perf_counter() - began


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan


def work() -> int:
    x = 0
    for i in range(1000):
        x += i * i
    return x


class Window:
    def __init__(self, label: str, kind: str) -> None:
        self.label = label
        self.kind = kind  # warmup | before | during | after
        self.latencies: list[float] = []
        self.cpu = 0.0
        self.wall = 0.0
        self.lost: dict[str, int] = {}
        self.exported = 0

    def summary(self) -> dict[str, Any]:
        n = len(self.latencies)
        return {
            "label": self.label,
            "kind": self.kind,
            "events": n,
            "seconds": self.wall,
            "p50_ms": percentile(self.latencies, 0.50) * 1e3,
            "p99_ms": percentile(self.latencies, 0.99) * 1e3,
            "max_ms": max(self.latencies, default=math.nan) * 1e3,
            "cpu_us_per_event": self.cpu / n * 1e6 if n else math.nan,
            "spans_lost": self.lost,
            "spans_exported": self.exported,
        }


async def run(args: argparse.Namespace, directory: Path, results: dict[str, Any]) -> list[Window]:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    import otel_eda
    from otel_eda import Delivery, EventBus
    from otel_eda.sdk.exportloss import LossCountingSpanExporter, span_loss_tallies, track_span_losses

    otel_eda.configure()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), provider
    track_span_losses(provider)  # configure() does it already: idempotent
    processors = provider._active_span_processor._span_processors
    exporters = [getattr(getattr(p, "_batch_processor", None), "_exporter", None) for p in processors]
    (exporter,) = [e for e in exporters if isinstance(e, LossCountingSpanExporter)]
    (tally,) = span_loss_tallies(provider)
    results["exporter"] = type(exporter.inner).__name__

    windows: list[Window] = []
    current = Window("warmup", "warmup")
    stop = asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        work()
        window: Window = delivery.payload["w"]
        window.latencies.append(time.perf_counter() - delivery.payload["t0"])

    async def load(bus: EventBus) -> None:
        period = 1.0 / args.rate
        next_at = time.perf_counter()
        while not stop.is_set():
            await bus.publish("tick", {"t0": time.perf_counter(), "w": current})
            next_at += period
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:  # behind schedule: do not burst to catch up
                next_at = time.perf_counter()
                await asyncio.sleep(0)

    async def measure(label: str, kind: str, seconds: float) -> None:
        nonlocal current
        window = current = Window(label, kind)
        lost0, exported0 = tally.totals(), exporter.exported
        wall0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.sleep(seconds)
        current = Window("transition", "transition")
        window.wall, window.cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        window.lost = {k: v - lost0[k] for k, v in tally.totals().items()}
        window.exported = exporter.exported - exported0
        if kind != "warmup":
            windows.append(window)
        print(f"  {label}: {len(window.latencies)} events, p99 {percentile(window.latencies, 0.99) * 1e3:.2f} ms")

    async with EventBus() as bus:
        bus.subscribe("tick", handle, subscriber="worker")
        loader = asyncio.create_task(load(bus))
        await measure("warm-up", "warmup", WARMUP_S)
        for cycle in range(1, args.cycles + 1):
            await measure(f"before #{cycle}", "before", args.window)
            stopped = await asyncio.to_thread(zipkin, "stop", str(directory))
            print(f"  Zipkin stopped ({stopped:.1f} s)")
            await asyncio.sleep(SETTLE_AFTER_STOP_S)
            await measure(f"during #{cycle}", "during", args.window)
            started = await asyncio.to_thread(zipkin, "start", str(directory), str(args.port))
            print(f"  Zipkin started again, empty ({started:.1f} s)")
            await asyncio.sleep(SETTLE_AFTER_START_S)
        await measure("after", "after", args.window)
        stop.set()
        await loader
        await bus.join()
    began = time.perf_counter()
    provider.shutdown()
    results["shutdown_s"] = time.perf_counter() - began
    results["spans_lost"] = tally.totals()
    results["spans_exported"] = exporter.exported
    return windows


def pooled(windows: Sequence[Window], kind: str) -> list[float]:
    return [x for w in windows if w.kind == kind for x in w.latencies]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    parser.add_argument("--quick", action="store_true", help="one outage, 6 s windows (noisy)")
    parser.add_argument("--rate", type=int, default=400, help="events a second (default 400: 800 spans/s)")
    parser.add_argument("--window", type=float, help="seconds per measured window (default 20)")
    parser.add_argument("--cycles", type=int, help="outages (default 2)")
    args = parser.parse_args(argv)
    args.window = args.window or (6.0 if args.quick else 20.0)
    args.cycles = args.cycles or (1 if args.quick else 2)
    args.port = free_port()

    began = time.perf_counter()
    directory = Path(tempfile.mkdtemp(prefix="bench-outage-zipkin-"))
    os.environ.update(
        OTEL_SERVICE_NAME="otel-eda-bench-outage",
        OTEL_TRACES_EXPORTER="zipkin_json",
        OTEL_EXPORTER_ZIPKIN_ENDPOINT=f"http://127.0.0.1:{args.port}/api/v2/spans",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    bsp = {k: v for k, v in os.environ.items() if k.startswith("OTEL_BSP_")}
    print(
        f"otel-eda Zipkin outage benchmark: Python {platform.python_version()}, opentelemetry-sdk "
        f"{importlib.metadata.version('opentelemetry-sdk')}, {os.cpu_count()} CPUs (load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}), {args.rate} events/s (2 spans each), "
        f"{args.cycles} outage(s), {args.window:g} s windows" + (" (QUICK smoke run)" if args.quick else "")
    )
    print(
        "set-up: otel_eda.configure() with OTEL_TRACES_EXPORTER=zipkin_json to a real Zipkin on 127.0.0.1, "
        f"batch settings {bsp or 'SDK defaults (queue 2048, batch 512, delay 5 s)'}; latency = publish() "
        "to the end of the handler (about 50 us of work)"
    )
    results: dict[str, Any] = {
        "benchmark": "otel-eda zipkin outage",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "rate": args.rate,
        "window_s": args.window,
        "cycles": args.cycles,
        "bsp": bsp,
    }
    print(f"  Zipkin started ({zipkin('start', str(directory), str(args.port)):.1f} s)")
    try:
        windows = asyncio.run(run(args, directory, results))
    finally:
        zipkin("stop", str(directory))

    print()
    print(
        f"    {'window':<11} {'events':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'CPU us/event':>13}"
        "  spans exported / lost (queue_full, export_failed, shutdown)"
    )
    for w in windows:
        s = w.summary()
        lost = s["spans_lost"]
        print(
            f"    {s['label']:<11} {s['events']:>7} {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} {s['max_ms']:>8.2f} "
            f"{s['cpu_us_per_event']:>13.0f}  {s['spans_exported']} / {lost.get('queue_full', 0)}, "
            f"{lost.get('export_failed', 0)}, {lost.get('shutdown', 0)}"
        )
    before, during, after = (pooled(windows, kind) for kind in ("before", "during", "after"))
    p99 = {kind: percentile(xs, 0.99) for kind, xs in (("before", before), ("during", during), ("after", after))}
    ratio = p99["during"] / p99["before"]
    met = ratio <= GOAL
    print()
    print(
        f"p99 handler latency during the outage {p99['during'] * 1e3:.2f} ms, before {p99['before'] * 1e3:.2f} ms: "
        f"{ratio:.2f}x (goal <= {GOAL}x): {'met' if met else 'MISSED'}; after the restart "
        f"{p99['after'] * 1e3:.2f} ms ({p99['after'] / p99['before']:.2f}x before)"
    )
    per_cycle = [
        percentile(d.latencies, 0.99) / percentile(b.latencies, 0.99)
        for b, d in zip(
            [w for w in windows if w.kind == "before"], [w for w in windows if w.kind == "during"], strict=True
        )
    ]
    print(f"per outage (during / the window before it): {', '.join(f'{r:.2f}x' for r in per_cycle)}")
    print(
        f"spans: {results['spans_exported']} exported, lost {results['spans_lost']}; "
        f"shutdown (Zipkin up) {results['shutdown_s'] * 1e3:.0f} ms"
    )
    results["windows"] = [w.summary() for w in windows]
    results["goal"] = {
        "ratio": ratio,
        "limit": GOAL,
        "met": met,
        "per_outage": per_cycle,
        "p99_ms": {k: v * 1e3 for k, v in p99.items()},
    }
    results["seconds"] = time.perf_counter() - began
    print(f"total {results['seconds']:.1f} s, load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
