"""In-process alert sinks: OpenTelemetry log records (LogRecordSink) and Python callbacks (CallbackSink)."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor, ReadableLogRecord, ReadWriteLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider

from otel_eda.anomaly.alerts import Alert, AlertState, Exemplar, Severity
from otel_eda.anomaly.callbacks import CallbackSink
from otel_eda.anomaly.logsink import LogRecordSink

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


def make_alert(
    severity: Severity = Severity.WARNING,
    state: AlertState = AlertState.FIRING,
    *,
    exemplars: tuple[Exemplar, ...] = (Exemplar(TRACE_ID, SPAN_ID), Exemplar("ab" * 16, "cd" * 8)),
) -> Alert:
    return Alert(
        name="ProcessingLatencyHigh",
        rule="latency-p95",
        severity=severity,
        state=state,
        series_labels={"service": "orders", "messaging.destination.name": "payments"},
        value=2.5,
        threshold=1.0,
        score=0.97,
        started_at=time.time() - 10,
        ended_at=time.time() if state is AlertState.RESOLVED else None,
        summary="p95 processing latency 2.5 s > 1 s",
        exemplars=exemplars,
    )


def counter_points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, Any], float]]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        (dict(p.attributes or {}), p.value)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == name
        for p in m.data.data_points
        if isinstance(p, NumberDataPoint)
    ]


class Logs:
    def __init__(self) -> None:
        self.exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
        self.provider = LoggerProvider()
        self.provider.add_log_record_processor(SimpleLogRecordProcessor(self.exporter))

    def records(self) -> tuple[ReadableLogRecord, ...]:
        return self.exporter.get_finished_logs()


@pytest.fixture
def logs() -> Iterator[Logs]:
    logs = Logs()
    yield logs
    logs.provider.shutdown()


# ------------------------------------------------------------------------------ LogRecordSink


@pytest.mark.parametrize(
    ("severity", "state", "number", "text"),
    [
        (Severity.INFO, AlertState.FIRING, 9, "INFO"),
        (Severity.WARNING, AlertState.FIRING, 13, "WARN"),
        (Severity.CRITICAL, AlertState.FIRING, 17, "ERROR"),
        (Severity.CRITICAL, AlertState.RESOLVED, 9, "INFO"),
        (Severity.WARNING, AlertState.RESOLVED, 9, "INFO"),
    ],
)
def test_log_record_severity_is_mapped(
    logs: Logs, severity: Severity, state: AlertState, number: int, text: str
) -> None:
    LogRecordSink(logger_provider=logs.provider).send(make_alert(severity, state))
    (record,) = logs.records()
    assert record.log_record.severity_number is not None
    assert (record.log_record.severity_number.value, record.log_record.severity_text) == (number, text)
    assert record.log_record.attributes is not None
    assert record.log_record.attributes["eda.alert.state"] == state.value


def test_log_record_carries_the_alert(logs: Logs) -> None:
    alert = make_alert()
    before = time.time_ns()
    LogRecordSink(logger_provider=logs.provider).send(alert)
    (record,) = logs.records()
    log = record.log_record
    assert log.body == "p95 processing latency 2.5 s > 1 s"
    assert log.event_name == "eda.alert"
    assert record.instrumentation_scope is not None
    assert record.instrumentation_scope.name == "otel_eda.alerts"
    assert dict(log.attributes or {}) == {
        # labels
        "alertname": "ProcessingLatencyHigh",
        "rule": "latency-p95",
        "severity": "warning",
        "service": "orders",
        "messaging.destination.name": "payments",
        # annotations
        "summary": "p95 processing latency 2.5 s > 1 s",
        "value": "2.5",
        "threshold": "1",
        "score": "0.970",
        "trace_ids": f"{TRACE_ID},{'ab' * 16}",
        "span_ids": f"{SPAN_ID},{'cd' * 8}",
        # state
        "eda.alert.state": "firing",
    }
    assert log.timestamp is not None and before <= log.timestamp <= time.time_ns()
    # the record points at the first exemplar: a log backend can open that trace
    assert (log.trace_id, log.span_id) == (int(TRACE_ID, 16), int(SPAN_ID, 16))


def test_log_record_without_exemplar_does_not_borrow_the_current_span(logs: Logs) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("engine tick"):
        LogRecordSink(logger_provider=logs.provider).send(make_alert(exemplars=()))
    (record,) = logs.records()
    assert record.log_record.trace_id in (0, None)
    assert "trace_ids" not in (record.log_record.attributes or {})


def test_invalid_exemplar_ids_are_skipped(logs: Logs) -> None:
    exemplars = (Exemplar("not-hex", "zz"), Exemplar("0" * 32, "0" * 16), Exemplar(TRACE_ID, SPAN_ID))
    LogRecordSink(logger_provider=logs.provider).send(make_alert(exemplars=exemplars))
    (record,) = logs.records()
    assert record.log_record.trace_id == int(TRACE_ID, 16)


class _Exploding(LogRecordProcessor):
    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        raise RuntimeError("processor down")

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def test_log_record_failure_is_counted_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    provider = LoggerProvider()
    provider.add_log_record_processor(_Exploding())
    reader = InMemoryMetricReader()
    sink = LogRecordSink(logger_provider=provider, meter_provider=MeterProvider(metric_readers=[reader]))
    with caplog.at_level(logging.ERROR, logger="otel_eda.alerts"):
        sink.send(make_alert())
        sink.send(make_alert(state=AlertState.RESOLVED))
    assert sink.failures == 2
    assert counter_points(reader, "eda.alerts.send_failures") == [
        ({"eda.alert.sink": "log", "error.type": "RuntimeError"}, 2)
    ]
    assert all(r.exc_info is not None for r in caplog.records)
    assert len(caplog.records) == 2


def test_log_sink_without_provider_and_no_sdk_drops_records_without_a_failure() -> None:
    # No SDK provider is installed globally in this test process: the API's proxy drops records.
    sink = LogRecordSink()
    sink.send(make_alert())
    assert sink.failures == 0  # send() catches everything, so a failure shows only here


GLOBAL_PROVIDER_APP = """
import time
from opentelemetry._logs import set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from otel_eda.anomaly.alerts import Alert, AlertState, Severity
from otel_eda.anomaly.logsink import LogRecordSink

