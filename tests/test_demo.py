"""The order-flow demo (issue 2, section 9; issue 3, section 9), run the way a user runs it.

``examples/order_flow.py`` starts four services, each in its own spawned interpreter with
its own ``OTEL_SERVICE_NAME``; console exporters write each service's spans and metrics to
its own file. These tests read the launcher's ``--json`` summary (built from the lifecycle
records of all four processes) and parse those files, and check: each service is its own
Resource, every causation chain is right, the declined / retried / dead-lettered orders end
as they should, every consumer span links to a producer span of another service, handler
spans carry the flow's correlation id, the lifecycle stays exact when traces are sampled at
10%, and link mode starts a new trace per consumer. Those runs place the story orders only
(``--traffic 0``).

A full run (background traffic with a latency spike and an error burst) checks that the
anomaly engine, on its default rule set, fires and resolves the alerts each incident
calls for, and fires nothing before an incident (no false alarm on normal traffic).

Every test here runs with two busy processes beside it (``busy_cores``, two pure-Python
loops: both cores of a 2-core CI machine taken), as on a shared machine: the demo's results
must not depend on a quiet machine. Under that load a service's processing latency really
rises at times; a latency alert that no incident explains passes only if the service's own
spans show that rise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from console_telemetry import read_json_stream

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "order_flow.py"
SERVICES = ("order", "payment", "inventory", "notification")
HANDLER_SPANS = {"charge card": "payment", "reserve stock": "inventory", "send email": "notification"}

pytestmark = pytest.mark.timeout(150)

#: How many busy processes run beside the demo (a test condition: see the module docstring).
BUSY_PROCESSES = 2


@pytest.fixture(scope="module", autouse=True)
def busy_cores() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two processes that keep a core each busy for as long as this module's tests run."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(BUSY_PROCESSES)]
    try:
        yield loops
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def test_the_demo_runs_beside_busy_processes(busy_cores: list[subprocess.Popen[bytes]]) -> None:
    assert len(busy_cores) == BUSY_PROCESSES and all(loop.poll() is None for loop in busy_cores)


# What each order's flow must look like: (event type, type of its cause) ->
# (event status, {subscriber: (delivery status, attempts)}).
Shape = dict[tuple[str, str | None], tuple[str, dict[str, tuple[str, int]]]]
HAPPY: Shape = {
    ("order_placed", None): ("completed", {"payment": ("completed", 1)}),
    ("payment_authorized", "order_placed"): ("completed", {"inventory": ("completed", 1)}),
    ("stock_reserved", "payment_authorized"): (
        "completed",
        {"order": ("completed", 1), "notification": ("completed", 1)},
    ),
}
RETRIED: Shape = {**HAPPY, ("payment_authorized", "order_placed"): ("completed", {"inventory": ("completed", 2)})}
DECLINED: Shape = {
    ("order_placed", None): ("rejected", {"payment": ("rejected", 1)}),
    ("payment_declined", "order_placed"): ("completed", {"order": ("completed", 1), "notification": ("completed", 1)}),
}
DEAD_LETTERED: Shape = {
    **HAPPY,
    ("stock_reserved", "payment_authorized"): (
        "dead_lettered",
        {"order": ("completed", 1), "notification": ("dead_lettered", 3)},
    ),
}
SPECIAL = {"order-1002": RETRIED, "order-1003": DECLINED, "order-1004": DEAD_LETTERED}


def expected_shape(business_key: str) -> Shape:
    return SPECIAL.get(business_key, HAPPY)


@dataclasses.dataclass
class DemoRun:
    result: subprocess.CompletedProcess[str]
    summary: dict[str, Any]
    spans: dict[str, list[dict[str, Any]]]  # service file -> span objects
    metrics: dict[str, list[dict[str, Any]]]  # service file -> metrics objects

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self.summary["events"])

    def flows(self) -> dict[str, list[dict[str, Any]]]:
        by_key: dict[str, list[dict[str, Any]]] = {}
        for event in self.events:
            by_key.setdefault(event["business_key"], []).append(event)
        return by_key

    def all_spans(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for service, spans in self.spans.items():
            for span in spans:
                yield service, span


def run_demo(
    workdir: Path, *args: str, read_telemetry: bool = True, command: tuple[str, ...] = (), **env_vars: str
) -> DemoRun:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="console",
        OTEL_METRIC_EXPORT_INTERVAL="600000",  # export once, at shutdown
        PYTHONUNBUFFERED="1",
    )
    env.update(env_vars)
    output_dir = workdir / "telemetry"
    summary_file = workdir / "summary.json"
    result = subprocess.run(
        [*command, sys.executable, str(DEMO), "--json", str(summary_file), "--output-dir", str(output_dir), *args],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    assert result.returncode == 0, f"demo failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    spans: dict[str, list[dict[str, Any]]] = {}
    metrics: dict[str, list[dict[str, Any]]] = {}
    for service in SERVICES if read_telemetry else ():
        objects = read_json_stream(output_dir / f"{service}.console-exporters.txt")
        spans[service] = [o for o in objects if "context" in o and "kind" in o]
        metrics[service] = [o for o in objects if "resource_metrics" in o]
        assert len(spans[service]) + len(metrics[service]) == len(objects), f"unknown objects in {service}'s file"
    return DemoRun(result, json.loads(summary_file.read_text()), spans, metrics)


def flow_shape(events: list[dict[str, Any]]) -> Shape:
    types = {e["event_id"]: e["event_type"] for e in events}
    shape: Shape = {}
    for e in events:
        key = (e["event_type"], types.get(e["causation_id"]) if e["causation_id"] else None)
        assert key not in shape, f"two {key} events in one flow"
        shape[key] = (e["status"], {d["subscriber"]: (d["status"], d["attempts"]) for d in e["deliveries"]})
    return shape


def assert_flows_as_expected(run: DemoRun, orders: int) -> None:
    flows = run.flows()
    keys = [f"order-{1001 + i}" for i in range(orders)]
    assert sorted(flows) == sorted(keys)
    assert run.summary["orders"] == keys
    for key, events in flows.items():
        assert flow_shape(events) == expected_shape(key), key


def metric_points(run: DemoRun, service: str, name: str) -> list[dict[str, Any]]:
    points = []
    for obj in run.metrics[service]:
        for rm in obj["resource_metrics"]:
            for sm in rm["scope_metrics"]:
                for metric in sm["metrics"]:
                    if metric["name"] == name:
                        points.extend(metric["data"]["data_points"])
    return points


def attr(span: dict[str, Any], name: str) -> Any:
    return span["attributes"].get(name)


def span_seconds(span: dict[str, Any]) -> float:
    start, end = (datetime.fromisoformat(span[k].replace("Z", "+00:00")) for k in ("start_time", "end_time"))
    return (end - start).total_seconds()


# -- the story: 6 orders, parent mode, everything sampled -------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    return run_demo(tmp_path_factory.mktemp("demo"), "--traffic", "0")


def test_demo_prints_trees_summary_and_the_answer_about_order_1003(demo: DemoRun) -> None:
    out = demo.result.stdout
    for section in (
        "== Causation tree of each order (6 flows",
        "== Per service (from the lifecycle records) ==",
        "== What happened to order-1003? ==",
        "== Telemetry (console exporters, one file per service) ==",
    ):
        assert section in out
    for number in range(1001, 1007):
        assert f"order-{number}  (correlation id " in out
    assert "- order_placed from order [rejected] payment: rejected" in out
    assert "inventory: completed after 2 attempts" in out
    assert "notification: dead_lettered after 3 attempts" in out
    answer = out.split("== What happened to order-1003? ==")[1].split("==")[0]
    assert "store.find('order-1003') -> ['" in answer
    assert "In short: order_placed rejected at payment (PaymentDeclined)." in answer
    for service in SERVICES:
        assert f"{service}.console-exporters.txt" in out
    # The exported telemetry went to the files, not into the report.
    assert '"trace_id"' not in out and "resource_metrics" not in out


def test_each_service_is_its_own_resource_in_spans_and_metrics(demo: DemoRun) -> None:
    for service in SERVICES:
        spans, metrics = demo.spans[service], demo.metrics[service]
        assert spans, f"no spans from {service}"
        assert {s["resource"]["attributes"]["service.name"] for s in spans} == {service}
        assert metrics, f"no metrics from {service}"
        names = {rm["resource"]["attributes"]["service.name"] for obj in metrics for rm in obj["resource_metrics"]}
        assert names == {service}
        # Metrics are exact: one consumed message per delivery the launcher saw.
        consumed = sum(p["value"] for p in metric_points(demo, service, "messaging.client.consumed.messages"))
        assert consumed == demo.summary["services"][service]["handled"] > 0


def test_under_opentelemetry_instrument_each_service_keeps_its_name(tmp_path: Path) -> None:
    """The services' SDK is configured at interpreter start-up, before the service's code runs."""
    instrument = str(Path(sys.executable).parent / "opentelemetry-instrument")
    run = run_demo(
        tmp_path,
        *("--orders", "2", "--traffic", "0"),
        command=(instrument,),
        OTEL_PYTHON_DISTRO="otel_eda",
        OTEL_PYTHON_CONFIGURATOR="otel_eda",
    )
    assert_flows_as_expected(run, 2)
    for service in SERVICES:
        assert run.spans[service], f"no spans from {service}"
        assert {s["resource"]["attributes"]["service.name"] for s in run.spans[service]} == {service}
        assert {s["resource"]["attributes"].get("telemetry.auto.version") is not None for s in run.spans[service]} == {
            True
        }, "not configured by opentelemetry-instrument"


def test_every_causation_chain_is_right(demo: DemoRun) -> None:
    for key, events in demo.flows().items():
        by_id = {e["event_id"]: e for e in events}
        roots = [e for e in events if e["causation_id"] is None]
        assert [r["event_type"] for r in roots] == ["order_placed"], key
        root = roots[0]
        assert root["correlation_id"] == root["event_id"]
        for event in events:
            assert event["correlation_id"] == root["correlation_id"]
            # Walk up: every chain ends at the root, each link a real parent.
            chain = [event]
            while chain[-1]["causation_id"] is not None:
                chain.append(by_id[chain[-1]["causation_id"]])
                assert len(chain) <= len(events)
            assert chain[-1] is root
    assert_flows_as_expected(demo, 6)


def test_declined_retried_and_dead_lettered_orders(demo: DemoRun) -> None:
    flows = demo.flows()

    def delivery(key: str, event_type: str, subscriber: str) -> dict[str, Any]:
        [event] = [e for e in flows[key] if e["event_type"] == event_type]
        found: list[dict[str, Any]] = [d for d in event["deliveries"] if d["subscriber"] == subscriber]
        assert len(found) == 1
        return found[0]

    declined = delivery("order-1003", "order_placed", "payment")
    assert (declined["status"], declined["attempts"]) == ("rejected", 1)
    assert declined["error_type"].endswith("PaymentDeclined")
    assert delivery("order-1003", "payment_declined", "notification")["status"] == "completed"
    retried = delivery("order-1002", "payment_authorized", "inventory")
    assert (retried["status"], retried["attempts"]) == ("completed", 2)
    dead = delivery("order-1004", "stock_reserved", "notification")
    assert (dead["status"], dead["attempts"]) == ("dead_lettered", 3)
    assert dead["error_type"].endswith("MailboxUnavailable")
    services = demo.summary["services"]
    assert services["payment"] | {"mean_processing_ms": None} == {
        "published": 6,
        "handled": 6,
        "completed": 5,
        "failed": 1,
        "retries": 0,
        "dead_lettered": 0,
        "mean_processing_ms": None,
    }
    assert (services["inventory"]["retries"], services["inventory"]["completed"]) == (1, 5)
    assert (services["notification"]["retries"], services["notification"]["dead_lettered"]) == (2, 1)
    assert all(s["mean_processing_ms"] > 0 for s in services.values())


def test_every_consumer_span_links_to_a_producer_span_of_another_service(demo: DemoRun) -> None:
    producers = {
        s["context"]["span_id"]: (service, s) for service, s in demo.all_spans() if s["kind"] == "SpanKind.PRODUCER"
    }
    consumers = [(service, s) for service, s in demo.all_spans() if s["kind"] == "SpanKind.CONSUMER"]
    # Nothing sampled away or lost: one producer span per event, one consumer span per attempt.
    assert len(producers) == len(demo.events)
    assert len(consumers) == sum(d["attempts"] for e in demo.events for d in e["deliveries"])
    for event in demo.events:
        _, producer = producers[f"0x{event['span_id']}"]
        assert attr(producer, "messaging.message.id") == event["event_id"]
    for service, consumer in consumers:
        message_id = attr(consumer, "messaging.message.id")
        linked = [link for link in consumer["links"] if link["context"]["span_id"] in producers]
        assert len(linked) == 1, f"{consumer['name']} in {service} has no link to a producer span"
        link = linked[0]
        producer_service, producer = producers[link["context"]["span_id"]]
        assert producer_service != service
        assert link["context"]["trace_id"] == producer["context"]["trace_id"]
        assert link["attributes"]["messaging.message.id"] == message_id == attr(producer, "messaging.message.id")
        assert link["attributes"]["eda.correlation_id"] == attr(producer, "eda.correlation_id")
        assert attr(consumer, "eda.correlation_id") == attr(producer, "eda.correlation_id")
        assert attr(consumer, "eda.causation_id") == attr(producer, "eda.causation_id")
        # Parent mode (the default): the consumer span is also the producer span's child.
        assert consumer["parent_id"] == producer["context"]["span_id"]
        assert consumer["context"]["trace_id"] == producer["context"]["trace_id"]
        # Zipkin drops links: the producer's ids stay visible as attributes.
        assert "0x" + attr(consumer, "eda.producer.span_id") == producer["context"]["span_id"]


def test_spans_started_inside_handlers_carry_the_flow_ids(demo: DemoRun) -> None:
    consumers = {s["context"]["span_id"]: s for _, s in demo.all_spans() if s["kind"] == "SpanKind.CONSUMER"}
    seen: Counter[str] = Counter()
    for service, span in demo.all_spans():
        if span["name"] not in HANDLER_SPANS:
            continue
        assert service == HANDLER_SPANS[span["name"]]
        assert span["kind"] == "SpanKind.INTERNAL"
        handling = consumers[span["parent_id"]]
        assert attr(span, "eda.correlation_id") == attr(handling, "eda.correlation_id") is not None
        assert attr(span, "eda.causation_id") == attr(handling, "eda.causation_id")
        seen[span["name"]] += 1
    # One per attempt: 6 charges, 5 + 1 retry reservations, 6 + 2 retries emails.
    assert seen == {"charge card": 6, "reserve stock": 6, "send email": 8}


# -- sampled at 10 %: the lifecycle stays exact ------------------------------------------------


def test_lifecycle_is_exact_when_traces_are_sampled_at_ten_percent(tmp_path: Path) -> None:
    orders = 20
    run = run_demo(
        tmp_path,
        *("--orders", str(orders), "--traffic", "0"),
        OTEL_TRACES_SAMPLER="traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.1",
    )
    assert_flows_as_expected(run, orders)  # every event of every order, same statuses
    assert len(run.events) == 3 * orders - 1  # the declined order has 2 events, the others 3
    services = run.summary["services"]
    assert services["payment"]["handled"] == orders and services["payment"]["failed"] == 1
    assert services["notification"]["dead_lettered"] == 1 and services["inventory"]["retries"] == 1
    attempts = sum(d["attempts"] for e in run.events for d in e["deliveries"])
    consumer_spans = sum(1 for _, s in run.all_spans() if s["kind"] == "SpanKind.CONSUMER")
    # A flow is one trace in parent mode: about 2 of 20 flows are kept. 10 or more would
    # happen with a probability below 1e-5.
    assert consumer_spans < attempts / 2, (consumer_spans, attempts)
    # Metrics are not sampled.
    for service in SERVICES:
        consumed = sum(p["value"] for p in metric_points(run, service, "messaging.client.consumed.messages"))
        assert consumed == services[service]["handled"]


# -- link mode: each consumer span starts a new trace -----------------------------------------


def test_link_mode_consumer_spans_start_new_traces(tmp_path: Path) -> None:
    run = run_demo(tmp_path, "--orders", "4", "--traffic", "0", "--mode", "link")
    assert run.summary["trace_mode"] == "link"
    assert_flows_as_expected(run, 4)
    producers = {s["context"]["span_id"]: s for _, s in run.all_spans() if s["kind"] == "SpanKind.PRODUCER"}
    consumers = [s for _, s in run.all_spans() if s["kind"] == "SpanKind.CONSUMER"]
    assert len(consumers) == sum(d["attempts"] for e in run.events for d in e["deliveries"])
    for consumer in consumers:
        assert consumer["parent_id"] is None
        [link] = consumer["links"]
        producer = producers[link["context"]["span_id"]]
        assert link["context"]["trace_id"] == producer["context"]["trace_id"]
        assert consumer["context"]["trace_id"] != producer["context"]["trace_id"]
        assert link["attributes"]["messaging.message.id"] == attr(consumer, "messaging.message.id")
        assert attr(consumer, "eda.correlation_id") == attr(producer, "eda.correlation_id")


# -- the full run: background traffic, a latency spike, an error burst ---------------------------

#: Which service's anomaly explains which rules' alerts, and which incident injects it (None:
#: a story order, placed at t = 0). Any other alert is a false alarm. The host-cpu rule is
#: left out: it watches the host, which other processes load as they please.
EXPLAINED = {
    ("notification", "dead-letters"): None,  # order-1004's notification is dead-lettered
    ("notification", "processing-errors"): None,  # ...after 3 failed attempts
    ("inventory", "processing-latency"): "latency spike",
    ("payment", "processing-errors"): "gateway degraded",
}
HOST_RULES = {"host-cpu"}


@pytest.fixture(scope="module")
def anomalies(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    # The default run, as `scripts/demo` makes it: 30 s of background orders.
    return run_demo(tmp_path_factory.mktemp("anomalies"))


def changes(run: DemoRun, alert: str, service: str) -> list[dict[str, Any]]:
    return [a for a in run.summary["alerts"] if a["alert"] == alert and a["service"] == service]


@pytest.mark.slow  # the full run: 30 s of traffic (about 45 s)
def test_background_orders_settle_and_only_the_story_gets_trees(anomalies: DemoRun) -> None:
    summary = anomalies.summary
    traffic = summary["traffic"]["orders"]
    assert len(traffic) == round(summary["traffic"]["seconds"] * summary["traffic"]["rate"]) >= 500
    flows = anomalies.flows()
    assert sorted(flows) == sorted(summary["orders"] + traffic)
    for key in summary["orders"]:
        assert flow_shape(flows[key]) == expected_shape(key), key
    retried = 0
    for key in traffic:
        shape = flow_shape(flows[key])
        # The gateway times out on some charges: the retry gets through, by the 3rd attempt.
        status, deliveries = shape[("order_placed", None)]
        assert status == "completed" and deliveries["payment"][0] == "completed", key
        retried += deliveries["payment"][1] > 1
        shape[("order_placed", None)] = HAPPY[("order_placed", None)]
        assert shape == HAPPY, key
    assert retried > 10
    out = anomalies.result.stdout
    assert "== Causation tree of each order (6 flows" in out
    assert out.count("(correlation id ") == 6
    assert f"6 story orders, then {len(traffic)} background orders" in out
    assert summary["services"]["order"]["published"] == 6 + len(traffic)
    assert summary["services"]["payment"]["retries"] > 10
    for service in SERVICES:  # metrics stay exact under load
        consumed = sum(p["value"] for p in metric_points(anomalies, service, "messaging.client.consumed.messages"))
        assert consumed == summary["services"][service]["handled"]


@pytest.mark.slow  # the full run: 30 s of traffic (about 45 s)
def test_alerts_fire_and_resolve_for_each_incident(anomalies: DemoRun) -> None:
    incidents = anomalies.summary["incidents"]
    spike = incidents["latency spike"]
    burst_start, burst_end = incidents["gateway degraded"]["start_s"], incidents["gateway down"]["end_s"]

    # The latency spike: the z-score detector (default rule processing-latency) fires on
    # inventory's p95 during the spike and stays firing while it lasts (the rule holds the
    # spike out of its baseline), resolving once the p95 is back to normal.
    every = changes(anomalies, "ProcessingLatencyHigh", "inventory")
    # (before the spike, only a rise that inventory's own spans show: the busy processes)
    assert all(
        latency_really_rose(anomalies, a) for a in every if a["at_s"] < spike["start_s"] and a["change"] == "firing"
    )
    latency = [a for a in every if a["at_s"] >= spike["start_s"]]
    assert [a["change"] for a in latency] == ["firing", "resolved"], every
    fired, resolved = latency
    assert spike["start_s"] < fired["at_s"] < spike["end_s"] + 1.0, fired
    assert fired["rule"] == "processing-latency" and fired["severity"] == "warning"
    assert fired["series"]["messaging.destination.name"] == "payment_authorized"
    assert fired["value"] > 0.2  # seconds: the slow reservations
    assert resolved["at_s"] >= spike["end_s"], "the alert resolved while inventory was still slow"
    # Its exemplar is an example trace to open: one of the slow reservations.
    [slow] = [
        s
        for s in anomalies.spans["inventory"]
        if s["name"] == "reserve stock" and s["context"]["trace_id"] == f"0x{fired['trace_id']}"
    ]
    assert span_seconds(slow) > 0.2

    # The error burst: more than 20% of the charges fail (rule processing-errors), then more
    # than 1.5 x 20%: critical, whether at once or by an escalation.
    errors = changes(anomalies, "ProcessingErrorsHigh", "payment")
    assert errors and errors[0]["change"] == "firing", errors
    assert burst_start < errors[0]["at_s"] < burst_end + 1.0, errors[0]
    assert {a["change"] for a in errors} <= {"firing", "escalated", "resolved"}
    assert [a for a in errors if a["severity"] == "critical" and a["change"] != "resolved"], errors
    assert all(a["value"] > 0.2 for a in errors if a["change"] != "resolved")

    # order-1004's notification is dead-lettered at the start; the rate then drops to 0.
    dead = changes(anomalies, "EventsDeadLettered", "notification")
    assert [a["change"] for a in dead] == ["firing", "resolved"], dead
    assert dead[0]["series"]["messaging.destination.name"] == "stock_reserved"
    assert dead[0]["at_s"] < spike["start_s"]

    # Printed as they happen, and summed up.
    out = anomalies.result.stdout
    assert "FIRING    warning  ProcessingLatencyHigh (rule processing-latency) inventory: " in out
    assert "RESOLVED  warning  ProcessingLatencyHigh (rule processing-latency) inventory: " in out
    assert "EventsDeadLettered (rule dead-letters) notification: " in out
    assert "== Alerts (default rule set, evaluated every 0.5 s in each service) ==" in out


def processing_seconds(run: DemoRun, service: str, destination: str) -> list[tuple[float, float]]:
    """(end as epoch seconds, duration) of each of a service's process spans of one destination."""
    found = []
    for span in run.spans[service]:
        if span["kind"] == "SpanKind.CONSUMER" and attr(span, "messaging.destination.name") == destination:
            end = datetime.fromisoformat(span["end_time"].replace("Z", "+00:00")).timestamp()
            found.append((end, span_seconds(span)))
    return found


