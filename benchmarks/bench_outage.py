#!/usr/bin/env python
"""Handler p99 and CPU per event while the tracing backend refuses or hangs (issues 4 and 12).

Run from the repository root (a real Zipkin needs Java 17+, ``scripts/zipkin`` downloads it
once; the OTLP backend is otel-eda's Collector, ``scripts/otelcol install`` builds it once)::

    .venv/bin/python benchmarks/bench_outage.py                    # both exporters, about 6 minutes
    .venv/bin/python benchmarks/bench_outage.py --exporter otlp    # one of them
    .venv/bin/python benchmarks/bench_outage.py --quick            # smoke run (noisy)
    .venv/bin/python benchmarks/bench_outage.py --json out.json

For each exporter, one process set up by ``otel_eda.configure()`` (``OTEL_TRACES_EXPORTER``
``zipkin_json`` to a real Zipkin, or ``otlp`` over HTTP to a real Collector that discards
what it receives; the SDK's default batch settings, or ``OTEL_BSP_*`` from the environment)
publishes ``--rate`` events a second on an ``EventBus`` (one subscriber; the handler does
about 50 us of arithmetic; two spans an event). An event's latency is the time from just
before ``publish()`` to the end of its handler.

Windows of ``--window`` seconds follow one another in one run, side by side: the backend
healthy (``healthy``), stopped (``refused``: every connection refused), healthy again after a
restart, frozen with SIGSTOP (``hanging``: connections complete in the kernel's backlog and
nothing answers, so each export waits for its timeout), healthy again after SIGCONT; then
again for ``--cycles``. Restarts, freezes and a settling time after each are not measured.

Printed per exporter: p50/p99/max latency and the CPU per event (process time of this
process, every thread, over the window's events) for each state pooled, and the goals:
p99 during each outage state <= 1.2x the healthy p99, and CPU per event during an outage <=
the healthy CPU per event (a dropped span costs no more than an exported one), each with
``met`` or ``MISSED``. The exit status is 0 whatever the goals say: this is a measurement.

Caveat: on a small machine the backend competes for the CPU while it is up and not while it
is stopped or frozen, which favours the outage windows a little; the CPU column is this
process's own cost only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
GOAL_P99: Final = 1.20  # p99 during an outage / p99 healthy
GOAL_CPU: Final = 1.00  # CPU per event during an outage / healthy
WARMUP_S: Final = 5.0
SETTLE_S: Final = 3.0
STATES: Final = ("refused", "hanging")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan


def work() -> int:
    x = 0
    for i in range(1000):
        x += i * i
    return x


class Backend:
    """A real Zipkin or Collector started with the project's scripts; stop, start, freeze, thaw."""

    def __init__(self, exporter: str, directory: Path) -> None:
        self.exporter = exporter
        self.directory = directory
        self.port = free_port()
        self.env = dict(os.environ)
        if exporter == "otlp":
            self.env.update(
                OTELCOL_OTLP_HTTP_ENDPOINT=f"127.0.0.1:{self.port}",
                OTELCOL_OTLP_GRPC_ENDPOINT=f"127.0.0.1:{free_port()}",
                OTELCOL_HEALTH_ENDPOINT=f"127.0.0.1:{free_port()}",
            )

    @property
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

    def _script(self, *args: str) -> float:
        began = time.perf_counter()
        script = ROOT / "scripts" / ("otelcol" if self.exporter == "otlp" else "zipkin")
        proc = subprocess.run(
            [str(script), *args], capture_output=True, text=True, check=False, timeout=300, env=self.env
        )
        if proc.returncode != 0:
            sys.exit(f"{script.name} {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        return time.perf_counter() - began

    def start(self) -> float:
        if self.exporter == "otlp":
            return self._script("start", str(self.directory), str(ROOT / "benchmarks" / "outage-collector.yaml"))
        return self._script("start", str(self.directory), str(self.port))

    def stop(self) -> float:
        return self._script("stop", str(self.directory))

    def _pid(self) -> int:
        name = "otelcol.pid" if self.exporter == "otlp" else "zipkin.pid"
        return int((self.directory / name).read_text().strip())

    def freeze(self) -> None:
        os.kill(self._pid(), signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self._pid(), signal.SIGCONT)


class Window:
    def __init__(self, label: str, kind: str) -> None:
        self.label = label
        self.kind = kind  # warmup | healthy | refused | hanging | transition
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


async def run(args: argparse.Namespace, backend: Backend, results: dict[str, Any]) -> list[Window]:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    import otel_eda
    from otel_eda import Delivery, EventBus
    from otel_eda.sdk.exportloss import LossCountingSpanExporter, exporter_of, span_loss_tallies, span_processors

    otel_eda.configure()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), provider
    (exporter,) = [e for e in map(exporter_of, span_processors(provider)) if isinstance(e, LossCountingSpanExporter)]
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
        print(
            f"  {label}: {len(window.latencies)} events, p99 {percentile(window.latencies, 0.99) * 1e3:.2f} ms, "
            f"CPU {window.cpu / max(1, len(window.latencies)) * 1e6:.0f} us/event"
        )

    async with EventBus() as bus:
        bus.subscribe("tick", handle, subscriber="worker")
        loader = asyncio.create_task(load(bus))
        await measure("warm-up", "warmup", WARMUP_S)
        for cycle in range(1, args.cycles + 1):
            await measure(f"healthy #{cycle}a", "healthy", args.window)
            print(f"  backend stopped ({await asyncio.to_thread(backend.stop):.1f} s)")
            await asyncio.sleep(SETTLE_S)
            await measure(f"refused #{cycle}", "refused", args.window)
            print(f"  backend started again ({await asyncio.to_thread(backend.start):.1f} s)")
            await asyncio.sleep(SETTLE_S)
            await measure(f"healthy #{cycle}b", "healthy", args.window)
            backend.freeze()
            print("  backend frozen (SIGSTOP)")
            await asyncio.sleep(SETTLE_S)
            await measure(f"hanging #{cycle}", "hanging", args.window)
            backend.thaw()
            print("  backend thawed (SIGCONT)")
            await asyncio.sleep(SETTLE_S)
        await measure("healthy (last)", "healthy", args.window)
        stop.set()
        await loader
        await bus.join()
    report = otel_eda.shutdown()
    results["shutdown_s"] = report.seconds
    results["spans_lost"] = tally.totals()
    results["spans_exported"] = exporter.exported
    return windows


