"""The causation explorer (issue 19) without servers: spans made by the real bus and SDK,
written as the console exporter and the Zipkin JSON encoder write them, read back and
stitched; the flows must equal what the lifecycle records say. Then gaps, limits, JSON,
and the command's exit statuses. (Against real Zipkin, Jaeger and the Collector:
``test_flow_explorer_truth.py``.)"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flow_truth import Shape, explored_flow
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.zipkin.json.v2 import JsonV2Encoder
from opentelemetry.exporter.zipkin.node_endpoint import NodeEndpoint
from opentelemetry.sdk.trace import ReadableSpan
from zipkin_server import free_port

from otel_eda import Delivery, EventStore, Rejected, RetryPolicy
from otel_eda.flows import cli
from otel_eda.flows.explorer import (
    FileSource,
    Flow,
    FlowQuery,
    Outcome,
    SpanData,
    build_flows,
    find_flows,
    flow_json,
    flow_tree,
    render_plain,
    summary_line,
)
from otel_eda.flows.explorer.decoding import from_otlp, from_zipkin
from otel_eda.settings import Settings as EdaSettings
from otel_eda.testing import TelemetryCapture

ROOT = Path(__file__).resolve().parent.parent


class Declined(Rejected):
    pass


async def _story(capture: TelemetryCapture, mode: str) -> EventStore:
    """Two orders through a bus: fan-out, a retry, a dead letter, a rejection, fan-in, and a
    handler's own span."""
    bus = capture.bus(service="shop", mode=mode, retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.001))
    tracer = capture.tracer_provider.get_tracer("test")
    failed_once: set[str] = set()

    async def pay(d: Delivery) -> None:
        with tracer.start_as_current_span("charge card"):
            pass
        if d.payload["card"] == "bad":
            await d.emit("payment_declined", {})
            raise Declined("card declined")
        await d.emit("payment_authorized", d.payload)

    async def ship(d: Delivery) -> None:
        if d.event.business_key not in failed_once:
            failed_once.add(str(d.event.business_key))
            raise TimeoutError("warehouse")

    async def mail(d: Delivery) -> None:
        raise ConnectionRefusedError("mailbox")

    async def audit(d: Delivery) -> None:
        pass

    async with bus:
        bus.subscribe("order_placed", pay, subscriber="payment")
        bus.subscribe("order_placed", audit, subscriber="audit")  # fan-out
        bus.subscribe("payment_authorized", ship, subscriber="shipping")  # retried once
        bus.subscribe("payment_authorized", mail, subscriber="mailer")  # dead-lettered
        bus.subscribe("payment_authorized", audit, subscriber="ledger")  # fan-in: ledger
        bus.subscribe("payment_declined", audit, subscriber="ledger")  # handles two types
        await bus.publish("order_placed", {"card": "good"}, business_key="order-1")
        await bus.publish("order_placed", {"card": "bad"}, business_key="order-2")
        await bus.join()
    return bus.store


@pytest.fixture(params=["parent", "link"])
def story(request: pytest.FixtureRequest) -> Iterator[tuple[list[ReadableSpan], EventStore]]:
    with TelemetryCapture(service="shop") as capture:
        store = asyncio.run(_story(capture, request.param))
        yield list(capture.exporter.get_finished_spans()), store


def recorded(store: EventStore) -> dict[str, Shape]:
    return {
        cid: {
            e.event_id: (
                e.causation_id,
                e.event_type,
                frozenset((d.subscriber, d.status.value, d.attempts) for d in e.deliveries),
            )
            for e in store.flow(cid)
        }
        for cid in store.correlation_ids()
    }


def console_file(spans: list[ReadableSpan], path: Path, *, lines: bool = False) -> Path:
    """What the console exporter writes: pretty-printed objects back to back (or JSON Lines)."""
    if lines:
        path.write_text("".join(json.dumps(json.loads(s.to_json())) + "\n" for s in spans))
    else:
        path.write_text("".join(s.to_json() + "\n" for s in spans))
    return path


