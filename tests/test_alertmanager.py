"""AlertmanagerSink against a real Prometheus Alertmanager (Debian's package), and its failure modes.

The module fixture installs (if needed) and starts Alertmanager with ``scripts/alertmanager`` on
127.0.0.1 and a free port; if that fails, the tests fail (they are not skipped). Tests that only
need an HTTP endpoint which misbehaves (slow, 503, down) use a small in-process server.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from otel_eda.anomaly.alertmanager import AlertmanagerSink
from otel_eda.anomaly.alerts import Alert, AlertState, Exemplar, Severity

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "alertmanager"
TRACE_IDS = ("4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c")
SPAN_IDS = ("00f067aa0ba902b7", "b7ad6b7169203331")

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_alertmanager(directory: Path, port: int) -> None:
    proc = subprocess.run(
        [str(SCRIPT), "start", str(directory), str(port)],
        capture_output=True,
        text=True,
        timeout=300,  # a first run installs the package
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/alertmanager start failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )


def stop_alertmanager(directory: Path) -> None:
    subprocess.run([str(SCRIPT), "stop", str(directory)], capture_output=True, timeout=60, check=False)


@dataclass(frozen=True)
class Server:
    url: str
    port: int
    directory: Path

    @property
    def pid(self) -> int:
        return int((self.directory / "alertmanager.pid").read_text())


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("alertmanager")
    port = free_port()
    try:
        start_alertmanager(directory, port)
        yield Server(f"http://127.0.0.1:{port}", port, directory)
    finally:
        stop_alertmanager(directory)


def get_alerts(url: str, *matchers: str, **flags: bool) -> list[dict[str, Any]]:
    """``GET /api/v2/alerts`` with label matchers (``service="x"``) and boolean filters."""
    query = [("filter", m) for m in matchers] + [(k, str(v).lower()) for k, v in flags.items()]
    with urllib.request.urlopen(f"{url}/api/v2/alerts?{urllib.parse.urlencode(query)}", timeout=5) as r:
        alerts: list[dict[str, Any]] = json.load(r)
    return alerts


def wait_for(predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def counter_points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], float]]]:
    """metric name -> [(attributes, value)] of every sum data point collected now."""
    data = reader.get_metrics_data()
    assert data is not None
    return {
        m.name: [(dict(p.attributes or {}), p.value) for p in m.data.data_points if isinstance(p, NumberDataPoint)]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def alert(
    service: str,
    *,
    name: str = "ProcessingLatencyHigh",
    rule: str = "latency-p95",
    severity: Severity = Severity.WARNING,
    state: AlertState = AlertState.FIRING,
    started_at: float | None = None,
    ended_at: float | None = None,
    value: float = 2.5,
    extra_labels: dict[str, str] | None = None,
) -> Alert:
    return Alert(
        name=name,
        rule=rule,
        severity=severity,
        state=state,
        series_labels={"service": service, **(extra_labels or {})},
        value=value,
        threshold=1.0,
        score=0.97,
        started_at=time.time() - 5 if started_at is None else started_at,
        ended_at=ended_at,
        summary=f"p95 processing latency {value} s > 1 s on {service}",
        exemplars=tuple(Exemplar(t, s) for t, s in zip(TRACE_IDS, SPAN_IDS, strict=True)),
    )


def resolved(a: Alert) -> Alert:
    return Alert(
        name=a.name,
        rule=a.rule,
        severity=a.severity,
        state=AlertState.RESOLVED,
        series_labels=a.series_labels,
        value=0.2,
        threshold=a.threshold,
        score=0.1,
        started_at=a.started_at,
        ended_at=time.time(),
        summary=a.summary,
        exemplars=a.exemplars,
    )


def escalated(a: Alert, severity: Severity) -> Alert:
    return Alert(
        name=a.name,
        rule=a.rule,
        severity=severity,
        state=AlertState.FIRING,
        series_labels=a.series_labels,
        value=a.value * 2,
        threshold=a.threshold,
        score=1.0,
        started_at=a.started_at,
        ended_at=None,
        summary=a.summary,
        exemplars=a.exemplars,
    )


@contextlib.contextmanager
def sink_for(url: str, **kwargs: Any) -> Iterator[AlertmanagerSink]:
    sink = AlertmanagerSink(url, **kwargs)
    try:
        yield sink
    finally:
        sink.shutdown(timeout_s=2)


# ------------------------------------------------------------------ against the real server


def test_firing_alert_has_exactly_the_low_cardinality_labels(alertmanager: Server) -> None:
    a = alert("labels-svc")
    with sink_for(alertmanager.url, resend_interval_s=20) as sink:
        before = time.time()
        sink.send(a)
        assert sink.force_flush(5)
        (got,) = get_alerts(alertmanager.url, 'service="labels-svc"')
        assert sink.failed_posts == 0 and sink.posts >= 1
    assert got["labels"] == {
        "alertname": "ProcessingLatencyHigh",
        "rule": "latency-p95",
        "severity": "warning",
        "service": "labels-svc",
    }
    # identity only in labels; values and example traces in annotations
    assert not set(got["labels"].values()) & {*TRACE_IDS, *SPAN_IDS, "2.5"}
    assert got["annotations"] == {
        "summary": "p95 processing latency 2.5 s > 1 s on labels-svc",
        "value": "2.5",
        "threshold": "1",
        "score": "0.970",
        "trace_ids": ",".join(TRACE_IDS),
        "span_ids": ",".join(SPAN_IDS),
    }
    assert got["status"]["state"] == "active"
    assert abs(parse_time(got["startsAt"]) - a.started_at) < 0.002
    # endsAt in the future: now + 3 x the resend interval (Alertmanager resolves it if we die)
    assert before + 59 <= parse_time(got["endsAt"]) <= time.time() + 61


def test_dotted_attribute_names_become_valid_label_names(alertmanager: Server) -> None:
    a = alert("dotted-svc", extra_labels={"messaging.destination.name": "orders"})
    with sink_for(alertmanager.url) as sink:
        sink.send(a)
        assert sink.force_flush(5)
        assert sink.failed_posts == 0  # Alertmanager 0.25 answers 400 to a dotted label name
    (got,) = get_alerts(alertmanager.url, 'service="dotted-svc"')
    assert got["labels"]["messaging_destination_name"] == "orders"


def test_resolve_removes_the_alert(alertmanager: Server) -> None:
    a = alert("resolve-svc")
    with sink_for(alertmanager.url) as sink:
        sink.send(a)
        assert sink.force_flush(5)
        assert len(get_alerts(alertmanager.url, 'service="resolve-svc"')) == 1
        sink.send(resolved(a))
        assert sink.force_flush(5)
        assert get_alerts(alertmanager.url, 'service="resolve-svc"') == []
        assert sink.pending == 0  # a delivered resolve is forgotten, not re-sent
        assert sink.failed_posts == 0


def test_firing_alert_is_resent_with_a_moving_end(alertmanager: Server) -> None:
    a = alert("resend-svc")
    # Alertmanager expires an alert at its endsAt: 1.2 s here. It must still be active well after
    # that, which only periodic re-sends (every 0.3 s) can achieve.
    with sink_for(alertmanager.url, resend_interval_s=0.3, resolve_timeout_s=1.2) as sink:
        sink.send(a)
        assert sink.force_flush(5)
        (first,) = get_alerts(alertmanager.url, 'service="resend-svc"')
        time.sleep(2.5)
        (later,) = get_alerts(alertmanager.url, 'service="resend-svc"')
        assert parse_time(later["endsAt"]) > parse_time(first["endsAt"]) + 1.0
        assert parse_time(later["endsAt"]) > time.time()
        assert later["startsAt"] == first["startsAt"]
        assert sink.posts >= 5 and sink.failed_posts == 0
    # after shutdown nobody re-sends: Alertmanager resolves it by itself
    wait_for(lambda: get_alerts(alertmanager.url, 'service="resend-svc"') == [], 5, "the alert to expire")


def test_escalation_leaves_only_the_new_severity_active(alertmanager: Server) -> None:
    a = alert("escalate-svc")
    with sink_for(alertmanager.url) as sink:
        sink.send(a)
        assert sink.force_flush(5)
        sink.send(escalated(a, Severity.CRITICAL))
        assert sink.force_flush(5)
        got = get_alerts(alertmanager.url, 'service="escalate-svc"')
        assert [g["labels"]["severity"] for g in got] == ["critical"]
        assert got[0]["annotations"]["value"] == "5"
        # and back down: only the warning remains
        sink.send(a)
        assert sink.force_flush(5)
        got = get_alerts(alertmanager.url, 'service="escalate-svc"')
        assert [g["labels"]["severity"] for g in got] == ["warning"]
        assert sink.pending == 1


def test_critical_alert_inhibits_the_services_warnings(alertmanager: Server) -> None:
    lag = alert("inhibit-x", name="ConsumerLagHigh", rule="lag")
    other_lag = alert("inhibit-y", name="ConsumerLagHigh", rule="lag")
    errors = alert("inhibit-x", name="ErrorRateHigh", rule="errors", severity=Severity.CRITICAL)
    with sink_for(alertmanager.url) as sink:
        for a in (lag, other_lag, errors):
            sink.send(a)
        assert sink.force_flush(5)

        def states() -> dict[tuple[str, str], dict[str, Any]]:
            found = get_alerts(alertmanager.url, 'service=~"inhibit-.*"')
            return {(g["labels"]["service"], g["labels"]["alertname"]): g for g in found}

        by = wait_for(
            lambda: (s := states()) and s[("inhibit-x", "ConsumerLagHigh")]["status"]["state"] == "suppressed" and s,
            10,
            "the warning to be inhibited",
        )
        critical = by[("inhibit-x", "ErrorRateHigh")]
        assert critical["status"]["state"] == "active"
        assert by[("inhibit-x", "ConsumerLagHigh")]["status"]["inhibitedBy"] == [critical["fingerprint"]]
        assert by[("inhibit-y", "ConsumerLagHigh")]["status"]["state"] == "active"  # other service: untouched

        sink.send(resolved(errors))
        assert sink.force_flush(5)
        wait_for(
            lambda: states()[("inhibit-x", "ConsumerLagHigh")]["status"]["state"] == "active",
            10,
            "the warning to be active again",
        )


def _listening_sockets(pid: int) -> list[tuple[str, str, int]]:
    """(protocol, local address hex, port) of every bound TCP listener / UDP socket of ``pid``."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if inode not in inodes:
                continue
            if proto.startswith("tcp") and state != "0A":  # only LISTEN sockets
                continue
            address, port = local.split(":")
            found.append((proto, address, int(port, 16)))
    return found


