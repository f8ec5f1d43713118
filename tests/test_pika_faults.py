"""pika with otel-eda through a RabbitMQ outage and restart mid-flow (``BlockingConnection``, which
does not reconnect: the application does, as pika's documentation shows). The application sees
pika's own errors and keeps running; a message being handled when the broker went ends ``failed``
(its ack never left the process) and its redelivery is the next attempt; every message the
application acknowledged is in the lifecycle records exactly once per acknowledgement; no span
stays open; the queue depth thread's failures while the broker is away are logged and counted,
and it reads the depth again once the broker is back. A node of its own (it is stopped)."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from brokers import RabbitBroker, RabbitStartError
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind

from otel_eda import _selfmetrics, semconv
from otel_eda.flows.records import LifecycleRecord, Stage
from otel_eda.identity import current_event
from otel_eda.testing import TelemetryCapture
from otel_eda.transports.pika.instrumentor import PikaInstrumentor
from otel_eda.transports.rabbitmq import outgoing_event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

WAIT_S = 120.0
QUEUE = "orders"
#: pika's errors of a broker that went away (the application's, not otel-eda's)
GONE = (pika.exceptions.AMQPError, OSError)


class OpenSpans(SpanProcessor):
    """Counts the process spans started and not yet ended."""

    def __init__(self) -> None:
        self.open: set[int] = set()
        self.lock = threading.Lock()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if span.kind is SpanKind.CONSUMER:
            with self.lock:
                self.open.add(span.context.span_id)

    def on_end(self, span: ReadableSpan) -> None:
        with self.lock:
            self.open.discard(span.context.span_id if span.context else 0)


def depths(capture: TelemetryCapture) -> list[Any]:
    """The queue depth gauge's values."""
    return [p.value for p in capture.points(semconv.METRIC_BROKER_QUEUE_DEPTH)]


def depth_errors(capture: TelemetryCapture) -> int:
    """The depth refreshes' failures counted in eda.internal.errors."""
    return sum(
        p.value
        for p in capture.points(semconv.METRIC_INTERNAL_ERRORS)
        if p.attributes.get(semconv.EDA_COMPONENT) == "queue_depth"
    )


