"""The embedded bus: spans, links, lifecycle, retries, dead letters, backpressure, metrics."""

from __future__ import annotations

import asyncio
import logging

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode
from virtual_clock import VirtualClockLoop

from otel_eda import BusFull, DeadLetter, Delivery, Rejected, RetryPolicy, Service
from otel_eda.logs.lifecycle import LifecycleLogger
from otel_eda.settings import Settings
from otel_eda.testing import TelemetryCapture, assert_causation_chain, assert_linked_to_producer

FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.001)


def _by_message(spans: list[ReadableSpan], kind: SpanKind) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for s in spans:
        if s.kind == kind:
            found.setdefault(str(s.attributes["messaging.message.id"]), []).append(s)
    return found


async def test_publish_and_handle_follow_the_messaging_conventions(capture: TelemetryCapture) -> None:
    async with capture.bus(service="shop") as bus:
        bus.subscribe("order_placed", lambda d: None, subscriber="payment")
        event = await bus.publish("order_placed", {"card": "4111-SECRET"}, business_key="order-1")
        await bus.join()

    (producer,) = capture.spans(kind=SpanKind.PRODUCER)
    (consumer,) = capture.spans(kind=SpanKind.CONSUMER)
    assert producer.name == "send order_placed"
    assert consumer.name == "process order_placed"
    common = {
        "messaging.system": "otel_eda",
        "messaging.destination.name": "order_placed",
        "messaging.message.id": event.event_id,
        "messaging.message.conversation_id": event.correlation_id,
        "eda.correlation_id": event.correlation_id,
        "eda.business_key": "order-1",
    }
    assert (
        dict(producer.attributes or {}).items()
        >= {
            **common,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
        }.items()
    )
    assert (
        dict(consumer.attributes or {}).items()
        >= {
            **common,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.consumer.group.name": "payment",
            "eda.delivery.attempt": 1,
        }.items()
    )
    # parent mode (the default): child of the producer, and linked to it
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
    assert consumer.context.trace_id == producer.context.trace_id
    assert_linked_to_producer(consumer, producer)
    (link,) = consumer.links
    assert dict(link.attributes or {}) == {
        "messaging.message.id": event.event_id,
        "eda.correlation_id": event.correlation_id,
    }
    # the outcome and the time in queue are attributes; no stage span events by default
    assert consumer.attributes["eda.outcome"] == "completed"  # type: ignore[index]
    assert float(consumer.attributes["eda.queue.duration"]) >= 0  # type: ignore[arg-type,index]
    assert not consumer.events
    # peer.service names a remote *service*: the bus is not one
    assert "peer.service" not in (producer.attributes or {}) and "peer.service" not in (consumer.attributes or {})
    assert consumer.status.status_code is StatusCode.UNSET
    # no payload anywhere
    assert "4111-SECRET" not in "".join(s.to_json() for s in (producer, consumer))


async def test_child_events_carry_the_flow_ids_and_causation(capture: TelemetryCapture) -> None:
    async with capture.bus() as bus:
        payment = Service("payment", bus)
        inventory = Service("inventory", bus)
        tracer = capture.tracer_provider.get_tracer("app")

        @payment.handles("order_placed")
        async def charge(d: Delivery) -> None:
            with tracer.start_as_current_span("charge card"):
                await d.emit("payment_authorized")

        @inventory.handles("payment_authorized")
        def reserve(d: Delivery) -> None:  # a plain function works too
            tracer.start_span("UPDATE stock").end()

        order = await bus.publish("order_placed")
        await bus.join()

    flow = bus.store.flow(order.correlation_id)
    assert [e.event_type for e in flow] == ["order_placed", "payment_authorized"]
    payment_event = flow[1]
    assert_causation_chain(bus.store, payment_event.event_id, ["order_placed", "payment_authorized"])
    for span in capture.spans():
        assert span.attributes["eda.correlation_id"] == order.correlation_id
    by_name = {s.name: s for s in capture.spans()}
    # a hand-made span in a handler describes the handled event
    assert "eda.causation_id" not in by_name["charge card"].attributes  # order_placed is a root
    assert by_name["UPDATE stock"].attributes["eda.causation_id"] == order.event_id
    # the PRODUCER span of the child describes the child
    assert by_name["send payment_authorized"].attributes["eda.causation_id"] == order.event_id
    assert by_name["send payment_authorized"].attributes["messaging.message.id"] == payment_event.event_id
    assert_linked_to_producer(by_name["process payment_authorized"], by_name["send payment_authorized"])