def test_server_listens_on_loopback_only(alertmanager: Server) -> None:
    sockets = _listening_sockets(alertmanager.pid)
    # 0100007F is 127.0.0.1 in /proc/net/tcp's little-endian hex
    assert sockets == [("tcp", "0100007F", alertmanager.port)], sockets
    assert all(port != 9094 for _, _, port in sockets)  # no cluster gossip port
    with urllib.request.urlopen(f"{alertmanager.url}/api/v2/status", timeout=5) as r:
        assert json.load(r)["cluster"]["status"] == "disabled"


def test_alertmanager_down_then_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="otel_eda.alerts")
    port = free_port()  # nothing listens there yet
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    alerts = [alert(f"down-svc-{i}") for i in range(100)]
    with sink_for(
        f"http://127.0.0.1:{port}",
        resend_interval_s=0.3,
        resolve_timeout_s=5,
        timeout_s=1,
        queue_size=10,
        meter_provider=provider,
    ) as sink:
        for a in alerts:
            sink.send(a)  # must not raise (that it never waits for the network: see the hanging-server test)
        assert sink.pending == 10 and sink.dropped == 90  # bounded: the new ones were dropped
        wait_for(lambda: sink.failed_posts >= 3, 5, "three failed posts")
        assert sink.pending == 10

        # counted as OTel metrics too
        points = counter_points(reader)
        (failure,) = points["eda.alerts.send_failures"]
        assert failure[0] == {"eda.alert.sink": "alertmanager", "error.type": "ConnectionRefusedError"}
        assert failure[1] >= 3
        assert points["eda.alerts.dropped"] == [({"eda.alert.sink": "alertmanager"}, 90)]

        # logged, but throttled: one WARNING for the failures, one for the drops
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert sum("could not post alerts" in w for w in warnings) == 1, warnings
        assert sum("sink full" in w for w in warnings) == 1, warnings

        # Alertmanager comes up on that port: the next re-send delivers the still-firing alerts
        directory = tmp_path / "late-alertmanager"
        try:
            start_alertmanager(directory, port)
            got = wait_for(
                lambda: len(r := get_alerts(f"http://127.0.0.1:{port}", 'service=~"down-svc-.*"')) == 10 and r,
                10,
                "the held alerts to be delivered",
            )
            assert {g["labels"]["service"] for g in got} == {f"down-svc-{i}" for i in range(10)}
            assert any("reachable again" in r.getMessage() for r in caplog.records)
        finally:
            stop_alertmanager(directory)
    provider.shutdown()