def pooled(windows: Sequence[Window], kind: str) -> list[float]:
    return [x for w in windows if w.kind == kind for x in w.latencies]


def cpu_per_event(windows: Sequence[Window], kind: str) -> float:
    chosen = [w for w in windows if w.kind == kind]
    events = sum(len(w.latencies) for w in chosen)
    return sum(w.cpu for w in chosen) / events * 1e6 if events else math.nan


def one_exporter(args: argparse.Namespace) -> dict[str, Any]:
    """The measurement for ``args.exporter``, in this process."""
    directory = Path(tempfile.mkdtemp(prefix=f"bench-outage-{args.exporter}-"))
    backend = Backend(args.exporter, directory)
    os.environ.update(
        OTEL_SERVICE_NAME="otel-eda-bench-outage",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        **backend.otel_env,
    )
    results: dict[str, Any] = {"exporter_name": args.exporter}
    print(f"[{args.exporter}] backend started ({backend.start():.1f} s) on 127.0.0.1:{backend.port}")
    try:
        windows = asyncio.run(run(args, backend, results))
    finally:
        with contextlib.suppress(OSError, ValueError):
            backend.thaw()
        backend.stop()
    healthy = pooled(windows, "healthy")
    p99_healthy = percentile(healthy, 0.99)
    cpu_healthy = cpu_per_event(windows, "healthy")
    results["windows"] = [w.summary() for w in windows]
    results["states"] = {}
    for kind in ("healthy", *STATES):
        latencies = pooled(windows, kind)
        results["states"][kind] = {
            "events": len(latencies),
            "p50_ms": percentile(latencies, 0.50) * 1e3,
            "p99_ms": percentile(latencies, 0.99) * 1e3,
            "max_ms": max(latencies, default=math.nan) * 1e3,
            "cpu_us_per_event": cpu_per_event(windows, kind),
            "p99_ratio": percentile(latencies, 0.99) / p99_healthy,
            "cpu_ratio": cpu_per_event(windows, kind) / cpu_healthy,
        }
    return results


