"""EventStore: flows, causation chains, business keys, bounded memory."""

from __future__ import annotations

import threading
import tracemalloc

from otel_eda.flows.records import LifecycleRecord, Stage
from otel_eda.flows.store import STEPS_PER_BATCH, EventStore
from otel_eda.identity import EventContext
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


# -- steps noted on the hot path (EventStore.note) ----------------------------------------


def _note_flow(store: EventStore, event: EventContext, subscriber: str = "billing") -> None:
    store.note(Stage.PUBLISHED, event, "shop")
    store.note(Stage.RECEIVED, event, "shop", subscriber, 1)
    store.note(Stage.COMPLETED, event, "shop", subscriber, 1, 0.002)


def test_noted_steps_give_what_the_records_give() -> None:
    noted, recorded = EventStore(), EventStore()
    root = EventContext.root("order_placed", business_key="order-1")
    child = root.child("payment_authorized")
    for event in (root, child):
        _note_flow(noted, event)
        for stage, subscriber, attempt, duration in (
            (Stage.PUBLISHED, None, 0, None),
            (Stage.RECEIVED, "billing", 1, None),
            (Stage.COMPLETED, "billing", 1, 0.002),
        ):
            recorded.record(
                LifecycleRecord(
                    stage,
                    0,
                    event.event_id,
                    event.correlation_id,
                    event.causation_id,
                    event.event_type,
                    "shop",
                    event.business_key,
                    subscriber,
                    attempt,
                    duration,
                    created_ns=event.created_ns,
                )
            )
    # read at once: a read applies what was noted before it
    assert noted.flow(root.correlation_id) == recorded.flow(root.correlation_id)
    assert [e.status for e in noted.flow(root.correlation_id)] == ["completed", "completed"]
    assert noted.find("order-1") == [root.correlation_id]
    assert len(noted) == 2


def test_steps_joined_to_an_open_step_give_what_separate_steps_give() -> None:
    separate, joined = EventStore(max_events=4), EventStore(max_events=4)
    events = [EventContext.root("order_placed", business_key="order-1") for _ in range(3)]
    events.append(events[0].child("payment_authorized"))
    outcomes = [(Stage.COMPLETED, 1, 0.002, None), (Stage.RETRIED, 1, 0.5, "ValueError"), (Stage.FAILED, 2, 0.1, "E")]
    for event, (stage, attempt, duration, etype) in zip(events, [*outcomes, outcomes[0]], strict=True):
        _note_flow(separate, event)  # published, received, completed
        separate.note(Stage.RECEIVED, event, "shop", "audit")
        separate.note(stage, event, "shop", "audit", attempt, duration, etype)
        opened = joined.note_open(Stage.PUBLISHED, event, "shop")
        for step in (
            (Stage.RECEIVED, event, "shop", "billing", 1),
            (Stage.RECEIVED, event, "shop", "audit"),
            (Stage.COMPLETED, event, "shop", "billing", 1, 0.002),
            (stage, event, "shop", "audit", attempt, duration, etype),
        ):
            assert EventStore.note_more(opened, *step)
    correlation = events[0].correlation_id
    assert joined.flow(correlation) == separate.flow(correlation)
    assert len(joined.flow(correlation)) == 2
    assert [(d.subscriber, d.status, d.attempts) for d in joined.flow(correlation)[0].deliveries] == [
        ("billing", Stage.COMPLETED, 1),
        ("audit", Stage.COMPLETED, 1),
    ]
    assert [e.status for e in joined.flow(events[2].correlation_id)] == ["failed"]
    assert len(joined) == len(separate) == 4 and joined.evicted == separate.evicted == 0


def test_events_kept_as_their_steps_answer_every_query_as_entries_do() -> None:
    separate, joined = EventStore(max_events=3), EventStore(max_events=3)
    root = EventContext.root("order_placed")
    child = root.child("payment_authorized")
    grandchild = child.child("stock_reserved")
    other = EventContext.root("audited")
    for event in (other, root, child, grandchild):  # ``other`` is evicted
        _note_flow(separate, event)
        opened = joined.note_open(Stage.PUBLISHED, event, "shop")
        assert EventStore.note_more(opened, Stage.RECEIVED, event, "shop", "billing", 1)
        assert EventStore.note_more(opened, Stage.COMPLETED, event, "shop", "billing", 1, 0.002)
    assert len(joined) == 3 and joined.evicted == separate.evicted == 1
    assert joined.correlation_ids() == separate.correlation_ids() == [root.correlation_id]
    # each query reads events still held as their steps
    assert joined.get(grandchild.event_id) == separate.get(grandchild.event_id)
    assert joined.causation_chain(grandchild.event_id) == separate.causation_chain(grandchild.event_id)
    assert joined.descendants(root.event_id) == separate.descendants(root.event_id)
    assert joined.flow(root.correlation_id) == separate.flow(root.correlation_id)
    assert joined.get(other.event_id) is None and joined.flow(other.correlation_id) == []
    # a later step, a business key and a record apply to the entry made from the steps
    late = EventStore(max_events=3)
    opened = late.note_open(Stage.PUBLISHED, root, "shop")
    assert EventStore.note_more(opened, Stage.RECEIVED, root, "shop", "billing", 1)
    keyed = EventContext(
        root.event_id, root.correlation_id, None, root.event_type, root.created_ns, business_key="order-7"
    )
    len(late)  # applied: kept as its steps
    late.note(Stage.KEYED, keyed, "shop", "billing", 1)
    late.note(Stage.RETRIED, root, "shop", "billing", 1, 0.5, "ValueError")
    late.record(
        LifecycleRecord(
            Stage.COMPLETED,
            0,
            root.event_id,
            root.correlation_id,
            None,
            "order_placed",
            "shop",
            None,
            "billing",
            2,
            0.1,
        )
    )
    (summary,) = late.flow(root.correlation_id)
    assert late.find("order-7") == [root.correlation_id] and summary.business_key == "order-7"
    assert (summary.status, summary.deliveries[0].attempts, summary.deliveries[0].error_type) == (
        "completed",
        2,
        "ValueError",
    )