def zipkin_spans(spans: list[ReadableSpan]) -> list[SpanData]:
    """Through the SDK's Zipkin JSON v2 encoder (links dropped, tags as strings) and back."""
    encoded = json.loads(JsonV2Encoder().serialize(spans, NodeEndpoint()))
    for span in encoded:
        span["localEndpoint"] = {"serviceName": "shop"}
    return [from_zipkin(span) for span in encoded]


# -- the flows equal the lifecycle records ---------------------------------------------------------


@pytest.mark.parametrize("lines", [False, True], ids=["pretty", "jsonl"])
def test_flows_from_console_files_equal_the_lifecycle_records(
    story: tuple[list[ReadableSpan], EventStore], tmp_path: Path, lines: bool
) -> None:
    spans, store = story
    source = FileSource([console_file(spans, tmp_path / "spans.json", lines=lines)])
    expected = recorded(store)
    assert len(expected) == 2
    for correlation_id, shape in expected.items():
        (flow,) = find_flows(source, FlowQuery(correlation_id=correlation_id))
        assert explored_flow(flow) == shape
        assert flow.gaps == 0
    assert source.skipped == 0


def test_flows_from_zipkin_json_equal_the_lifecycle_records(story: tuple[list[ReadableSpan], EventStore]) -> None:
    spans, store = story
    flows = build_flows(zipkin_spans(spans))
    assert {cid: explored_flow(flow) for cid, flow in flows.items()} == recorded(store)


def test_a_saved_zipkin_answer_is_a_file_source_too(
    story: tuple[list[ReadableSpan], EventStore], tmp_path: Path
) -> None:
    spans, store = story
    encoded = json.loads(JsonV2Encoder().serialize(spans, NodeEndpoint()))
    path = tmp_path / "zipkin.json"
    path.write_text(json.dumps([encoded[:10], encoded[10:]]))  # as /api/v2/traces answers: traces of spans
    source = FileSource([path])
    for correlation_id, shape in recorded(store).items():
        (flow,) = find_flows(source, FlowQuery(correlation_id=correlation_id))
        assert explored_flow(flow) == shape


def test_statuses_attempts_queue_times_and_foreign_spans(story: tuple[list[ReadableSpan], EventStore]) -> None:
    spans, _ = story
    flows = build_flows(zipkin_spans(spans))
    (good,) = [f for f in flows.values() if f.business_keys == ["order-1"]]
    authorized = next(e for e in good.events if e.event_type == "payment_authorized")
    shipping, mailer = authorized.handlings["shipping"], authorized.handlings["mailer"]
    assert (shipping.status, shipping.attempt_count, shipping.retries) == (Outcome.COMPLETED, 2, 1)
    assert (mailer.status, mailer.attempt_count, mailer.error_type) == (
        Outcome.DEAD_LETTERED,
        3,
        "ConnectionRefusedError",
    )
    assert all(a.queue_s is not None and a.queue_s >= 0 for h in authorized.handlings.values() for a in h.attempts)
    placed = next(e for e in good.events if e.event_type == "order_placed")
    assert [s.name for a in placed.handlings["payment"].attempts for s in a.foreign] == ["charge card"]
    assert authorized.emitted_by == (placed.event_id, "payment")
    assert good.status is Outcome.DEAD_LETTERED
    (bad,) = [f for f in flows.values() if f.business_keys == ["order-2"]]
    payment = bad.events[0].handlings["payment"]
    assert payment.status is Outcome.REJECTED  # a handler's Rejected
    assert payment.error_type is not None and payment.error_type.endswith("Declined")


