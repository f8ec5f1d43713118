"""Order-flow demo: four services, one interpreter each, events crossing between them.

Run it with ``.venv/bin/python examples/order_flow.py`` (``scripts/demo`` sets up ``.venv``
first). The services (``order_services.py``) are order → payment → inventory →
notification. Each runs in its own spawned process with its own ``OTEL_SERVICE_NAME`` and
calls ``otel_eda.configure()``, so each is its own Resource ``service.name`` in traces and
metrics. Events cross processes over the ``--transport`` (``demo_transports.py``); the default,
``embedded``, is ``otel_eda.transports.interprocess``: every service owns an inbox
queue; a ``QueueOutlet`` forwards each published event to the inboxes of the services that
subscribe to its type, with the producer's trace context and the event identity in plain
string headers, exactly as a broker would carry them.

Each service's bus also forwards its lifecycle records to this launcher, which keeps them
in one ``EventStore`` and, once every flow has settled, prints each story order's causation
tree, a per-service summary and what happened to ``order-1003``.

The anomaly engine watches it all. ``configure(on_alert=...)`` gives each service otel-eda's
anomaly reader with the default rule set, evaluated every ``OTEL_EDA_ANOMALY_INTERVAL``
seconds (0.5 here unless set). Once every service is up, the launcher starts a shared
clock: the order service places the story orders, then background orders for
``--traffic`` seconds, while a latency spike and an error burst happen on schedule
(``INCIDENTS`` in ``order_services.py``). Each service sends every alert change (firing,
escalated, resolved) to this launcher, which prints it as it arrives and sums them up.

Telemetry goes where the ``OTEL_*`` variables say. With a console exporter (the default
when ``OTEL_TRACES_EXPORTER`` is unset; metrics then default to console too) each
service's stdout goes to ``<output-dir>/<service>.console-exporters.txt``, so spans and
metrics do not bury the report: the console exporters' output, indented JSON objects one
after another (``jq -c . FILE`` turns it into JSON Lines). For example, to send spans to a local Zipkin instead::

    OTEL_TRACES_EXPORTER=zipkin_json .venv/bin/python examples/order_flow.py

Options: ``--transport NAME`` (default ``embedded``), ``--orders N`` (story orders, default 6),
``--traffic SECONDS`` (background orders
after them, default 30; 0 for none), ``--mode parent|link`` (``OTEL_EDA_TRACE_MODE`` of the
services), ``--json FILE`` (a machine-readable summary), ``--output-dir DIR``,
``--timeout S``. The launcher exits non-zero with a clear message if a service dies or the
flows do not settle in time (``--crash SERVICE`` makes a service die, to see that happen).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import multiprocessing
import os
import queue
import statistics
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Final

from demo_transports import TRANSPORTS, DemoTransport
from opentelemetry import _logs, metrics, trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from order_services import (
    INCIDENTS,
    PUBLISHES,
    RETRY,
    SCENARIOS,
    SERVICES,
    SUBSCRIPTIONS,
    TRAFFIC_RATE,
    Incident,
    Incidents,
    make_orders,
    make_traffic,
    place_orders,
    place_traffic,
)

import otel_eda
from otel_eda import EventBus, EventStore, Service
from otel_eda.anomaly.alerts import Alert, AlertState
from otel_eda.flows.records import FINAL_STAGES, LifecycleRecord, Stage
from otel_eda.flows.store import EventSummary
from otel_eda.transports.interprocess import RecordForwarder

FINAL: Final = FINAL_STAGES
CRASH_EXIT_CODE: Final = 70
#: How often the services' anomaly readers evaluate, unless OTEL_EDA_ANOMALY_INTERVAL says.
ANOMALY_INTERVAL_S: Final = "0.5"


class DemoError(Exception):
    """Something went wrong with the demo's processes (not with an order)."""


# -- what the services tell the launcher, besides lifecycle records ------------------------


