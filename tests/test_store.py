"""EventStore: flows, causation chains, business keys, bounded memory."""

from __future__ import annotations

import tracemalloc

from otel_eda.flows.records import LifecycleRecord, Stage
from otel_eda.flows.store import EventStore
from otel_eda.testing import record_flow


def test_flow_lists_events_in_time_order_with_status_and_durations() -> None:
    store = EventStore()
    root, payment, stock = record_flow(store, "order_placed", "payment_authorized", "stock_reserved")
    flow = store.flow(root.correlation_id)
    assert [e.event_id for e in flow] == [root.event_id, payment.event_id, stock.event_id]
    assert {e.status for e in flow} == {"completed"}
    assert all(d.duration_s == 0.001 and d.attempts == 1 for e in flow for d in e.deliveries)
    assert store.flow("unknown") == []


def test_causation_chain_and_descendants() -> None:
    store = EventStore()
    root, payment, stock = record_flow(store, "order_placed", "payment_authorized", "stock_reserved")
    # a sibling branch caused by the root
    (audit,) = record_flow(store, "audited")  # another flow entirely
    assert [e.event_id for e in store.causation_chain(stock.event_id)] == [
        root.event_id,
        payment.event_id,
        stock.event_id,
    ]
    assert [e.event_id for e in store.descendants(root.event_id)] == [payment.event_id, stock.event_id]
    assert store.descendants(stock.event_id) == []
    assert store.causation_chain(audit.event_id)[0].event_id == audit.event_id


def test_find_by_business_key() -> None:
    store = EventStore()
    first = record_flow(store, "order_placed", "payment_authorized", business_key="order-123")[0]
    record_flow(store, "order_placed", business_key="order-456")
    assert store.find("order-123") == [first.correlation_id]
    assert store.find("order-999") == []


def test_render_flow_shows_the_tree() -> None:
    store = EventStore()
    root, _ = record_flow(store, "order_placed", "payment_authorized", service="shop")
    text = store.render_flow(root.correlation_id)
    assert text.splitlines() == [
        "- order_placed from shop [completed] subscriber: completed 1.0 ms",
        "  - payment_authorized from shop [completed] subscriber: completed 1.0 ms",
    ]


def _record(i: int) -> LifecycleRecord:
    return LifecycleRecord(Stage.PUBLISHED, i, f"e-{i}", f"c-{i % 50}", None, "tick", "svc", business_key=f"k-{i}")


def test_an_endless_stream_keeps_memory_bounded() -> None:
    tracemalloc.start()
    store = EventStore(max_events=1000)
    for i in range(5_000):
        store.record(_record(i))
    before = tracemalloc.get_traced_memory()[0]
    for i in range(5_000, 60_000):
        store.record(_record(i))
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(store) == 1000
    assert store.evicted == 59_000
    assert grown < 50_000, f"store grew by {grown} bytes while holding a constant number of events"
    # indices shrink with the events
    assert len(store.correlation_ids()) == 50
    assert store.find("k-0") == []
    assert store.find("k-59999") == ["c-49"]
    assert sum(len(store.flow(c)) for c in store.correlation_ids()) == 1000
