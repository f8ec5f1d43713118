"""otel-eda's Redis Streams instrumentation against a real redis-server (``scripts/redis``):
fields, spans, context, claims, dead letters, metrics; the sync and the asyncio client."""

from __future__ import annotations

import contextlib
import gc
import pickle
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from brokers import RedisServer, unique_name
from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from otel_eda import _selfmetrics, semconv
from otel_eda.flows.records import LifecycleRecord, Stage
from otel_eda.flows.store import EventStore
from otel_eda.identity import current_event
from otel_eda.testing import TelemetryCapture
from otel_eda.transports.redis import telemetry as redis_telemetry
from otel_eda.transports.redis.instrumentor import (
    RedisStreamsInstrumentor,
    adead_letter_past_limit,
    dead_letter_past_limit,
    delivery_attempt,
    outgoing_event,
    processing,
)
from otel_eda.transports.redis.telemetry import PACKED_FIELD, RESERVED_PREFIX, pack_reserved, split_reserved

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class Setup:
    def __init__(self, server: RedisServer, capture: TelemetryCapture, store: EventStore) -> None:
        self.server = server
        self.capture = capture
        self.store = store
        self.records: list[LifecycleRecord] = []
        self.stream = unique_name("orders")
        self.group = unique_name("billing")

    def spans(self, name: str | None = None, kind: SpanKind | None = None) -> list[ReadableSpan]:
        return self.capture.spans(name=name, kind=kind)

    @staticmethod
    def attr(span: ReadableSpan, key: str) -> Any:
        return (span.attributes or {}).get(key)

    def command_calls(self, client: redis.Redis, command: str) -> int:
        stats = client.info("commandstats")
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.fixture
def store() -> EventStore:
    return EventStore()


class ListRecorder:
    def __init__(self) -> None:
        self.records: list[LifecycleRecord] = []

    def record(self, record: LifecycleRecord) -> None:
        self.records.append(record)


@pytest.fixture
def setup(redis_server: RedisServer, capture: TelemetryCapture, store: EventStore) -> Iterator[Setup]:
    instrumentor = RedisStreamsInstrumentor()
    records = ListRecorder()
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider,
        meter_provider=capture.meter_provider,
        recorders=[store, records],
        lag_refresh_s=0.05,
    )
    try:
        setup = Setup(redis_server, capture, store)
        setup.records = records.records
        yield setup
    finally:
        instrumentor.uninstrument()


@pytest.fixture
def client(setup: Setup) -> Iterator[redis.Redis]:
    client = redis.Redis(**setup.server.client_kwargs)
    client.xgroup_create(setup.stream, setup.group, id="0", mkstream=True)
    yield client
    client.close()


@pytest.fixture
async def aclient(setup: Setup) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis(**setup.server.client_kwargs, decode_responses=True)
    await client.xgroup_create(setup.stream, setup.group, id="0", mkstream=True)
    yield client
    await client.aclose()


def test_xadd_carries_identity_in_reserved_fields_and_reads_strip_them(setup: Setup, client: redis.Redis) -> None:
    t = setup
    produced = {"order": "7", "amount": "42"}
    entry_id = client.xadd(t.stream, produced)
    assert produced == {"order": "7", "amount": "42"}  # the application's dict is not modified
    raw = redis.Redis.xrange.__otel_eda_original__[0](client, t.stream)  # type: ignore[attr-defined]
    (_, raw_fields) = raw[0]
    reserved = {k.decode(): v.decode() for k, v in raw_fields.items() if k.startswith(RESERVED_PREFIX.encode())}
    assert list(reserved) == [PACKED_FIELD]  # one field: redis-py encodes and parses each field
    headers = dict(line.split("=", 1) for line in reserved[PACKED_FIELD].split("\n"))
    assert {"traceparent", "baggage", "eda-event-id", "eda-event-type", "eda-event-created"} <= set(headers)
    # every read of the instrumented client returns exactly what was produced
    [(_, fields)] = client.xrange(t.stream)
    assert {k.decode(): v.decode() for k, v in fields.items()} == produced
    [[_, entries]] = client.xreadgroup(t.group, "c1", {t.stream: ">"}, count=10)
    [(read_id, fields)] = entries
    assert read_id == entry_id and {k.decode(): v.decode() for k, v in fields.items()} == produced
    (send,) = t.spans(name=f"send {t.stream}", kind=SpanKind.PRODUCER)
    assert t.attr(send, semconv.MESSAGING_MESSAGE_ID) == headers["eda-event-id"]
    assert t.attr(send, semconv.MESSAGING_SYSTEM) == "redis"
    assert headers["traceparent"].split("-")[2] == f"{send.context.span_id:016x}"


