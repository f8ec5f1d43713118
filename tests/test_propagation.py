"""EdaPropagator: event identity across process boundaries, in any propagator order."""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otel_eda.identity import EventContext, current_event, flow_ids, incoming_event, with_event
from otel_eda.identity.propagation import (
    HEADER_BUSINESS_KEY,
    HEADER_CAUSATION_ID,
    HEADER_CORRELATION_ID,
    HEADER_CREATED,
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    EdaPropagator,
)

_FACTORIES = {
    "tracecontext": TraceContextTextMapPropagator,
    "baggage": W3CBaggagePropagator,
    "eda": EdaPropagator,
}
ORDERS = list(itertools.permutations(_FACTORIES))


@pytest.fixture
def global_textmap() -> Iterator[None]:
    saved = propagate.get_global_textmap()
    yield
    propagate.set_global_textmap(saved)


def _composite(names: tuple[str, ...]) -> CompositePropagator:
    return CompositePropagator([_FACTORIES[n]() for n in names])


def _send(event: EventContext, propagator: TextMapPropagator) -> dict[str, str]:
    tracer = TracerProvider().get_tracer("test")
    carrier: dict[str, str] = {}
    ctx = with_event(event)
    with tracer.start_as_current_span("send", context=ctx) as span:
        propagator.inject(carrier, trace.set_span_in_context(span, ctx))
    return carrier


@pytest.mark.parametrize("order", ORDERS, ids=",".join)
def test_identity_round_trips_in_every_propagator_order(order: tuple[str, ...], global_textmap: None) -> None:
    propagator = _composite(order)
    propagate.set_global_textmap(propagator)
    child = EventContext.root("order_placed", business_key="order-9").child("payment_authorized")
    carrier = _send(child, propagator)

    assert carrier[HEADER_EVENT_ID] == child.event_id
    assert carrier[HEADER_EVENT_TYPE] == "payment_authorized"
    assert int(carrier[HEADER_CREATED]) == child.created_ns
    assert carrier[HEADER_BUSINESS_KEY] == "order-9"
    assert "traceparent" in carrier
    assert f"eda.correlation_id={child.correlation_id}" in carrier["baggage"]
    # with baggage configured, correlation and causation travel only as baggage
    assert HEADER_CORRELATION_ID not in carrier and HEADER_CAUSATION_ID not in carrier

    received = propagator.extract(carrier, context=Context())
    assert incoming_event(received) == child
    assert flow_ids(received) == (child.correlation_id, child.causation_id)
    assert trace.get_current_span(received).get_span_context().is_valid


@pytest.mark.parametrize(
    "order", [o for o in ORDERS if "baggage" not in o] + [("eda",), ("eda", "tracecontext")], ids=",".join
)
def test_without_baggage_eda_carries_the_ids_itself_and_warns_once(
    order: tuple[str, ...], global_textmap: None, caplog: pytest.LogCaptureFixture
) -> None:
    order = tuple(n for n in order if n != "baggage")
    propagator = _composite(order)
    propagate.set_global_textmap(propagator)
    child = EventContext.root("order_placed").child("payment_authorized")
    with caplog.at_level(logging.WARNING, logger="otel_eda"):
        carrier = _send(child, propagator)
        _send(child, propagator)
    assert "baggage" not in carrier  # the eda propagator never writes the baggage header
    assert carrier[HEADER_CORRELATION_ID] == child.correlation_id
    assert carrier[HEADER_CAUSATION_ID] == child.causation_id
    warnings = [r for r in caplog.records if "no 'baggage' propagator" in r.getMessage()]
    assert len(warnings) == 1
    assert incoming_event(propagator.extract(carrier, context=Context())) == child


def test_extract_without_eda_headers_leaves_context_alone() -> None:
    ctx = Context()
    assert EdaPropagator().extract({"content-type": "json"}, context=ctx) is ctx
    assert incoming_event(EdaPropagator().extract({}, context=ctx)) is None


def test_inject_outside_an_event_writes_no_event_headers() -> None:
    carrier: dict[str, str] = {}
    EdaPropagator().inject(carrier, context=Context())
    assert not carrier.keys() & EdaPropagator().fields


def test_invalid_values_are_dropped_not_propagated() -> None:
    event = EventContext.root("order_placed")
    carrier = {
        HEADER_EVENT_ID: event.event_id,
        HEADER_EVENT_TYPE: "order_placed\r\nX-Evil: 1",
        HEADER_CREATED: "12abc",
        HEADER_BUSINESS_KEY: "k" * 1000,
    }
    received = EdaPropagator().extract(carrier, context=Context())
    assert incoming_event(received) is None  # no valid type: not an otel-eda event
    carrier[HEADER_EVENT_TYPE] = "order_placed"
    rebuilt = incoming_event(EdaPropagator().extract(carrier, context=Context()))
    assert rebuilt is not None
    assert rebuilt.event_id == event.event_id and rebuilt.business_key is None
    assert rebuilt.correlation_id == event.event_id  # no correlation arrived: a root event


def test_extract_accepts_list_valued_carriers() -> None:
    event = EventContext.root("order_placed")
    carrier = {k: [v] for k, v in _send(event, _composite(("tracecontext", "baggage", "eda"))).items()}
    got = incoming_event(CompositePropagator([W3CBaggagePropagator(), EdaPropagator()]).extract(carrier))
    assert got == event


def test_current_event_is_not_leaked_by_extract() -> None:
    assert current_event(EdaPropagator().extract({HEADER_EVENT_ID: "x"}, context=Context())) is None


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def test_entry_point_eda_is_loaded_by_otel_propagators() -> None:
    code = (
        "from opentelemetry import propagate\n"
        "names = [type(p).__name__ for p in propagate.get_global_textmap()._propagators]\n"
        "print(names)\n"
    )
    result = _run(code, OTEL_PROPAGATORS="tracecontext,baggage,eda")
    assert result.returncode == 0, result.stderr
    assert "EdaPropagator" in result.stdout


def test_importing_the_propagator_loads_neither_sdk_nor_instrumentation() -> None:
    code = (
        "import sys, json\n"
        "import otel_eda.identity.propagation, otel_eda\n"
        "from opentelemetry import propagate\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('opentelemetry'))))\n"
    )
    result = _run(code, OTEL_PROPAGATORS="tracecontext,baggage,eda")
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout)
    assert "opentelemetry.propagate" in modules
    assert not [m for m in modules if m.startswith(("opentelemetry.sdk", "opentelemetry.instrumentation"))]