def until(condition: Callable[[], bool], what: str, wait_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + wait_s
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RabbitBroker]:
    broker = RabbitBroker(tmp_path / "rabbitmq")
    try:
        broker.start()
    except RabbitStartError as exc:
        broker.stop()
        pytest.fail(str(exc), pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


def connect(url: str, stop: threading.Event) -> pika.BlockingConnection:
    """The application's reconnect loop."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return pika.BlockingConnection(pika.URLParameters(url))
        except GONE:
            assert time.monotonic() < deadline and not stop.is_set(), "the broker never came back"
            time.sleep(0.2)


class Consumer:
    """A consumer thread with its own ``BlockingConnection`` that reconnects after an outage. The
    handling of one message (the first after :meth:`hold`) waits until :meth:`release`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acked: list[str] = []
        self.errors: list[BaseException] = []
        self.reconnects = 0
        self.stop = threading.Event()
        self.holding = threading.Event()
        self._hold = False
        self._released = threading.Event()
        self.thread = threading.Thread(target=self._run, name="consumer")

    def hold(self) -> None:
        self._hold = True

    def release(self) -> None:
        self._released.set()

    def handle(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        event = current_event()
        assert event is not None and event.event_id == properties.headers["eda-event-id"]
        if self._hold:
            self._hold = False
            self.holding.set()
            self._released.wait(WAIT_S)  # the broker goes away meanwhile
        time.sleep(0.01)  # the work
        try:
            channel.basic_ack(method.delivery_tag)
        except GONE:  # pika's own error: the connection went; the broker redelivers it
            return
        self.acked.append(event.event_id)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                connection = connect(self.url, self.stop)
                try:
                    channel = connection.channel()
                    channel.basic_qos(prefetch_count=5)
                    channel.basic_consume(QUEUE, self.handle)
                    while not self.stop.is_set() and connection.is_open:
                        connection.process_data_events(time_limit=0.1)
                    if not connection.is_open:  # closed while a handler swallowed pika's error
                        self.reconnects += 1
                finally:
                    if connection.is_open:
                        connection.close()
            except GONE:
                self.reconnects += 1
                time.sleep(0.2)
            except BaseException:
                self.errors.append(traceback.format_exc())
                return


def publish(url: str, count: int, start: int) -> list[str]:
    """Publish with confirms, reconnecting and retrying a message whose publish failed; the ids sent."""
    sent: list[str] = []
    stop = threading.Event()
    connection = connect(url, stop)
    channel = connection.channel()
    channel.confirm_delivery()
    deadline = time.monotonic() + WAIT_S
    i = start
    while i < start + count:
        try:
            with outgoing_event(event_type="order_placed") as out:
                channel.basic_publish(
                    "", QUEUE, str(i).encode(), pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
                )
            sent.append(out.events[0].event_id)
            i += 1
        except GONE:  # pika's own error during the outage: the application reconnects and retries
            assert time.monotonic() < deadline, "publishing did not recover"
            connection = connect(url, stop)
            channel = connection.channel()
            channel.confirm_delivery()
    connection.close()
    return sent


def test_a_broker_outage_mid_flow(
    broker: RabbitBroker, capture: TelemetryCapture, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "otel_eda.transports.pika.depth")
    errors = capture.meter_provider.get_meter("t").create_counter(semconv.METRIC_INTERNAL_ERRORS)
    monkeypatch.setattr(_selfmetrics, "_error_counter", lambda: errors)
    records: list[LifecycleRecord] = []
    open_spans = OpenSpans()
    capture.tracer_provider.add_span_processor(open_spans)
    instrumentor = PikaInstrumentor()
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider,
        meter_provider=capture.meter_provider,
        recorders=[type("R", (), {"record": staticmethod(records.append)})()],
        depth_refresh_s=0.2,
    )

    consumer = Consumer(broker.url)
    try:
        with pika.BlockingConnection(pika.URLParameters(broker.url)) as setup:
            setup.channel().queue_declare(QUEUE, durable=True)
        consumer.thread.start()
        sent = publish(broker.url, 30, 0)
        until(lambda: set(sent) <= set(consumer.acked), "the first 30 acknowledged")
        until(lambda: depths(capture) == [0], "the depth read")
        # the broker goes away while a message is being handled
        consumer.hold()
        held = publish(broker.url, 1, 30)
        assert consumer.holding.wait(WAIT_S)
        broker.stop()
        until(lambda: depth_errors(capture) >= 2, "the depth thread's failures counted")
        assert depths(capture) == [], "no stale depth while the broker is away"
        consumer.release()  # its ack cannot leave: pika raises, the application goes on
        broker.start()
        sent += held + publish(broker.url, 20, 31)
        until(
            lambda: set(sent) <= set(consumer.acked) or not consumer.thread.is_alive(),
            f"{len(set(sent) - set(consumer.acked))} never acknowledged",
        )
        assert consumer.thread.is_alive(), "\n".join(map(str, consumer.errors))
        until(lambda: depths(capture) == [0], "the depth read again after the outage")
    finally:
        consumer.stop.set()
        consumer.release()
        consumer.thread.join(WAIT_S)
        instrumentor.uninstrument()
    assert not consumer.errors, consumer.errors  # nothing of otel-eda's reached the application
    assert consumer.reconnects >= 1
    # the held message: its ack failed (recorded failed), the broker redelivered it (attempt 2)
    (held_id,) = held
    held_stages = [(r.stage, r.attempt) for r in records if r.event_id == held_id]
    assert (Stage.FAILED, 1) in held_stages and (Stage.COMPLETED, 2) in held_stages, held_stages
    assert not open_spans.open, f"{len(open_spans.open)} process spans never ended"
    completed = collections.Counter(r.event_id for r in records if r.stage is Stage.COMPLETED)
    assert completed == collections.Counter(consumer.acked), "one completed record per acknowledgement"
    # after the outage: ids intact, consumer spans linked to their producers
    sends: dict[Any, ReadableSpan] = {
        (s.attributes or {}).get(semconv.MESSAGING_MESSAGE_ID): s for s in capture.spans(kind=SpanKind.PRODUCER)
    }
    after = set(sent[31:])
    linked = 0
    for span in capture.spans(kind=SpanKind.CONSUMER):
        event_id = (span.attributes or {}).get(semconv.MESSAGING_MESSAGE_ID)
        if event_id in after:
            assert span.links[0].context.span_id == sends[event_id].context.span_id
            linked += 1
    assert linked >= len(after)
    # the depth thread's outage: one WARNING, later failures at DEBUG, the recovery at INFO
    depth_logs = [r for r in caplog.records if r.name == "otel_eda.transports.pika.depth"]
    assert [r.levelno for r in depth_logs if r.levelno >= logging.WARNING] == [logging.WARNING]
    assert any(r.levelno == logging.INFO and "read again" in r.getMessage() for r in depth_logs)


def test_a_frozen_broker_is_noticed_by_the_depth_thread_within_seconds(
    broker: RabbitBroker, capture: TelemetryCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A broker that stops answering without closing its sockets (a frozen node, a network
    # partition): the depth thread's passive declare would wait for the broker's heartbeat
    # (60 s and more); its own connection asks for a 5 s heartbeat, so the depth is not
    # reported stale for long and the failure is counted.
    errors = capture.meter_provider.get_meter("t").create_counter(semconv.METRIC_INTERNAL_ERRORS)
    monkeypatch.setattr(_selfmetrics, "_error_counter", lambda: errors)
    instrumentor = PikaInstrumentor()
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider, depth_refresh_s=0.2
    )

    node = broker.pids()["beam"]
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        channel = connection.channel()
        channel.queue_declare(QUEUE)
        channel.basic_get(QUEUE)  # the queue is tracked
        until(lambda: depths(capture) == [0], "the depth read")
        os.kill(node, signal.SIGSTOP)
        try:
            until(
                lambda: depth_errors(capture) >= 1 and depths(capture) == [], "the frozen broker noticed", wait_s=40.0
            )
        finally:
            os.kill(node, signal.SIGCONT)
        until(lambda: depths(capture) == [0], "the depth read again")
    finally:
        instrumentor.uninstrument()
        with contextlib.suppress(Exception):
            connection.close()
