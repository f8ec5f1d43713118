"""The transport contract: the tests every transport built on :mod:`otel_eda.messaging` passes.

Write a :class:`Harness` for your transport (publish through its instrumented producer,
send raw headers past the instrumentation, subscribe a handler, wait until all is handled)
and subclass :class:`TransportContract` in a test module with an async ``harness()``
context manager; pytest (with pytest-asyncio in auto mode) collects the inherited tests::

    class TestMyTransport(TransportContract):
        @contextlib.asynccontextmanager
        async def harness(self) -> AsyncIterator[Harness]:
            async with MyHarness() as h:
                yield h

What it checks: the identity, trace context and baggage cross the transport; a handler's
own publish is a child event; metadata arrives; headers in the transport's own carrier
shape (``bytes`` values, a list of ``(str, bytes)``) are read; hostile carriers (invalid
UTF-8, nested and non-string values, huge values, CR/LF) never raise, are counted and are
handled as new flows; a failing handler is recorded once per attempt; a transport that
redelivers shows its delivery count as ``eda.delivery.attempt``; each delivery is counted
once in ``messaging.client.consumed.messages``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Protocol
from unittest import mock

from opentelemetry.trace import SpanKind, StatusCode

from otel_eda import _selfmetrics, semconv
from otel_eda.identity import EventContext, current_event, flow_ids
from otel_eda.testing import TelemetryCapture

__all__ = ["Handled", "Harness", "TransportContract"]


def _pytest_asyncio_mark() -> Any:
    try:
        import pytest
    except ImportError:  # the contract is only run under pytest
        return None
    return pytest.mark.asyncio


Handler = Callable[[EventContext, Any], "Awaitable[None] | None"]


class Handled:
    """What a contract handler saw: the event handed over and what was current."""

    def __init__(self, event: EventContext, payload: Any) -> None:
        self.event = event
        self.payload = payload
        self.current = current_event()
        self.ids = flow_ids()


class Harness(Protocol):
    """One transport under test, on ``capture``'s providers."""

    capture: TelemetryCapture
    #: the transport's ``messaging.system``
    system: str
    #: whether a failing handler gets the message again, with a higher attempt number
    redelivers: bool
    #: whether such a redelivery is a new delivery of the transport (a broker's requeue:
    #: counted again in messaging.client.consumed.messages) rather than an in-process retry
    counts_redeliveries: bool

    async def publish(
        self, event_type: str, payload: Any, *, metadata: Mapping[str, str] | None = None
    ) -> EventContext:
        """Publish through the instrumented client (inside ``outgoing_event`` or the
        transport's own API) and return the event sent. A harness whose transport takes the
        application's own headers also sets ``application_headers = True`` and accepts
        ``headers`` (``Mapping[str, str]``), passed to the client in its own shape."""
        ...

    def subscribe(self, event_type: str, handler: Handler) -> None: ...

    async def send_raw(self, event_type: str, headers: Mapping[str, Any], payload: Any) -> None:
        """Send a message whose headers are exactly ``headers`` (converted to the transport's
        own carrier shape, values as the transport carries them: ``str`` or ``bytes``)."""
        ...

    async def drain(self) -> None:
        """Wait until every message sent so far has been handled (retries included)."""
        ...


HOSTILE_HEADERS: tuple[Mapping[str, Any], ...] = (
    {"eda-event-id": b"\xff\xfe\xfd", "eda-event-type": "order_placed"},
    {"eda-event-id": "x" * 100_000, "traceparent": "00-" + "f" * 5000},
    {"eda-event-id": "abc\r\nSet-Cookie: x", "baggage": f"{semconv.EDA_CORRELATION_ID}=\r\n" * 200},
    {"eda-event-type": "order placed", "eda-event-created": "-1", "eda-business-key": "a" * 10_000},
    {"traceparent": "garbage", "tracestate": "\x00", "eda-meta-Bad Key": "v", "eda-meta-ok": "\x07"},
    {"ce-id": "bad id!", "ce-type": "order_placed", "ce-time": "yesterday"},
)


