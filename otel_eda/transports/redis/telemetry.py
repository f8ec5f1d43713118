"""What otel-eda writes for redis-py clients: one object per instrumentation, and the entry codec.

:class:`RedisTelemetry` holds the :class:`~otel_eda.messaging.Messaging` of the
instrumentation (spans, metrics and lifecycle records of publishing and handling events,
through the public messaging API only) and the consumer-group gauges
(:mod:`~otel_eda.transports.redis.lag`).

A stream entry has no headers: it is a flat field -> value map. otel-eda writes the event
identity and the trace context (what the propagators write as headers: ``traceparent``,
``baggage``, ``eda-event-id``, ``eda-event-type``, ``eda-event-created``, ...) into ONE extra
field, :data:`PACKED_FIELD` (``otel-eda:headers``), one ``name=value`` per line
(:func:`pack_reserved`): redis-py encodes and parses each field of each entry separately,
and each field costs about as much as the telemetry of a small span. A header that cannot
go on a line (a line break in its value) gets a field of its own, ``otel-eda:<name>``, as
every header did before (entries written that way are read the same). Field names starting
with :data:`RESERVED_PREFIX` are otel-eda's, and the instrumented client takes them out of
every entry it returns, so the application sees exactly the fields it wrote.

>>> fields = {"order": "7"}
>>> pack_reserved({"eda-event-type": "order_placed", "traceparent": "00-...-01"}, fields)
>>> fields
{'order': '7', 'otel-eda:headers': 'eda-event-type=order_placed\\ntraceparent=00-...-01'}
>>> split_reserved(fields), fields
({'eda-event-type': 'order_placed', 'traceparent': '00-...-01'}, {'order': '7'})
>>> old = {b"order": b"7", b"otel-eda:eda-event-type": b"order_placed"}  # one field per header
>>> split_reserved(old), old
({'eda-event-type': b'order_placed'}, {b'order': b'7'})
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any, Final

from opentelemetry import metrics, trace
from opentelemetry.propagators.textmap import Setter

from otel_eda import semconv
from otel_eda._selfmetrics import count_invalid
from otel_eda.flows.records import Recorder
from otel_eda.messaging import TEXT_SETTER, Messaging, TraceMode
from otel_eda.transports.redis.lag import REFRESH_S, GroupLag

__all__ = [
    "PACKED_FIELD",
    "RESERVED_PREFIX",
    "SCOPE",
    "RedisTelemetry",
    "ReservedSetter",
    "pack_reserved",
    "split_reserved",
]

#: Instrumentation scope of otel-eda's redis spans and metrics.
SCOPE: Final = "otel_eda.redis"
#: Field names starting with this prefix are otel-eda's: written on ``XADD``, removed from what
#: the instrumented client returns. An application must not use field names starting with it.
RESERVED_PREFIX: Final = "otel-eda:"
#: The one field holding an entry's headers, one ``name=value`` per line.
PACKED_FIELD: Final = RESERVED_PREFIX + "headers"
_RESERVED_BYTES: Final = RESERVED_PREFIX.encode()
_PREFIX_LENGTH: Final = len(RESERVED_PREFIX)
_PACKED_NAME: Final = PACKED_FIELD[_PREFIX_LENGTH:]
#: Longest packed field read (longer: ignored and counted); each value is then checked as
#: any header value is (at most 8 KiB, text).
MAX_PACKED: Final = 65_536
#: Most header lines in one packed field: a writer puts the headers past them in fields of
#: their own, a reader reads none of a field with more (counted). otel-eda's propagators write
#: at most about 25 (trace context, baggage, the identity, up to 16 metadata entries).
MAX_PACKED_LINES: Final = 64
#: header name -> its field name (the same few names on every entry: one concatenation each)
_FIELD_NAMES: dict[str, str] = {}
_MAX_FIELD_NAMES: Final = 1024


def _field_name(key: str) -> str:
    name = _FIELD_NAMES.get(key)
    if name is None:  # metadata (eda-meta-<key>) and headers of other propagators
        name = RESERVED_PREFIX + key
        if len(_FIELD_NAMES) < _MAX_FIELD_NAMES:
            _FIELD_NAMES[key] = name
    return name


class ReservedSetter(Setter[MutableMapping[Any, Any]]):
    """Writes a header as the field ``otel-eda:<name>`` of the entry being added (one field per
    header; :func:`pack_reserved` writes them all in one)."""

    def set(self, carrier: MutableMapping[Any, Any], key: str, value: str) -> None:
        carrier[_field_name(key)] = value


RESERVED_SETTER: Final = ReservedSetter()


def pack_reserved(headers: MutableMapping[str, Any], fields: MutableMapping[Any, Any]) -> None:
    """Add ``headers`` (name -> value, as the propagators wrote them) to an entry's ``fields``:
    one :data:`PACKED_FIELD` line ``name=value`` each, except a header that cannot go on a
    line (a value with a line break or that is not text, a name with ``=``), which gets a
    field of its own, ``otel-eda:<name>``, as do the headers past the
    :data:`MAX_PACKED_LINES` a reader takes (a propagator writing one header per baggage
    entry, say)."""
    lines = [f"{name}={value}" for name, value in headers.items() if type(value) is str]
    packed = "\n".join(lines)
    # the usual case in two scans of the joined text: every header a line, no stray line break
    if (
        len(lines) == len(headers) <= MAX_PACKED_LINES
        and packed.count("\n") == len(lines) - 1
        and "\r" not in packed
        and (_PLAIN_NAMES.issuperset(headers) or all(_plain_name(name) for name in headers))
    ):
        if packed:
            fields[PACKED_FIELD] = packed
        return
    lines = []
    for name, value in headers.items():
        if (
            len(lines) < MAX_PACKED_LINES
            and type(value) is str
            and "\n" not in value
            and "\r" not in value
            and _plain_name(name)
        ):
            lines.append(f"{name}={value}")
        else:
            fields[_field_name(name)] = value
    if lines:
        fields[PACKED_FIELD] = "\n".join(lines)


#: header names known to go on a line (the same few on every entry)
_PLAIN_NAMES: set[str] = set()


def _plain_name(name: str) -> bool:
    plain = bool(name) and "=" not in name and "\n" not in name and "\r" not in name
    if plain and len(_PLAIN_NAMES) < _MAX_FIELD_NAMES:
        _PLAIN_NAMES.add(name)
    return plain


def split_reserved(fields: Any) -> dict[str, Any]:
    """Remove otel-eda's fields from an entry's field map (in place) and return the headers they
    hold, by name: the lines of :data:`PACKED_FIELD` and the fields ``otel-eda:<name>`` (these
    win). Never raises: an entry that is not a mutable mapping is left alone; a packed field
    that is not text, too long or has a line without ``=`` is ignored (that line) and counted."""
    found: dict[str, Any] = {}
    try:
        # field names are str (decode_responses=True) or bytes: one type test and one prefix
        # test per name
        reserved = [
            key for key in fields if (key.startswith(RESERVED_PREFIX) if type(key) is str else _reserved_bytes(key))
        ]
        if not reserved:
            return found
        single = None
        for key in reserved:
            value = fields.pop(key)
            name = key[_PREFIX_LENGTH:]
            if type(name) is not str:
                name = name.decode("latin-1")
            if name == _PACKED_NAME:
                _unpack(value, found)
            else:
                if single is None:
                    single = {}
                single[name] = value
        if single is not None:
            found.update(single)
    except Exception:
        return found
    return found


def _reserved_bytes(key: object) -> bool:
    """The prefix test of a name that is not exactly a ``str``."""
    if isinstance(key, bytes):
        return key.startswith(_RESERVED_BYTES)
    return isinstance(key, str) and key.startswith(RESERVED_PREFIX)


def _unpack(value: Any, found: dict[str, Any]) -> None:
    if type(value) is not str:
        if not isinstance(value, bytes | bytearray | memoryview):
            count_invalid(PACKED_FIELD, "not_text")
            return
        # undecodable bytes stay visible (lone surrogates): the header check counts them
        value = bytes(value).decode("utf-8", "surrogateescape")
    if len(value) > MAX_PACKED:
        count_invalid(PACKED_FIELD, "too_long")
        return
    lines = value.split("\n", MAX_PACKED_LINES)
    if len(lines) > MAX_PACKED_LINES:  # far more than any propagator writes: none of it is read
        count_invalid(PACKED_FIELD, "too_many_lines")
        return
    malformed = False
    for line in lines:
        name, sep, text = line.partition("=")
        if sep and name:
            found[name] = text
        else:
            malformed = True
    if malformed:  # counted once per field, whatever the number of bad lines
        count_invalid(PACKED_FIELD, "malformed")


class RedisTelemetry:
    """The telemetry of one redis instrumentation (see the module docstring)."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        recorders: Sequence[Recorder] = (),
        mode: TraceMode | None = None,
        lag_refresh_s: float | None = None,
    ) -> None:
        self.messaging = Messaging(
            semconv.MESSAGING_SYSTEM_REDIS,
            scope=SCOPE,
            mode=mode,
            recorders=recorders,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            setter=TEXT_SETTER,  # into a dict of headers, then pack_reserved
        )
        self.lag = GroupLag(meter_provider, refresh_s=lag_refresh_s or REFRESH_S, scope=SCOPE)

    def close(self) -> None:
        self.lag.close()
