"""Cross-process proof (issue 2, section 10): the event identity survives an OS process boundary.

Three spawned interpreters, each with its own in-memory OpenTelemetry providers:

* ``producer`` publishes ``order_placed``; its outlet serializes the message to JSON text
  (so the headers must be plain strings, as on any broker) and puts it on a queue;
* ``consumer`` decodes the JSON, delivers it to its bus; the handler starts a span by hand
  with a plain tracer and emits ``payment_authorized``, which a ``QueueOutlet`` forwards
  (pickled through a ``multiprocessing`` queue) to
* ``auditor``, which ``pump``s its inbox into its bus; its handler starts a span by hand too.

Each process sends its finished spans back as plain dicts; the test checks correlation
ids, causation ids and the span links across the three.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import queue
from multiprocessing.queues import Queue
from typing import Any

import pytest
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import format_span_id, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import otel_eda
from otel_eda import Delivery
from otel_eda.identity.propagation import EdaPropagator
from otel_eda.testing import TelemetryCapture
from otel_eda.transports.bus import WireMessage
from otel_eda.transports.interprocess import QueueOutlet, pump

pytestmark = pytest.mark.timeout(90)
RESULT_TIMEOUT_S = 60


# -- helpers that run inside the child processes ---------------------------------------------


def _telemetry(service: str) -> TelemetryCapture:
    """This process's own providers; the global ones too, so plain tracers use them."""
    propagate.set_global_textmap(
        CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator(), EdaPropagator()])
    )
    capture = TelemetryCapture(service=service)
    trace.set_tracer_provider(capture.tracer_provider)
    return capture


def _span_dict(span: ReadableSpan) -> dict[str, Any]:
    parent = span.parent
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format_trace_id(span.context.trace_id),
        "span_id": format_span_id(span.context.span_id),
        "parent_id": format_span_id(parent.span_id) if parent is not None else None,
        "parent_is_remote": parent.is_remote if parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "links": [
            {
                "trace_id": format_trace_id(link.context.trace_id),
                "span_id": format_span_id(link.context.span_id),
                "attributes": dict(link.attributes or {}),
            }
            for link in span.links
        ],
        "service": span.resource.attributes["service.name"],
        "pid": os.getpid(),
    }


def _handled(delivery: Delivery) -> dict[str, Any]:
    """What the handler itself saw: its event, and the flow ids of its current context."""
    ids = otel_eda.flow_ids()
    return {
        "event_id": delivery.event.event_id,
        "correlation_id": delivery.event.correlation_id,
        "causation_id": delivery.event.causation_id,
        "business_key": delivery.event.business_key,
        "flow_ids": None if ids is None else [ids.correlation_id, ids.causation_id],
    }


class JsonOutlet:
    """Forwards a message as JSON text: only plain strings survive this, as on a broker."""

    def __init__(self, sink: Queue[Any], name: str) -> None:
        self._sink = sink
        self.name = name

    async def send(self, message: WireMessage) -> bool:
        self._sink.put(json.dumps({"destination": message.destination, "headers": message.headers}))
        return True


def producer_main(to_consumer: Queue[Any], results: Queue[Any], mode: str) -> None:
    capture = _telemetry("producer")

    async def main() -> dict[str, Any]:
        async with capture.bus(service="producer", mode=mode) as bus:
            bus.add_outlet("order_placed", JsonOutlet(to_consumer, "consumer"))
            event = await bus.publish("order_placed", {"sku": "mug"}, business_key="order-7")
        return {"event_id": event.event_id, "correlation_id": event.correlation_id}

    published = asyncio.run(main())
    capture.shutdown()
    results.put(("producer", {"published": published, "spans": [_span_dict(s) for s in capture.spans()]}))