@dataclasses.dataclass(frozen=True)
class Ready:
    """A service is configured and waits for the start."""

    service: str


@dataclasses.dataclass(frozen=True)
class AlertNote:
    """One alert change as a service reports it: plain, picklable values."""

    at: float  # epoch seconds of the change
    service: str
    state: str  # "firing" (also when the severity rises) or "resolved"
    severity: str
    rule: str
    alert: str
    series: tuple[tuple[str, str], ...]  # the alert's series labels, "service" included
    value: float
    summary: str
    trace_id: str | None  # an exemplar of the offending series: an example trace to open

    @classmethod
    def of(cls, alert: Alert, service: str) -> AlertNote:
        return cls(
            at=time.time(),
            service=alert.series_labels.get("service", service),
            state=alert.state.value,
            severity=alert.severity.label,
            rule=alert.rule,
            alert=alert.name,
            series=tuple(sorted(alert.series_labels.items())),
            value=alert.value,
            summary=alert.summary,
            trace_id=alert.exemplars[-1].trace_id if alert.exemplars else None,
        )


# -- one service's process -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    """Everything a service's process needs; pickled to the spawned interpreter."""

    name: str
    transport: DemoTransport
    #: (event type, subscribing service) for each type it publishes
    outlets: tuple[tuple[str, str], ...]
    records: Queue[Any]
    #: where the service says it is ready, and reports every alert change (AlertNote)
    reports: Queue[Any]
    #: set by the launcher once every service is ready; ``start_time`` is then the shared
    #: start (epoch seconds) from which the incidents are scheduled
    go: Event
    start_time: Synchronized[float]
    env: Mapping[str, str]
    telemetry_file: str | None
    orders: tuple[dict[str, Any], ...] = ()
    traffic: tuple[dict[str, Any], ...] = ()
    crash: bool = False


