"""Order-flow demo: four services, one interpreter each, events crossing between them.

Run it with ``.venv/bin/python examples/order_flow.py`` (``scripts/demo`` sets up ``.venv``
first). The services (``order_services.py``) are order → payment → inventory →
notification. Each runs in its own spawned process with its own ``OTEL_SERVICE_NAME`` and
calls ``otel_eda.configure()``, so each is its own Resource ``service.name`` in traces and
metrics. Events cross processes over ``otel_eda.interprocess``: every service owns an inbox
queue; a ``QueueOutlet`` forwards each published event to the inboxes of the services that
subscribe to its type, with the producer's trace context and the event identity in plain
string headers, exactly as a broker would carry them.

Each service's bus also forwards its lifecycle records to this launcher, which keeps them
in one ``EventStore`` and, once every flow has settled, prints each order's causation
tree, a per-service summary and what happened to ``order-1003``.

Telemetry goes where the ``OTEL_*`` variables say. With a console exporter (the default
when ``OTEL_TRACES_EXPORTER`` is unset; metrics then default to console too) each
service's stdout goes to ``<output-dir>/<service>.telemetry.jsonl``, so spans and metrics
do not bury the report. For example, to send spans to a local Zipkin instead::

    OTEL_TRACES_EXPORTER=zipkin_json .venv/bin/python examples/order_flow.py

Options: ``--orders N`` (default 6), ``--mode parent|link`` (``OTEL_EDA_TRACE_MODE`` of the
services), ``--json FILE`` (a machine-readable summary), ``--output-dir DIR``, ``--timeout S``.
The launcher exits non-zero with a clear message if a service dies or the flows do not
settle in time (``--crash SERVICE`` makes a service die, to see that happen).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import multiprocessing
import os
import queue
import statistics
import sys
import time
from collections.abc import Iterable, Mapping
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any, Final

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from order_services import PUBLISHES, RETRY, SCENARIOS, SERVICES, SUBSCRIPTIONS, make_orders, place_orders

import otel_eda
from otel_eda import EventBus, EventStore, Service
from otel_eda.interprocess import QueueOutlet, RecordForwarder, pump
from otel_eda.records import LifecycleRecord, Stage
from otel_eda.store import EventSummary

FINAL: Final = frozenset({Stage.COMPLETED, Stage.FAILED, Stage.DEAD_LETTERED, Stage.DROPPED})
CRASH_EXIT_CODE: Final = 70


class DemoError(Exception):
    """Something went wrong with the demo's processes (not with an order)."""


# -- one service's process -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    """Everything a service's process needs; pickled to the spawned interpreter."""

    name: str
    inbox: Queue[Any]
    #: (event type, subscribing service, that service's inbox) for each type it publishes
    outlets: tuple[tuple[str, str, Queue[Any]], ...]
    records: Queue[Any]
    env: Mapping[str, str]
    telemetry_file: str | None
    orders: tuple[dict[str, Any], ...] = ()
    crash: bool = False