def latency_really_rose(run: DemoRun, alert: dict[str, Any], window_s: float = 5.0) -> bool:
    """Whether the service's own spans show the rise a processing-latency alert reports.

    The spans of the alert's series that ended in the ``window_s`` before it fired must have
    a 95th percentile at least twice the median of all that series' spans.
    """
    durations = processing_seconds(run, alert["service"], alert["series"].get("messaging.destination.name", ""))
    if len(durations) < 20:
        return False
    fired_at = run.summary["started_at"] + alert["at_s"]
    recent = sorted(d for end, d in durations if fired_at - window_s <= end <= fired_at)
    if not recent:
        return False
    p95 = recent[min(len(recent) - 1, round(0.95 * (len(recent) - 1)))]
    return p95 >= 2 * statistics.median(d for _, d in durations)


@pytest.mark.slow  # the full run: 30 s of traffic (about 45 s)
def test_no_alert_fires_before_its_incident(anomalies: DemoRun) -> None:
    incidents = anomalies.summary["incidents"]
    for alert in anomalies.summary["alerts"]:
        if alert["change"] != "firing" or alert["rule"] in HOST_RULES:
            continue
        key = (alert["service"], alert["rule"])
        if key not in EXPLAINED and alert["rule"] == "processing-latency":
            # the busy processes beside the demo slow a service down for real at times
            assert latency_really_rose(anomalies, alert), f"false alarm (its spans show no rise): {alert}"
            continue
        assert key in EXPLAINED, f"false alarm: {alert}"
        incident = EXPLAINED[key]
        if incident is not None:
            assert alert["at_s"] >= incidents[incident]["start_s"], f"fired before the {incident}: {alert}"


# -- the launcher fails loudly -----------------------------------------------------------------


def test_launcher_fails_loudly_when_a_service_dies(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, str(DEMO), "--crash", "inventory", "--output-dir", str(tmp_path), "--timeout", "30"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "order_flow: error: service 'inventory'" in result.stderr
    assert "died with exit code 70 before the flows settled" in result.stderr
    assert "== Causation tree" not in result.stdout