def consumer_main(inbox: Queue[Any], to_auditor: Queue[Any], results: Queue[Any], mode: str) -> None:
    capture = _telemetry("consumer")
    tracer = trace.get_tracer("by-hand")  # a plain tracer, not otel-eda's
    seen: list[dict[str, Any]] = []

    async def charge(delivery: Delivery) -> None:
        with tracer.start_as_current_span("charge card"):
            seen.append(_handled(delivery))
        child = await delivery.emit("payment_authorized", {"sku": "mug"})
        seen.append({"emitted": child.event_id})

    async def main() -> dict[str, Any]:
        text = await asyncio.to_thread(inbox.get, True, RESULT_TIMEOUT_S)
        wire = json.loads(text)
        async with capture.bus(service="consumer", mode=mode) as bus:
            bus.subscribe("order_placed", charge, subscriber="consumer")
            bus.add_outlet("payment_authorized", QueueOutlet(to_auditor, "auditor"))
            await bus.deliver(WireMessage(wire["destination"], wire["headers"], {"sku": "mug"}))
            await bus.join()
        return dict(wire["headers"])

    headers = asyncio.run(main())
    capture.shutdown()
    spans = [_span_dict(s) for s in capture.spans()]
    results.put(("consumer", {"headers": headers, "seen": seen, "spans": spans}))


def auditor_main(inbox: Queue[Any], results: Queue[Any], mode: str) -> None:
    capture = _telemetry("auditor")
    tracer = trace.get_tracer("by-hand")
    seen: list[dict[str, Any]] = []

    def audit(delivery: Delivery) -> None:
        with tracer.start_as_current_span("audit payment"):
            seen.append(_handled(delivery))

    async def main() -> None:
        async with capture.bus(service="auditor", mode=mode) as bus:
            bus.subscribe("payment_authorized", audit, subscriber="auditor")
            await pump(inbox, bus)  # until the test sends None

    asyncio.run(main())
    capture.shutdown()
    results.put(("auditor", {"seen": seen, "spans": [_span_dict(s) for s in capture.spans()]}))


# -- the test ---------------------------------------------------------------------------------