def print_results(all_results: Sequence[dict[str, Any]]) -> None:
    print()
    print(
        f"    {'exporter':<8} {'state':<8} {'events':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'CPU us/ev':>10} {'p99 x':>6} {'CPU x':>6}"
    )
    for results in all_results:
        for kind, s in results["states"].items():
            print(
                f"    {results['exporter_name']:<8} {kind:<8} {s['events']:>7} {s['p50_ms']:>8.2f} "
                f"{s['p99_ms']:>8.2f} {s['max_ms']:>8.2f} {s['cpu_us_per_event']:>10.0f} "
                f"{s['p99_ratio']:>6.2f} {s['cpu_ratio']:>6.2f}"
            )
    print()
    for results in all_results:
        for kind in STATES:
            s = results["states"][kind]
            p99_met = s["p99_ratio"] <= GOAL_P99
            cpu_met = s["cpu_ratio"] <= GOAL_CPU
            print(
                f"{results['exporter_name']} {kind}: p99 {s['p99_ratio']:.2f}x healthy (goal <= {GOAL_P99}x): "
                f"{'met' if p99_met else 'MISSED'}; CPU per event {s['cpu_ratio']:.2f}x healthy "
                f"(goal <= {GOAL_CPU}x): {'met' if cpu_met else 'MISSED'}"
            )
        print(
            f"{results['exporter_name']}: spans exported {results['spans_exported']}, lost {results['spans_lost']}; "
            f"shutdown {results['shutdown_s']:.2f} s"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    parser.add_argument("--quick", action="store_true", help="one cycle, 6 s windows (noisy)")
    parser.add_argument("--exporter", choices=("zipkin", "otlp", "both"), default="both")
    parser.add_argument("--rate", type=int, default=400, help="events a second (default 400: 800 spans/s)")
    parser.add_argument("--window", type=float, help="seconds per measured window (default 15)")
    parser.add_argument("--cycles", type=int, help="outage cycles, each one refused and one hanging (default 1)")
    parser.add_argument("--child-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.window = args.window or (6.0 if args.quick else 15.0)
    args.cycles = args.cycles or 1

    if args.child_json:  # one exporter, in its own process (configure() is process-wide)
        with open(args.child_json, "w", encoding="utf-8") as f:
            json.dump(one_exporter(args), f)
        return 0

    began = time.perf_counter()
    bsp = {k: v for k, v in os.environ.items() if k.startswith("OTEL_BSP_")}
    print(
        f"otel-eda outage benchmark: Python {platform.python_version()}, opentelemetry-sdk "
        f"{importlib.metadata.version('opentelemetry-sdk')}, {os.cpu_count()} CPUs (load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}), {args.rate} events/s (2 spans each), "
        f"{args.cycles} cycle(s) of refused + hanging, {args.window:g} s windows"
        + (" (QUICK smoke run)" if args.quick else "")
    )
    print(
        "set-up: otel_eda.configure() exporting to a real Zipkin (zipkin_json) or a real Collector (otlp, "
        f"http/protobuf) on 127.0.0.1, batch settings {bsp or 'SDK defaults (queue 2048, batch 512, delay 5 s)'}; "
        "latency = publish() to the end of the handler (about 50 us of work)"
    )
    exporters = ("zipkin", "otlp") if args.exporter == "both" else (args.exporter,)
    all_results = []
    for exporter in exporters:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
            child = [
                sys.executable,
                __file__,
                "--exporter",
                exporter,
                "--rate",
                str(args.rate),
                "--window",
                str(args.window),
                "--cycles",
                str(args.cycles),
                "--child-json",
                out.name,
            ]
            subprocess.run(child, check=True, cwd=ROOT)
            all_results.append(json.loads(Path(out.name).read_text()))
    print_results(all_results)
    total = time.perf_counter() - began
    print(f"total {total:.1f} s, load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rate": args.rate, "window_s": args.window, "bsp": bsp, "results": all_results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