def test_outcome_and_queue_attributes_win_over_the_span_events() -> None:
    """Spans of the hot-path issue carry eda.outcome / eda.queue.duration (and may have no events)."""
    document = _otlp_document(
        [
            _otlp_span("p1", kind=4, attrs={"messaging.message.id": "e1", "eda.correlation_id": "e1"}),
            _otlp_span(
                "c1",
                parent="p1",
                kind=5,
                attrs={
                    "messaging.message.id": "e1",
                    "eda.correlation_id": "e1",
                    "messaging.consumer.group.name": "billing",
                    "eda.delivery.attempt": 1,
                    "eda.outcome": "rejected",
                    "eda.queue.duration": 0.25,
                    "error.type": "app.Refused",
                },
            ),
        ]
    )
    spans = [s for s in from_otlp(document) if isinstance(s, SpanData)]
    (flow,) = build_flows(spans).values()
    handling = flow.events[0].handlings["billing"]
    assert (handling.status, handling.queue_s, handling.error_type) == (Outcome.REJECTED, 0.25, "app.Refused")


def test_a_replayed_event_counts_its_replays_and_ends_as_its_last_delivery() -> None:
    """A replay (the same event delivered again later, e.g. from a dead-letter queue): two
    attempt-1 spans of one subscriber; the later one decides the status."""
    consumer = {"messaging.consumer.group.name": "billing", "eda.delivery.attempt": 1}
    document = _otlp_document(
        [
            _otlp_span("p1", kind=4, attrs=_event("e1", "e1", None, "order_placed")),
            _otlp_span("c1", kind=5, attrs={**_event("e1", "e1", None, "order_placed"), **consumer}, start=1),
            _otlp_span("c2", kind=5, attrs={**_event("e1", "e1", None, "order_placed"), **consumer}, start=9),
        ]
    )
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["status"] = {"code": 2}
    spans = [s for s in from_otlp(document) if isinstance(s, SpanData)]
    handling = build_flows(spans)["e1"].events[0].handlings["billing"]
    assert (handling.replays, handling.attempt_count, handling.status) == (1, 1, Outcome.COMPLETED)
    assert "replayed \u00d71" in _plain(build_flows(spans)["e1"])


@pytest.mark.parametrize("reference", ["link attributes", "link", "eda.producer ids", "parent"])
def test_a_consumer_span_without_a_message_id_is_tied_to_its_event_by_link_producer_ids_or_parent(
    reference: str,
) -> None:
    producer = _otlp_span("p1", kind=4, attrs=_event("e1", "e1", None, "order_placed"))
    attrs: dict[str, Any] = {"eda.correlation_id": "e1", "messaging.consumer.group.name": "billing"}
    consumer = _otlp_span("c1", kind=5, attrs=attrs, parent="p1" if reference == "parent" else None)
    if reference == "parent":
        consumer["traceId"] = producer["traceId"]
    elif reference == "eda.producer ids":
        consumer["attributes"] += [
            {"key": "eda.producer.trace_id", "value": {"stringValue": producer["traceId"]}},
            {"key": "eda.producer.span_id", "value": {"stringValue": producer["spanId"]}},
        ]
    else:
        link_attrs = [{"key": "messaging.message.id", "value": {"stringValue": "e1"}}]
        consumer["links"] = [
            {
                "traceId": producer["traceId"],
                "spanId": producer["spanId"],
                "attributes": link_attrs if reference == "link attributes" else [],
            }
        ]
    spans = [s for s in from_otlp(_otlp_document([producer, consumer])) if isinstance(s, SpanData)]
    (event,) = build_flows(spans)["e1"].events
    assert list(event.handlings) == ["billing"]


def test_a_consumer_span_of_nothing_known_is_an_ordinary_span() -> None:
    attrs: dict[str, Any] = {"eda.correlation_id": "e1", "messaging.consumer.group.name": "billing"}
    producer = _otlp_span("p1", kind=4, attrs=_event("e1", "e1", None, "order_placed"))
    document = _otlp_document([producer, _otlp_span("c1", kind=5, attrs=attrs)])
    spans = [s for s in from_otlp(document) if isinstance(s, SpanData)]
    flow = build_flows(spans)["e1"]
    assert not flow.events[0].handlings and [s.name for s in flow.stray] == ["c1"]


# -- gaps --------------------------------------------------------------------------------------------