# ------------------------------------------------------------- against a misbehaving endpoint


class _Recorder(http.server.BaseHTTPRequestHandler):
    server: _FakeServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append(json.loads(body))
        self.server.times.append(time.monotonic())
        if self.server.delay_s:
            time.sleep(self.server.delay_s)
        if self.server.hold is not None:  # hold the request open until the test releases it
            self.server.held += 1
            self.server.hold.wait(60)
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _FakeServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Recorder)
        self.bodies: list[list[dict[str, Any]]] = []
        self.times: list[float] = []
        self.status = 200
        self.delay_s = 0.0
        self.hold: threading.Event | None = None
        self.held = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def fake() -> Iterator[_FakeServer]:
    server = _FakeServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_non_2xx_is_a_failure_retried_at_the_next_tick(fake: _FakeServer) -> None:
    fake.status = 503
    with sink_for(fake.url, resend_interval_s=0.3, resolve_timeout_s=1) as sink:
        sink.send(alert("flaky-svc"))
        wait_for(lambda: sink.failed_posts >= 1, 5, "a failed post")
        sink.send(alert("flaky-svc-2"))  # while failing, a new alert waits for the next tick too
        wait_for(lambda: sink.failed_posts >= 2, 5, "two failed posts")
        fake.status = 200
        wait_for(lambda: sink.posts >= 1, 5, "a successful post")
        assert sink.force_flush(2)
    services = [[a["labels"]["service"] for a in body] for body in fake.bodies]
    assert services[0] == ["flaky-svc"]
    assert all(set(s) == {"flaky-svc", "flaky-svc-2"} for s in services[1:])
    # retries waited for the next tick (0.3 s): no hot loop against a failing server
    assert min(b - a for a, b in zip(fake.times, fake.times[1:], strict=False)) >= 0.25