def test_entries_with_one_field_per_header_are_read_too(setup: Setup, client: redis.Redis) -> None:
    """Entries written before the headers were packed into one field (``otel-eda:<header>``
    each) keep their event."""
    t = setup
    raw_xadd = redis.Redis.xadd.__otel_eda_original__[0]  # type: ignore[attr-defined]
    with outgoing_event(event_type="order_placed", metadata={"tenant": "a"}) as out:
        client.xadd(t.stream, {"n": "0"})
    event = out.events[0]
    raw = redis.Redis.xrange.__otel_eda_original__[0](client, t.stream)  # type: ignore[attr-defined]
    [(_, packed)] = raw
    old = {"n": "1"}
    for line in packed[PACKED_FIELD.encode()].decode().split("\n"):
        name, _, value = line.partition("=")
        old[RESERVED_PREFIX + name] = value
    assert len(old) == 7  # traceparent, baggage, event id, type, created, the metadata entry
    raw_xadd(client, t.stream, old)
    [[_, entries]] = client.xreadgroup(t.group, "c1", {t.stream: ">"}, count=10)
    seen = []
    for entry_id, fields in entries:
        seen.append((fields, current_event()))
        client.xack(t.stream, t.group, entry_id)
    assert [f for f, _ in seen] == [{b"n": b"0"}, {b"n": b"1"}]
    events = [e for _, e in seen if e is not None]
    assert [(e.event_id, e.event_type, dict(e.metadata or {})) for e in events] == [
        (event.event_id, "order_placed", {"tenant": "a"})
    ] * 2


def test_a_forwarded_entry_carries_only_the_new_event(setup: Setup, client: redis.Redis) -> None:
    """Fields read without stripping (a pipeline's reply) and added again: the stale otel-eda
    fields are replaced by the new entry's own, in either format."""
    t = setup
    client.xadd(t.stream, {"n": "0"})
    raw = redis.Redis.xrange.__otel_eda_original__[0](client, t.stream)  # type: ignore[attr-defined]
    [(_, stale)] = raw
    stale[f"{RESERVED_PREFIX}eda-event-id".encode()] = b"0190f0c2-7a3e-7d51-9b1c-2f0e8a6d4c11"
    with outgoing_event() as out:
        client.xadd(t.stream, stale)
    [[_, entries]] = client.xreadgroup(t.group, "c1", {t.stream: ">"}, count=10)
    events = []
    for entry_id, fields in entries:
        assert fields == {b"n": b"0"}
        events.append(current_event())
        client.xack(t.stream, t.group, entry_id)
    assert events[1] is not None and events[1].event_id == out.events[0].event_id


def test_a_header_that_cannot_go_on_a_line_gets_a_field_of_its_own() -> None:
    fields: dict[Any, Any] = {"n": "1"}
    pack_reserved({"traceparent": "00-x-01", "odd": "a\r\nb", "k=v": "1", "raw": b"\xff"}, fields)
    assert fields == {
        "n": "1",
        f"{RESERVED_PREFIX}odd": "a\r\nb",
        f"{RESERVED_PREFIX}k=v": "1",
        f"{RESERVED_PREFIX}raw": b"\xff",
        PACKED_FIELD: "traceparent=00-x-01",
    }
    assert split_reserved(fields) == {"traceparent": "00-x-01", "odd": "a\r\nb", "k=v": "1", "raw": b"\xff"}
    assert fields == {"n": "1"}