def test_missing_spans_are_marked_gaps_not_failures(story: tuple[list[ReadableSpan], EventStore]) -> None:
    spans, _ = story
    producers = [s for s in spans if s.name == "send payment_authorized"]
    retried_attempt = next(
        s
        for s in spans
        if s.name == "process payment_authorized"
        and (s.attributes or {}).get("messaging.consumer.group.name") == "mailer"
        and (s.attributes or {}).get("eda.delivery.attempt") == 2
    )
    kept = [s for s in spans if s not in producers and s is not retried_attempt]
    flows = build_flows(zipkin_spans(kept))
    (good,) = [f for f in flows.values() if f.business_keys == ["order-1"]]
    authorized = next(e for e in good.events if e.event_type == "payment_authorized")
    assert authorized.missing_publish
    assert authorized.handlings["mailer"].missing_attempts == [2]
    assert good.gaps == 2
    text = _plain(good)
    assert "publish span missing" in text and "attempt 2 missing" in text
    assert "2 gaps (missing spans)" in text


def test_an_event_whose_spans_are_all_lost_is_a_marked_node_with_its_descendants_below() -> None:
    document = _otlp_document(
        [
            _otlp_span("a1", kind=4, attrs=_event("root", "root", None, "order_placed")),
            # the event "middle" (caused by root) left no span at all; its child did
            _otlp_span("d1", kind=4, attrs=_event("leaf", "root", "middle", "shipped")),
        ]
    )
    spans = [s for s in from_otlp(document) if isinstance(s, SpanData)]
    flow = build_flows(spans)["root"]
    assert flow.missing_events == ["middle"]
    lines = _plain(flow).splitlines()
    missing = next(i for i, line in enumerate(lines) if "event middle missing" in line)
    assert "shipped" in lines[missing + 1] and lines[missing + 1].index("shipped") > lines[missing].index("event")


# -- rendering ---------------------------------------------------------------------------------------


def test_a_flow_larger_than_the_limit_is_summarised_with_the_way_to_see_the_rest() -> None:
    events = [_otlp_span("r0", kind=4, attrs=_event("e0", "e0", None, "tick"))]
    events += [_otlp_span(f"r{i}", kind=4, attrs=_event(f"e{i}", "e0", f"e{i - 1}", "tick")) for i in range(1, 30)]
    spans = [s for s in from_otlp(_otlp_document(events)) if isinstance(s, SpanData)]
    flow = build_flows(spans)["e0"]
    text = "\n".join(_tree_lines(flow, limit=10))
    assert text.count("tick from") == 10
    assert "20 more events not shown (limit 10): --limit 0 shows all" in text
    assert "\n".join(_tree_lines(flow, limit=0)).count("tick from") == 30
    assert len(flow_json(flow)["events"]) == 30


@pytest.mark.parametrize("length", [5, 40], ids=["tree", "deep chain: line by line"])
def test_the_terminal_rendering_shows_every_event_of_shallow_and_deep_flows(length: int) -> None:
    from otel_eda.flows.explorer.render import render_rich

    events = [_otlp_span("r0", kind=4, attrs=_event("e0", "e0", None, "tick"))]
    events += [_otlp_span(f"r{i}", kind=4, attrs=_event(f"e{i}", "e0", f"e{i - 1}", "tick")) for i in range(1, length)]
    flow = build_flows([s for s in from_otlp(_otlp_document(events)) if isinstance(s, SpanData)])["e0"]
    out = io.StringIO()
    render_rich([(flow_tree(flow), summary_line(flow))], out)
    text = out.getvalue()
    assert text.count("tick from") == length
    assert f"{length} events, 1 services (svc)" in text.replace("\n", "")


def test_the_summary_line_names_the_critical_path(story: tuple[list[ReadableSpan], EventStore]) -> None:
    spans, _ = story
    flows = build_flows(zipkin_spans(spans))
    (good,) = [f for f in flows.values() if f.business_keys == ["order-1"]]
    line = summary_line(good)
    assert line.startswith("2 events, 1 services (shop), wall ")
    path = [e.event_type for e, _ in good.critical_path()]
    assert path[0] == "order_placed" and "critical path order_placed@" in line