def test_a_hanging_server_times_out_without_blocking_send(fake: _FakeServer) -> None:
    fake.delay_s = 1.0
    with sink_for(fake.url, resend_interval_s=10, timeout_s=0.2) as sink:
        sink.send(alert("slow-svc"))
        wait_for(lambda: sink.failed_posts == 1, 5, "the post to time out")
    # send() never waits for the network: it returns while the server holds a post open (a
    # send that waited would return only after the 30 s timeout, with the post failed)
    fake.delay_s = 0.0
    fake.hold = threading.Event()
    try:
        with sink_for(fake.url, resend_interval_s=10, timeout_s=30) as sink:
            sink.send(alert("held-svc"))
            wait_for(lambda: fake.held == 1, 10, "the post to reach the server")
            sink.send(alert("held-svc-2"))
            assert fake.held == 1 and sink.posts == 0 and sink.failed_posts == 0
            assert sink.pending == 2
            fake.hold.set()
    finally:
        fake.hold.set()


def test_the_sinks_own_posts_are_not_traced_by_an_http_instrumentation(fake: _FakeServer) -> None:
    from opentelemetry.instrumentation.urllib import URLLibInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    URLLibInstrumentor().instrument(tracer_provider=provider)
    try:
        with sink_for(fake.url) as sink:
            sink.send(alert("traced-svc"))
            wait_for(lambda: sink.posts >= 1, 10, "a post")
        assert exporter.get_finished_spans() == ()
        # the control: the application's own request to the same server is traced
        request = urllib.request.Request(f"{fake.url}/api/v2/alerts", data=b"[]", method="POST")
        with urllib.request.urlopen(request, timeout=5):
            pass
        assert [s.name for s in exporter.get_finished_spans()] == ["POST"]
    finally:
        URLLibInstrumentor().uninstrument()
        provider.shutdown()


def test_escalation_posts_the_resolve_of_the_old_label_set(fake: _FakeServer) -> None:
    a = alert("esc-svc")
    with sink_for(fake.url) as sink:
        sink.send(a)
        assert sink.force_flush(5)
        changed_at = time.time()
        sink.send(escalated(a, Severity.CRITICAL))
        assert sink.force_flush(5)
    old, new = fake.bodies[-1]
    assert old["labels"]["severity"] == "warning" and new["labels"]["severity"] == "critical"
    assert changed_at - 0.01 <= parse_time(old["endsAt"]) <= time.time()
    assert parse_time(new["endsAt"]) > time.time() + 100
    assert old["startsAt"] == new["startsAt"]