async def test_several_subscribers_each_get_the_event(capture: TelemetryCapture) -> None:
    got: list[str] = []
    async with capture.bus() as bus:
        for name in ("audit", "billing", "mailer"):
            bus.subscribe("order_placed", lambda d, n=name: got.append(n), subscriber=name)
        with pytest.raises(ValueError, match="already subscribes"):
            bus.subscribe("order_placed", lambda d: None, subscriber="audit")
        event = await bus.publish("order_placed")
        await bus.join()
    assert sorted(got) == ["audit", "billing", "mailer"]
    summary = bus.store.get(event.event_id)
    assert summary is not None and summary.status == "completed"
    assert sorted(d.subscriber for d in summary.deliveries) == ["audit", "billing", "mailer"]
    assert capture.counter_total("messaging.client.consumed.messages") == 3


async def test_link_mode_starts_a_new_trace_linked_to_the_producer(capture: TelemetryCapture) -> None:
    async with capture.bus(mode="link") as bus:
        bus.subscribe("order_placed", lambda d: None, subscriber="payment")
        await bus.publish("order_placed")
        await bus.join()
    (producer,) = capture.spans(kind=SpanKind.PRODUCER)
    (consumer,) = capture.spans(kind=SpanKind.CONSUMER)
    assert consumer.parent is None
    assert consumer.context.trace_id != producer.context.trace_id
    assert_linked_to_producer(consumer, producer)
    assert consumer.attributes["eda.producer.span_id"] == f"{producer.context.span_id:016x}"


@pytest.mark.parametrize("mode", ["parent", "link"])
async def test_consumer_is_sampled_exactly_when_its_producer_was(mode: str) -> None:
    with TelemetryCapture(sampler=ParentBased(TraceIdRatioBased(0.25))) as capture:
        async with capture.bus(mode=mode) as bus:
            bus.subscribe("order_placed", lambda d: None, subscriber="payment")
            for _ in range(400):
                await bus.publish("order_placed")
            await bus.join()
        producers = _by_message(capture.spans(), SpanKind.PRODUCER)
        consumers = _by_message(capture.spans(), SpanKind.CONSUMER)
    assert 40 < len(producers) < 200  # sampled at 25%
    assert producers.keys() == consumers.keys()
    # ... while counts and lifecycle records stay exact
    assert capture.counter_total("messaging.client.sent.messages") == 400
    assert capture.histogram_count("messaging.process.duration") == 400
    assert len(bus.store) == 400
    assert {e.status for c in bus.store.correlation_ids() for e in bus.store.flow(c)} == {"completed"}


async def test_lifecycle_records_stay_exact_with_traces_sampled_at_10_percent() -> None:
    with TelemetryCapture(sampler=ParentBased(TraceIdRatioBased(0.1))) as capture:
        async with capture.bus() as bus:
            bus.subscribe("order_placed", lambda d: d.emit("payment_authorized"), subscriber="payment")
            bus.subscribe("payment_authorized", lambda d: None, subscriber="inventory")
            orders = [await bus.publish("order_placed", business_key=f"order-{i}") for i in range(300)]
            await bus.join()
        spans = capture.spans()
        sent = capture.counter_total("messaging.client.sent.messages")
    assert len(spans) < 0.3 * 4 * 300
    assert sent == 600
    for i, order in enumerate(orders):
        flow = bus.store.flow(order.correlation_id)
        assert [(e.event_type, e.status) for e in flow] == [
            ("order_placed", "completed"),
            ("payment_authorized", "completed"),
        ]
        assert bus.store.find(f"order-{i}") == [order.correlation_id]


async def test_rejected_event_fails_without_retry(capture: TelemetryCapture) -> None:
    class CardDeclined(Rejected):
        pass

    calls = 0

    async def charge(d: Delivery) -> None:
        nonlocal calls
        calls += 1
        raise CardDeclined("card declined")

    async with capture.bus(retry=FAST_RETRY) as bus:
        bus.subscribe("order_placed", charge, subscriber="payment")
        event = await bus.publish("order_placed")
        await bus.join()
    assert calls == 1
    (consumer,) = capture.spans(kind=SpanKind.CONSUMER)
    assert consumer.status.status_code is StatusCode.ERROR
    assert consumer.attributes["error.type"].endswith("CardDeclined")  # type: ignore[union-attr]
    assert [e.name for e in consumer.events] == ["exception"]
    assert consumer.attributes["eda.outcome"] == "rejected"  # type: ignore[index]
    summary = bus.store.get(event.event_id)
    assert summary is not None and summary.status == "rejected"
    assert not bus.dead_letters
    assert capture.histogram_count("messaging.process.duration", {"error.type": consumer.attributes["error.type"]}) == 1