# -- decoding ----------------------------------------------------------------------------------------


def test_zipkin_annotations_in_every_encoding_and_collector_link_tags() -> None:
    span = from_zipkin(
        {
            "traceId": "0af7651916cd43dd8448eb211c80319c",
            "id": "b7ad6b7169203331",
            "kind": "CONSUMER",
            "name": "process orders",
            "timestamp": 1_700_000_000_000_000,
            "duration": 1500,
            "localEndpoint": {"serviceName": "billing"},
            "annotations": [
                {"timestamp": 1_700_000_000_000_100, "value": 'eda.received|{"eda.stage.duration":0.5}|0'},
                {"timestamp": 1_700_000_000_000_200, "value": '{"eda.completed": {"eda.stage.duration": 0.25}}'},
                {"timestamp": 1_700_000_000_000_300, "value": "plain"},
            ],
            "tags": {
                "otlp.link.0": '4bf92f3577b34da6a3ce929d0e0e4736|00f067aa0ba902b7||{"messaging.message.id":"e1"}|0',
                "otel.status_code": "ERROR",
                "error": "boom",
            },
        }
    )
    assert [(e.name, dict(e.attributes)) for e in span.events] == [
        ("eda.received", {"eda.stage.duration": 0.5}),
        ("eda.completed", {"eda.stage.duration": 0.25}),
        ("plain", {}),
    ]
    (link,) = span.links
    assert (link.trace_id, link.span_id, dict(link.attributes)) == (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
        {"messaging.message.id": "e1"},
    )
    assert "otlp.link.0" not in span.attributes
    assert span.error and span.status_message == "boom" and span.duration_s == 0.0015


def test_a_json_lines_file_is_searched_as_text_and_only_the_lines_of_the_flow_are_decoded(
    story: tuple[list[ReadableSpan], EventStore], tmp_path: Path
) -> None:
    spans, store = story
    path = console_file(spans, tmp_path / "spans.jsonl", lines=True)
    correlation_id = store.find("order-2")[0]
    source = FileSource([path])
    (flow,) = find_flows(source, FlowQuery(business_key="order-2"))
    assert flow.correlation_id == correlation_id
    assert explored_flow(flow) == recorded(store)[correlation_id]
    (lines,) = source._files()
    decoded = sum(1 for spans_of_line in lines.decoded.values() if spans_of_line)  # type: ignore[union-attr]
    of_flow = sum(1 for s in spans if (s.attributes or {}).get("eda.correlation_id") == correlation_id)
    assert decoded == of_flow < len(spans)  # the other order's lines were never decoded


def test_unreadable_input_is_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    good = _otlp_document([_otlp_span("a1", kind=4, attrs=_event("root", "root", None, "order_placed"))])
    bad_span = _otlp_document([{"traceId": "zz", "spanId": "a1", "name": "x"}])
    metrics = {"resourceMetrics": []}
    path.write_text("\n".join([json.dumps(good), json.dumps(bad_span), json.dumps(metrics), '{"resourceSp']))
    source = FileSource([path])
    assert [f.correlation_id for f in find_flows(source, FlowQuery(correlation_id="root"))] == ["root"]
    assert source.skipped == 0  # lines that cannot hold the flow are not even decoded
    source.spans()  # reading everything meets them
    assert source.skipped == 2  # the span with a bad trace id, and the line cut short


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)
_KEYS = st.sampled_from(
    [
        *("resourceSpans", "scopeSpans", "spans", "resource", "attributes", "traceId", "spanId", "parentSpanId"),
        *("name", "kind", "startTimeUnixNano", "endTimeUnixNano", "events", "links", "status", "context"),
        *("trace_id", "span_id", "start_time", "end_time", "parent_id", "tags", "annotations", "timestamp"),
        *("duration", "id", "value", "key", "messaging.message.id", "eda.correlation_id", "eda.causation_id"),
        *("eda.delivery.attempt", "stringValue"),
    ]
)
# JSON shaped like spans, with the field names the decoders look for, holding anything
_SPANLIKE = st.recursive(
    _JSON,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=8),
    max_leaves=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(_SPANLIKE, max_size=4))