def test_xreadgroup_receive_span_links_each_entry_and_the_loop_moves_the_context(
    setup: Setup, client: redis.Redis
) -> None:
    t = setup
    for i in range(3):
        client.xadd(t.stream, {"n": str(i)})
    assert client.xreadgroup(t.group, "c1", {t.stream: ">"}, count=10)  # the three entries
    t.capture.exporter.clear()
    for i in range(3):
        client.xadd(t.stream, {"n": str(i)})
    sends = t.spans(name=f"send {t.stream}")
    response = client.xreadgroup(t.group, "c1", {t.stream: ">"}, count=10)
    handled: list[tuple[str, str | None, int]] = []
    for stream, entries in response:
        for entry_id, _fields in entries:
            event = current_event()
            assert event is not None
            handled.append((event.event_id, baggage.get_baggage("eda.correlation_id"), 0))  # type: ignore[arg-type]
            client.xadd(t.stream + "-out", {"reply": "x"})
            client.xack(stream, t.group, entry_id)
            assert current_event() is None  # XACK settled the handling
    assert current_event() is None
    assert client.xreadgroup(t.group, "c1", {t.stream: ">"}, count=10, block=10) == []
    (receive,) = t.spans(name=f"receive {t.stream}")
    assert receive.kind is SpanKind.CLIENT
    assert t.attr(receive, semconv.MESSAGING_OPERATION_TYPE) == "receive"
    assert t.attr(receive, semconv.MESSAGING_BATCH_MESSAGE_COUNT) == 3
    assert [link.context.span_id for link in receive.links] == [s.context.span_id for s in sends]
    processes = t.spans(name=f"process {t.stream}", kind=SpanKind.CONSUMER)
    assert [t.attr(p, semconv.MESSAGING_MESSAGE_ID) for p in processes] == [h[0] for h in handled]
    assert [[link.context.span_id for link in p.links] for p in processes] == [[s.context.span_id] for s in sends]
    assert all(t.attr(p, semconv.EDA_OUTCOME) == "completed" for p in processes)
    assert all(t.attr(p, semconv.MESSAGING_CONSUMER_GROUP_NAME) == t.group for p in processes)
    assert all(t.attr(p, semconv.EDA_DELIVERY_ATTEMPT) == 1 for p in processes)
    assert all(h[1] == t.attr(p, semconv.EDA_CORRELATION_ID) for h, p in zip(handled, processes, strict=True))
    outs = t.spans(name=f"send {t.stream}-out")
    assert [t.attr(s, semconv.EDA_CAUSATION_ID) for s in outs] == [h[0] for h in handled]
    assert [s.parent.span_id for s in outs if s.parent] == [p.context.span_id for p in processes]
    assert len(t.spans(kind=SpanKind.CLIENT)) == 1, "no receive span for the empty read"
    where = {semconv.MESSAGING_DESTINATION_NAME: t.stream, semconv.MESSAGING_SYSTEM: "redis"}
    assert t.capture.counter_total(semconv.METRIC_SENT_MESSAGES, where) == 6  # the metrics were not cleared
    assert (
        t.capture.counter_total(semconv.METRIC_CONSUMED_MESSAGES, {**where, "messaging.consumer.group.name": t.group})
        == 6
    )
    assert t.capture.histogram_count(semconv.METRIC_PROCESS_DURATION, where) == 3
    assert t.capture.histogram_count(semconv.METRIC_EVENT_AGE, where) == 6
    operations = {semconv.MESSAGING_OPERATION_NAME: "receive", **where}
    assert t.capture.histogram_count(semconv.METRIC_OPERATION_DURATION, operations) == 2  # one per non-empty read
    assert (
        t.capture.histogram_count(
            semconv.METRIC_OPERATION_DURATION, {**where, semconv.MESSAGING_OPERATION_NAME: "send"}
        )
        == 6
    )
    assert pickle.loads(pickle.dumps(response))[0][1][0][0] == response[0][1][0][0]


def test_processing_block_records_the_handlers_exception(setup: Setup, client: redis.Redis) -> None:
    t = setup
    client.xadd(t.stream, {"n": "1"})
    [[_, [entry]]] = client.xreadgroup(t.group, "c1", {t.stream: ">"})
    handled = []
    with pytest.raises(ConnectionError), processing(entry) as handling:
        assert handling is not None and current_event() == handling.event
        handled.append(handling.event.event_id)
        raise ConnectionError("card service down")
    (process,) = t.spans(name=f"process {t.stream}")
    assert process.status.status_code is StatusCode.ERROR
    assert t.attr(process, semconv.ERROR_TYPE) == "ConnectionError"
    assert t.attr(process, semconv.MESSAGING_MESSAGE_ID) == handled[0]
    with processing(("1-0", {"not": "instrumented"})) as nothing:
        assert nothing is None


