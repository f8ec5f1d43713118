"""Event identity: ids, root and child events, and the current event in the OTel Context."""

from __future__ import annotations

import asyncio
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from opentelemetry import baggage, context

from otel_eda.identity import (
    BAGGAGE_CAUSATION_ID,
    BAGGAGE_CORRELATION_ID,
    EventContext,
    current_event,
    flow_ids,
    with_event,
)
from otel_eda.identity.ids import new_event_id, timestamp_ms


def test_ids_are_uuid7_unique_and_sorted_in_creation_order() -> None:
    ids = [new_event_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_ids_from_many_threads_are_unique() -> None:
    with ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(lambda _: [new_event_id() for _ in range(5000)], range(4)))
    flat = [i for batch in batches for i in batch]
    assert len(set(flat)) == len(flat)


def test_id_embeds_its_creation_millisecond() -> None:
    import time

    before = time.time_ns() // 1_000_000
    event_id = new_event_id()
    after = time.time_ns() // 1_000_000
    assert before <= timestamp_ms(event_id) <= after + 1


def test_root_event_is_its_own_correlation_and_has_no_cause() -> None:
    root = EventContext.root("order_placed", business_key="order-7")
    assert root.correlation_id == root.event_id
    assert root.causation_id is None
    assert root.business_key == "order-7"


def test_child_keeps_correlation_and_is_caused_by_parent() -> None:
    root = EventContext.root("order_placed", business_key="order-7")
    child = root.child("payment_authorized")
    grandchild = child.child("stock_reserved", business_key="sku-1")
    assert child.correlation_id == grandchild.correlation_id == root.event_id
    assert child.causation_id == root.event_id
    assert grandchild.causation_id == child.event_id
    assert child.business_key == "order-7"
    assert grandchild.business_key == "sku-1"
    assert len({root.event_id, child.event_id, grandchild.event_id}) == 3


def test_event_context_is_immutable_and_validated() -> None:
    event = EventContext.root("order_placed")
    with pytest.raises(AttributeError):
        event.event_id = "x"  # type: ignore[misc]
    with pytest.raises(ValueError, match="event_type"):
        EventContext.root("order placed\r\n")
    with pytest.raises(ValueError, match="business_key"):
        EventContext.root("order_placed", business_key="x" * 500)
    with pytest.raises(ValueError, match="metadata"):
        EventContext.root("order_placed", metadata={str(i): "v" for i in range(17)})
    meta = {"tenant": "acme"}
    frozen = EventContext.root("order_placed", metadata=meta).metadata
    meta["tenant"] = "changed"
    assert frozen["tenant"] == "acme"
    with pytest.raises(TypeError):
        frozen["tenant"] = "x"  # type: ignore[index]


def test_with_event_sets_current_event_and_baggage() -> None:
    child = EventContext.root("order_placed").child("payment_authorized")
    ctx = with_event(child)
    assert current_event(ctx) is child
    assert baggage.get_baggage(BAGGAGE_CORRELATION_ID, ctx) == child.correlation_id
    assert baggage.get_baggage(BAGGAGE_CAUSATION_ID, ctx) == child.causation_id
    assert flow_ids(ctx) == (child.correlation_id, child.causation_id)
    # a root event inside another flow's context does not inherit the old causation
    root = EventContext.root("order_placed")
    assert flow_ids(with_event(root, ctx)) == (root.correlation_id, None)


def test_flow_ids_from_baggage_are_validated() -> None:
    good = baggage.set_baggage(BAGGAGE_CORRELATION_ID, "abc-123")
    assert flow_ids(good) == ("abc-123", None)
    bad = baggage.set_baggage(BAGGAGE_CORRELATION_ID, "abc\r\nInjected: 1")
    assert flow_ids(bad) is None
    bad_cause = baggage.set_baggage(BAGGAGE_CAUSATION_ID, "x" * 1000, good)
    assert flow_ids(bad_cause) == ("abc-123", None)
    assert flow_ids(context.Context()) is None


def test_current_event_follows_threads_that_copy_the_context() -> None:
    event = EventContext.root("order_placed")
    seen: list[EventContext | None] = []
    token = context.attach(with_event(event))
    try:
        ctx = context.get_current()
        thread = threading.Thread(target=lambda: seen.append(current_event(ctx)))
        thread.start()
        thread.join()
        # a thread that does not receive the context has no current event
        bare = threading.Thread(target=lambda: seen.append(current_event()))
        bare.start()
        bare.join()
    finally:
        context.detach(token)
    assert seen == [event, None]
    assert current_event() is None


async def test_current_event_is_per_asyncio_task() -> None:
    async def handle(event: EventContext) -> tuple[str, str | None]:
        token = context.attach(with_event(event))
        try:
            await asyncio.sleep(0.001)
            ids = flow_ids()
            assert ids is not None
            return ids.correlation_id, (current_event() or event).event_id
        finally:
            context.detach(token)

    events = [EventContext.root("order_placed") for _ in range(50)]
    results = await asyncio.gather(*(handle(e) for e in events))
    assert results == [(e.correlation_id, e.event_id) for e in events]
