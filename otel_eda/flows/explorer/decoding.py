"""Decoding spans from the JSON each source writes, into :class:`SpanData`.

* :func:`from_otlp`: an OTLP JSON document (``{"resourceSpans": [...]}``), as the
  Collector's file exporter writes it (one per line) and Jaeger's ``/api/v3/traces``
  returns it;
* :func:`from_console`: one span as the OpenTelemetry SDK's console exporter prints it
  (``ReadableSpan.to_json()``);
* :func:`from_zipkin`: one span of Zipkin's JSON v2, as Zipkin's query API returns it.

A malformed span raises :class:`ValueError` (its caller skips it and counts it); a span
with unknown extra fields is read as usual.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from otel_eda.flows.explorer.spans import Kind, SpanData, SpanEvent, SpanLink, as_int, hex_id

__all__ = ["from_console", "from_otlp", "from_zipkin", "is_console_span", "is_otlp_document"]

_SERVICE_NAME: Final = "service.name"
_UNKNOWN_SERVICE: Final = "unknown_service"
_OTLP_KINDS: Final = {
    0: Kind.INTERNAL,
    1: Kind.INTERNAL,
    2: Kind.SERVER,
    3: Kind.CLIENT,
    4: Kind.PRODUCER,
    5: Kind.CONSUMER,
    "SPAN_KIND_UNSPECIFIED": Kind.INTERNAL,
    "SPAN_KIND_INTERNAL": Kind.INTERNAL,
    "SPAN_KIND_SERVER": Kind.SERVER,
    "SPAN_KIND_CLIENT": Kind.CLIENT,
    "SPAN_KIND_PRODUCER": Kind.PRODUCER,
    "SPAN_KIND_CONSUMER": Kind.CONSUMER,
}
_CONSOLE_KINDS: Final = {f"SpanKind.{kind.name}": kind for kind in Kind}
_ZIPKIN_KINDS: Final = {kind.name: kind for kind in Kind}
#: Zipkin tags that the Collector's translator writes for span links: ``otlp.link.<i>``.
_ZIPKIN_LINK_TAG: Final = "otlp.link."


def _trace_id(value: Any) -> str:
    trace_id = hex_id(value, 32)
    if trace_id is None:
        raise ValueError(f"invalid trace id {value!r}")
    return trace_id


def _span_id(value: Any) -> str:
    span_id = hex_id(value, 16)
    if span_id is None:
        raise ValueError(f"invalid span id {value!r}")
    return span_id


def _name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a span without a name")
    return value


# -- OTLP JSON ------------------------------------------------------------------------------


def is_otlp_document(obj: Any) -> bool:
    return isinstance(obj, dict) and "resourceSpans" in obj


def _same(value: Any) -> Any:
    return value


def _array(inner: Any) -> list[Any]:
    return [_any_value(v) for v in (inner or {}).get("values", ())]


def _kvlist(inner: Any) -> dict[str, Any]:
    return _attributes((inner or {}).get("values", ()))


_SCALARS: Final[dict[str, Callable[[Any], Any]]] = {
    "stringValue": _same,
    "intValue": as_int,
    "doubleValue": float,
    "boolValue": bool,
    "bytesValue": _same,
    "arrayValue": _array,
    "kvlistValue": _kvlist,
}


def _any_value(value: Any) -> Any:
    if not isinstance(value, dict):
        return None
    text = value.get("stringValue")  # the common case first
    if text is not None:
        return text
    for kind, inner in value.items():
        decode = _SCALARS.get(kind)
        return decode(inner) if decode is not None else inner
    return None


def _attributes(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not items:
        return out
    any_value = _any_value
    for item in items:
        try:
            key = item["key"]
            value = item.get("value")
        except (TypeError, KeyError):
            continue
        if isinstance(key, str):
            text = value.get("stringValue") if isinstance(value, dict) else None
            out[key] = text if text is not None else any_value(value)
    return out


def _nanos(value: Any) -> int:
    number = as_int(value)
    if number is None or number < 0:
        raise ValueError(f"invalid time {value!r}")
    return number


def from_otlp(document: Mapping[str, Any]) -> Iterator[SpanData | ValueError]:
    """Every span of an OTLP JSON document; a malformed span is yielded as its ``ValueError``."""
    resources = document.get("resourceSpans")
    for resource_spans in resources if isinstance(resources, list) else ():
        try:
            resource = _attributes(_field(_field(resource_spans, "resource"), "attributes"))
            service = str(resource.get(_SERVICE_NAME) or _UNKNOWN_SERVICE)
            scopes = _field(resource_spans, "scopeSpans")
        except (ValueError, TypeError, AttributeError) as exc:
            yield ValueError(f"malformed OTLP resource: {exc!r}")
            continue
        for scope_spans in scopes if isinstance(scopes, list) else ():
            spans = _field(scope_spans, "spans") if isinstance(scope_spans, dict) else None
            for span in spans if isinstance(spans, list) else ():
                try:
                    yield _otlp_span(span, service)
                except (ValueError, TypeError, AttributeError) as exc:
                    yield ValueError(f"malformed OTLP span: {exc!r}")


def _field(obj: Any, name: str) -> Any:
    """``obj[name]`` when ``obj`` is an object, else ``None``."""
    return obj.get(name) if isinstance(obj, dict) else None


def _otlp_span(span: Mapping[str, Any], service: str) -> SpanData:
    status = span.get("status") or {}
    code = status.get("code")
    parent = span.get("parentSpanId")
    return SpanData(
        trace_id=_trace_id(span.get("traceId")),
        span_id=_span_id(span.get("spanId")),
        parent_id=hex_id(parent, 16) if parent else None,
        name=_name(span.get("name")),
        kind=_OTLP_KINDS.get(span.get("kind", 0), Kind.INTERNAL),
        service=service,
        start_ns=_nanos(span.get("startTimeUnixNano")),
        end_ns=_nanos(span.get("endTimeUnixNano")),
        attributes=_attributes(span.get("attributes")),
        events=tuple(
            SpanEvent(str(e.get("name", "")), _nanos(e.get("timeUnixNano", 0)), _attributes(e.get("attributes")))
            for e in span.get("events") or ()
        ),
        links=tuple(
            SpanLink(_trace_id(link.get("traceId")), _span_id(link.get("spanId")), _attributes(link.get("attributes")))
            for link in span.get("links") or ()
        ),
        error=code in (2, "STATUS_CODE_ERROR"),
        status_message=status.get("message") or None,
    )


# -- the SDK's console exporter --------------------------------------------------------------


def is_console_span(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("context"), dict) and "name" in obj and "kind" in obj


_EPOCH_SECONDS: dict[str, int] = {}


def _iso_nanos(value: Any) -> int:
    """``2026-12-02T21:53:06.812616Z`` (what the console exporter writes) in epoch nanoseconds.

    Spans of one file share most of their seconds: the date-time part is parsed once per
    distinct second (memoised, bounded), the fraction with integer arithmetic.
    """
    if not isinstance(value, str):
        raise ValueError(f"invalid time {value!r}")
    head, dot, fraction = value.partition(".")
    if dot and fraction.endswith("Z") and fraction[:-1].isdigit() and len(head) == 19:
        seconds = _EPOCH_SECONDS.get(head)
        if seconds is None:
            seconds = int(datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.UTC).timestamp())
            if len(_EPOCH_SECONDS) < 100_000:
                _EPOCH_SECONDS[head] = seconds
        digits = fraction[:-1][:9]
        scale: int = 10 ** (9 - len(digits))
        return seconds * 1_000_000_000 + int(digits) * scale
    moment = datetime.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def from_console(obj: Mapping[str, Any]) -> SpanData:
    """One span printed by the SDK's console exporter (``ReadableSpan.to_json()``)."""
    try:
        context = obj["context"]
        status = obj.get("status") or {}
        resource = (obj.get("resource") or {}).get("attributes") or {}
        parent = obj.get("parent_id")
        end = obj.get("end_time")
        start_ns = _iso_nanos(obj.get("start_time"))
        attributes = obj.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise ValueError("attributes that are not an object")
        return SpanData(
            trace_id=_trace_id(context.get("trace_id")),
            span_id=_span_id(context.get("span_id")),
            parent_id=hex_id(parent, 16) if parent else None,
            name=_name(obj.get("name")),
            kind=_CONSOLE_KINDS.get(obj.get("kind", ""), Kind.INTERNAL),
            service=str(resource.get(_SERVICE_NAME) or _UNKNOWN_SERVICE),
            start_ns=start_ns,
            end_ns=_iso_nanos(end) if end else start_ns,
            attributes=attributes,  # decoded for us alone: no copy
            events=tuple(
                SpanEvent(str(e.get("name", "")), _iso_nanos(e.get("timestamp")), dict(e.get("attributes") or {}))
                for e in obj.get("events") or ()
            ),
            links=tuple(
                SpanLink(
                    _trace_id(link["context"].get("trace_id")),
                    _span_id(link["context"].get("span_id")),
                    dict(link.get("attributes") or {}),
                )
                for link in obj.get("links") or ()
            ),
            error=status.get("status_code") == "ERROR",
            status_message=status.get("description") or None,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed console span: {exc!r}") from None


# -- Zipkin JSON v2 ----------------------------------------------------------------------------


def _annotation(value: str, time_ns: int) -> SpanEvent:
    """A Zipkin annotation back into a span event. Three encodings exist: the Collector's
    ``name|{attributes}|dropped``, the Python exporter's ``{"name": {attributes}}``, and a
    bare ``name`` (an event without attributes)."""
    if value.startswith("{"):
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict) and len(decoded) == 1:
            name, attributes = next(iter(decoded.items()))
            if isinstance(attributes, dict):
                return SpanEvent(name, time_ns, attributes)
    head, bar, rest = value.partition("|")
    if bar:
        body, _, _dropped = rest.rpartition("|")
        try:
            attributes = json.loads(body)
        except ValueError:
            attributes = None
        if isinstance(attributes, dict):
            return SpanEvent(head, time_ns, attributes)
    return SpanEvent(value, time_ns, {})


