"""Logs that know their event (issue 21): ids on log records, the SDK log processor,
structlog, lifecycle logs by level."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from otel_eda import EventBus, EventContext, Rejected, RetryPolicy, with_event
from otel_eda.logs import correlation
from otel_eda.logs.bridge import EventLogRecordProcessor, add_event_log_processor
from otel_eda.logs.lifecycle import LifecycleLogger
from otel_eda.logs.structured import add_event_ids
from otel_eda.settings import Settings
from otel_eda.transports.bus import Delivery

FORMAT = (
    "%(levelname)s %(name)s [%(eda_correlation_id)s|%(eda_causation_id)s|%(eda_event_id)s|%(otelTraceID)s] %(message)s"
)
SPAN = NonRecordingSpan(SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)))


@pytest.fixture
def installed() -> Iterator[None]:
    assert correlation.install_log_correlation()
    try:
        yield
    finally:
        assert correlation.uninstall_log_correlation()


class Collect(logging.Handler):
    def __init__(self, fmt: str = FORMAT) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter(fmt))  # no defaults: every record has every field

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.fixture
def collect() -> Iterator[Collect]:
    handler = Collect()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _in_flow() -> tuple[EventContext, Context]:
    order = EventContext.root("order_placed", business_key="order-7")
    payment = order.child("payment_authorized")
    return payment, with_event(payment, trace.set_span_in_context(SPAN))


def test_every_record_of_any_logger_carries_the_current_event(installed: None, collect: Collect) -> None:
    event, ctx = _in_flow()
    token = attach(ctx)
    try:
        logging.getLogger("app.payments").info("charged %s", 42)
        logging.getLogger("some.library").warning("slow")
    finally:
        detach(token)
    for record in collect.records:
        assert record.eda_event_id == event.event_id  # type: ignore[attr-defined]
        assert record.eda_correlation_id == event.correlation_id  # type: ignore[attr-defined]
        assert record.eda_causation_id == event.causation_id  # type: ignore[attr-defined]
        assert record.eda_event_type == "payment_authorized"  # type: ignore[attr-defined]
        assert record.eda_business_key == "order-7"  # type: ignore[attr-defined]
        assert record.otelTraceID == f"{0xABC:032x}" and record.otelSpanID == f"{0xDEF:016x}"  # type: ignore[attr-defined]
    assert collect.lines[0] == (
        f"INFO app.payments [{event.correlation_id}|{event.causation_id}|{event.event_id}|{0xABC:032x}] charged 42"
    )


def test_with_nothing_current_every_field_is_there_and_empty(installed: None, collect: Collect) -> None:
    logging.getLogger("app").info("idle")
    assert collect.lines == ["INFO app [|||0] idle"]  # the format string works outside flows too
    (record,) = collect.records
    for field in correlation.RECORD_FIELDS:
        assert field in record.__dict__, field  # what formatters read (class attributes would not do)
    assert record.eda_correlation_id == "" and record.otelTraceID == "0" and record.otelSpanID == "0"  # type: ignore[attr-defined]
    plain = logging.Formatter("%(levelname)s [%(eda_correlation_id)s %(otelTraceID)s %(otelSpanID)s] %(message)s")
    assert plain.format(record) == "INFO [ 0 0] idle"  # no defaults needed


def test_format_defaults_cover_records_made_without_the_factory() -> None:
    record = logging.LogRecord("x", logging.INFO, "f", 1, "made directly", (), None)
    formatter = logging.Formatter(FORMAT, defaults=correlation.FORMAT_DEFAULTS)
    assert formatter.format(record) == "INFO x [|||0] made directly"


def test_the_readme_format_works_in_and_out_of_a_flow_with_basic_config(installed: None) -> None:
    """``logging.basicConfig(format=...)`` takes no defaults: every field must be on every record."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        logging.Formatter("%(levelname)s [%(eda_correlation_id)s %(otelTraceID)s] %(message)s", validate=True)
    )
    logger = logging.getLogger("readme")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("outside")
        event, ctx = _in_flow()
        token = attach(ctx)
        try:
            logger.warning("inside")
        finally:
            detach(token)
        span_only = attach(trace.set_span_in_context(SPAN))
        try:
            logger.warning("span only")
        finally:
            detach(span_only)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert out.getvalue().splitlines() == [
        "WARNING [ 0] outside",
        f"WARNING [{event.correlation_id} {0xABC:032x}] inside",
        f"WARNING [ {0xABC:032x}] span only",
    ]