sink = LogRecordSink()  # made before any SDK provider is installed
exporter = InMemoryLogRecordExporter()
provider = LoggerProvider()
provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
set_logger_provider(provider)
sink.send(Alert(name="ProcessingLatencyHigh", rule="r", severity=Severity.WARNING, state=AlertState.FIRING,
                series_labels={"service": "orders"}, value=2.5, threshold=1.0, score=0.9,
                started_at=time.time(), ended_at=None, summary="slow", exemplars=()))
records = [r.log_record for r in exporter.get_finished_logs()]
print(sink.failures, [r.body for r in records])
"""


def test_log_sink_without_provider_uses_the_global_one_once_installed() -> None:
    """In a subprocess: the global LoggerProvider can be installed once per process."""
    result = subprocess.run(
        [sys.executable, "-c", GLOBAL_PROVIDER_APP], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "['slow']"], result.stdout


# ------------------------------------------------------------------------------- CallbackSink


def test_callback_receives_every_change_in_order() -> None:
    seen: list[Alert] = []
    sink = CallbackSink(seen.append)
    changes = [make_alert(), make_alert(Severity.CRITICAL), make_alert(Severity.CRITICAL, AlertState.RESOLVED)]
    for alert in changes:
        sink.send(alert)
    assert seen == changes
    assert sink.errors == 0


def test_callback_exception_is_logged_counted_and_contained(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Alert] = []

    def flaky(alert: Alert) -> None:
        if alert.severity is Severity.WARNING:
            raise ValueError("bad callback")
        seen.append(alert)

    reader = InMemoryMetricReader()
    sink = CallbackSink(flaky, meter_provider=MeterProvider(metric_readers=[reader]))
    with caplog.at_level(logging.ERROR, logger="otel_eda.alerts"):
        sink.send(make_alert(Severity.WARNING))  # raises inside: must not reach us
        sink.send(make_alert(Severity.CRITICAL))  # the sink keeps working
    assert sink.errors == 1
    assert [a.severity for a in seen] == [Severity.CRITICAL]
    (record,) = caplog.records
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
    assert "ProcessingLatencyHigh" in record.getMessage()
    assert counter_points(reader, "eda.alerts.send_failures") == [
        ({"eda.alert.sink": "callback", "error.type": "ValueError"}, 1)
    ]
