"""nats-py with otel-eda through a nats-server restart, JetStream on file storage: the client's own
errors only, failed sends counted, and flows that continue with intact ids once the server is back.
A server of its own (it is stopped)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from brokers import NatsServer, NatsStartError
from nats.js.api import StorageType, StreamConfig
from opentelemetry.trace import SpanKind, StatusCode

from otel_eda import semconv
from otel_eda.identity import EventContext, current_event
from otel_eda.testing import TelemetryCapture
from otel_eda.transports.nats.instrumentor import NATSInstrumentor, outgoing_event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    try:
        server.start()
    except NatsStartError as exc:
        server.stop()
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def instrumented(capture: TelemetryCapture) -> Iterator[TelemetryCapture]:
    instrumentor = NATSInstrumentor()
    instrumentor.instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider)
    try:
        yield capture
    finally:
        instrumentor.uninstrument()


def send_errors(capture: TelemetryCapture) -> dict[str, int]:
    """``messaging.client.operation.duration`` counts of ``send`` by ``error.type``."""
    found: dict[str, int] = {}
    for point in capture.points(semconv.METRIC_OPERATION_DURATION):
        attrs = point.attributes or {}
        if attrs.get(semconv.MESSAGING_OPERATION_NAME) == "send":
            key = str(attrs.get(semconv.ERROR_TYPE, "ok"))
            found[key] = found.get(key, 0) + point.count
    return found


async def test_a_restart_gives_the_clients_errors_counts_failed_sends_and_flows_resume(
    server: NatsServer, instrumented: TelemetryCapture
) -> None:
    capture = instrumented
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="ORDERS", subjects=["orders.>"], storage=StorageType.FILE))
    psub = await js.pull_subscribe("orders.placed", durable="billing")
    sent: list[EventContext] = []
    with outgoing_event() as out:
        for i in range(3):
            await js.publish("orders.placed", str(i).encode())
    sent += out.events
    handled: dict[str, EventContext | None] = {}
    children: list[EventContext] = []

    async def handle(msgs: list[Any]) -> None:
        for msg in msgs:
            event = current_event()
            assert event is not None
            with outgoing_event() as child:
                await js.publish("orders.billed", msg.data)
            children.extend(child.events)
            handled[event.event_id] = event
            await msg.ack()

    await handle(await psub.fetch(1, timeout=5))

    server.stop()
    errors: list[BaseException] = []
    unsure: list[EventContext] = []  # publishes that failed: the client may still send them after reconnecting
    for _ in range(2):
        try:
            with outgoing_event() as lost:
                await js.publish("orders.placed", b"lost", timeout=0.5)
        except Exception as exc:  # the client's own error, unchanged
            errors.append(exc)
        unsure += lost.events
    assert len(errors) == 2 and all(type(e).__module__.startswith("nats.") for e in errors), errors
    failed = send_errors(capture)
    assert sum(v for k, v in failed.items() if k != "ok") == 2, failed

    server.start()
    deadline = time.monotonic() + 60
    while not nc.is_connected:
        assert time.monotonic() < deadline, "the client did not reconnect"
        await asyncio.sleep(0.05)
    with outgoing_event() as after:
        await js.publish("orders.placed", b"after")
    sent += after.events
    while len(handled) < len(sent):
        assert time.monotonic() < deadline, f"{len(handled)} of {len(sent)} handled"
        with contextlib.suppress(nats.errors.TimeoutError):
            await handle(await psub.fetch(4, timeout=2))
    await nc.close()

    # the events stored before the restart come back with their own ids, in their own flows; a
    # publish that timed out while the server was away may have been stored after all (nats-py
    # sends what it buffered once it reconnects): then it too is handled with its own id
    published = {e.event_id: e for e in sent + unsure}
    assert set(e.event_id for e in sent) <= set(handled) <= set(published)
    assert all(handled[event_id] == published[event_id] for event_id in handled)
    assert sorted(c.causation_id or "" for c in children) == sorted(handled)
    assert {c.correlation_id for c in children} == {published[i].correlation_id for i in handled}
    processes = capture.spans(kind=SpanKind.CONSUMER)
    assert sorted((s.attributes or {})[semconv.MESSAGING_MESSAGE_ID] for s in processes) == sorted(handled)
    assert all((s.attributes or {})[semconv.EDA_OUTCOME] == "completed" for s in processes)
    failed_spans = [s for s in capture.spans(kind=SpanKind.PRODUCER) if s.status.status_code is StatusCode.ERROR]
    assert len(failed_spans) == 2


async def test_the_pending_gauges_keep_their_last_value_while_the_server_is_away(
    server: NatsServer, capture: TelemetryCapture
) -> None:
    """The gauges' callbacks read the background refresh's last answer: a collection never waits
    for the server (it is stopped here) nor for the event loop (blocked while collecting)."""
    instrumentor = NATSInstrumentor()
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider, pending_refresh_s=0.05
    )
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    stopped = False
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="LAG", subjects=["lag.>"], storage=StorageType.FILE))
        for i in range(4):
            await js.publish("lag.placed", str(i).encode())
        await js.pull_subscribe("lag.placed", durable="slow")  # the subscription object dropped at once

        def lag() -> list[float]:
            return [p.value for p in capture.points(semconv.METRIC_CONSUMER_LAG)]

        deadline = time.monotonic() + 20
        while lag() != [4]:
            assert time.monotonic() < deadline, lag()
            await asyncio.sleep(0.02)
        server.stop()
        stopped = True
        await asyncio.sleep(0.5)  # several refreshes fail meanwhile
        started = time.monotonic()
        assert lag() == [4]  # the loop is not running during this call: the snapshot is all it reads
        assert [p.value for p in capture.points(semconv.METRIC_CONSUMER_ACK_PENDING)] == [0]
        assert time.monotonic() - started < 5
    finally:
        with contextlib.suppress(Exception):  # nats-py may find its socket reset by the stop
            await nc.close()
        if stopped:
            server.start()
        instrumentor.uninstrument()