def test_without_an_event_the_flow_ids_come_from_baggage(installed: None, collect: Collect) -> None:
    order = EventContext.root("order_placed")
    ctx = baggage.set_baggage("eda.correlation_id", order.event_id, Context())
    token = attach(ctx)
    try:
        logging.getLogger("http").info("GET /orders")
    finally:
        detach(token)
    (record,) = collect.records
    assert record.eda_correlation_id == order.event_id  # type: ignore[attr-defined]
    assert record.eda_event_id == ""  # type: ignore[attr-defined]


def test_threads_that_carry_the_context_and_asyncio_tasks_see_the_event(installed: None, collect: Collect) -> None:
    event, ctx = _in_flow()

    async def main() -> None:
        token = attach(ctx)
        try:
            await asyncio.gather(
                asyncio.create_task(_log_async("task")),
                asyncio.to_thread(logging.getLogger("thread").info, "to_thread"),
            )
            with ThreadPoolExecutor(1) as pool:
                pool.submit(contextvars.copy_context().run, logging.getLogger("pool").info, "pool").result()
        finally:
            detach(token)

    asyncio.run(main())
    thread = threading.Thread(target=logging.getLogger("bare").info, args=("bare thread",))
    thread.start()
    thread.join()
    by_name = {r.name: r for r in collect.records}
    for name in ("task", "thread", "pool"):
        assert by_name[name].eda_correlation_id == event.correlation_id, name  # type: ignore[attr-defined]
    assert by_name["bare"].eda_correlation_id == ""  # type: ignore[attr-defined]  # a thread without the context


async def _log_async(name: str) -> None:
    await asyncio.sleep(0)
    logging.getLogger(name).info("in a task")