def test_an_entry_settled_by_its_xack_is_not_handled_again_by_processing(setup: Setup, client: redis.Redis) -> None:
    t = setup
    client.xadd(t.stream, {"n": "1"})
    client.xadd(t.stream, {"n": "2"})
    [[_, entries]] = client.xreadgroup(t.group, "c1", {t.stream: ">"})
    for _ in entries:
        pass  # hands both over: the first one's handling ended when the second was handed over
    with processing(entries[0]) as handling:  # a handling of its own again
        assert handling is not None
        first_event = handling.event.event_id
        client.xack(t.stream, t.group, entries[0][0])  # settles it
    with processing(entries[0]):  # settled by its XACK: nothing new
        pass
    first = [p for p in t.spans(name=f"process {t.stream}") if t.attr(p, semconv.MESSAGING_MESSAGE_ID) == first_event]
    assert len(first) == 2


def test_claims_take_the_attempt_from_one_xpending_per_batch_and_dead_letter_past_the_limit(
    setup: Setup, client: redis.Redis
) -> None:
    t = setup
    with outgoing_event(event_type="order_placed") as out:
        for i in range(5):
            client.xadd(t.stream, {"n": str(i)})
    first = client.xreadgroup(t.group, "dies", {t.stream: ">"}, count=10)
    assert len(first[0][1]) == 5  # delivered once, never acknowledged
    before = t.command_calls(client, "xpending")
    _, claimed, _ = client.xautoclaim(t.stream, t.group, "rescuer", min_idle_time=0)
    assert t.command_calls(client, "xpending") - before == 1, "one XPENDING for the claimed batch"
    assert [delivery_attempt(e) for e in claimed] == [2] * 5
    for _entry in claimed:
        assert current_event() is not None
    client.xclaim(t.stream, t.group, "rescuer-2", 0, [e[0] for e in claimed[:2]])  # attempt 3 for two
    again = client.xclaim(t.stream, t.group, "rescuer-3", 0, [e[0] for e in claimed[:2]])
    assert t.command_calls(client, "xpending") - before == 3
    assert [delivery_attempt(again[0]), delivery_attempt(again[1])] == [4, 4]  # (iterating hands over)
    routed = [dead_letter_past_limit(client, e, max_deliveries=3, dead_letter_stream=t.stream + ".dead") for e in again]
    assert routed == [True, True]
    assert client.xpending(t.stream, t.group)["pending"] == 3  # the two were acknowledged
    dead = client.xrange(t.stream + ".dead")
    assert [{k.decode(): v.decode() for k, v in f.items()} for _, f in dead] == [{"n": "0"}, {"n": "1"}]
    # the dead letter keeps its event: the dead-letter consumer sees the same event id
    raw = redis.Redis.xrange.__otel_eda_original__[0](client, t.stream + ".dead")  # type: ignore[attr-defined]
    kept = [dict(line.split("=", 1) for line in f[PACKED_FIELD.encode()].decode().split("\n")) for _, f in raw]
    kept = [headers["eda-event-id"] for headers in kept]
    assert kept == [e.event_id for e in out.events[:2]]
    processes = t.spans(name=f"process {t.stream}")
    attempts = [t.attr(p, semconv.EDA_DELIVERY_ATTEMPT) for p in processes]
    assert attempts == [2] * 5 + [4] * 2  # the first delivery was never handed over (not iterated)
    dead_spans = [p for p in processes if t.attr(p, semconv.EDA_OUTCOME) == "dead_lettered"]
    assert [t.attr(p, semconv.MESSAGING_MESSAGE_ID) for p in dead_spans] == [e.event_id for e in out.events[:2]]
    assert {t.attr(p, semconv.EDA_DELIVERY_ATTEMPT) for p in dead_spans} == {4}
    stages = [(r.stage, r.attempt) for r in t.records if r.event_id == out.events[0].event_id]
    assert stages[-1] == (Stage.DEAD_LETTERED, 4)
    assert t.capture.counter_total(semconv.METRIC_DEAD_LETTERS) == 2


