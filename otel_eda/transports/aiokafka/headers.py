"""Kafka record headers (a sequence of ``(str, bytes)`` tuples) as a propagation carrier.

Reading: :class:`HeaderView` is a read-only mapping over a record's headers that
propagators read like a dict. A key looked up gives the *last* value of that key, as
Kafka's ``Headers.lastHeader`` does; values are decoded lazily, only for the keys a
propagator asks for, so a record's other headers cost nothing. A value that is not UTF-8,
is longer than :data:`MAX_VALUE_BYTES`, or is not bytes reads as missing and is counted
in ``eda.propagation.invalid`` (field ``kafka_header``); nothing raises.

CloudEvents: a record in the CloudEvents Kafka binding's binary mode carries its event id,
type and time as ``ce_id``, ``ce_type`` and ``ce_time``. Where a record has no otel-eda
header for one of them, the view reads the CloudEvents one in its place (``ce_time``, an
RFC 3339 timestamp, as epoch nanoseconds), so a record from a CloudEvents producer is
handled with its own id and type and linked through its ``traceparent``.

Writing: :func:`with_injected` returns a new header list: the application's own headers,
unchanged and in order, followed by the injected ones (so for a key the application set
too, the injected value is the last one and wins).

>>> view = HeaderView([("a", b"1"), ("traceparent", b"x"), ("a", b"2"), ("bad", b"\\xff")])
>>> view.get("a"), view.get("bad"), view.get("missing"), sorted(view)
('2', None, None, ['a', 'bad', 'traceparent'])
>>> HeaderView([("a",), ("b", b"1", b"2")]).get("a") is None  # not pairs: nothing read, counted
True
>>> ce = HeaderView([("ce_id", b"A-1"), ("ce_type", b"order.created"), ("ce_time", b"2026-01-02T03:04:05Z")])
>>> ce.get("eda-event-id"), ce.get("eda-event-type"), ce.get("eda-event-created")
('A-1', 'order.created', '1767323045000000000')
>>> with_injected((("app", b"v"),), {"traceparent": "00-..."})
[('app', b'v'), ('traceparent', b'00-...')]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from otel_eda._selfmetrics import count_invalid
from otel_eda.identity.propagation import HEADER_CREATED, HEADER_EVENT_ID, HEADER_EVENT_TYPE

__all__ = ["MAX_VALUE_BYTES", "HeaderView", "with_injected"]

#: Longest header value read (bytes). Propagation values are short: a W3C ``baggage``
#: header is capped at 8192 bytes by its specification.
MAX_VALUE_BYTES: Final = 8192


class HeaderView(Mapping[str, str]):
    """A record's headers as a ``str -> str`` mapping (last value of a key wins)."""

    __slots__ = ("_headers", "_last")

    def __init__(self, headers: Sequence[tuple[Any, Any]] | None) -> None:
        self._headers = headers or ()
        self._last: dict[Any, Any] | None = None  # key -> its last raw value, built on first lookup

    def __getitem__(self, key: str) -> str:
        last = self._last
        if last is None:
            try:
                last = self._last = dict(self._headers)  # later pairs overwrite earlier ones: the last wins
            except (TypeError, ValueError):  # not a sequence of pairs: nothing to read
                count_invalid("kafka_header", "not_pairs")
                last = self._last = {}
        if key in last:
            return _decoded(last[key])
        fallback = _CLOUDEVENTS.get(key)
        if fallback is not None:
            value = self[fallback]
            return _epoch_ns(value) if fallback == "ce_time" else value
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[str]:
        seen: dict[str, None] = {}
        for item in self._headers:
            if isinstance(item, tuple) and item and isinstance(item[0], str):
                seen.setdefault(item[0])
        return iter(seen)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        return any(isinstance(item, tuple) and item and item[0] == key for item in self._headers)


#: otel-eda headers and the CloudEvents (Kafka binding, binary mode) headers read in their place.
_CLOUDEVENTS: Final = {
    HEADER_EVENT_ID: "ce_id",
    HEADER_EVENT_TYPE: "ce_type",
    HEADER_CREATED: "ce_time",
}


def _epoch_ns(rfc3339: str) -> str:
    """An RFC 3339 time as decimal epoch nanoseconds (``KeyError``: unusable, counted)."""
    try:
        moment = datetime.fromisoformat(rfc3339)
    except ValueError:
        count_invalid("kafka_header", "bad_ce_time")
        raise KeyError("ce_time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return str((delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000)


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _decoded(value: object) -> str:
    """A header value as text; ``KeyError`` (reads as missing) when it is unusable, counted."""
    if isinstance(value, bytes | bytearray | memoryview):
        if len(value) > MAX_VALUE_BYTES:
            count_invalid("kafka_header", "too_long")
            raise KeyError("value too long")
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            count_invalid("kafka_header", "not_utf8")
            raise KeyError("value not UTF-8") from None
    count_invalid("kafka_header", "not_bytes" if value is not None else "null")
    raise KeyError("value not bytes")


def with_injected(headers: Sequence[tuple[str, bytes]] | None, injected: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """The application's headers followed by the injected ones (UTF-8), as a new list."""
    merged = list(headers) if headers else []
    merged.extend((key, value.encode()) for key, value in injected.items())
    return merged