def service_main(spec: ServiceSpec) -> None:
    """Entry point of one service's interpreter (started with the ``spawn`` method)."""
    if spec.telemetry_file is not None:
        # The console exporters write to stdout: send this process's fd 1 to a file.
        fd = os.open(spec.telemetry_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.close(fd)
    os.environ.update(spec.env)
    os.environ["OTEL_SERVICE_NAME"] = spec.name  # read by configure(): this Resource's service.name
    logging.basicConfig(level=logging.WARNING, format="  %(message)s")
    logging.getLogger("order_flow").setLevel(logging.INFO)  # the services' narrative, on stderr
    otel_eda.configure()
    try:
        asyncio.run(serve(spec))
    finally:
        # Flush every span and export the metrics once more before the interpreter ends.
        tracer_provider = trace.get_tracer_provider()
        if isinstance(tracer_provider, TracerProvider):
            tracer_provider.shutdown()
        meter_provider = metrics.get_meter_provider()
        if isinstance(meter_provider, MeterProvider):
            meter_provider.shutdown()
        sys.stdout.flush()


async def serve(spec: ServiceSpec) -> None:
    bus = EventBus(service=spec.name, retry=RETRY, recorders=[RecordForwarder(spec.records)])
    SERVICES[spec.name](Service(spec.name, bus))
    for event_type, subscriber, inbox in spec.outlets:
        bus.add_outlet(event_type, QueueOutlet(inbox, subscriber))
    async with bus:  # on exit: handle what is queued, then stop
        if spec.orders:
            await place_orders(bus, list(spec.orders))
        if spec.crash:
            await asyncio.to_thread(spec.inbox.get)  # the first inbound event...
            os._exit(CRASH_EXIT_CODE)  # ...and this service dies without a word
        await pump(spec.inbox, bus)  # until the launcher sends None


# -- the launcher ----------------------------------------------------------------------------


def child_environment(mode: str | None) -> dict[str, str]:
    """What the services get on top of this process's environment (which they inherit)."""
    env: dict[str, str] = {}
    traces = os.environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not traces:
        env["OTEL_TRACES_EXPORTER"] = traces = "console"
    if not os.environ.get("OTEL_METRICS_EXPORTER", "").strip() and traces == "console":
        env["OTEL_METRICS_EXPORTER"] = "console"
    if mode is not None:
        env["OTEL_EDA_TRACE_MODE"] = mode
    return env


def writes_to_console(env: Mapping[str, str]) -> bool:
    """Whether any configured exporter of the services prints to stdout."""
    for variable in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER"):
        names = env.get(variable, os.environ.get(variable, ""))
        if "console" in (name.strip() for name in names.split(",")):
            return True
    return False


@dataclasses.dataclass
class ServiceStats:
    """Per-service counts, computed from the lifecycle records as they arrive."""

    published: int = 0
    handled: int = 0
    completed: int = 0
    failed: int = 0
    retries: int = 0
    dead_lettered: int = 0
    processing_s: list[float] = dataclasses.field(default_factory=list)

    def mean_processing_ms(self) -> float | None:
        return statistics.fmean(self.processing_s) * 1000 if self.processing_s else None


class Collector:
    """Takes every lifecycle record from the services: into one store, and into stats."""

    def __init__(self, services: Iterable[str]) -> None:
        self.store = EventStore()
        self.stats = {name: ServiceStats() for name in services}
        self.records = 0

    def record(self, record: LifecycleRecord) -> None:
        self.records += 1
        self.store.record(record)
        stats = self.stats.setdefault(record.service, ServiceStats())
        if record.subscriber is None:
            stats.published += record.stage is Stage.PUBLISHED
            return
        if record.stage is Stage.RECEIVED:
            stats.handled += 1
        elif record.stage is Stage.COMPLETED:
            stats.completed += 1
        elif record.stage is Stage.FAILED:
            stats.failed += 1
        elif record.stage is Stage.RETRIED:
            stats.retries += 1
        elif record.stage is Stage.DEAD_LETTERED:
            stats.dead_lettered += 1
        ends_attempt = record.stage in (Stage.COMPLETED, Stage.FAILED, Stage.RETRIED, Stage.DEAD_LETTERED)
        if ends_attempt and record.duration_s is not None:
            stats.processing_s.append(record.duration_s)

    def events(self) -> list[EventSummary]:
        return [event for correlation_id in self.store.correlation_ids() for event in self.store.flow(correlation_id)]

    def unsettled(self, orders: int, subscribers: Mapping[str, set[str]]) -> list[EventSummary] | None:
        """The events still moving, or ``None`` while not every order has been placed."""
        events = self.events()
        if sum(event.event_type == "order_placed" for event in events) < orders:
            return None
        pending = []
        for event in events:
            # Settled: its publish was recorded and every subscriber's delivery is final.
            states = {delivery.subscriber: delivery.status for delivery in event.deliveries}
            wanted = subscribers.get(event.event_type, ())
            if event.publisher is None or any(states.get(name) not in FINAL for name in wanted):
                pending.append(event)
        return pending


class Launcher:
    def __init__(self, orders: int, mode: str | None, output_dir: Path, crash: str | None) -> None:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per service, never a fork
        self.orders = make_orders(orders)
        self.env = child_environment(mode)
        self.telemetry_files: dict[str, Path] = {}
        if writes_to_console(self.env):
            output_dir.mkdir(parents=True, exist_ok=True)
            self.telemetry_files = {name: output_dir / f"{name}.telemetry.jsonl" for name in SERVICES}
        self.inboxes: dict[str, Queue[Any]] = {name: ctx.Queue() for name in SERVICES}
        self.records: Queue[Any] = ctx.Queue()
        self.collector = Collector(SERVICES)
        # The routing table: event type -> the services that subscribe to it.
        self.subscribers: dict[str, set[str]] = {}
        for name, event_types in SUBSCRIPTIONS.items():
            for event_type in event_types:
                self.subscribers.setdefault(event_type, set()).add(name)
        self.processes: dict[str, BaseProcess] = {}
        for name in SERVICES:
            outlets = tuple(
                (event_type, subscriber, self.inboxes[subscriber])
                for event_type in PUBLISHES[name]
                for subscriber in sorted(self.subscribers.get(event_type, ()))
            )
            telemetry_file = self.telemetry_files.get(name)
            spec = ServiceSpec(
                name,
                self.inboxes[name],
                outlets,
                self.records,
                self.env,
                str(telemetry_file) if telemetry_file else None,
                tuple(self.orders) if name == "order" else (),
                crash=name == crash,
            )
            self.processes[name] = ctx.Process(target=service_main, args=(spec,), name=f"order-flow-{name}")

    def start(self) -> None:
        for process in self.processes.values():
            process.start()

    def _drain(self, wait_s: float) -> bool:
        """Take the records that arrived (waiting up to ``wait_s`` for the first one)."""
        try:
            self.collector.record(self.records.get(timeout=wait_s))
        except queue.Empty:
            return False
        while True:
            try:
                self.collector.record(self.records.get_nowait())
            except queue.Empty:
                return True

    def wait_until_settled(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self._drain(0.05):
                continue  # keep reading while records flow
            pending = self.collector.unsettled(len(self.orders), self.subscribers)
            if pending == []:
                return
            for name, process in self.processes.items():
                if process.exitcode is not None:
                    raise DemoError(
                        f"service {name!r} (pid {process.pid}) died with exit code {process.exitcode} "
                        "before the flows settled"
                    )
            if time.monotonic() > deadline:
                if pending is None:
                    placed = sum(e.event_type == "order_placed" for e in self.collector.events())
                    what = f"only {placed} of {len(self.orders)} orders were placed"
                else:
                    what = f"{len(pending)} events still moving: " + ", ".join(
                        f"{e.event_type} ({e.business_key}, {e.status})" for e in pending[:8]
                    )
                raise DemoError(f"the flows did not settle within {timeout_s:g} s: {what}")

    def stop(self, timeout_s: float = 15.0) -> list[str]:
        """Ask every service to stop, wait for each, and return the problems seen."""
        for inbox in self.inboxes.values():
            inbox.put(None)
        deadline = time.monotonic() + timeout_s
        # Keep draining the records queue while waiting: a process that still has items
        # to flush into a queue cannot exit.
        while any(p.is_alive() for p in self.processes.values()) and time.monotonic() < deadline:
            self._drain(0.05)
        self._drain(0.0)
        problems = []
        for name, process in self.processes.items():
            if process.is_alive():
                process.terminate()
                process.join(5)
                problems.append(f"service {name!r} did not stop within {timeout_s:g} s and was terminated")
            elif process.exitcode != 0:
                problems.append(f"service {name!r} exited with code {process.exitcode}")
        return problems


# -- the report --------------------------------------------------------------------------------


def print_report(launcher: Launcher, elapsed_s: float) -> None:
    store = launcher.collector.store
    flows = sorted(store.correlation_ids(), key=lambda c: store.flow(c)[0].business_key or "")
    print(f"\n== Causation tree of each order ({len(flows)} flows, {elapsed_s:.1f} s) ==")
    for correlation_id in flows:
        key = store.flow(correlation_id)[0].business_key
        note = f"  <- {SCENARIOS[key]}" if key in SCENARIOS else ""
        print(f"\n{key}  (correlation id {correlation_id}){note}")
        print(store.render_flow(correlation_id))

    print("\n== Per service (from the lifecycle records) ==")
    header = ("service", "published", "handled", "completed", "failed", "retries", "dead-lettered", "mean processing")
    print("{:<13}{:>10}{:>9}{:>11}{:>8}{:>9}{:>15}{:>17}".format(*header))
    for name, stats in launcher.collector.stats.items():
        mean = stats.mean_processing_ms()
        print(
            f"{name:<13}{stats.published:>10}{stats.handled:>9}{stats.completed:>11}{stats.failed:>8}"
            f"{stats.retries:>9}{stats.dead_lettered:>15}{'-' if mean is None else f'{mean:.1f} ms':>17}"
        )

    print("\n== What happened to order-1003? ==")
    print(describe_order(store, "order-1003"))

    if launcher.telemetry_files:
        print("\n== Telemetry (console exporters, one file per service) ==")
        for name, path in launcher.telemetry_files.items():
            print(f"{name:<13} {path}")
    else:
        print("\nSpans and metrics went where OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER say.")


def describe_order(store: EventStore, business_key: str) -> str:
    """Answer "what happened to <business key>?" from the store alone."""
    flows = store.find(business_key)
    if not flows:
        return f"store.find({business_key!r}) found nothing: no such order in this run."
    lines = [f"store.find({business_key!r}) -> {flows}"]
    for correlation_id in flows:
        events = store.flow(correlation_id)
        start = events[0].created_ns
        for event in events:
            handled = "; ".join(
                f"{d.service} {d.status.value}"
                + (f" after {d.attempts} attempts" if d.attempts > 1 else "")
                + (f" ({d.error_type.rsplit('.', 1)[-1]})" if d.error_type else "")
                for d in event.deliveries
            )
            offset_ms = (event.created_ns - start) / 1e6
            lines.append(f"  +{offset_ms:6.1f} ms  {event.event_type:<19} by {event.publisher}: {handled}")
        problems = [
            f"{event.event_type} {d.status.value} at {d.service}"
            + (f" ({d.error_type.rsplit('.', 1)[-1]})" if d.error_type else "")
            for event in events
            for d in event.deliveries
            if d.status is not Stage.COMPLETED
        ]
        verdict = "; ".join(problems) if problems else "every step completed"
        lines.append(f"  In short: {verdict}.")
    return "\n".join(lines)


def summary(launcher: Launcher, elapsed_s: float) -> dict[str, Any]:
    """The machine-readable summary written by ``--json``."""
    events = [
        {
            "event_id": e.event_id,
            "correlation_id": e.correlation_id,
            "causation_id": e.causation_id,
            "event_type": e.event_type,
            "business_key": e.business_key,
            "publisher": e.publisher,
            "status": e.status,
            "created_ns": e.created_ns,
            "trace_id": e.trace_id,
            "span_id": e.span_id,
            "deliveries": [
                {
                    "subscriber": d.subscriber,
                    "service": d.service,
                    "status": d.status.value,
                    "attempts": d.attempts,
                    "duration_s": d.duration_s,
                    "error_type": d.error_type,
                }
                for d in e.deliveries
            ],
        }
        for e in launcher.collector.events()
    ]
    services = {
        name: {
            "published": s.published,
            "handled": s.handled,
            "completed": s.completed,
            "failed": s.failed,
            "retries": s.retries,
            "dead_lettered": s.dead_lettered,
            "mean_processing_ms": s.mean_processing_ms(),
        }
        for name, s in launcher.collector.stats.items()
    }
    return {
        "orders": [order["order_id"] for order in launcher.orders],
        "trace_mode": launcher.env.get("OTEL_EDA_TRACE_MODE", os.environ.get("OTEL_EDA_TRACE_MODE", "parent")),
        "elapsed_s": elapsed_s,
        "records": launcher.collector.records,
        "events": events,
        "services": services,
        "telemetry_files": {name: str(path) for name, path in launcher.telemetry_files.items()},
    }


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--orders", type=positive_int, default=6, help="orders to place (default 6)")
    parser.add_argument("--mode", choices=("parent", "link"), help="OTEL_EDA_TRACE_MODE for the services")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write a machine-readable summary")
    parser.add_argument("--output-dir", type=Path, default=Path("demo-output"), help="for the telemetry files")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for the flows to settle (default 30)")
    parser.add_argument("--crash", choices=tuple(SERVICES), help="make this service die on its first event")
    args = parser.parse_args(argv)

    launcher = Launcher(args.orders, args.mode, args.output_dir, args.crash)
    print(f"order-flow demo: {args.orders} orders across {', '.join(SERVICES)} (one process each)")
    for key, what in SCENARIOS.items():
        if key in {order["order_id"] for order in launcher.orders}:
            print(f"  {key}: {what}")
    started = time.perf_counter()
    launcher.start()
    try:
        launcher.wait_until_settled(args.timeout)
    except DemoError as error:
        launcher.stop(timeout_s=5.0)
        print(f"order_flow: error: {error}", file=sys.stderr)
        return 1
    problems = launcher.stop()
    elapsed_s = time.perf_counter() - started
    if problems:
        print(f"order_flow: error: {'; '.join(problems)}", file=sys.stderr)
        return 1
    print_report(launcher, elapsed_s)
    if args.json is not None:
        args.json.write_text(json.dumps(summary(launcher, elapsed_s), indent=2) + "\n")
        print(f"\nsummary written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