class TransportContract:
    """Inherit and provide :meth:`harness`; see the module documentation."""

    # The tests are coroutines: marked for pytest-asyncio, so that they run (rather than
    # being skipped) in its strict mode too. Without pytest installed the mark is absent.
    pytestmark: ClassVar[list[Any]] = [mark for mark in (_pytest_asyncio_mark(),) if mark is not None]

    def harness(self) -> contextlib.AbstractAsyncContextManager[Harness]:
        raise NotImplementedError

    async def test_identity_and_trace_context_cross_the_transport(self) -> None:
        async with self.harness() as h:
            seen: list[Handled] = []
            h.subscribe("order_placed", lambda event, payload: seen.append(Handled(event, payload)))
            sent = await h.publish("order_placed", {"order": 1})
            await h.drain()
            (got,) = seen
            assert got.event.event_id == sent.event_id and got.event.event_type == "order_placed"
            assert got.current == got.event, "the handled event is current in the handler"
            assert got.ids is not None and got.ids.correlation_id == sent.correlation_id
            (producer,) = h.capture.spans(kind=SpanKind.PRODUCER)
            (consumer,) = h.capture.spans(kind=SpanKind.CONSUMER)
            assert producer.name == "send order_placed" and consumer.name.startswith("process ")
            assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]
            assert (consumer.attributes or {})[semconv.MESSAGING_MESSAGE_ID] == sent.event_id
            assert (consumer.attributes or {})[semconv.EDA_OUTCOME] == "completed"
            assert (consumer.attributes or {})[semconv.MESSAGING_SYSTEM] == h.system

    async def test_a_handlers_publish_is_a_child_event(self) -> None:
        async with self.harness() as h:
            children: list[EventContext] = []

            async def charge(event: EventContext, payload: Any) -> None:
                children.append(await h.publish("payment_authorized", None))

            h.subscribe("order_placed", charge)
            h.subscribe("payment_authorized", lambda event, payload: None)
            root = await h.publish("order_placed", None)
            await h.drain()
            (child,) = children
            assert (child.correlation_id, child.causation_id) == (root.event_id, root.event_id)

    async def test_metadata_reaches_the_handler(self) -> None:
        async with self.harness() as h:
            seen: list[Handled] = []
            h.subscribe("order_placed", lambda event, payload: seen.append(Handled(event, payload)))
            await h.publish("order_placed", None, metadata={"tenant": "acme", "region": "eu-west-1"})
            await h.drain()
            assert dict(seen[0].event.metadata) == {"tenant": "acme", "region": "eu-west-1"}

    async def test_headers_in_the_transports_own_shape_are_read(self) -> None:
        async with self.harness() as h:
            seen: list[Handled] = []
            h.subscribe("order_placed", lambda event, payload: seen.append(Handled(event, payload)))
            event = EventContext.root("order_placed", business_key="order-7")
            headers = {
                "eda-event-id": event.event_id.encode(),
                "eda-event-type": b"order_placed",
                "eda-event-created": str(event.created_ns).encode(),
                "eda-business-key": b"order-7",
                "traceparent": b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "baggage": f"{semconv.EDA_CORRELATION_ID}={event.correlation_id}".encode(),
            }
            await h.send_raw("order_placed", headers, None)
            await h.drain()
            (got,) = seen
            assert (got.event.event_id, got.event.business_key) == (event.event_id, "order-7")
            (consumer,) = h.capture.spans(kind=SpanKind.CONSUMER)
            assert [f"{link.context.trace_id:032x}" for link in consumer.links] == ["0af7651916cd43dd8448eb211c80319c"]

    async def test_hostile_carriers_never_raise_and_are_counted(self) -> None:
        async with self.harness() as h:
            seen: list[Handled] = []
            h.subscribe("order_placed", lambda event, payload: seen.append(Handled(event, payload)))
            counter = h.capture.meter_provider.get_meter("contract").create_counter(semconv.METRIC_INVALID_HEADERS)
            before = h.capture.counter_total(semconv.METRIC_INVALID_HEADERS)
            with mock.patch.object(_selfmetrics, "_invalid_counter", lambda: counter):
                for headers in HOSTILE_HEADERS:
                    await h.send_raw("order_placed", headers, None)
                await h.drain()
            assert len(seen) == len(HOSTILE_HEADERS), "every hostile message is still handled"
            for got in seen:  # as a new, valid flow
                assert got.event.correlation_id == got.event.event_id and got.event.causation_id is None
            assert h.capture.counter_total(semconv.METRIC_INVALID_HEADERS) - before >= len(HOSTILE_HEADERS)
            for span in h.capture.spans():
                text = span.to_json()
                assert "Set-Cookie" not in text and "\\r\\n" not in text

    async def test_a_failing_handler_is_recorded_on_each_attempt(self) -> None:
        async with self.harness() as h:
            attempts: list[int] = []

            def fails_once(event: EventContext, payload: Any) -> None:
                attempts.append(len(attempts) + 1)
                if len(attempts) == 1:
                    raise ConnectionError("down")

            h.subscribe("order_placed", fails_once)
            with contextlib.suppress(Exception):  # a synchronous transport may report it to the publisher
                await h.publish("order_placed", None)
            await h.drain()
            consumers = h.capture.spans(kind=SpanKind.CONSUMER)
            first = consumers[0]
            assert first.status.status_code is StatusCode.ERROR
            assert (first.attributes or {})[semconv.ERROR_TYPE] == "ConnectionError"
            assert (first.attributes or {})[semconv.EDA_OUTCOME] in ("failed", "retried")
            if h.redelivers:
                assert [(s.attributes or {})[semconv.EDA_DELIVERY_ATTEMPT] for s in consumers] == [1, 2]
                assert (consumers[-1].attributes or {})[semconv.EDA_OUTCOME] == "completed"
            consumed = h.capture.counter_total(semconv.METRIC_CONSUMED_MESSAGES)
            assert consumed == (2 if h.redelivers and h.counts_redeliveries else 1)

    async def test_forwarded_headers_carry_only_the_new_events_identity(self) -> None:
        """An application that forwards a consumed message's headers on a new publish sends the
        new event's identity and trace context: no old ``tracestate``, business key or metadata
        survives."""
        import pytest  # only here: the contract is only run under pytest

        async with self.harness() as h:
            if not getattr(h, "application_headers", False):
                pytest.skip("this transport's publish takes no headers of the application's")
            seen: list[Handled] = []
            h.subscribe("order_shipped", lambda event, payload: seen.append(Handled(event, payload)))
            old = EventContext.root("order_placed", business_key="order-7", metadata={"tenant": "acme"})
            forwarded = {
                "eda-event-id": old.event_id,
                "eda-event-type": "order_placed",
                "eda-event-created": str(old.created_ns),
                "eda-business-key": "order-7",
                "eda-meta-tenant": "acme",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "tracestate": "vendor=stale",
                "baggage": f"{semconv.EDA_CORRELATION_ID}={old.correlation_id}",
                "x-request-id": "r-1",
            }
            sent = await h.publish("order_shipped", None, headers=forwarded)  # type: ignore[call-arg]
            await h.drain()
            (got,) = seen
            assert got.event.event_id == sent.event_id != old.event_id
            assert got.event.correlation_id == sent.correlation_id != old.correlation_id
            assert (got.event.business_key, dict(got.event.metadata)) == (None, {})
            (producer,) = h.capture.spans(kind=SpanKind.PRODUCER)
            (consumer,) = h.capture.spans(kind=SpanKind.CONSUMER)
            (link,) = consumer.links
            assert link.context.span_id == producer.context.span_id
            assert "vendor" not in link.context.trace_state

    async def test_many_messages_keep_their_own_identity(self) -> None:
        async with self.harness() as h:
            seen: list[Handled] = []
            h.subscribe("order_placed", lambda event, payload: seen.append(Handled(event, payload)))
            sent = await asyncio.gather(*(h.publish("order_placed", i) for i in range(20)))
            await h.drain()
            assert sorted(g.event.event_id for g in seen) == sorted(e.event_id for e in sent)
            assert all(g.current == g.event for g in seen)
            assert h.capture.counter_total(semconv.METRIC_CONSUMED_MESSAGES) == 20
