"""``SpanData``: one span as the explorer reads it, whatever backend or file it came from.

Every source (Zipkin's JSON v2, Jaeger's OTLP JSON, the Collector's file exporter, the
SDK's console exporter) is decoded into this one shape, so stitching knows nothing about
where a span came from. Ids are lower-case hex; times are epoch nanoseconds; attribute
values keep the type the source gave (Zipkin gives strings only: the accessors below
convert).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["Kind", "SpanData", "SpanEvent", "SpanLink", "as_float", "as_int", "as_str"]


class Kind(enum.StrEnum):
    """The span kinds of OpenTelemetry (Zipkin has no ``INTERNAL``: a span without a kind is one)."""

    INTERNAL = "internal"
    SERVER = "server"
    CLIENT = "client"
    PRODUCER = "producer"
    CONSUMER = "consumer"


@dataclasses.dataclass(slots=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: Mapping[str, Any]


@dataclasses.dataclass(slots=True)
class SpanLink:
    trace_id: str
    span_id: str
    attributes: Mapping[str, Any]


@dataclasses.dataclass(slots=True)
class SpanData:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: Kind
    service: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]
    events: tuple[SpanEvent, ...] = ()
    links: tuple[SpanLink, ...] = ()
    #: the span's status is ERROR
    error: bool = False
    status_message: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.trace_id, self.span_id)

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9

    def text(self, name: str) -> str | None:
        return as_str(self.attributes.get(name))


def as_str(value: Any) -> str | None:
    """An attribute value as a non-empty string, or ``None``."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text or None


def as_int(value: Any) -> int | None:
    """An attribute value as an integer (Zipkin tags are strings), or ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def as_float(value: Any) -> float | None:
    """An attribute value as a finite float, or ``None``."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


_HEX: Final = re.compile(r"(?:0x)?([0-9a-f]{1,32})")


def hex_id(value: Any, length: int) -> str | None:
    """A trace (32) or span (16) id as lower-case hex of ``length`` digits, or ``None``.

    Accepts hex with or without ``0x`` (the console exporter writes ``0x...``; Zipkin may
    drop leading zeros), and rejects anything else, including the all-zero id.
    """
    if not isinstance(value, str):
        return None
    match = _HEX.fullmatch(value if value.islower() or not value else value.lower())
    if match is None:
        return None
    text = match.group(1)
    if len(text) > length or not text.strip("0"):
        return None
    return text if len(text) == length else text.rjust(length, "0")