def service_main(spec: ServiceSpec) -> None:
    """Entry point of one service's interpreter (started with the ``spawn`` method)."""
    if spec.telemetry_file is not None:
        # The console exporters write to stdout: send this process's fd 1 to a file.
        fd = os.open(spec.telemetry_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.close(fd)
    os.environ.update(spec.env)  # already set at spawn (see Launcher.start); kept for a direct call
    os.environ["OTEL_SERVICE_NAME"] = spec.name
    logging.basicConfig(level=logging.WARNING, format="  %(message)s")
    logging.getLogger("order_flow").setLevel(logging.INFO)  # the services' narrative, on stderr
    logging.getLogger("otel_eda.lifecycle").setLevel(logging.INFO)  # retries, rejections, dead letters

    def forward_alert(alert: Alert) -> None:
        # Called from the anomaly reader's thread: hand a plain summary to the launcher.
        spec.reports.put(AlertNote.of(alert, spec.name))

    otel_eda.configure(on_alert=forward_alert)
    try:
        asyncio.run(serve(spec))
    finally:
        # Flush every span, export the metrics once more and let the anomaly reader
        # evaluate one last time before the interpreter ends.
        tracer_provider = trace.get_tracer_provider()
        if isinstance(tracer_provider, TracerProvider):
            tracer_provider.shutdown()
        meter_provider = metrics.get_meter_provider()
        if isinstance(meter_provider, MeterProvider):
            meter_provider.shutdown()
        logger_provider = _logs.get_logger_provider()
        if isinstance(logger_provider, LoggerProvider):
            logger_provider.shutdown()  # OTEL_LOGS_EXPORTER: export the last log records
        sys.stdout.flush()


async def serve(spec: ServiceSpec) -> None:
    spec.reports.put(Ready(spec.name))
    await asyncio.to_thread(spec.go.wait)  # until every service is ready and the launcher says go
    start = spec.start_time.value  # t = 0 of the incidents' schedule, the same in every service
    bus = EventBus(service=spec.name, retry=RETRY, recorders=[RecordForwarder(spec.records)])
    SERVICES[spec.name](Service(spec.name, bus), Incidents(start))
    for event_type, subscriber in spec.outlets:
        bus.add_outlet(event_type, spec.transport.outlet(event_type, subscriber))
    async with bus:  # on exit: handle what is queued, then stop
        if spec.crash:
            await place_orders(bus, list(spec.orders))
            await spec.transport.first_inbound(spec.name)  # the first inbound event...
            os._exit(CRASH_EXIT_CODE)  # ...and this service dies without a word

        async def place() -> None:  # the order service's work; nothing for the others
            await place_orders(bus, list(spec.orders))
            await place_traffic(bus, list(spec.traffic), TRAFFIC_RATE, start)

        placing = asyncio.create_task(place())
        await spec.transport.receive(spec.name, bus)  # until the launcher stops it, once every flow has settled
        placing.cancel()  # (it is still placing orders only if the launcher gave up early)
        with contextlib.suppress(asyncio.CancelledError):
            await placing


# -- the launcher ----------------------------------------------------------------------------


def child_environment(mode: str | None) -> dict[str, str]:
    """What the services get on top of this process's environment (which they inherit)."""
    env: dict[str, str] = {}
    traces = os.environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not traces:
        env["OTEL_TRACES_EXPORTER"] = traces = "console"
    if not os.environ.get("OTEL_METRICS_EXPORTER", "").strip() and traces == "console":
        env["OTEL_METRICS_EXPORTER"] = "console"
    if not os.environ.get("OTEL_EDA_ANOMALY_INTERVAL", "").strip():
        env["OTEL_EDA_ANOMALY_INTERVAL"] = ANOMALY_INTERVAL_S
    if mode is not None:
        env["OTEL_EDA_TRACE_MODE"] = mode
    return env


@contextlib.contextmanager
def environment(variables: Mapping[str, str]) -> Iterator[None]:
    """Set ``variables`` in this process's environment for the block, then restore it."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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

    def __init__(self, services: Iterable[str], orders: int) -> None:
        self.store = EventStore(max_events=4 * orders + 100)  # room for every event of the run
        self.stats = {name: ServiceStats() for name in services}
        self.records = 0
        self.placed = 0

    def record(self, record: LifecycleRecord) -> None:
        self.records += 1
        self.store.record(record)
        stats = self.stats.setdefault(record.service, ServiceStats())
        if record.subscriber is None:
            if record.stage is Stage.PUBLISHED:
                stats.published += 1
                self.placed += record.event_type == "order_placed"
            return
        if record.stage is Stage.RECEIVED:
            stats.handled += 1
        elif record.stage is Stage.COMPLETED:
            stats.completed += 1
        elif record.stage in (Stage.FAILED, Stage.REJECTED):
            stats.failed += 1
        elif record.stage is Stage.RETRIED:
            stats.retries += 1
        elif record.stage is Stage.DEAD_LETTERED:
            stats.dead_lettered += 1
        ends_attempt = record.stage in (*FINAL_STAGES, Stage.RETRIED) and record.stage is not Stage.DROPPED
        if ends_attempt and record.duration_s is not None:
            stats.processing_s.append(record.duration_s)

    def events(self) -> list[EventSummary]:
        return [event for correlation_id in self.store.correlation_ids() for event in self.store.flow(correlation_id)]

    def unsettled(self, orders: int, subscribers: Mapping[str, set[str]]) -> list[EventSummary] | None:
        """The events still moving, or ``None`` while not every order has been placed."""
        if self.placed < orders:
            return None
        pending = []
        for event in self.events():
            # Settled: its publish was recorded and every subscriber's delivery is final.
            states = {delivery.subscriber: delivery.status for delivery in event.deliveries}
            wanted = subscribers.get(event.event_type, ())
            if event.publisher is None or any(states.get(name) not in FINAL for name in wanted):
                pending.append(event)
        return pending


#: Default rules about the host rather than a service. Every service watches the same CPUs,
#: so the launcher merges their reports: one alert, firing while any service says so.
HOST_RULES: Final = frozenset({"host-cpu"})

Series = tuple[tuple[str, str], ...]


@dataclasses.dataclass
class AlertEpisode:
    """One alert from its firing to its resolve, put together from its changes."""

    fired: AlertNote
    severity: str
    services: set[str]  # the services that report it firing now
    escalated_at: float | None = None
    resolved_at: float | None = None

    @property
    def where(self) -> str:
        """The service, or for a host alert the host's series (e.g. ``host cpu=2``)."""
        if self.fired.rule not in HOST_RULES:
            return self.fired.service
        return " ".join(["host", *(f"{k}={v}" for k, v in self.fired.series if k != "service")])


class AlertBoard:
    """The alert changes reported by the services, as they arrive."""

    def __init__(self) -> None:
        #: every change each service reported: ("firing" | "escalated" | "resolved", note)
        self.changes: list[tuple[str, AlertNote]] = []
        #: the alerts as the demo shows them (host alerts merged across services)
        self.episodes: list[AlertEpisode] = []
        self._firing: dict[tuple[str, Series], str] = {}  # (rule, series) -> severity
        self._open: dict[tuple[str, Series], AlertEpisode] = {}

    def add(self, note: AlertNote) -> tuple[str, AlertEpisode | None]:
        """Take one change; return what it is (firing, escalated or resolved) and, unless it
        repeats what another service said about the host, the episode to show it in."""
        key = (note.rule, note.series)  # the series labels include the service
        if note.state == AlertState.RESOLVED:
            change = "resolved"
            self._firing.pop(key, None)
        else:
            change = "escalated" if key in self._firing else "firing"
            self._firing[key] = note.severity
        self.changes.append((change, note))

        if note.rule in HOST_RULES:
            key = (note.rule, tuple(label for label in note.series if label[0] != "service"))
        episode = self._open.get(key)
        if change == "firing" and episode is None:
            self._open[key] = episode = AlertEpisode(note, note.severity, {note.service})
            self.episodes.append(episode)
            return change, episode
        if episode is None:
            return change, None
        if change == "firing":
            episode.services.add(note.service)
            return change, None
        if change == "escalated":
            episode.severity = note.severity
            episode.escalated_at = note.at
            return change, episode
        episode.services.discard(note.service)
        if episode.services:
            return change, None
        episode.resolved_at = note.at
        del self._open[key]
        return change, episode


def alert_line(change: str, note: AlertNote, episode: AlertEpisode, start: float) -> str:
    """``[  20.1s] FIRING    warning  ProcessingLatencyHigh (rule processing-latency) inventory: ...``"""
    if change == "resolved":
        what = f"after {note.at - episode.fired.at:.1f} s (value now {note.value:.3g})"
    else:
        what = note.summary + (f"  trace {note.trace_id}" if note.trace_id else "")
    return (
        f"[{note.at - start:6.1f}s] {change.upper():<9} {note.severity:<8} {note.alert} (rule {note.rule}) "
        f"{episode.where}: {what}"
    )


class Launcher:
    def __init__(
        self, orders: int, traffic_s: float, mode: str | None, output_dir: Path, crash: str | None, transport: str
    ) -> None:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per service, never a fork
        self.orders = make_orders(orders)
        self.traffic_s = traffic_s
        self.traffic = make_traffic(round(traffic_s * TRAFFIC_RATE), first=1001 + orders)
        self.env = child_environment(mode)
        self.telemetry_files: dict[str, Path] = {}
        if writes_to_console(self.env):
            output_dir.mkdir(parents=True, exist_ok=True)
            self.telemetry_files = {name: output_dir / f"{name}.console-exporters.txt" for name in SERVICES}
        self.transport: DemoTransport = TRANSPORTS[transport](list(SERVICES), ctx)
        self.records: Queue[Any] = ctx.Queue()
        self.reports: Queue[Any] = ctx.Queue()
        self.go = ctx.Event()
        self.start_time = ctx.Value(ctypes.c_double, 0.0)
        self.started = time.time()  # until the shared clock starts
        self.collector = Collector(SERVICES, len(self.orders) + len(self.traffic))
        self.alerts = AlertBoard()
        self.ready: set[str] = set()
        # What the launcher announces as the run goes: (seconds after the start, text).
        self.timeline: list[tuple[float, str]] = sorted(
            (t, f"{incident.service}: {name} {edge}")
            for name, incident in self.incidents().items()
            for t, edge in ((incident.start_s, "begins"), (incident.end_s, "ends"))
        )
        # The routing table: event type -> the services that subscribe to it.
        self.subscribers: dict[str, set[str]] = {}
        for name, event_types in SUBSCRIPTIONS.items():
            for event_type in event_types:
                self.subscribers.setdefault(event_type, set()).add(name)
        self.processes: dict[str, BaseProcess] = {}
        for name in SERVICES:
            outlets = tuple(
                (event_type, subscriber)
                for event_type in PUBLISHES[name]
                for subscriber in sorted(self.subscribers.get(event_type, ()))
            )
            telemetry_file = self.telemetry_files.get(name)
            spec = ServiceSpec(
                name,
                self.transport,
                outlets,
                self.records,
                self.reports,
                self.go,
                self.start_time,
                self.env,
                str(telemetry_file) if telemetry_file else None,
                tuple(self.orders) if name == "order" else (),
                tuple(self.traffic) if name == "order" else (),
                crash=name == crash,
            )
            self.processes[name] = ctx.Process(target=service_main, args=(spec,), name=f"order-flow-{name}")

    def incidents(self) -> dict[str, Incident]:
        """The incidents that begin while the background traffic runs."""
        return {name: incident for name, incident in INCIDENTS.items() if incident.start_s < self.traffic_s}

    def start(self, timeout_s: float) -> None:
        """Start every service, wait until all are ready, then start the shared clock."""
        for name, process in self.processes.items():
            # A spawned interpreter takes the launcher's environment when it starts. Under
            # opentelemetry-instrument its SDK is configured at interpreter start-up, before
            # service_main() runs: the service's variables must be there already.
            with environment({**self.env, "OTEL_SERVICE_NAME": name}):
                process.start()
        deadline = time.monotonic() + timeout_s
        while len(self.ready) < len(self.processes):
            self._drain(0.05)
            self._check_alive("every service was ready")
            if time.monotonic() > deadline:
                late = ", ".join(sorted(set(self.processes) - self.ready))
                raise DemoError(f"service(s) {late} not ready within {timeout_s:g} s")
        self.started = self.start_time.value = time.time()
        self.go.set()

    def _check_alive(self, what: str) -> None:
        for name, process in self.processes.items():
            if process.exitcode is not None:
                raise DemoError(
                    f"service {name!r} (pid {process.pid}) died with exit code {process.exitcode} before {what}"
                )

    def _drain(self, wait_s: float) -> bool:
        """Take the records and reports that arrived (waiting up to ``wait_s`` for a record)."""
        self._take_reports()
        try:
            self.collector.record(self.records.get(timeout=wait_s))
        except queue.Empty:
            return False
        while True:
            try:
                self.collector.record(self.records.get_nowait())
            except queue.Empty:
                return True

    def _take_reports(self) -> None:
        while True:
            try:
                report = self.reports.get_nowait()
            except queue.Empty:
                return
            if isinstance(report, Ready):
                self.ready.add(report.service)
            elif isinstance(report, AlertNote):
                change, episode = self.alerts.add(report)
                if episode is not None:
                    print(alert_line(change, report, episode, self.started), flush=True)

    def _announce(self) -> None:
        """Print the incidents as they begin and end."""
        now = time.time() - self.started
        while self.timeline and self.timeline[0][0] <= now:
            t, text = self.timeline.pop(0)
            print(f"[{t:6.1f}s] -- {text}", flush=True)

    def wait_until_settled(self, timeout_s: float) -> None:
        """Wait for the traffic to end and every flow to settle, ``timeout_s`` at most after it."""
        deadline = time.monotonic() + self.traffic_s + timeout_s
        orders = len(self.orders) + len(self.traffic)
        while True:
            arrived = self._drain(0.05)
            self._announce()
            self._check_alive("the flows settled")
            if not arrived and self.collector.unsettled(orders, self.subscribers) == []:
                return  # records stopped for a moment, and nothing is moving
            if time.monotonic() > deadline:
                pending = self.collector.unsettled(orders, self.subscribers)
                if pending is None:
                    what = f"only {self.collector.placed} of {orders} orders were placed"
                else:
                    what = f"{len(pending)} events still moving: " + ", ".join(
                        f"{e.event_type} ({e.business_key}, {e.status})" for e in pending[:8]
                    )
                after = " after the traffic" if self.traffic else ""
                raise DemoError(f"the flows did not settle within {timeout_s:g} s{after}: {what}")

    def stop(self, timeout_s: float = 15.0) -> list[str]:
        """Ask every service to stop, wait for each, and return the problems seen."""
        self.go.set()  # in case some never got to start
        for name in SERVICES:
            self.transport.stop(name)
        deadline = time.monotonic() + timeout_s
        # Keep draining the queues while waiting: a process that still has items to flush
        # into a queue cannot exit. Its last alert changes come now, from the anomaly
        # reader's final evaluation at shutdown.
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
    story = {order["order_id"] for order in launcher.orders}
    flows = sorted(
        (c for c in store.correlation_ids() if store.flow(c)[0].business_key in story),
        key=lambda c: store.flow(c)[0].business_key or "",
    )
    background = f"; the {len(launcher.traffic)} background orders are not shown" if launcher.traffic else ""
    print(f"\n== Causation tree of each order ({len(flows)} flows, {elapsed_s:.1f} s{background}) ==")
    for correlation_id in flows:
        key = store.flow(correlation_id)[0].business_key
        note = f"  <- {SCENARIOS[key]}" if key in SCENARIOS else ""
        print(f"\n{key}  (correlation id {correlation_id}){note}")
        print(store.render_flow(correlation_id))

    print("\n== Per service (from the lifecycle records) ==")
    if launcher.traffic:
        print(
            f"{len(launcher.orders)} story orders, then {len(launcher.traffic)} background orders "
            f"({TRAFFIC_RATE:g}/s for {launcher.traffic_s:g} s)"
        )
    header = ("service", "published", "handled", "completed", "failed", "retries", "dead-lettered", "mean processing")
    print("{:<13}{:>10}{:>9}{:>11}{:>8}{:>9}{:>15}{:>17}".format(*header))
    for name, stats in launcher.collector.stats.items():
        mean = stats.mean_processing_ms()
        print(
            f"{name:<13}{stats.published:>10}{stats.handled:>9}{stats.completed:>11}{stats.failed:>8}"
            f"{stats.retries:>9}{stats.dead_lettered:>15}{'-' if mean is None else f'{mean:.1f} ms':>17}"
        )

    print_alerts(launcher)

    print("\n== What happened to order-1003? ==")
    print(describe_order(store, "order-1003"))

    if launcher.telemetry_files:
        print("\n== Telemetry (console exporters, one file per service) ==")
        for name, path in launcher.telemetry_files.items():
            print(f"{name:<13} {path}")
    else:
        print("\nSpans and metrics went where OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER say.")


def print_alerts(launcher: Launcher) -> None:
    interval = launcher.env.get("OTEL_EDA_ANOMALY_INTERVAL", os.environ.get("OTEL_EDA_ANOMALY_INTERVAL"))
    print(f"\n== Alerts (default rule set, evaluated every {interval} s in each service) ==")
    for name, incident in launcher.incidents().items():
        print(f"injected: {name} in {incident.service}, {incident.start_s:g}-{incident.end_s:g} s: {incident.what}")
    if not launcher.alerts.episodes:
        print("no alert fired")
    start = launcher.started
    for episode in sorted(launcher.alerts.episodes, key=lambda e: e.fired.at):
        fired = episode.fired
        severity = fired.severity
        if episode.escalated_at is not None:
            severity += f" -> {episode.severity} at {episode.escalated_at - start:.1f} s"
        if episode.resolved_at is None:
            ended = "still firing at shutdown"
        else:
            ended = f"resolved at {episode.resolved_at - start:.1f} s"
        print(f"{fired.at - start:6.1f} s  {fired.alert:<22} {episode.where:<13} {severity}, {ended}")


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
    alerts = [
        {
            "change": change,  # firing, escalated or resolved
            "at_s": note.at - launcher.started,  # seconds after the shared start
            "service": note.service,
            "alert": note.alert,
            "rule": note.rule,
            "severity": note.severity,
            "series": dict(note.series),
            "value": note.value,
            "summary": note.summary,
            "trace_id": note.trace_id,
        }
        for change, note in launcher.alerts.changes
    ]
    return {
        "orders": [order["order_id"] for order in launcher.orders],
        "traffic": {
            "seconds": launcher.traffic_s,
            "rate": TRAFFIC_RATE,
            "orders": [order["order_id"] for order in launcher.traffic],
        },
        "incidents": {name: dataclasses.asdict(incident) for name, incident in launcher.incidents().items()},
        "trace_mode": launcher.env.get("OTEL_EDA_TRACE_MODE", os.environ.get("OTEL_EDA_TRACE_MODE", "parent")),
        "started_at": launcher.started,
        "elapsed_s": elapsed_s,
        "records": launcher.collector.records,
        "events": events,
        "services": services,
        "alerts": alerts,
        "telemetry_files": {name: str(path) for name, path in launcher.telemetry_files.items()},
    }


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be a number of seconds, 0 or more")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--orders", type=positive_int, default=6, help="story orders to place (default 6)")
    parser.add_argument(
        "--traffic", type=seconds, default=30.0, metavar="SECONDS", help="then background orders (default 30 s)"
    )
    parser.add_argument("--mode", choices=("parent", "link"), help="OTEL_EDA_TRACE_MODE for the services")
    parser.add_argument(
        "--transport",
        choices=tuple(TRANSPORTS),
        default="embedded",
        help="how the services reach each other (default embedded: multiprocessing queues; see demo_transports.py)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write a machine-readable summary")
    parser.add_argument("--output-dir", type=Path, default=Path("demo-output"), help="for the telemetry files")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to start, and to settle after the traffic (default 30)"
    )
    parser.add_argument("--crash", choices=tuple(SERVICES), help="make this service die on its first event")
    args = parser.parse_args(argv)

    launcher = Launcher(args.orders, args.traffic, args.mode, args.output_dir, args.crash, args.transport)
    print(f"order-flow demo: {args.orders} orders across {', '.join(SERVICES)} (one process each)")
    for key, what in SCENARIOS.items():
        if key in {order["order_id"] for order in launcher.orders}:
            print(f"  {key}: {what}")
    if launcher.traffic:
        incidents = launcher.incidents()
        first = min(incident.start_s for incident in INCIDENTS.values())
        print(
            f"then {len(launcher.traffic)} background orders, {TRAFFIC_RATE:g}/s for {args.traffic:g} s, "
            + ("with" if incidents else f"without incidents (the first begins at {first:g} s)")
        )
        for name, incident in incidents.items():
            print(f"  {incident.start_s:4g}-{incident.end_s:g} s  {name} in {incident.service}: {incident.what}")
    started = time.perf_counter()
    try:
        launcher.start(args.timeout)
        print("\n== Alerts as they fire and resolve (seconds after the first order) ==", flush=True)
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