def test_a_read_before_a_step_joins_applies_the_open_step_and_the_step_is_noted_alone() -> None:
    store = EventStore()
    event = EventContext.root("order_placed")
    opened = store.note_open(Stage.PUBLISHED, event, "shop")
    assert EventStore.note_more(opened, Stage.RECEIVED, event, "shop", "billing")
    (summary,) = store.flow(event.correlation_id)  # applies the open step and what joined it, sealing it
    assert summary.status == "in_progress" and summary.deliveries[0].status is Stage.RECEIVED
    # too late to join: the caller notes it as any step
    assert not EventStore.note_more(opened, Stage.COMPLETED, event, "shop", "billing", 1, 0.002)
    assert store.flow(event.correlation_id)[0].status == "in_progress"
    store.note(Stage.COMPLETED, event, "shop", "billing", 1, 0.002)
    (summary,) = store.flow(event.correlation_id)
    assert summary.status == "completed" and summary.deliveries[0].duration_s == 0.002


def test_a_step_after_an_open_step_that_evicted_its_event_brings_the_event_back() -> None:
    # A full store: the new event's step list pushes E out; E's next step, noted after it,
    # adds E again (with that delivery) as it would if every step were noted alone.
    store = EventStore(max_events=1)
    e, f = EventContext.root("order_placed"), EventContext.root("order_placed")
    store.note(Stage.PUBLISHED, e, "shop")
    store.note_open(Stage.PUBLISHED, f, "shop")
    store.note(Stage.RECEIVED, e, "shop", "billing", 1)
    summary = store.get(e.event_id)
    assert summary is not None and [d.subscriber for d in summary.deliveries] == ["billing"]
    assert store.get(f.event_id) is None


def test_a_record_after_noted_steps_applies_after_them() -> None:
    store = EventStore()
    event = EventContext.root("order_placed")
    store.note(Stage.PUBLISHED, event, "shop")
    store.note(Stage.RECEIVED, event, "shop", "billing", 1)
    record = LifecycleRecord(
        Stage.FAILED, 0, event.event_id, event.correlation_id, None, "order_placed", "shop", None, "billing", 1, 0.5
    )
    store.record(record)
    (summary,) = store.flow(event.correlation_id)
    assert summary.status == "failed" and summary.deliveries[0].duration_s == 0.5


def test_steps_noted_by_many_threads_are_all_applied() -> None:
    per_thread, threads = 3 * STEPS_PER_BATCH + 7, 4
    store = EventStore(max_events=per_thread * threads)
    events = [[EventContext.root("tick") for _ in range(per_thread)] for _ in range(threads)]
    reads: list[int] = []

    def work(mine: list[EventContext]) -> None:
        for i, event in enumerate(mine):
            _note_flow(store, event)
            if i % 97 == 0:
                reads.append(len(store.flow(event.correlation_id)))  # reads while others note

    workers = [threading.Thread(target=work, args=(mine,)) for mine in events]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert reads and all(n == 1 for n in reads)
    assert len(store) == per_thread * threads and store.evicted == 0
    held = [e for flow in map(store.flow, store.correlation_ids()) for e in flow]
    assert len(held) == per_thread * threads
    assert all(e.status == "completed" and e.publisher == "shop" and e.deliveries[0].attempts == 1 for e in held)


def test_noted_steps_keep_the_store_bounded() -> None:
    store = EventStore(max_events=500)
    events = [EventContext.root("tick") for _ in range(2_000)]
    for event in events:
        _note_flow(store, event)
    assert len(store) == 500 and store.evicted == 1_500
    assert store.get(events[0].event_id) is None
    newest = store.get(events[-1].event_id)
    assert newest is not None and newest.status == "completed"
