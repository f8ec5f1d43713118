"""otel-eda's nats-py instrumentation against a real nats-server with JetStream (``scripts/nats``):
core publish/subscribe and request/reply, JetStream publish, push and pull consumers, settling,
redeliveries, dead letters and the pending gauges."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest
from brokers import NatsServer, unique_name
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, StorageType, StreamConfig
from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from otel_eda import semconv
from otel_eda.flows.records import LifecycleRecord, Stage
from otel_eda.identity import EventContext, current_event
from otel_eda.identity.propagation import HEADER_EVENT_ID
from otel_eda.messaging import current_processing
from otel_eda.testing import TelemetryCapture
from otel_eda.transports.nats.instrumentor import NATSInstrumentor, outgoing_event, processing

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def attr(span: ReadableSpan, key: str) -> Any:
    return (span.attributes or {}).get(key)


def by_event_id(spans: list[ReadableSpan], event_id: str) -> ReadableSpan:
    found = [s for s in spans if attr(s, semconv.MESSAGING_MESSAGE_ID) == event_id]
    assert len(found) == 1, f"{len(found)} spans of event {event_id}"
    return found[0]


class Recorded:
    """A lifecycle record sink that keeps every record."""

    def __init__(self) -> None:
        self.items: list[LifecycleRecord] = []

    def record(self, record: LifecycleRecord) -> None:
        self.items.append(record)

    def of(self, event_id: str) -> list[tuple[Stage, int]]:
        return [(r.stage, r.attempt) for r in self.items if r.event_id == event_id]


class Instrumented:
    def __init__(self, server: NatsServer, capture: TelemetryCapture, store: Recorded) -> None:
        self.server = server
        self.capture = capture
        self.store = store
        self.subject = unique_name("orders").replace("-", "_")
        self.stream = self.subject.upper()

    def spans(self, name: str | None = None, kind: SpanKind | None = None) -> list[ReadableSpan]:
        return self.capture.spans(name=name, kind=kind)

    async def stream_of(self, nc: Client, *, storage: StorageType = StorageType.MEMORY) -> Any:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=self.stream, subjects=[f"{self.subject}.>"], storage=storage))
        return js


@pytest.fixture
def store() -> Recorded:
    return Recorded()


@pytest.fixture
def instrumented(nats_server: NatsServer, capture: TelemetryCapture, store: Recorded) -> Iterator[Instrumented]:
    instrumentor = NATSInstrumentor()
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider,
        meter_provider=capture.meter_provider,
        recorders=[store],
        pending_refresh_s=0.05,
    )
    try:
        yield Instrumented(nats_server, capture, store)
    finally:
        instrumentor.uninstrument()


@pytest.fixture
async def nc(instrumented: Instrumented) -> AsyncIterator[Client]:
    client = await nats.connect(instrumented.server.url)
    yield client
    await client.close()


async def wait_for(predicate: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


# -- core NATS --------------------------------------------------------------------------------
async def test_core_publish_subscribe_carries_identity_and_runs_the_callback_in_context(
    instrumented: Instrumented, nc: Client
) -> None:
    t = instrumented
    seen: list[tuple[Msg, EventContext | None, Any, Any]] = []
    children: list[EventContext] = []

    async def handle(msg: Msg) -> None:
        seen.append((msg, current_event(), trace.get_current_span(), baggage.get_baggage("eda.correlation_id")))
        with outgoing_event(event_type="payment_requested") as out:
            await nc.publish(t.subject + ".payments", b"charge")
        children.extend(out.events)

    await nc.subscribe(t.subject + ".created", cb=handle)
    with outgoing_event(event_type="order_placed", business_key="order-7") as out:
        await nc.publish(t.subject + ".created", b"order 7", headers={"app": "kept", "traceparent": "stale"})
    await wait_for(lambda: len(children) == 1, "the handler")
    (sent,) = out.events
    msg, event, span, correlation = seen[0]
    assert msg.headers is not None and msg.headers["app"] == "kept"
    assert msg.headers[HEADER_EVENT_ID] == sent.event_id
    assert msg.headers["traceparent"] != "stale"
    assert event is not None and (event.event_id, event.event_type, event.business_key) == (
        sent.event_id,
        "order_placed",
        "order-7",
    )
    assert correlation == sent.correlation_id
    (send,) = t.spans(name=f"send {t.subject}.created", kind=SpanKind.PRODUCER)
    (process,) = t.spans(name=f"process {t.subject}.created", kind=SpanKind.CONSUMER)
    assert span.get_span_context().span_id == process.context.span_id, "the process span is current in the callback"
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert attr(process, semconv.MESSAGING_SYSTEM) == "nats"
    assert attr(process, semconv.EDA_DELIVERY_ATTEMPT) == 1
    assert attr(process, semconv.EDA_OUTCOME) == "completed"
    (child,) = children
    assert (child.correlation_id, child.causation_id) == (sent.event_id, sent.event_id)


async def test_a_request_and_its_reply_a_child_event_of_the_request(instrumented: Instrumented, nc: Client) -> None:
    t = instrumented
    replies: list[EventContext | None] = []

    async def respond(msg: Msg) -> None:
        await msg.respond(b"pong")
        replies.append(current_event())

    await nc.subscribe(t.subject + ".ping", queue="responders", cb=respond)
    with outgoing_event(event_type="ping") as out:
        reply = await nc.request(t.subject + ".ping", b"ping", timeout=5)
    (request_event,) = out.events
    await wait_for(lambda: len(t.spans(kind=SpanKind.CONSUMER)) == 1, "the responder's handling to end")
    assert reply.data == b"pong"
    assert reply.headers is not None
    reply_id = reply.headers[HEADER_EVENT_ID]
    assert reply_id != request_event.event_id
    (process,) = t.spans(name=f"process {t.subject}.ping", kind=SpanKind.CONSUMER)
    assert attr(process, semconv.MESSAGING_CONSUMER_GROUP_NAME) == "responders"
    (reply_send,) = t.spans(name="send _INBOX", kind=SpanKind.PRODUCER)
    assert attr(reply_send, semconv.EDA_CAUSATION_ID) == request_event.event_id
    assert attr(reply_send, semconv.EDA_CORRELATION_ID) == request_event.correlation_id
    assert attr(reply_send, semconv.EDA_EVENT_TYPE) == "reply"
    assert reply_send.parent is not None and reply_send.parent.span_id == process.context.span_id
    (received,) = t.spans(name=f"request {t.subject}.ping", kind=SpanKind.CLIENT)
    assert attr(received, semconv.MESSAGING_OPERATION_TYPE) == "receive"
    assert [link.context.span_id for link in received.links] == [reply_send.context.span_id]
    assert attr(received, semconv.MESSAGING_MESSAGE_ID) == reply_id
    # the JetStream API and the request's own inbox subscription are never application messages
    assert all(not s.name.startswith(("send $", "process _INBOX")) for s in t.spans())


async def test_next_msg_and_the_messages_iterator_hand_each_message_over(
    instrumented: Instrumented, nc: Client
) -> None:
    t = instrumented
    sub = await nc.subscribe(t.subject + ".pull")
    with outgoing_event() as out:
        for i in range(3):
            await nc.publish(t.subject + ".pull", str(i).encode())
    first = await sub.next_msg(timeout=5)
    assert current_event() is not None and current_event().event_id == out.events[0].event_id  # type: ignore[union-attr]
    seen = [current_event()]
    async for msg in sub.messages:
        seen.append(current_event())
        if msg.data == b"2":
            break
    await sub.unsubscribe()
    assert current_event() is None or current_event() == seen[-1]
    assert [e.event_id for e in seen if e is not None] == [e.event_id for e in out.events]
    processes = t.spans(kind=SpanKind.CONSUMER)
    assert len(processes) == 3 and all(attr(s, semconv.EDA_OUTCOME) == "completed" for s in processes)
    assert first.data == b"0"


# -- JetStream --------------------------------------------------------------------------------
async def test_jetstream_publish_records_the_puback_and_msg_id_deduplicates_a_republished_event(
    nats_server: NatsServer, capture: TelemetryCapture
) -> None:
    instrumentor = NATSInstrumentor()
    instrumentor.instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider, msg_id=True)
    t = Instrumented(nats_server, capture, Recorded())
    client = await nats.connect(nats_server.url)
    try:
        js = await t.stream_of(client)
        with outgoing_event(event_type="order_placed") as out:
            ack = await js.publish(t.subject + ".placed", b"order 1", headers={"app": "kept"})
        (event,) = out.events
        with outgoing_event(event=event):  # the same event again: JetStream drops it
            again = await js.publish(t.subject + ".placed", b"order 1")
        info = await js.stream_info(t.stream)
    finally:
        await client.close()
        instrumentor.uninstrument()
    assert (ack.stream, ack.seq, again.seq, again.duplicate) == (t.stream, 1, 1, True)
    assert info.state.messages == 1
    first, second = capture.spans(name=f"send {t.subject}.placed", kind=SpanKind.PRODUCER)
    assert attr(first, semconv.EDA_NATS_STREAM) == t.stream and attr(first, semconv.EDA_NATS_STREAM_SEQUENCE) == 1
    assert attr(first, semconv.MESSAGING_MESSAGE_ID) == attr(second, semconv.MESSAGING_MESSAGE_ID) == event.event_id
    assert attr(second, semconv.EDA_NATS_DUPLICATE) is True and attr(first, semconv.EDA_NATS_DUPLICATE) is None
    # one producer span per publish: the PubAck request inside is not another message
    assert len(capture.spans(kind=SpanKind.PRODUCER)) == 2
    assert capture.histogram_count(semconv.METRIC_OPERATION_DURATION, {semconv.MESSAGING_OPERATION_NAME: "send"}) == 2


async def test_jetstream_pull_fetch_one_receive_span_with_links_and_each_message_current(
    instrumented: Instrumented, nc: Client
) -> None:
    t = instrumented
    js = await t.stream_of(nc)
    with outgoing_event() as out:
        for i in range(3):
            await js.publish(f"{t.subject}.placed", str(i).encode())
    psub = await js.pull_subscribe(f"{t.subject}.>", durable="billing")
    msgs = await psub.fetch(3, timeout=5)
    assert current_event() is None, "nothing is current before the loop takes a message"
    current = []
    for msg in msgs:
        current.append(current_event())
        if msg.data == b"1":
            with processing(msg):
                await msg.nak()
        else:
            await msg.ack()
            assert current_processing() is None or current_processing().settled  # type: ignore[union-attr]
    assert current_event() is None, "the last message's ack ended its handling"
    assert [e.event_id for e in current if e is not None] == [e.event_id for e in out.events]
    (fetch,) = t.spans(kind=SpanKind.CLIENT)
    assert fetch.name == f"fetch {t.subject}.placed"
    assert attr(fetch, semconv.MESSAGING_BATCH_MESSAGE_COUNT) == 3
    assert attr(fetch, semconv.MESSAGING_CONSUMER_GROUP_NAME) == "billing"
    sends = t.spans(kind=SpanKind.PRODUCER)
    assert sorted(link.context.span_id for link in fetch.links) == sorted(s.context.span_id for s in sends)
    outcomes = [attr(by_event_id(t.spans(kind=SpanKind.CONSUMER), e.event_id), semconv.EDA_OUTCOME) for e in out.events]
    assert outcomes == ["completed", "retried", "completed"]
    # the nak'ed message comes back as attempt 2
    (again,) = await psub.fetch(1, timeout=5)
    assert again.data == b"1" and again.metadata.num_delivered == 2
    await again.term()
    retry = [s for s in t.spans(kind=SpanKind.CONSUMER) if attr(s, semconv.EDA_DELIVERY_ATTEMPT) == 2]
    assert len(retry) == 1 and attr(retry[0], semconv.EDA_OUTCOME) == "rejected"
    assert attr(retry[0], semconv.MESSAGING_MESSAGE_ID) == out.events[1].event_id
    assert attr(retry[0], semconv.EDA_NATS_STREAM_SEQUENCE) == 2
    # an empty fetch makes no span
    with pytest.raises(nats.errors.TimeoutError):
        await psub.fetch(1, timeout=0.3)
    assert len(t.spans(kind=SpanKind.CLIENT)) == 2
    assert t.capture.counter_total(semconv.METRIC_RETRIES) == 1


async def test_jetstream_push_consumer_callback_settles_with_its_outcome(
    instrumented: Instrumented, nc: Client
) -> None:
    t = instrumented
    js = await t.stream_of(nc)
    handled: list[tuple[bytes, int, EventContext | None]] = []

    async def handle(msg: Msg) -> None:
        handled.append((msg.data, msg.metadata.num_delivered, current_event()))
        if msg.data == b"slow":
            await msg.in_progress()
            await msg.in_progress()
        if msg.data == b"bad" and msg.metadata.num_delivered == 1:
            raise ValueError("not yet")
        if msg.data == b"never":
            await msg.term()

    await js.subscribe(f"{t.subject}.>", durable="audit", cb=handle, config=ConsumerConfig(ack_wait=1.0))
    with outgoing_event() as out:
        for body in (b"ok", b"slow", b"bad", b"never"):
            await js.publish(f"{t.subject}.placed", body)
    await wait_for(lambda: len(t.spans(kind=SpanKind.CONSUMER)) == 5, "five handlings (one redelivery)", timeout_s=30)
    spans = t.spans(kind=SpanKind.CONSUMER)
    by_body = {}
    for (body, attempt, event), span in zip(handled, sorted(spans, key=lambda s: s.start_time or 0), strict=True):
        assert event is not None and attr(span, semconv.MESSAGING_MESSAGE_ID) == event.event_id
        by_body[(body, attempt)] = span
    assert attr(by_body[(b"ok", 1)], semconv.EDA_OUTCOME) == "completed"
    assert attr(by_body[(b"ok", 1)], semconv.MESSAGING_CONSUMER_GROUP_NAME) == "audit"
    assert attr(by_body[(b"slow", 1)], semconv.EDA_NATS_IN_PROGRESS) == 2
    bad = by_body[(b"bad", 1)]
    assert attr(bad, semconv.EDA_OUTCOME) == "retried" and bad.status.status_code is StatusCode.ERROR
    assert attr(bad, semconv.ERROR_TYPE) == "ValueError"
    assert attr(by_body[(b"bad", 2)], semconv.EDA_OUTCOME) == "completed"
    assert attr(by_body[(b"bad", 2)], semconv.EDA_DELIVERY_ATTEMPT) == 2
    assert attr(by_body[(b"never", 1)], semconv.EDA_OUTCOME) == "rejected"
    # the redelivery is the same event: one id, two attempts in the lifecycle records
    bad_id = out.events[2].event_id
    stages = t.store.of(bad_id)
    assert (Stage.RETRIED, 1) in stages and (Stage.COMPLETED, 2) in stages


async def test_the_last_delivery_of_a_failing_message_is_dead_lettered(instrumented: Instrumented, nc: Client) -> None:
    t = instrumented
    js = await t.stream_of(nc)
    attempts: list[int] = []

    async def always_fails(msg: Msg) -> None:
        attempts.append(msg.metadata.num_delivered)
        raise RuntimeError("poison")

    await js.subscribe(
        f"{t.subject}.>", durable="poison", cb=always_fails, config=ConsumerConfig(ack_wait=0.5, max_deliver=3)
    )
    await js.publish(f"{t.subject}.placed", b"poison")
    await wait_for(lambda: len(t.spans(kind=SpanKind.CONSUMER)) == 3, "three handlings", timeout_s=30)
    await asyncio.sleep(1.2)  # no fourth
    assert attempts == [1, 2, 3]
    outcomes = [
        attr(s, semconv.EDA_OUTCOME) for s in sorted(t.spans(kind=SpanKind.CONSUMER), key=lambda s: s.start_time or 0)
    ]
    assert outcomes == ["retried", "retried", "dead_lettered"]
    assert t.capture.counter_total(semconv.METRIC_DEAD_LETTERS) == 1


async def test_pending_gauges_are_refreshed_in_the_background(instrumented: Instrumented, nc: Client) -> None:
    t = instrumented
    js = await t.stream_of(nc)
    for i in range(5):
        await js.publish(f"{t.subject}.placed", str(i).encode())
    psub = await js.pull_subscribe(f"{t.subject}.>", durable="lagging")
    want = {semconv.MESSAGING_DESTINATION_NAME: t.stream, semconv.MESSAGING_CONSUMER_GROUP_NAME: "lagging"}

    def value(metric: str) -> float | None:
        points = [p for p in t.capture.points(metric) if all(p.attributes.get(k) == v for k, v in want.items())]
        return points[0].value if points else None

    await wait_for(lambda: value(semconv.METRIC_CONSUMER_LAG) == 5, "lag 5")
    msgs = await psub.fetch(2, timeout=5)
    await wait_for(
        lambda: value(semconv.METRIC_CONSUMER_LAG) == 3 and value(semconv.METRIC_CONSUMER_ACK_PENDING) == 2,
        "lag 3, 2 waiting for their ack",
    )
    for msg in msgs:
        await msg.ack()
    await wait_for(lambda: value(semconv.METRIC_CONSUMER_ACK_PENDING) == 0, "nothing waiting for an ack")
    await psub.unsubscribe()
    assert value(semconv.METRIC_CONSUMER_LAG) is None, "an unsubscribed consumer's series goes"


async def test_cloudevents_headers_alone_give_the_event(instrumented: Instrumented, nc: Client) -> None:
    t = instrumented
    seen: list[EventContext | None] = []

    async def handle(msg: Msg) -> None:
        seen.append(current_event())

    await nc.subscribe(t.subject + ".ce", cb=handle)
    raw = Client.publish.__otel_eda_original__  # type: ignore[attr-defined]
    headers = {
        "ce-id": "a1b2c3d4-0000-4000-8000-000000000001",
        "ce-type": "order_shipped",
        "ce-specversion": "1.0",
        "ce-source": "/go-service",
        "ce-time": "2026-12-01T10:00:00.123456789Z",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    await raw(nc, t.subject + ".ce", b"{}", "", headers)
    await wait_for(lambda: len(seen) == 1, "the handler")
    (event,) = seen
    assert event is not None and (event.event_id, event.event_type) == (headers["ce-id"], "order_shipped")
    (process,) = t.spans(kind=SpanKind.CONSUMER)
    assert [f"{link.context.trace_id:032x}" for link in process.links] == ["0af7651916cd43dd8448eb211c80319c"]


async def test_uninstrument_restores_the_client(nats_server: NatsServer, capture: TelemetryCapture) -> None:
    instrumentor = NATSInstrumentor()
    instrumentor.instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider)
    instrumentor.uninstrument()
    assert not hasattr(Client.publish, "__otel_eda_original__")
    assert not hasattr(Msg.ack, "__otel_eda_original__")
    client = await nats.connect(nats_server.url)
    got: list[Msg] = []

    async def handle(msg: Msg) -> None:
        got.append(msg)

    with contextlib.ExitStack():
        subject = unique_name("plain").replace("-", "_")
        await client.subscribe(subject, cb=handle)
        await client.publish(subject, b"x")
        await wait_for(lambda: len(got) == 1, "the message")
    await client.close()
    assert capture.spans() == [] and got[0].headers is None


def test_msg_id_follows_its_variable_unless_instrument_says(monkeypatch: pytest.MonkeyPatch) -> None:
    from otel_eda.transports.nats.telemetry import NatsTelemetry

    assert NatsTelemetry().msg_id is False
    monkeypatch.setenv("OTEL_EDA_NATS_MSG_ID", "true")
    assert NatsTelemetry().msg_id is True
    assert NatsTelemetry(msg_id=False).msg_id is False


async def test_processing_gives_a_pull_handling_exact_bounds_and_its_exception(
    instrumented: Instrumented, nc: Client
) -> None:
    t = instrumented
    js = await t.stream_of(nc)
    await js.add_consumer(t.stream, ConsumerConfig(durable_name="strict", max_deliver=2, ack_wait=30))
    await js.publish(f"{t.subject}.placed", b"bad")
    psub = await js.pull_subscribe_bind(durable="strict", stream=t.stream)
    await wait_for(lambda: t.capture.points(semconv.METRIC_CONSUMER_LAG) != [], "the consumer's first info")
    for attempt in (1, 2):
        (msg,) = await psub.fetch(1, timeout=5)
        assert msg.metadata.num_delivered == attempt
        with pytest.raises(KeyError), processing(msg):
            assert current_event() is not None
            await msg.nak()  # asks for a redelivery, then the handler fails
            raise KeyError("order")
        assert current_event() is None, "the block ended the handling"
    first, last = sorted(t.spans(kind=SpanKind.CONSUMER), key=lambda s: s.start_time or 0)
    assert (attr(first, semconv.EDA_OUTCOME), attr(last, semconv.EDA_OUTCOME)) == ("retried", "dead_lettered")
    assert attr(first, semconv.ERROR_TYPE) == attr(last, semconv.ERROR_TYPE) == "KeyError"
    assert attr(last, semconv.EDA_DELIVERY_ATTEMPT) == 2
    assert t.capture.counter_total(semconv.METRIC_DEAD_LETTERS) == 1


async def test_a_subject_that_is_no_event_type_is_published_as_a_nats_event(
    instrumented: Instrumented, nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    t = instrumented
    seen: list[EventContext | None] = []

    async def handle(msg: Msg) -> None:
        seen.append(current_event())

    subject = f"{t.subject}.eu+west"
    await nc.subscribe(subject, cb=handle)
    for _ in range(3):
        await nc.publish(subject, b"x", headers={"ce-type": "not a type!"})
    await wait_for(lambda: len(seen) == 3, "the handler")
    assert {e.event_type for e in seen if e is not None} == {"nats"}
    assert len(t.spans(name=f"send {subject}", kind=SpanKind.PRODUCER)) == 3
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # nothing the application did wrong


async def test_settle_spans_when_asked(
    nats_server: NatsServer, capture: TelemetryCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EDA_SETTLE_SPANS", "true")
    instrumentor = NATSInstrumentor()
    instrumentor.instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider)
    t = Instrumented(nats_server, capture, Recorded())
    client = await nats.connect(nats_server.url)
    try:
        js = await t.stream_of(client)
        await js.publish(f"{t.subject}.placed", b"1")
        await js.publish(f"{t.subject}.placed", b"2")
        psub = await js.pull_subscribe(f"{t.subject}.>", durable="settling")
        first, second = await psub.fetch(2, timeout=5)
        await first.ack()
        await second.term()
    finally:
        await client.close()
        instrumentor.uninstrument()
    settles = sorted((s.name, attr(s, semconv.MESSAGING_OPERATION_TYPE)) for s in capture.spans(kind=SpanKind.CLIENT))
    assert settles == [
        (f"ack {t.subject}.placed", "settle"),
        (f"fetch {t.subject}.placed", "receive"),
        (f"term {t.subject}.placed", "settle"),
    ]


async def test_key_value_and_the_jetstream_api_are_not_application_messages(
    instrumented: Instrumented, nc: Client
) -> None:
    t = instrumented
    kv = await nc.jetstream().create_key_value(bucket=t.stream)
    watcher = await kv.watchall()
    for i in range(3):
        await kv.put(f"order-{i}", b"placed")
    assert (await kv.get("order-1")).value == b"placed"
    updates = []
    while len(updates) < 3:
        update = await watcher.updates(timeout=5)
        if update is not None:
            updates.append(update)
    await watcher.stop()
    assert t.spans() == []
    assert t.capture.counter_total(semconv.METRIC_SENT_MESSAGES) == 0


async def test_a_push_consumer_whose_subscription_object_is_dropped_keeps_its_gauges(
    instrumented: Instrumented, nc: Client
) -> None:
    t = instrumented
    js = await t.stream_of(nc)
    handled: list[Msg] = []

    async def handle(msg: Msg) -> None:
        handled.append(msg)

    await js.subscribe(f"{t.subject}.>", durable="dropped", cb=handle)  # as applications often do
    for i in range(3):
        await js.publish(f"{t.subject}.placed", str(i).encode())
    want = {semconv.MESSAGING_DESTINATION_NAME: t.stream, semconv.MESSAGING_CONSUMER_GROUP_NAME: "dropped"}

    def acked_and_reported() -> bool:
        points = [
            p
            for p in t.capture.points(semconv.METRIC_CONSUMER_ACK_PENDING)
            if all(p.attributes.get(k) == v for k, v in want.items())
        ]
        return len(handled) == 3 and bool(points) and points[0].value == 0

    await wait_for(acked_and_reported, "the consumer's gauges after its three acks")
    lag = [
        p
        for p in t.capture.points(semconv.METRIC_CONSUMER_LAG)
        if p.attributes == {**want, semconv.MESSAGING_SYSTEM: "nats"}
    ]
    assert [p.value for p in lag] == [0]