def test_the_factory_wraps_the_one_before_it_and_uninstalls_cleanly() -> None:
    original = logging.getLogRecordFactory()
    seen: list[str] = []

    def custom(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = original(*args, **kwargs)
        seen.append(record.name)
        return record

    logging.setLogRecordFactory(custom)
    try:
        assert correlation.install_log_correlation()
        assert not correlation.install_log_correlation()  # once
        record = logging.getLogger("x").makeRecord("x", logging.INFO, "f", 1, "m", (), None)
        assert seen == ["x"] and record.eda_correlation_id == ""  # type: ignore[attr-defined]
        assert correlation.uninstall_log_correlation()
        assert logging.getLogRecordFactory() is custom
    finally:
        logging.setLogRecordFactory(original)


COMPOSED = """
import json, logging, sys
from opentelemetry import trace
from opentelemetry.context import attach, detach
from opentelemetry.instrumentation.logging import LoggingInstrumentor
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from otel_eda import EventContext, with_event
from otel_eda.logs import correlation

order = sys.argv[1]
original = logging.getLogRecordFactory()
instrumentor = LoggingInstrumentor()
if order == "otel_eda_first":
    correlation.install_log_correlation()
    instrumentor.instrument(inject_trace_context=True, enable_log_auto_instrumentation=False)
else:
    instrumentor.instrument(inject_trace_context=True, enable_log_auto_instrumentation=False)
    correlation.install_log_correlation()
records = []
handler = logging.Handler()
handler.emit = records.append
logging.getLogger().addHandler(handler)
logging.getLogger().setLevel(logging.INFO)
span = NonRecordingSpan(SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)))
event = EventContext.root("order_placed")
token = attach(with_event(event, trace.set_span_in_context(span)))
logging.getLogger("app").info("both")
detach(token)
logging.getLogger("app").info("none")
if order == "otel_eda_first":
    instrumentor.uninstrument()
    removed = correlation.uninstall_log_correlation()
else:
    removed = correlation.uninstall_log_correlation()
    instrumentor.uninstrument()
fields = ("eda_correlation_id", "otelTraceID", "otelSpanID", "otelTraceSampled", "otelServiceName")
print(json.dumps({
    "event": event.correlation_id,
    "records": [{f: getattr(r, f, None) for f in fields} for r in records],
    "restored": removed and logging.getLogRecordFactory() is original,
}))
"""


@pytest.mark.parametrize("order", ["otel_eda_first", "instrumentation_first"])
def test_composes_with_opentelemetry_instrumentation_logging(order: str) -> None:
    """Both installed, in either order: every record has both sets of fields, and both uninstall.
    (The instrumentation lives beside the venv, ``.venv/opt``: see ``scripts/setup-venv``.)"""
    import os
    from pathlib import Path

    opt = Path(sys.executable).parent.parent / "opt" / "opentelemetry-instrumentation-logging"
    assert opt.is_dir(), "scripts/setup-venv installs opentelemetry-instrumentation-logging there"
    env = {**os.environ, "PYTHONPATH": str(opt)}
    result = subprocess.run(
        [sys.executable, "-c", COMPOSED, order], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    both, none = out["records"]
    assert both["eda_correlation_id"] == out["event"]
    assert both["otelTraceID"] == f"{0xABC:032x}" and both["otelSpanID"] == f"{0xDEF:016x}"
    assert both["otelTraceSampled"] is True and both["otelServiceName"] is not None  # the instrumentation's
    assert none["eda_correlation_id"] == "" and none["otelTraceID"] == "0"
    assert out["restored"]


# -- OpenTelemetry log records through the logging bridge ---------------------------------------


@pytest.fixture
def otel_logs(installed: None) -> Iterator[InMemoryLogRecordExporter]:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    assert add_event_log_processor(provider)
    assert not add_event_log_processor(provider)  # once per provider
    processors = provider._multi_log_record_processor._log_record_processors  # type: ignore[attr-defined]
    assert isinstance(processors[0], EventLogRecordProcessor)  # before the export processor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the SDK's bridge (the instrumentation's is alike)
        handler = LoggingHandler(logger_provider=provider)
    logger = logging.getLogger("bridged")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield exporter
    finally:
        logger.removeHandler(handler)
        provider.shutdown()


def _attributes(exporter: InMemoryLogRecordExporter) -> list[dict[str, Any]]:
    return [dict(r.log_record.attributes or {}) for r in exporter.get_finished_logs()]


def test_otel_log_records_carry_the_ids_as_eda_attributes(otel_logs: InMemoryLogRecordExporter) -> None:
    event, ctx = _in_flow()
    token = attach(ctx)
    try:
        logging.getLogger("bridged").info("in the flow")
    finally:
        detach(token)
    logging.getLogger("bridged").info("outside")
    inside, outside = _attributes(otel_logs)
    assert inside["eda.correlation_id"] == event.correlation_id
    assert inside["eda.causation_id"] == event.causation_id
    assert inside["messaging.message.id"] == event.event_id
    assert inside["eda.event_type"] == "payment_authorized"
    assert inside["eda.business_key"] == "order-7"
    for attributes in (inside, outside):
        assert not [k for k in attributes if k.startswith(("eda_", "otel"))]  # no record field copied raw
    assert not [k for k in outside if k.startswith("eda.")]
    record = otel_logs.get_finished_logs()[0].log_record
    assert record.trace_id == 0xABC and record.span_id == 0xDEF


def test_records_emitted_through_the_logs_api_get_the_ids_of_their_context() -> None:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    add_event_log_processor(provider)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    event, ctx = _in_flow()
    provider.get_logger("direct").emit(body="api", context=ctx)
    provider.shutdown()
    (attributes,) = _attributes(exporter)
    assert attributes["eda.correlation_id"] == event.correlation_id
    assert attributes["messaging.message.id"] == event.event_id


# -- structlog ------------------------------------------------------------------------------------


def test_the_structlog_processor_adds_the_ids_while_an_event_is_current() -> None:
    import structlog

    out = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(out), processors=[add_event_ids, structlog.processors.JSONRenderer()]
    )
    event, ctx = _in_flow()
    token = attach(ctx)
    try:
        logger.info("charged", amount=42)
    finally:
        detach(token)
    logger.info("idle")
    inside, outside = (json.loads(line) for line in out.getvalue().splitlines())
    assert inside["eda_correlation_id"] == event.correlation_id
    assert inside["eda_event_id"] == event.event_id
    assert inside["otelTraceID"] == f"{0xABC:032x}"
    assert inside["amount"] == 42
    assert outside == {"event": "idle"}


# -- lifecycle logs --------------------------------------------------------------------------------


def _run_bus(
    lifecycle: str, handler: Any, *, events: int = 1, retry: RetryPolicy | None = None
) -> list[logging.LogRecord]:
    logger = logging.getLogger("otel_eda.lifecycle")
    collect = Collect("%(message)s")
    logger.addHandler(collect)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    recorder = LifecycleLogger(Settings.from_environ({"OTEL_EDA_LOG_LIFECYCLE": lifecycle}))

    async def main() -> None:
        async with EventBus(
            service="shop", recorders=[recorder], retry=retry or RetryPolicy(3, 0.0), tracer_provider=TracerProvider()
        ) as bus:
            bus.subscribe("order_placed", handler, subscriber="payment")
            for i in range(events):
                await bus.publish("order_placed", {"card": "4111 1111 1111 1111"}, business_key=f"order-{i}")
            await bus.join()

    try:
        asyncio.run(main())
    finally:
        logger.removeHandler(collect)
        logger.setLevel(old_level)
    return collect.records


def _fails_once() -> Any:
    calls = {"n": 0}

    def handler(delivery: Delivery) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("payment gateway timed out")

    return handler


def test_failures_default_logs_a_retry_at_warning_with_the_exception(installed: None) -> None:
    records = _run_bus("failures", _fails_once())
    (retry,) = records
    assert retry.levelno == logging.WARNING
    assert retry.eda_stage == "retried" and retry.eda_attempt == 1  # type: ignore[attr-defined]
    assert retry.eda_error_type == "ConnectionError"  # type: ignore[attr-defined]
    assert retry.eda_error_message == "payment gateway timed out"  # type: ignore[attr-defined]
    assert retry.eda_subscriber == "payment" and retry.eda_business_key == "order-0"  # type: ignore[attr-defined]
    assert retry.eda_correlation_id == retry.eda_event_id  # type: ignore[attr-defined]  # a root event
    assert retry.otelTraceID != "0"  # type: ignore[attr-defined]  # the attempt's span, though it has ended
    assert "ConnectionError: payment gateway timed out" in retry.getMessage()


def test_dead_letters_at_error_and_rejections_at_info(installed: None) -> None:
    def always(delivery: Delivery) -> None:
        raise ValueError("declined")

    def rejects(delivery: Delivery) -> None:
        raise Rejected("not ours")

    dead = _run_bus("failures", always, retry=RetryPolicy(2, 0.0))
    assert [(r.eda_stage, r.levelno) for r in dead] == [  # type: ignore[attr-defined]
        ("retried", logging.WARNING),
        ("dead_lettered", logging.ERROR),
    ]
    (rejected,) = _run_bus("failures", rejects)
    assert rejected.levelno == logging.INFO
    assert rejected.eda_stage == "rejected"  # type: ignore[attr-defined]
    assert rejected.eda_error_message == "not ours"  # type: ignore[attr-defined]


def test_a_broker_transports_retries_and_dead_letters_are_logged_by_level(installed: None) -> None:
    """A transport on ``otel_eda.messaging`` (a broker's redelivery, a broker dead-letter queue):
    the same lifecycle records, at the same levels, with the exception's type and message."""
    from otel_eda.messaging import Outcome
    from otel_eda.testing import TelemetryCapture

    logger = logging.getLogger("otel_eda.lifecycle")
    collect = Collect("%(levelname)s %(message)s")
    logger.addHandler(collect)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with TelemetryCapture() as capture:
            rabbit = capture.messaging("rabbitmq")
            rabbit.recorders = (LifecycleLogger(Settings.from_environ({"OTEL_EDA_LOG_LIFECYCLE": "failures"})),)
            headers: dict[str, str] = {}
            with rabbit.publish("order_placed", headers, business_key="order-9") as sent:
                pass
            with rabbit.process(headers, destination="orders", consumer_group="billing", attempt=1) as first:
                first.settle(Outcome.RETRIED, ConnectionError("broker channel closed"))
            with rabbit.process(headers, destination="orders", consumer_group="billing", attempt=2) as last:
                last.settle(Outcome.DEAD_LETTERED, ValueError("card declined"))
    finally:
        logger.removeHandler(collect)
        logger.setLevel(old_level)
    records = [r for r in collect.records if r.eda_event_id == sent.event.event_id]  # type: ignore[attr-defined]
    assert [(r.eda_stage, r.levelno, r.eda_attempt) for r in records] == [  # type: ignore[attr-defined]
        ("retried", logging.WARNING, 1),
        ("dead_lettered", logging.ERROR, 2),
    ]
    retried, dead = records
    assert (retried.eda_error_type, retried.eda_error_message) == ("ConnectionError", "broker channel closed")  # type: ignore[attr-defined]
    assert (dead.eda_error_type, dead.eda_error_message) == ("ValueError", "card declined")  # type: ignore[attr-defined]
    for record in records:
        assert record.eda_subscriber == "billing" and record.eda_business_key == "order-9"  # type: ignore[attr-defined]
        assert record.eda_correlation_id == sent.event.correlation_id  # type: ignore[attr-defined]
        assert record.otelTraceID != "0"  # type: ignore[attr-defined]  # the attempt's span
    assert last.span.get_span_context().trace_id == int(dead.otelTraceID, 16)  # type: ignore[attr-defined]
    assert dead.getMessage().startswith("order_placed ") and "ValueError: card declined" in dead.getMessage()


def test_all_logs_every_stage_once_per_event_and_off_logs_nothing(installed: None) -> None:
    def ok(delivery: Delivery) -> None:
        pass

    records = _run_bus("all", ok, events=3)
    stages = [(r.eda_event_id, r.eda_stage) for r in records]  # type: ignore[attr-defined]
    assert len(stages) == len(set(stages))  # one line per event per stage
    per_event = {event_id for event_id, _ in stages}
    assert len(per_event) == 3
    for event_id in per_event:
        assert {s for e, s in stages if e == event_id} >= {"published", "received", "completed"}
    levels = {r.eda_stage: r.levelno for r in records}  # type: ignore[attr-defined]
    assert levels["completed"] == logging.INFO and levels["received"] == logging.DEBUG
    assert _run_bus("off", _fails_once()) == []


def test_a_json_formatter_prints_every_field(installed: None) -> None:
    from pythonjsonlogger.json import JsonFormatter

    records = _run_bus("failures", _fails_once())
    line = json.loads(JsonFormatter().format(records[0]))
    for field in (
        "eda_event_id",
        "eda_correlation_id",
        "eda_causation_id",
        "eda_event_type",
        "eda_business_key",
        "eda_stage",
        "eda_service",
        "eda_subscriber",
        "eda_attempt",
        "eda_duration_s",
        "eda_error_type",
        "eda_error_message",
        "otelTraceID",
        "otelSpanID",
    ):
        assert field in line, field
    assert line["eda_stage"] == "retried" and line["eda_event_type"] == "order_placed"


def test_lifecycle_records_through_the_bridge_carry_the_otel_names(otel_logs: InMemoryLogRecordExporter) -> None:
    logger = logging.getLogger("bridged")
    recorder = LifecycleLogger(Settings.from_environ({"OTEL_EDA_LOG_LIFECYCLE": "failures"}), logger=logger)

    async def main() -> None:
        async with EventBus(
            service="shop", recorders=[recorder], retry=RetryPolicy(3, 0.0), tracer_provider=TracerProvider()
        ) as bus:
            bus.subscribe("order_placed", _fails_once(), subscriber="payment")
            await bus.publish("order_placed")
            await bus.join()

    asyncio.run(main())
    (record,) = otel_logs.get_finished_logs()
    attributes = dict(record.log_record.attributes or {})
    assert attributes["eda.stage"] == "retried"
    assert attributes["error.type"] == "ConnectionError"
    assert attributes["messaging.consumer.group.name"] == "payment"
    assert attributes["eda.delivery.attempt"] == 1
    assert record.log_record.trace_id != 0  # the attempt's span, from the record's fields
    assert record.log_record.severity_text == "WARN"


# -- configure() -----------------------------------------------------------------------------------


def _run(code: str, **env: str) -> str:
    import os

    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environ.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", **env)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


CONFIGURED = """
import logging, sys
import otel_eda
from opentelemetry import _logs
from opentelemetry.context import attach
from otel_eda.flows import default_recorders
from otel_eda.logs.bridge import EventLogRecordProcessor
otel_eda.configure()
otel_eda.configure()
logging.basicConfig(stream=sys.stdout, format="%(eda_correlation_id)s %(message)s", level=logging.INFO)
event = otel_eda.EventContext.root("order_placed")
attach(otel_eda.with_event(event))
logging.getLogger("app").info("hello")
print("correlation", event.correlation_id)
provider = _logs.get_logger_provider()
processors = getattr(getattr(provider, "_multi_log_record_processor", None), "_log_record_processors", ())
print("processors", [type(p).__name__ for p in processors])
print("recorders", [repr(r) for r in default_recorders.installed()])
"""


def test_configure_installs_the_factory_the_processor_and_the_lifecycle_logger() -> None:
    out = _run(CONFIGURED, OTEL_LOGS_EXPORTER="console").splitlines()
    correlation_id = next(line.split()[1] for line in out if line.startswith("correlation"))
    assert f"{correlation_id} hello" in out
    processors = next(line for line in out if line.startswith("processors"))
    assert processors.startswith("processors ['EventLogRecordProcessor'") and processors.count("EventLog") == 1
    assert "recorders [\"LifecycleLogger('failures')\"]" in out


def test_configure_leaves_logs_alone_when_switched_off() -> None:
    code = CONFIGURED.replace('format="%(eda_correlation_id)s %(message)s"', 'format="%(message)s"')
    out = _run(code, OTEL_EDA_LOG_CORRELATION="false", OTEL_EDA_LOG_LIFECYCLE="off", OTEL_LOGS_EXPORTER="console")
    assert "hello" in out.splitlines()
    assert "processors []" in out or "EventLogRecordProcessor" not in out
    assert "recorders []" in out


# -- alerts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("severity", "state", "level"),
    [
        ("critical", "firing", logging.ERROR),
        ("warning", "firing", logging.WARNING),
        ("info", "firing", logging.INFO),
        ("critical", "resolved", logging.INFO),
    ],
)
def test_alerts_are_logged_at_the_level_of_their_severity(
    severity: str, state: str, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    from otel_eda.anomaly.alerts import Alert, AlertState, Severity
    from otel_eda.anomaly.engine import AnomalyEngine

    alert = Alert(
        name="ErrorsHigh",
        rule="errors",
        severity=Severity.parse(severity),
        state=AlertState(state),
        series_labels={"service": "payment"},
        value=0.5,
        threshold=0.1,
        score=1.0,
        started_at=0.0,
        ended_at=None,
        summary="errors 50%",
    )
    with caplog.at_level(logging.DEBUG, logger="otel_eda.anomaly.engine"):
        AnomalyEngine([])._deliver(alert)
    (record,) = [r for r in caplog.records if r.name == "otel_eda.anomaly.engine"]
    assert record.levelno == level


# -- the benchmark runs (it measures; this checks only that it writes its numbers) ------------------


@pytest.mark.timeout(120)
def test_the_log_benchmark_writes_every_case(tmp_path: Any) -> None:
    from pathlib import Path

    out = tmp_path / "bench.json"
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_logs.py"
    result = subprocess.run(
        [sys.executable, str(bench), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert set(data["cases"]) == {
        "plain",
        "plain.control",
        "factory.no_event",
        "factory.span_no_event",
        "factory.event",
        "factory.event.eda_format",
    }
    for case in data["cases"].values():
        for series in ("cpu_us", "wall_us", "cpu_ratio", "wall_ratio"):
            summary = case[series]
            assert summary["min"] <= summary["q1"] <= summary["median"] <= summary["q3"] <= summary["max"]
            assert len(summary["samples"]) == data["plan"]["reps"]
        assert case["cpu_us"]["median"] > 0
    assert data["cases"]["plain"]["cpu_ratio"]["median"] == 1.0  # paired with itself
    assert [goal["case"] for goal in data["goals"]] == ["factory.no_event", "factory.span_no_event"]
    for goal in data["goals"]:
        assert goal["ratio"] > 0 and isinstance(goal["met"], bool) and goal["max"] == 1.05
    assert "no event current (factory.no_event)" in result.stdout and "event current: " in result.stdout


def test_the_distro_installs_them_too(tmp_path: Any) -> None:
    """Under ``opentelemetry-instrument`` with otel-eda's distro and configurator."""
    import os
    from pathlib import Path

    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(CONFIGURED).replace("otel_eda.configure()\n", ""))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environ.update(
        OTEL_PYTHON_DISTRO="otel_eda",
        OTEL_PYTHON_CONFIGURATOR="otel_eda",
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="console",
    )
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    result = subprocess.run(
        [str(instrument), sys.executable, str(script)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    correlation_id = next(line.split()[1] for line in out if line.startswith("correlation"))
    assert f"{correlation_id} hello" in out
    assert "recorders [\"LifecycleLogger('failures')\"]" in out
    assert any(line.startswith("processors ['EventLogRecordProcessor'") for line in out)
