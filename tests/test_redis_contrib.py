"""otel-eda's Redis Streams instrumentation beside the contrib redis instrumentation
(``opentelemetry-instrumentation-redis``), against the session's real redis-server.

The contrib one makes a CLIENT span per command; otel-eda's makes the messaging spans. Both
run: the ``XADD`` and ``XACK`` command spans are children of otel-eda's send and process spans,
the ``XREADGROUP`` command span is a sibling of otel-eda's receive span (the receive span is
made after the call returns, in the caller's context), and there is never a second messaging
span.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import redis.asyncio
from brokers import RedisServer, unique_name
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from otel_eda import semconv
from otel_eda.testing import TelemetryCapture
from otel_eda.transports.redis.instrumentor import RedisStreamsInstrumentor, processing

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def both(capture: TelemetryCapture) -> Iterator[TelemetryCapture]:
    ours, contrib = RedisStreamsInstrumentor(), RedisInstrumentor()
    contrib.instrument(tracer_provider=capture.tracer_provider)
    ours.instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider)
    try:
        yield capture
    finally:
        ours.uninstrument()
        contrib.uninstrument()


def check(spans: list[ReadableSpan], stream: str) -> None:
    by_id = {s.context.span_id: s for s in spans}

    def parent(span: ReadableSpan) -> str | None:
        return by_id[span.parent.span_id].name if span.parent is not None and span.parent.span_id in by_id else None

    (send,) = [s for s in spans if s.kind is SpanKind.PRODUCER]
    (process,) = [s for s in spans if s.kind is SpanKind.CONSUMER]
    (receive,) = [s for s in spans if s.name == f"receive {stream}"]
    assert (send.name, process.name) == (f"send {stream}", f"process {stream}")
    assert [parent(s) for s in spans if s.name == "XADD"] == [f"send {stream}"]
    assert [parent(s) for s in spans if s.name == "XACK"] == [f"process {stream}"]
    (xreadgroup,) = [s for s in spans if s.name == "XREADGROUP"]
    assert xreadgroup.parent == receive.parent  # siblings (both roots here)
    assert (xreadgroup.start_time or 0) >= (receive.start_time or 0)
    assert (xreadgroup.end_time or 0) <= (receive.end_time or 0)
    messaging = [s for s in spans if semconv.MESSAGING_OPERATION_TYPE in (s.attributes or {})]
    assert sorted(s.name for s in messaging) == sorted([f"send {stream}", f"receive {stream}", f"process {stream}"])
    assert all(s.kind is SpanKind.CLIENT for s in spans if s.name in ("XADD", "XACK", "XREADGROUP"))


def test_sync_client_command_spans_nest_under_otel_edas_spans(
    both: TelemetryCapture, redis_server: RedisServer
) -> None:
    stream, group = unique_name("orders"), unique_name("billing")
    client = redis.Redis(**redis_server.client_kwargs)
    client.xgroup_create(stream, group, id="0", mkstream=True)
    both.exporter.clear()
    client.xadd(stream, {"order": "1"})
    for _, entries in client.xreadgroup(group, "c1", {stream: ">"}):
        for entry in entries:
            with processing(entry):
                client.xack(stream, group, entry[0])
    client.close()
    check(both.spans(), stream)


async def test_asyncio_client_command_spans_nest_under_otel_edas_spans(
    both: TelemetryCapture, redis_server: RedisServer
) -> None:
    stream, group = unique_name("orders"), unique_name("billing")
    client = redis.asyncio.Redis(**redis_server.client_kwargs)
    await client.xgroup_create(stream, group, id="0", mkstream=True)
    both.exporter.clear()
    await client.xadd(stream, {"order": "1"})
    for _, entries in await client.xreadgroup(group, "c1", {stream: ">"}):
        for entry_id, _fields in entries:  # no processing(): the loop hands the entry over, XACK settles it
            await client.xack(stream, group, entry_id)
    await client.aclose()
    check(both.spans(), stream)
