"""Logs through the Collector (issue 21, section 4): app → OpenTelemetry Collector → a file, all real.

The order-flow demo (``examples/order_flow.py``: four services, one interpreter each, ``--mode
link``) exports its log records over OTLP/HTTP, configured only by standard variables::

    OTEL_LOGS_EXPORTER=otlp
    OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED=true   # the SDK's logging bridge
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:<collector>

to otel-eda's Collector (``scripts/otelcol``) running the repository's ``collector-config.yaml``,
whose logs pipeline writes OTLP JSON to a file. Spans go to the console exporter (each service's
telemetry file) to know every span of every flow. Then, in the Collector's file:

- every service's log records are there, and every log line that names a story order carries
  that order's ``eda.correlation_id``: ``grep <correlation id>`` finds the whole flow;
- each such record's trace id is the trace id of a span of that flow;
- the lifecycle logs are there at their levels: the retried reservation of order-1002 (WARN),
  the rejected payment of order-1003 (INFO), the dead-lettered notification of order-1004 (ERROR).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from console_telemetry import read_json_stream
from otel_servers import Collector, running_collector, wait_for

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "order_flow.py"
SERVICES = ("order", "payment", "inventory", "notification")
ORDER_KEY = re.compile(r"\border-\d+\b")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    # traces are not this test's concern: the Collector's trace exporters point at free ports
    with running_collector(tmp_path_factory.mktemp("otelcol"), None) as server:
        yield server


@dataclass(frozen=True)
class LogLine:
    service: str
    severity: str
    body: str
    attributes: dict[str, Any]
    trace_id: str


def _value(value: dict[str, Any]) -> Any:
    for kind in ("stringValue", "intValue", "doubleValue", "boolValue"):
        if kind in value:
            return int(value[kind]) if kind == "intValue" else value[kind]
    return None


def read_logs(path: Path) -> list[LogLine]:
    """Every log record of the file exporter's OTLP JSON (one ExportLogsServiceRequest a line)."""
    lines = []
    for text in path.read_text().splitlines() if path.exists() else []:
        for resource_logs in json.loads(text).get("resourceLogs", []):
            resource = {a["key"]: _value(a["value"]) for a in resource_logs["resource"]["attributes"]}
            for scope_logs in resource_logs.get("scopeLogs", []):
                for record in scope_logs.get("logRecords", []):
                    lines.append(
                        LogLine(
                            service=str(resource.get("service.name")),
                            severity=record.get("severityText", ""),
                            body=str(_value(record.get("body", {}))),
                            attributes={a["key"]: _value(a["value"]) for a in record.get("attributes", [])},
                            trace_id=record.get("traceId", ""),
                        )
                    )
    return lines


@dataclass(frozen=True)
class Run:
    summary: dict[str, Any]
    spans: list[dict[str, Any]]
    logs: list[LogLine]

    def story_flows(self) -> dict[str, str]:
        """business key of each story order -> its correlation id."""
        orders = set(self.summary["orders"])
        return {
            e["business_key"]: e["correlation_id"]
            for e in self.summary["events"]
            if e["event_type"] == "order_placed" and e["business_key"] in orders
        }

    def services(self, correlation_id: str) -> set[str]:
        return {
            span["resource"]["attributes"]["service.name"]
            for span in self.spans
            if span["attributes"].get("eda.correlation_id") == correlation_id
        }

    def trace_ids(self, correlation_id: str) -> set[str]:
        return {
            span["context"]["trace_id"].removeprefix("0x")
            for span in self.spans
            if span["attributes"].get("eda.correlation_id") == correlation_id
        }


@pytest.fixture(scope="module")
def run(collector: Collector, tmp_path_factory: pytest.TempPathFactory) -> Run:
    workdir = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="otlp",
        OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED="true",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.otlp_http}",
        PYTHONUNBUFFERED="1",
    )
    summary = workdir / "summary.json"
    result = subprocess.run(
        [
            sys.executable,
            str(DEMO),
            *("--orders", "6", "--traffic", "0", "--mode", "link", "--timeout", "60"),
            *("--output-dir", str(workdir / "telemetry"), "--json", str(summary)),
        ],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert result.returncode == 0, f"demo failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    for failure in ("Failed to export", "Transient error", "OTLPLogExporter"):
        assert failure not in result.stderr, result.stderr  # no export error logged
    spans = [
        span
        for s in SERVICES
        for span in read_json_stream(workdir / "telemetry" / f"{s}.console-exporters.txt")
        if "context" in span
    ]
    flows = json.loads(summary.read_text())
    narrated = set(flows["orders"])  # each story order's "[order] placed" line, at least

    def every_order_arrived() -> list[LogLine] | None:
        logs = read_logs(collector.logs_file)
        bodies = " ".join(line.body for line in logs)
        return logs if all(f"placed {key}" in bodies for key in narrated) else None

    # the Collector writes its file on a 200 ms flush: wait until every order's first line is there
    logs: list[LogLine] = wait_for(every_order_arrived, 30, "the story orders' log lines in the Collector's file")
    return Run(flows, spans, logs)


def test_every_service_sends_its_log_records_through_the_collector(run: Run) -> None:
    assert {line.service for line in run.logs} >= set(SERVICES)


def test_grep_for_a_correlation_id_finds_every_log_line_of_that_order(run: Run) -> None:
    flows = run.story_flows()
    assert set(flows) == set(run.summary["orders"])
    for line in run.logs:
        keys = set(ORDER_KEY.findall(line.body))
        for key in keys & set(flows):  # a line naming a story order belongs to that order's flow
            assert line.attributes.get("eda.correlation_id") == flows[key], (key, line)
    for key, correlation_id in flows.items():
        of_flow = [line for line in run.logs if line.attributes.get("eda.correlation_id") == correlation_id]
        # every service that has a span in the flow wrote a log line of it (narrative or lifecycle)
        assert {line.service for line in of_flow} == run.services(correlation_id), key
        trace_ids = run.trace_ids(correlation_id)
        for line in of_flow:
            if line.trace_id:  # lines written inside a span: that span is one of the flow's
                assert line.trace_id in trace_ids, (key, line)
        for service in run.services(correlation_id):  # each service's records carry the flow's trace ids
            assert any(line.trace_id for line in of_flow if line.service == service), (key, service)


def test_lifecycle_logs_reach_the_collector_at_their_levels(run: Run) -> None:
    flows = run.story_flows()

    def stages(key: str) -> set[tuple[str, str, str]]:
        return {
            (line.service, str(line.attributes.get("eda.stage")), line.severity)
            for line in run.logs
            if line.attributes.get("eda.correlation_id") == flows[key] and "eda.stage" in line.attributes
        }

    assert ("inventory", "retried", "WARN") in stages("order-1002")
    assert ("payment", "rejected", "INFO") in stages("order-1003")
    assert ("notification", "dead_lettered", "ERROR") in stages("order-1004")
    assert not [s for s in stages("order-1001") if s[1] != "published"]  # the happy path: no failure logged