def test_hostile_field_values_never_raise_and_are_counted(
    setup: Setup, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = setup
    counter = t.capture.meter_provider.get_meter("t").create_counter(semconv.METRIC_INVALID_HEADERS)
    monkeypatch.setattr(_selfmetrics, "_invalid_counter", lambda: counter)
    raw_xadd = redis.Redis.xadd.__otel_eda_original__[0]  # type: ignore[attr-defined]
    p = RESERVED_PREFIX
    hostile: list[dict[Any, Any]] = [
        {"x": "1", f"{p}eda-event-id": b"\xff\xfe", f"{p}traceparent": b"\x00" * 9000},
        {f"{p}eda-event-id": "x" * 100_000, f"{p}baggage": "eda.correlation_id=\r\n" * 300},
        {f"{p}".encode() + b"\xff\xfe": b"\xff", f"{p}eda-event-created": "-5", f"{p}eda-meta-Bad Key": "v"},
        {f"{p}eda-event-type": "order placed", f"{p}eda-business-key": "k" * 10_000, "y": b"\xff"},
        # the packed field: not UTF-8, lines without "=", too long, invalid values
        {PACKED_FIELD: b"\xff\xfe=\x00\neda-event-id=\xff", "z": "1"},
        {PACKED_FIELD: "no equals sign\n=nameless\n\n"},
        {PACKED_FIELD: "eda-event-id=" + "x" * 100_000},
        {PACKED_FIELD: "traceparent=garbage\neda-event-id=not-a-uuid\neda-event-created=-5\nbaggage=\r"},
    ]
    for fields in hostile:
        raw_xadd(client, t.stream, fields)
    [[_, entries]] = client.xreadgroup(t.group, "c1", {t.stream: ">"})
    seen = []
    for entry in entries:
        with processing(entry):
            event = current_event()
            assert event is not None and event.correlation_id == event.event_id  # a new, valid flow
            seen.append({k for k in entry[1] if (k.decode("latin-1") if isinstance(k, bytes) else k).startswith(p)})
    assert seen == [set()] * len(hostile)  # the reserved fields are gone, whatever they held
    assert t.capture.counter_total(semconv.METRIC_INVALID_HEADERS) >= len(hostile)
    assert len(t.spans(name=f"process {t.stream}")) == len(hostile)


def test_headers_past_the_packed_fields_lines_get_fields_of_their_own() -> None:
    # a propagator writing one header per baggage entry can write more than a reader takes
    headers = {f"uberctx-k{i}": "v" for i in range(100)} | {"eda-event-id": "e", "traceparent": "t"}
    fields: dict[Any, Any] = {"order": "7"}
    pack_reserved(headers, fields)
    assert fields[PACKED_FIELD].count("\n") == 63  # 64 lines
    assert split_reserved(fields) == headers and fields == {"order": "7"}


def test_a_packed_field_of_many_lines_costs_one_count_and_is_not_read(
    setup: Setup, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = setup
    counted: list[tuple[str, str]] = []
    monkeypatch.setattr(_selfmetrics, "count_invalid", lambda what, why: counted.append((what, why)))
    monkeypatch.setattr(redis_telemetry, "count_invalid", lambda what, why: counted.append((what, why)))
    raw_xadd = redis.Redis.xadd.__otel_eda_original__[0]  # type: ignore[attr-defined]
    raw_xadd(client, t.stream, {PACKED_FIELD: "\n" * 60_000})
    raw_xadd(client, t.stream, {PACKED_FIELD: "\n".join(f"h{i}=v" for i in range(8_000))})
    [[_, entries]] = client.xreadgroup(t.group, "c1", {t.stream: ">"})
    for entry in entries:
        with processing(entry):
            event = current_event()
            assert event is not None and event.correlation_id == event.event_id
        assert entry[1] == {}
    assert counted.count((PACKED_FIELD, "too_many_lines")) == 2
    assert len(counted) <= 6, counted  # per entry: the field, then its missing identity


def test_xadd_of_fields_redis_py_refuses_is_its_error_and_leaves_no_span_open(
    setup: Setup, client: redis.Redis
) -> None:
    t = setup
    for fields in (None, {}, [("order", "7")]):  # redis-py takes a non-empty dict only
        with pytest.raises(redis.DataError):
            client.xadd(t.stream, fields)  # type: ignore[arg-type]
    assert not trace.get_current_span().get_span_context().is_valid
    assert current_event() is None
    assert t.spans(kind=SpanKind.PRODUCER) == []
    assert client.xlen(t.stream) == 0
    client.xadd(t.stream, {"order": "7"})  # the next entry is a new flow of its own
    (send,) = t.spans(kind=SpanKind.PRODUCER)
    assert send.parent is None


def test_consumer_group_lag_and_pending_gauges(setup: Setup, client: redis.Redis) -> None:
    t = setup
    for i in range(6):
        client.xadd(t.stream, {"n": str(i)})
    [[_, entries]] = client.xreadgroup(t.group, "c1", {t.stream: ">"}, count=2)
    client.xack(t.stream, t.group, entries[0][0])
    attrs = {semconv.MESSAGING_DESTINATION_NAME: t.stream, semconv.MESSAGING_CONSUMER_GROUP_NAME: t.group}

    def gauge(metric: str) -> list[float]:
        return [
            p.value for p in t.capture.points(metric) if all((p.attributes or {}).get(k) == v for k, v in attrs.items())
        ]

    deadline = time.monotonic() + 30
    while (gauge(semconv.METRIC_CONSUMER_LAG), gauge(semconv.METRIC_CONSUMER_PENDING)) != ([4], [1]):
        assert time.monotonic() < deadline, (gauge(semconv.METRIC_CONSUMER_LAG), gauge(semconv.METRIC_CONSUMER_PENDING))
        time.sleep(0.05)
    client.xreadgroup(t.group, "c1", {t.stream: ">"}, count=10)
    while gauge(semconv.METRIC_CONSUMER_LAG) != [0]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


async def test_asyncio_client_send_receive_process_ack_and_claim(setup: Setup, aclient: redis.asyncio.Redis) -> None:
    t = setup
    produced = {"order": "9"}
    await aclient.xadd(t.stream, produced)
    response = await aclient.xreadgroup(t.group, "c1", {t.stream: ">"}, count=10)
    for _stream, entries in response:
        for _entry_id, fields in entries:
            assert dict(fields) == produced
            event = current_event()
            assert event is not None
            await aclient.xadd(t.stream + "-out", {"reply": "1"})
    [[_, entries]] = response
    await aclient.xadd(t.stream, {"order": "10"})
    [[_, [second]]] = await aclient.xreadgroup(t.group, "c1", {t.stream: ">"}, count=10)
    with processing(second):
        await aclient.xack(t.stream, t.group, second[0])
    _, claimed, _ = await aclient.xautoclaim(t.stream, t.group, "c2", min_idle_time=0)
    assert [delivery_attempt(e) for e in claimed] == [2]
    assert await adead_letter_past_limit(aclient, claimed[0], max_deliveries=1, dead_letter_stream=t.stream + ".dlq")
    assert await aclient.xlen(t.stream + ".dlq") == 1
    processes = t.spans(name=f"process {t.stream}")
    assert [t.attr(p, semconv.EDA_OUTCOME) for p in processes] == ["completed", "completed", "dead_lettered"]
    (out,) = t.spans(name=f"send {t.stream}-out")
    assert out.parent is not None and out.parent.span_id == processes[0].context.span_id
    assert t.attr(out, semconv.EDA_CAUSATION_ID) == t.attr(processes[0], semconv.MESSAGING_MESSAGE_ID)
    assert len(t.spans(name=f"receive {t.stream}")) == 3
    assert trace.get_current_span().get_span_context().is_valid is False


@pytest.mark.parametrize("protocol", [2, 3])
def test_both_reply_shapes_resp2_and_resp3(setup: Setup, protocol: int) -> None:
    t = setup
    client = redis.Redis(**t.server.client_kwargs, protocol=protocol, decode_responses=True)
    client.xgroup_create(t.stream, t.group, id="0", mkstream=True)
    client.xadd(t.stream, {"order": "1"})
    response = client.xreadgroup(t.group, "c1", {t.stream: ">"})
    pairs = response.items() if isinstance(response, dict) else response  # RESP3: {stream: [entries]}
    for stream, value in pairs:
        entries = value[0] if protocol == 3 else value
        for entry_id, fields in entries:
            assert fields == {"order": "1"}
            assert current_event() is not None
            client.xack(stream, t.group, entry_id)
    client.close()
    (process,) = t.spans(name=f"process {t.stream}")
    assert t.attr(process, semconv.EDA_OUTCOME) == "completed"
    assert len(t.spans(name=f"receive {t.stream}")) == 1


def test_threads_sharing_one_sync_client_each_handle_their_own_entries(setup: Setup, client: redis.Redis) -> None:
    import threading

    t = setup
    for i in range(20):
        client.xadd(t.stream, {"n": str(i)})
    seen: dict[str, list[tuple[str, str]]] = {}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            while True:
                response = client.xreadgroup(t.group, name, {t.stream: ">"}, count=2)
                if not response:
                    return
                for stream, entries in response:
                    for entry_id, _fields in entries:
                        event = current_event()
                        assert event is not None
                        seen.setdefault(name, []).append((entry_id.decode(), event.event_id))
                        time.sleep(0.001)
                        client.xack(stream, t.group, entry_id)
                        assert current_event() is None
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    processes = t.spans(name=f"process {t.stream}")
    assert len(processes) == 20 == sum(len(v) for v in seen.values())
    handled = [pair for v in seen.values() for pair in v]
    assert len({entry_id for entry_id, _ in handled}) == 20  # each entry handled once
    assert sorted(t.attr(p, semconv.MESSAGING_MESSAGE_ID) for p in processes) == sorted(e for _, e in handled)
    assert all(t.attr(p, semconv.EDA_OUTCOME) == "completed" for p in processes)


async def test_xadd_in_a_pipeline_carries_the_identity(setup: Setup, client: redis.Redis) -> None:
    t = setup
    aclient = redis.asyncio.Redis(**t.server.client_kwargs, decode_responses=True)
    with client.pipeline() as pipe:
        pipe.xadd(t.stream, {"n": "1"}).xadd(t.stream, {"n": "2"})
        pipe.execute()
    async with aclient.pipeline(transaction=False) as apipe:
        apipe.xadd(t.stream, {"n": "3"})
        await apipe.execute()
    sends = t.spans(name=f"send {t.stream}")
    assert len(sends) == 3  # each covers the queueing of its command
    [[_, entries]] = await aclient.xreadgroup(t.group, "c1", {t.stream: ">"})
    assert [fields for _, fields in list.__iter__(entries)] == [{"n": "1"}, {"n": "2"}, {"n": "3"}]
    for entry in entries:
        with processing(entry) as handling:
            assert handling is not None
    await aclient.aclose()
    processes = t.spans(name=f"process {t.stream}")
    assert [[link.context.span_id for link in p.links] for p in processes] == [[s.context.span_id] for s in sends]


def test_collecting_the_gauges_makes_no_network_call(redis_server: RedisServer, capture: TelemetryCapture) -> None:
    instrumentor = RedisStreamsInstrumentor()
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider, lag_refresh_s=3600
    )
    stream, group = unique_name("orders"), unique_name("billing")
    client = redis.Redis(**redis_server.client_kwargs)
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
        client.xadd(stream, {"n": "1"})
        client.xreadgroup(group, "c1", {stream: ">"}, count=10)  # tracked: one refresh now, the next in an hour
        deadline = time.monotonic() + 30
        mine = {semconv.MESSAGING_DESTINATION_NAME: stream}
        while not [p for p in capture.points(semconv.METRIC_CONSUMER_PENDING) if mine.items() <= p.attributes.items()]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        calls = int(client.info("commandstats").get("cmdstat_xinfo|groups", {}).get("calls", 0))
        for _ in range(5):
            capture.points(semconv.METRIC_CONSUMER_LAG)
        assert int(client.info("commandstats").get("cmdstat_xinfo|groups", {}).get("calls", 0)) == calls >= 1
    finally:
        client.close()
        instrumentor.uninstrument()


async def test_asyncio_clients_lag_is_refreshed_on_their_loop(setup: Setup, aclient: redis.asyncio.Redis) -> None:
    import asyncio

    t = setup
    for i in range(3):
        await aclient.xadd(t.stream, {"n": str(i)})
    await aclient.xreadgroup(t.group, "c1", {t.stream: ">"}, count=1)
    wanted = {semconv.MESSAGING_DESTINATION_NAME: t.stream, semconv.MESSAGING_CONSUMER_GROUP_NAME: t.group}

    def values(metric: str) -> list[float]:
        return [p.value for p in t.capture.points(metric) if all(p.attributes.get(k) == v for k, v in wanted.items())]

    deadline = time.monotonic() + 30
    while (values(semconv.METRIC_CONSUMER_LAG), values(semconv.METRIC_CONSUMER_PENDING)) != ([2], [1]):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


def test_settle_spans_when_asked(
    redis_server: RedisServer, capture: TelemetryCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EDA_SETTLE_SPANS", "true")
    instrumentor = RedisStreamsInstrumentor()
    instrumentor.instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider)
    stream, group = unique_name("orders"), unique_name("billing")
    client = redis.Redis(**redis_server.client_kwargs)
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
        client.xadd(stream, {"n": "1"})
        for _, entries in client.xreadgroup(group, "c1", {stream: ">"}):
            for entry_id, _fields in entries:
                client.xack(stream, group, entry_id)
    finally:
        client.close()
        instrumentor.uninstrument()
    (ack,) = capture.spans(name=f"ack {stream}")
    (process,) = capture.spans(name=f"process {stream}")
    assert ack.kind is SpanKind.CLIENT and (ack.attributes or {})[semconv.MESSAGING_OPERATION_TYPE] == "settle"
    assert ack.parent is not None and ack.parent.span_id == process.context.span_id


def test_reading_the_groups_history_again_takes_the_attempt_from_xpending(setup: Setup, client: redis.Redis) -> None:
    t = setup
    for i in range(3):
        client.xadd(t.stream, {"n": str(i)})
    client.xreadgroup(t.group, "c1", {t.stream: ">"})  # delivered once, not acknowledged (the consumer restarts)
    before = t.command_calls(client, "xpending")
    [[_, history]] = client.xreadgroup(t.group, "c1", {t.stream: "0"})
    assert t.command_calls(client, "xpending") - before == 1
    expected = [int(p["times_delivered"]) for p in client.xpending_range(t.stream, t.group, "-", "+", 10)]
    assert [delivery_attempt(history[i]) for i in range(3)] == expected == [2, 2, 2]


# Closing a loop with a pending task abandons the task: asyncio itself complains when it is collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_uninstrument_after_the_clients_event_loop_closed(redis_server: RedisServer, capture: TelemetryCapture) -> None:
    """An application that ran its asyncio client on a loop it closed (without cancelling its
    tasks) and uninstruments at exit: the lag refresh's loop is gone by then, and
    uninstrumenting still succeeds."""
    import asyncio

    instrumentor = RedisStreamsInstrumentor()
    instrumentor.instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider)
    stream, group = unique_name("orders"), unique_name("billing")

    async def consume() -> None:
        client = redis.asyncio.Redis(**redis_server.client_kwargs)
        await client.xgroup_create(stream, group, id="0", mkstream=True)
        await client.xreadgroup(group, "c1", {stream: ">"}, count=1)  # tracked: its refresh task starts
        await client.aclose()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(consume())
        loop.close()  # the refresh task is still pending on it
    finally:
        instrumentor.uninstrument()
    assert not instrumentor.is_instrumented_by_opentelemetry
    gc.collect()  # the abandoned task goes now, inside this test's warning filter


async def test_the_lag_refresh_ends_when_cancelled_even_if_the_client_swallows_it(capture: TelemetryCapture) -> None:
    """Cancelling the refresh task ends it although the client library catches the
    cancellation inside its own call and returns normally."""
    import asyncio

    from otel_eda.transports.redis.lag import GroupLag

    class Swallowing:
        def __init__(self) -> None:
            self.calls = 0

        async def xinfo_groups(self, stream: str) -> list[Any]:
            self.calls += 1
            with contextlib.suppress(asyncio.CancelledError):  # what a careless client does
                await asyncio.sleep(3600)
            return []

    lag = GroupLag(capture.meter_provider, refresh_s=0.01, scope="test")
    client = Swallowing()
    try:
        lag.track(client, "orders", "billing", is_async=True)
        await asyncio.sleep(0.05)
        (tracked,) = [t for _, t in lag._tracked(lag._async)]
        assert tracked.task is not None
        tracked.task.cancel()
        await asyncio.wait_for(asyncio.shield(tracked.task), timeout=30)
        assert client.calls == 1
    finally:
        lag.close()