def run_three_processes(mode: str) -> dict[str, dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    to_consumer: Queue[Any] = ctx.Queue()
    to_auditor: Queue[Any] = ctx.Queue()
    results: Queue[Any] = ctx.Queue()
    processes = {
        "producer": ctx.Process(target=producer_main, args=(to_consumer, results, mode)),
        "consumer": ctx.Process(target=consumer_main, args=(to_consumer, to_auditor, results, mode)),
        "auditor": ctx.Process(target=auditor_main, args=(to_auditor, results, mode)),
    }
    for process in processes.values():
        process.start()
    got: dict[str, dict[str, Any]] = {}
    try:
        while len(got) < 2:
            role, data = results.get(timeout=RESULT_TIMEOUT_S)
            got[role] = data
        assert set(got) == {"producer", "consumer"}
        # The consumer has exited, so what it forwarded is in the auditor's inbox before None.
        for role in ("producer", "consumer"):
            processes[role].join(RESULT_TIMEOUT_S)
        to_auditor.put(None)
        role, data = results.get(timeout=RESULT_TIMEOUT_S)
        got[role] = data
        for process in processes.values():
            process.join(RESULT_TIMEOUT_S)
            assert process.exitcode == 0, f"{process.name} exited with {process.exitcode}"
    except queue.Empty:
        pytest.fail(f"a child process sent no result; exit codes: { {r: p.exitcode for r, p in processes.items()} }")
    finally:
        for process in processes.values():
            if process.is_alive():
                process.terminate()
                process.join(5)
    return got


def one(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name]
    assert len(found) == 1, f"expected one {name!r} span, got {[s['name'] for s in spans]}"
    return found[0]


@pytest.mark.parametrize("mode", ["parent", "link"])
def test_identity_and_links_cross_os_processes(mode: str) -> None:
    got = run_three_processes(mode)
    producer, consumer, auditor = got["producer"], got["consumer"], got["auditor"]
    pids = {s["pid"] for role in got.values() for s in role["spans"]}
    assert len(pids) == 3 and os.getpid() not in pids
    assert {s["service"] for s in producer["spans"]} == {"producer"}
    order_id = producer["published"]["event_id"]
    correlation = producer["published"]["correlation_id"]
    assert correlation == order_id  # a root event

    # The headers crossed as JSON: plain strings, the standard W3C ones plus otel-eda's.
    headers = consumer["headers"]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    assert {"traceparent", "baggage", "eda-event-id", "eda-event-type", "eda-event-created"} <= set(headers)
    assert headers["eda-event-id"] == order_id and headers["eda-business-key"] == "order-7"
    assert f"eda.correlation_id={correlation}" in headers["baggage"]
    assert "eda-correlation-id" not in headers  # baggage carries it

    send_order = one(producer["spans"], "send order_placed")
    assert send_order["kind"] == "PRODUCER"
    assert send_order["attributes"]["messaging.message.id"] == order_id
    assert headers["traceparent"].split("-")[1:3] == [send_order["trace_id"], send_order["span_id"]]

    # The consumer process: its CONSUMER span, the span started by hand, the emitted event.
    handled, emitted = consumer["seen"]
    assert handled == {
        "event_id": order_id,
        "correlation_id": correlation,
        "causation_id": None,
        "business_key": "order-7",
        "flow_ids": [correlation, None],
    }
    process_order = one(consumer["spans"], "process order_placed")
    assert process_order["kind"] == "CONSUMER"
    assert process_order["attributes"]["eda.correlation_id"] == correlation
    assert "eda.causation_id" not in process_order["attributes"]  # the root event has no cause
    assert_links_to(process_order, send_order, message_id=order_id, correlation=correlation, causation=None)
    assert_relation(process_order, send_order, mode)
    by_hand = one(consumer["spans"], "charge card")
    assert by_hand["attributes"]["eda.correlation_id"] == correlation
    assert by_hand["parent_id"] == process_order["span_id"]
    send_payment = one(consumer["spans"], "send payment_authorized")
    payment_id = emitted["emitted"]
    assert send_payment["attributes"]["messaging.message.id"] == payment_id
    assert send_payment["attributes"]["eda.correlation_id"] == correlation
    assert send_payment["attributes"]["eda.causation_id"] == order_id

    # The auditor process, two hops from the producer: same flow, caused by the order.
    [audited] = auditor["seen"]
    assert audited == {
        "event_id": payment_id,
        "correlation_id": correlation,
        "causation_id": order_id,
        "business_key": "order-7",
        "flow_ids": [correlation, order_id],
    }
    process_payment = one(auditor["spans"], "process payment_authorized")
    assert process_payment["attributes"]["eda.correlation_id"] == correlation
    assert process_payment["attributes"]["eda.causation_id"] == order_id
    assert_links_to(process_payment, send_payment, message_id=payment_id, correlation=correlation, causation=order_id)
    assert_relation(process_payment, send_payment, mode)
    audit_span = one(auditor["spans"], "audit payment")
    assert audit_span["attributes"]["eda.correlation_id"] == correlation
    assert audit_span["attributes"]["eda.causation_id"] == order_id
    assert audit_span["parent_id"] == process_payment["span_id"]


def assert_links_to(
    consumer: dict[str, Any], producer: dict[str, Any], *, message_id: str, correlation: str, causation: str | None
) -> None:
    [link] = consumer["links"]
    assert (link["trace_id"], link["span_id"]) == (producer["trace_id"], producer["span_id"])
    assert link["attributes"]["messaging.message.id"] == message_id
    assert link["attributes"]["eda.correlation_id"] == correlation
    assert link["attributes"].get("eda.causation_id") == causation
    assert consumer["attributes"]["eda.producer.span_id"] == producer["span_id"]


def assert_relation(consumer: dict[str, Any], producer: dict[str, Any], mode: str) -> None:
    if mode == "parent":  # the producer span's child, across the process boundary
        assert consumer["trace_id"] == producer["trace_id"]
        assert consumer["parent_id"] == producer["span_id"] and consumer["parent_is_remote"]
    else:  # a new trace, only linked
        assert consumer["trace_id"] != producer["trace_id"]
        assert consumer["parent_id"] is None