def test_hostile_json_never_breaks_reading_or_stitching(
    values: list[Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("hostile") / "spans.json"
    path.write_text("\n".join(json.dumps(v) for v in values))
    source = FileSource([path])
    spans = source.spans()
    flows = build_flows(spans)
    for flow in flows.values():
        render_plain([(flow_tree(flow), summary_line(flow))], io.StringIO())
        json.dumps(flow_json(flow))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document."""
    found = [prefix]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _paths(inner, (*prefix, index))
    return found


@pytest.fixture(scope="module")
def real_spans() -> list[dict[str, Any]]:
    with TelemetryCapture(service="shop") as capture:
        asyncio.run(_story(capture, "link"))
        return [json.loads(s.to_json()) for s in capture.exporter.get_finished_spans()]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_real_spans_with_any_field_replaced_by_any_json_never_break_it(
    real_spans: list[dict[str, Any]], data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    spans = json.loads(json.dumps(real_spans))
    for _ in range(3):
        index = data.draw(st.integers(0, len(spans) - 1))
        path = data.draw(st.sampled_from(_paths(spans[index])[1:]))
        target = spans[index]
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = data.draw(_JSON)
    path = tmp_path_factory.mktemp("mutated") / "spans.json"
    path.write_text("".join(json.dumps(span, indent=4) + "\n" for span in spans))
    for flow in build_flows(FileSource([path]).spans()).values():
        render_plain([(flow_tree(flow), summary_line(flow))], io.StringIO())
        json.dumps(flow_json(flow))


# -- the command ---------------------------------------------------------------------------------------


@pytest.fixture
def story_file(story: tuple[list[ReadableSpan], EventStore], tmp_path: Path) -> tuple[Path, EventStore]:
    spans, store = story
    return console_file(spans, tmp_path / "spans.json"), store


def test_flow_by_key_prints_the_tree_and_exits_0(
    story_file: tuple[Path, EventStore], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = story_file
    assert cli.main(["flow", "--key", "order-2", "--file", str(path)]) == cli.EXIT_FOUND
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("order-2  correlation id ")
    assert "payment (shop) rejected" in out and "Declined" in out and "payment_declined from shop" in out
    assert "\x1b[" not in out  # not a terminal: plain text


def test_flow_by_event_shows_its_causes_and_what_it_caused(
    story_file: tuple[Path, EventStore], capsys: pytest.CaptureFixture[str]
) -> None:
    path, store = story_file
    root = store.find("order-1")[0]
    authorized = next(e for e in store.flow(root) if e.event_type == "payment_authorized")
    assert cli.main(["flow", "--event", authorized.event_id, "--file", str(path), "--json"]) == cli.EXIT_FOUND
    (flow,) = json.loads(capsys.readouterr().out)["flows"]
    assert [e["event_type"] for e in flow["events"]] == ["order_placed", "payment_authorized"]


def test_flow_by_correlation_id_as_json_from_the_environment(
    story_file: tuple[Path, EventStore], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, store = story_file
    monkeypatch.setenv("OTEL_EDA_FLOW_FILE", str(path))
    root = store.find("order-1")[0]
    assert cli.main(["flow", root, "--json"]) == cli.EXIT_FOUND
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert [f["correlation_id"] for f in document["flows"]] == [root]


def test_unknown_id_is_one_line_and_exit_1(
    story_file: tuple[Path, EventStore], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = story_file
    assert cli.main(["flow", "--key", "order-404", "--file", str(path)]) == cli.EXIT_NOT_FOUND
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f"otel-eda flow: no flow found for business key order-404 in file(s) {path}"]


@pytest.mark.parametrize("backend", ["--zipkin", "--jaeger"])
def test_an_unreachable_backend_is_one_line_and_exit_3(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["flow", "--key", "order-1", backend, url]) == cli.EXIT_SOURCE
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("otel-eda flow: error: cannot reach ") and url in line


def test_a_missing_file_is_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["flow", "x", "--file", str(tmp_path / "nope.json")]) == cli.EXIT_SOURCE
    assert "no such file or directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["flow", "--file", "x"], "give one of"),
        (["flow", "abc", "--key", "k", "--file", "x"], "give one of"),
        (["flow", "abc", "--zipkin", "http://a", "--file", "x"], "give one source"),
        (["flow", "abc"], "no source"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OTEL_EDA_FLOW_ZIPKIN_URL", "OTEL_EDA_FLOW_JAEGER_URL", "OTEL_EDA_FLOW_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(argv) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_invalid_flow_settings_are_logged_and_replaced_by_defaults() -> None:
    bad = EdaSettings.from_environ({"OTEL_EDA_FLOW_ZIPKIN_URL": "localhost:9411", "OTEL_EDA_FLOW_LOOKBACK": "-1"})
    assert bad.flow_zipkin_url is None and bad.flow_lookback_s == 86_400.0
    assert {e.variable for e in bad.errors} == {"OTEL_EDA_FLOW_ZIPKIN_URL", "OTEL_EDA_FLOW_LOOKBACK"}
    ok = EdaSettings.from_environ(
        {"OTEL_EDA_FLOW_FILE": "a.json:b.jsonl", "OTEL_EDA_FLOW_JAEGER_URL": "http://j:16686/"}
    )
    assert ok.flow_files == ("a.json", "b.jsonl") and ok.flow_jaeger_url == "http://j:16686"


def test_python_m_otel_eda_is_the_command(story_file: tuple[Path, EventStore]) -> None:
    path, _ = story_file
    result = subprocess.run(
        [sys.executable, "-m", "otel_eda", "flow", "--key", "order-1", "--file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "dead-lettered (retried \u00d72)" in result.stdout
    assert "completed (retried \u00d71)" in result.stdout


# -- helpers ---------------------------------------------------------------------------------------


def _plain(flow: Flow, limit: int = 200) -> str:
    return "\n".join(_tree_lines(flow, limit)) + "\n" + summary_line(flow)


def _tree_lines(flow: Flow, limit: int) -> list[str]:
    out = io.StringIO()
    render_plain([(flow_tree(flow, limit), "")], out)
    return out.getvalue().splitlines()


def _event(event_id: str, correlation_id: str, causation_id: str | None, event_type: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "messaging.message.id": event_id,
        "eda.correlation_id": correlation_id,
        "eda.event_type": event_type,
    }
    if causation_id is not None:
        attrs["eda.causation_id"] = causation_id
    return attrs


def _otlp_span(
    span_id: str, *, kind: int, attrs: dict[str, Any], parent: str | None = None, start: int | None = None
) -> dict[str, Any]:
    def value(v: Any) -> dict[str, Any]:
        if isinstance(v, bool):
            return {"boolValue": v}
        if isinstance(v, int):
            return {"intValue": str(v)}
        if isinstance(v, float):
            return {"doubleValue": v}
        return {"stringValue": v}

    def number_of(name: str) -> int:  # a stable, non-zero id for a short name
        return sum(ord(c) * 31**i for i, c in enumerate(name)) % 2**60 + 1

    number = number_of(span_id)
    start_ns = 1_700_000_000_000_000_000 + (number % 1000 if start is None else start * 1_000_000)
    return {
        "traceId": f"{number:032x}",
        "spanId": f"{number:016x}",
        "parentSpanId": f"{number_of(parent):016x}" if parent else "",
        "name": span_id,
        "kind": kind,
        "startTimeUnixNano": str(start_ns),
        "endTimeUnixNano": str(start_ns + 1_000_000),
        "attributes": [{"key": k, "value": value(v)} for k, v in attrs.items()],
    }


def _otlp_document(spans: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
                "scopeSpans": [{"scope": {"name": "t"}, "spans": spans}],
            }
        ]
    }