async def test_failing_handler_is_retried_with_one_span_per_attempt(capture: TelemetryCapture) -> None:
    attempts: list[int] = []

    async def flaky(d: Delivery) -> None:
        attempts.append(d.attempt)
        if d.attempt < 3:
            raise ConnectionError("stock service unavailable")

    async with capture.bus(retry=FAST_RETRY) as bus:
        bus.subscribe("payment_authorized", flaky, subscriber="inventory")
        event = await bus.publish("payment_authorized")
        await bus.join()
    assert attempts == [1, 2, 3]
    consumers = capture.spans(kind=SpanKind.CONSUMER)
    assert [s.attributes["eda.delivery.attempt"] for s in consumers] == [1, 2, 3]
    assert {s.attributes["messaging.message.id"] for s in consumers} == {event.event_id}
    assert [s.attributes["eda.outcome"] for s in consumers] == ["retried", "retried", "completed"]
    assert consumers[0].attributes["error.type"] == "ConnectionError"
    summary = bus.store.get(event.event_id)
    assert summary is not None and summary.status == "completed"
    assert summary.deliveries[0].attempts == 3
    assert capture.counter_total("eda.bus.retries") == 2
    assert capture.counter_total("messaging.client.consumed.messages") == 1


async def test_event_is_dead_lettered_after_the_last_attempt(
    capture: TelemetryCapture, caplog: pytest.LogCaptureFixture
) -> None:
    letters: list[DeadLetter] = []

    def always_fails(d: Delivery) -> None:
        raise ValueError("no such address")

    # the lifecycle logger configure() installs for every transport (OTEL_EDA_LOG_LIFECYCLE=failures)
    lifecycle = LifecycleLogger(Settings())
    async with capture.bus(retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.001), recorders=[lifecycle]) as bus:
        bus.subscribe("payment_authorized", always_fails, subscriber="notification")
        bus.subscribe_dead_letters(letters.append)
        with caplog.at_level(logging.WARNING, logger="otel_eda"):
            event = await bus.publish("payment_authorized", {"email": "x"})
            await bus.join()
    (letter,) = letters
    assert letter.event.event_id == event.event_id
    assert (letter.subscriber, letter.attempts, letter.error_type) == ("notification", 2, "ValueError")
    assert letter.payload == {"email": "x"}
    assert list(bus.dead_letters) == letters
    summary = bus.store.get(event.event_id)
    assert summary is not None and summary.status == "dead_lettered"
    assert capture.counter_total("eda.bus.dead_letters") == 1
    assert capture.spans(kind=SpanKind.CONSUMER)[-1].attributes["eda.outcome"] == "dead_lettered"  # type: ignore[index]
    assert letter.error_message == "no such address"
    (logged,) = [r for r in caplog.records if "dead_lettered" in r.getMessage()]  # one line, at ERROR
    assert logged.levelno == logging.ERROR and "no such address" in logged.getMessage()


async def test_a_full_queue_makes_publish_wait_then_raise_and_count_the_drop(capture: TelemetryCapture) -> None:
    release = asyncio.Event()

    async def slow(d: Delivery) -> None:
        await release.wait()

    bus = capture.bus(queue_size=1, publish_timeout_s=0.05)
    bus.subscribe("order_placed", slow, subscriber="slow")
    bus.subscribe("order_placed", lambda d: None, subscriber="fast")
    await bus.publish("order_placed")  # taken by the worker
    await asyncio.sleep(0.01)
    await bus.publish("order_placed")  # waits in the queue
    with pytest.raises(BusFull) as info:
        await bus.publish("order_placed")
    assert info.value.missed == ("slow",)
    dropped = info.value.event
    await asyncio.sleep(0.01)  # let the fast subscriber catch up
    # observable queue depth while the slow subscriber is stuck
    depth = {p.attributes["messaging.consumer.group.name"]: p.value for p in capture.points("eda.bus.queue.depth")}
    assert depth == {"slow": 1, "fast": 0}
    release.set()
    await bus.close()
    summary = bus.store.get(dropped.event_id)
    assert summary is not None and summary.status == "dropped"
    assert {d.subscriber: d.status.value for d in summary.deliveries} == {"fast": "completed", "slow": "dropped"}
    assert capture.counter_total("eda.bus.dropped", {"messaging.consumer.group.name": "slow"}) == 1
    failed_send = [s for s in capture.spans(kind=SpanKind.PRODUCER) if s.status.status_code is StatusCode.ERROR]
    assert len(failed_send) == 1 and failed_send[0].attributes["error.type"] == "otel_eda.transports.bus.BusFull"