def _zipkin_link(tag: str) -> SpanLink | None:
    """The Collector's ``otlp.link.<i>`` tag: ``trace id|span id|trace state|{attributes}|dropped``."""
    parts = tag.split("|", 3)
    if len(parts) < 4:
        return None
    trace_id, span_id = hex_id(parts[0], 32), hex_id(parts[1], 16)
    if trace_id is None or span_id is None:
        return None
    body = parts[3].rpartition("|")[0]
    try:
        attributes = json.loads(body) if body else {}
    except ValueError:
        attributes = {}
    return SpanLink(trace_id, span_id, attributes if isinstance(attributes, dict) else {})


def from_zipkin(span: Mapping[str, Any]) -> SpanData:
    """One span of Zipkin's JSON v2 (tags are strings; timestamps microseconds)."""
    try:
        tags = dict(span.get("tags") or {})
        links = []
        for name in [t for t in tags if t.startswith(_ZIPKIN_LINK_TAG)]:
            link = _zipkin_link(str(tags.pop(name)))
            if link is not None:
                links.append(link)
        start_ns = _nanos(span.get("timestamp", 0)) * 1000
        status_code = tags.get("otel.status_code", "")
        endpoint = span.get("localEndpoint") or {}
        parent = span.get("parentId")
        return SpanData(
            trace_id=_trace_id(span.get("traceId")),
            span_id=_span_id(span.get("id")),
            parent_id=hex_id(parent, 16) if parent else None,
            name=str(span.get("name") or ""),
            kind=_ZIPKIN_KINDS.get(str(span.get("kind") or "").upper(), Kind.INTERNAL),
            service=str(endpoint.get("serviceName") or _UNKNOWN_SERVICE),
            start_ns=start_ns,
            end_ns=start_ns + _nanos(span.get("duration", 0)) * 1000,
            attributes=tags,
            events=tuple(
                _annotation(str(a.get("value", "")), _nanos(a.get("timestamp", 0)) * 1000)
                for a in span.get("annotations") or ()
            ),
            links=tuple(links),
            error=status_code.upper() == "ERROR" or ("error" in tags and not status_code),
            status_message=tags.get("error") or None,
        )
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"malformed Zipkin span: {exc!r}") from None