def test_shutdown_flushes_pending_changes_then_ignores_sends(fake: _FakeServer) -> None:
    sink = AlertmanagerSink(fake.url, resend_interval_s=60)
    sink.send(alert("shutdown-svc"))
    assert sink.shutdown(timeout_s=5)
    assert [b[0]["labels"]["service"] for b in fake.bodies] == ["shutdown-svc"]
    sink.send(alert("after-shutdown-svc"))
    assert sink.dropped == 1
    time.sleep(0.1)
    assert len(fake.bodies) == 1


def test_shutdown_is_bounded_when_the_server_hangs(fake: _FakeServer) -> None:
    fake.delay_s = 2.0
    sink = AlertmanagerSink(fake.url, timeout_s=5)
    sink.send(alert("hang-svc"))
    wait_for(lambda: fake.bodies, 5, "the first post to arrive")
    started = time.monotonic()
    assert not sink.shutdown(timeout_s=0.3)  # not delivered, but we are not kept waiting
    assert time.monotonic() - started < 1.0


def test_a_resolve_that_cannot_be_delivered_is_given_up() -> None:
    with sink_for(f"http://127.0.0.1:{free_port()}", resend_interval_s=0.1, resolve_timeout_s=0.4) as sink:
        a = alert("gone-svc")
        sink.send(a)
        sink.send(resolved(a))
        # Alertmanager would have expired the alert by itself after resolve_timeout_s: stop trying
        wait_for(lambda: sink.pending == 0, 5, "the resolve to be given up")
        assert sink.failed_posts >= 2


def test_concurrent_senders_end_in_the_last_state_of_each_alert(fake: _FakeServer) -> None:
    # four engine threads, each owning 10 alert keys, each key changing state 50 times
    def churn(sink: AlertmanagerSink, worker: int) -> None:
        for step in range(50):
            for k in range(10):
                a = alert(f"churn-{worker}-{k}", severity=Severity.CRITICAL if step % 3 else Severity.WARNING)
                sink.send(resolved(a) if (step + k) % 2 else a)

    with sink_for(fake.url, resend_interval_s=60) as sink:
        threads = [threading.Thread(target=churn, args=(sink, w)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sink.force_flush(10)
        # last step is 49: keys with an even k ended resolved (delivered, forgotten), odd ones firing
        assert sink.pending == 4 * 5
        assert sink.failed_posts == 0 and sink.dropped == 0
    # replay the posts as Alertmanager would: the last endsAt per label set decides
    ends: dict[tuple[tuple[str, str], ...], float] = {}
    for body in fake.bodies:
        for a in body:
            ends[tuple(sorted(a["labels"].items()))] = parse_time(a["endsAt"])
    active = {(dict(labels)["service"], dict(labels)["severity"]) for labels, end in ends.items() if end > time.time()}
    # step 49: odd keys firing (critical, as 49 % 3 != 0); even keys resolved; no warning left over
    assert active == {(f"churn-{w}-{k}", "critical") for w in range(4) for k in (1, 3, 5, 7, 9)}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_starts_empty_with_its_own_thread(fake: _FakeServer) -> None:
    sink = AlertmanagerSink(fake.url, resend_interval_s=60)
    try:
        sink.send(alert("parent-svc"))
        assert sink.force_flush(5)
        pid = os.fork()
        if pid == 0:  # child: the parent's alerts are not ours; our own are delivered by our thread
            ok = sink.pending == 0
            sink.send(alert("child-svc"))
            ok = ok and sink.force_flush(5) and sink.pending == 1
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert sink.pending == 1
        assert [b[0]["labels"]["service"] for b in fake.bodies] == ["parent-svc", "child-svc"]
    finally:
        sink.shutdown(2)


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="http"):
        AlertmanagerSink("127.0.0.1:9093")
    with pytest.raises(ValueError, match="longer"):
        AlertmanagerSink("http://127.0.0.1:9093", resend_interval_s=60, resolve_timeout_s=30)
    with pytest.raises(ValueError, match="queue_size"):
        AlertmanagerSink("http://127.0.0.1:9093", queue_size=0)