async def test_event_without_subscriber_is_counted_and_logged_at_debug(
    capture: TelemetryCapture, caplog: pytest.LogCaptureFixture
) -> None:
    async with capture.bus() as bus:
        with caplog.at_level(logging.DEBUG, logger="otel_eda"):
            event = await bus.publish("nobody_listens")
    assert capture.counter_total("eda.bus.unrouted", {"messaging.destination.name": "nobody_listens"}) == 1
    summary = bus.store.get(event.event_id)
    assert summary is not None and summary.status == "unrouted"
    assert any(r.levelno == logging.DEBUG and "no subscriber" in r.getMessage() for r in caplog.records)


async def test_business_key_set_in_a_handler_is_searchable_and_inherited(capture: TelemetryCapture) -> None:
    async def take_order(d: Delivery) -> None:
        assert d.set_business_key("order-123")
        assert not d.set_business_key("not a key\r\n")  # ignored, logged, counted
        await d.emit("order_accepted")

    async with capture.bus() as bus:
        bus.subscribe("checkout", take_order, subscriber="order")
        bus.subscribe("order_accepted", lambda d: None, subscriber="mailer")
        root = await bus.publish("checkout")
        await bus.join()
    assert bus.store.find("order-123") == [root.correlation_id]
    assert [e.business_key for e in bus.store.flow(root.correlation_id)] == ["order-123", "order-123"]
    process_checkout = capture.spans(name="process checkout")[0]
    assert process_checkout.attributes["eda.business_key"] == "order-123"
    assert capture.spans(name="send order_accepted")[0].attributes["eda.business_key"] == "order-123"


async def test_a_raising_handler_leaves_the_bus_running(capture: TelemetryCapture) -> None:
    seen: list[str] = []

    def handler(d: Delivery) -> None:
        if d.payload == "bad":
            raise KeyError("boom")
        seen.append(d.payload)

    async with capture.bus(retry=RetryPolicy(max_attempts=1)) as bus:
        bus.subscribe("work", handler, subscriber="worker")
        for payload in ("a", "bad", "b"):
            await bus.publish("work", payload)
        await bus.join()
    assert seen == ["a", "b"]
    assert len(bus.dead_letters) == 1


async def test_closed_bus_refuses_to_publish(capture: TelemetryCapture) -> None:
    bus = capture.bus()
    await bus.close()
    await bus.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await bus.publish("order_placed")


def test_retry_policy_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.1, multiplier=3, max_backoff_s=0.5)
    assert [policy.backoff(n) for n in (1, 2, 3)] == [0.1, pytest.approx(0.3), 0.5]
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


async def test_queue_depth_is_observed_for_every_bus_on_a_provider(capture: TelemetryCapture) -> None:
    release = asyncio.Event()

    async def stuck(d: Delivery) -> None:
        await release.wait()

    buses = [capture.bus(queue_size=10), capture.bus(queue_size=10)]
    for i, bus in enumerate(buses):
        bus.subscribe(f"type_{i}", stuck, subscriber=f"sub_{i}")
        for _ in range(i + 2):
            await bus.publish(f"type_{i}")
    await asyncio.sleep(0.01)
    depth = {p.attributes["messaging.consumer.group.name"]: p.value for p in capture.points("eda.bus.queue.depth")}
    assert depth == {"sub_0": 1, "sub_1": 2}
    release.set()
    for bus in buses:
        await bus.close()


async def test_event_age_is_recorded_and_clock_skew_clamped_and_counted(capture: TelemetryCapture) -> None:
    import time

    from otel_eda.identity import EventContext, with_event
    from otel_eda.identity.propagation import EdaPropagator
    from otel_eda.transports.bus import WireMessage

    async with capture.bus() as bus:
        bus.subscribe("order_placed", lambda d: None, subscriber="payment")
        for created_in_s in (-2.0, +3600.0):  # two seconds old; an hour in the future (skewed clock)
            event = EventContext.root("order_placed")
            headers: dict[str, str] = {}
            EdaPropagator().inject(headers, with_event(event))
            headers["eda-event-created"] = str(time.time_ns() + int(created_in_s * 1e9))
            await bus.deliver(WireMessage("order_placed", headers, None))
        await bus.join()
    (point,) = capture.points("eda.event.age")
    assert point.count == 2
    assert point.min == 0.0
    assert 2.0 <= point.max < 5.0
    assert capture.counter_total("eda.event.clock_skew") == 1


def test_full_subscribers_share_one_publish_timeout(capture: TelemetryCapture) -> None:
    async def publish_to_full_queues() -> tuple[float, list[str]]:
        release = asyncio.Event()

        async def stuck(d: Delivery) -> None:
            await release.wait()

        bus = capture.bus(queue_size=1, publish_timeout_s=0.2)
        for name in ("a", "b", "c", "d"):
            bus.subscribe("order_placed", stuck, subscriber=name)
        await bus.publish("order_placed")  # taken by each worker
        await asyncio.sleep(0.01)
        await bus.publish("order_placed")  # fills each queue
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(BusFull) as info:
            await bus.publish("order_placed")
        waited = loop.time() - started
        release.set()
        await bus.close()
        return waited, list(info.value.missed)

    # on a virtual clock: the time waited is the timeouts taken, however busy the machine
    loop = VirtualClockLoop()
    try:
        waited, missed = loop.run_until_complete(publish_to_full_queues())
    finally:
        loop.close()
    assert sorted(missed) == ["a", "b", "c", "d"]
    assert waited == pytest.approx(0.2)  # one timeout, not four


async def test_a_business_key_survives_a_retry(capture: TelemetryCapture) -> None:
    async def flaky(d: Delivery) -> None:
        if d.attempt == 1:
            d.set_business_key("order-77")
            raise ConnectionError("later")
        await d.emit("order_accepted")

    async with capture.bus(retry=FAST_RETRY) as bus:
        bus.subscribe("checkout", flaky, subscriber="order")
        bus.subscribe("order_accepted", lambda d: None, subscriber="mailer")
        await bus.publish("checkout")
        await bus.join()
    second = capture.spans(name="process checkout")[1]
    assert second.attributes["eda.business_key"] == "order-77"
    assert capture.spans(name="send order_accepted")[0].attributes["eda.business_key"] == "order-77"


def test_queue_depth_of_buses_on_the_global_provider_follows_configure() -> None:
    """Buses built before and after the global MeterProvider is installed are all observed."""
    code = """
import asyncio
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from otel_eda import EventBus

async def main():
    release = asyncio.Event()
    async def stuck(d):
        await release.wait()
    early = EventBus(service="s")                      # on the API's proxy provider
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    late = EventBus(service="s")                       # on the SDK provider
    for name, bus in (("early", early), ("late", late)):
        bus.subscribe("t", stuck, subscriber=name)
        for _ in range(3):
            await bus.publish("t")
    await asyncio.sleep(0.05)
    data = reader.get_metrics_data()
    depth = {p.attributes["messaging.consumer.group.name"]: p.value
             for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
             if m.name == "eda.bus.queue.depth" for p in m.data.data_points}
    print(sorted(depth.items()))
    release.set()

asyncio.run(main())
"""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[('early', 2), ('late', 2)]"


async def test_stage_span_events_are_a_debugging_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EDA_SPAN_EVENTS", "true")
    capture = TelemetryCapture()
    async with capture.bus(retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.001)) as bus:

        def flaky(d: Delivery) -> None:
            if d.attempt == 1:
                raise ConnectionError("down")

        bus.subscribe("order_placed", flaky, subscriber="s")
        await bus.publish("order_placed")
        await bus.join()
    first, second = capture.spans(kind=SpanKind.CONSUMER)
    assert [e.name for e in first.events] == ["eda.received", "exception", "eda.retried"]
    assert [e.name for e in second.events] == ["eda.received", "eda.completed"]
    assert all(float(e.attributes["eda.stage.duration"]) >= 0 for e in second.events)  # type: ignore[arg-type,index]
    capture.shutdown()


async def test_process_spans_follow_their_producer_even_when_the_bus_starts_inside_a_span() -> None:
    capture = TelemetryCapture()
    tracer = capture.tracer_provider.get_tracer("app")
    bus = capture.bus()
    bus.subscribe("order_placed", lambda d: None, subscriber="s")
    with tracer.start_as_current_span("GET /orders"):
        await bus.publish("order_placed")  # the first publish starts the worker, inside the request span
    await bus.join()
    await bus.close()
    (producer,) = capture.spans(kind=SpanKind.PRODUCER)
    (consumer,) = capture.spans(kind=SpanKind.CONSUMER)
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
    capture.shutdown()


async def test_a_business_key_set_by_the_handler_is_current_for_the_rest_of_it(capture: TelemetryCapture) -> None:
    from otel_eda import current_event

    seen: list[str | None] = []
    async with capture.bus() as bus:

        async def key_it(d: Delivery) -> None:
            assert d.set_business_key("order-9")
            event = current_event()
            seen.append(event.business_key if event else None)

        bus.subscribe("order_placed", key_it, subscriber="s")
        await bus.publish("order_placed")
        await bus.join()
    assert seen == ["order-9"]
