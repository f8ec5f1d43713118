"""What otel-eda writes for redis-py clients: one object per instrumentation, and the entry codec.

:class:`RedisTelemetry` holds the :class:`~otel_eda.messaging.Messaging` of the
instrumentation (spans, metrics and lifecycle records of publishing and handling events,
through the public messaging API only) and the consumer-group gauges
(:mod:`~otel_eda.transports.redis.lag`).

A stream entry has no headers: it is a flat field -> value map. otel-eda writes the event
identity and the trace context as extra fields whose names start with
:data:`RESERVED_PREFIX` (``otel-eda:traceparent``, ``otel-eda:baggage``,
``otel-eda:eda-event-id``, ...), and the instrumented client takes them out of every entry it
returns, so the application sees exactly the fields it wrote.

>>> fields = {b"order": b"7", b"otel-eda:eda-event-type": b"order_placed"}
>>> split_reserved(fields), fields
({'eda-event-type': b'order_placed'}, {b'order': b'7'})
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any, Final

from opentelemetry import metrics, trace
from opentelemetry.propagators.textmap import Setter

from otel_eda import semconv
from otel_eda.flows.records import Recorder
from otel_eda.messaging import Messaging, TraceMode
from otel_eda.transports.redis.lag import REFRESH_S, GroupLag

__all__ = ["RESERVED_PREFIX", "SCOPE", "RedisTelemetry", "ReservedSetter", "split_reserved"]

#: Instrumentation scope of otel-eda's redis spans and metrics.
SCOPE: Final = "otel_eda.redis"
#: Field names starting with this prefix are otel-eda's: written on ``XADD``, removed from what
#: the instrumented client returns. An application must not use field names starting with it.
RESERVED_PREFIX: Final = "otel-eda:"
_RESERVED_BYTES: Final = RESERVED_PREFIX.encode()
_PREFIX_LENGTH: Final = len(RESERVED_PREFIX)
#: header name -> its field name (the same few names on every entry: one concatenation each)
_FIELD_NAMES: dict[str, str] = {}
_MAX_FIELD_NAMES: Final = 1024


class ReservedSetter(Setter[MutableMapping[Any, Any]]):
    """Writes a header as the field ``otel-eda:<name>`` of the entry being added."""

    def set(self, carrier: MutableMapping[Any, Any], key: str, value: str) -> None:
        name = _FIELD_NAMES.get(key)
        if name is None:  # metadata (eda-meta-<key>) and headers of other propagators
            name = RESERVED_PREFIX + key
            if len(_FIELD_NAMES) < _MAX_FIELD_NAMES:
                _FIELD_NAMES[key] = name
        carrier[name] = value


RESERVED_SETTER: Final = ReservedSetter()


def split_reserved(fields: Any) -> dict[str, Any]:
    """Remove otel-eda's fields from an entry's field map (in place) and return them, named
    without the prefix. Never raises: an entry that is not a mutable mapping is left alone."""
    found: dict[str, Any] = {}
    try:
        # field names are str (decode_responses=True) or bytes: one type test and one prefix
        # test per name
        reserved = [
            key for key in fields if (key.startswith(RESERVED_PREFIX) if type(key) is str else _reserved_bytes(key))
        ]
        for key in reserved:
            value = fields.pop(key)
            name = key[_PREFIX_LENGTH:]
            found[name if type(name) is str else name.decode("latin-1")] = value
    except Exception:
        return found
    return found


def _reserved_bytes(key: object) -> bool:
    """The prefix test of a name that is not exactly a ``str``."""
    if isinstance(key, bytes):
        return key.startswith(_RESERVED_BYTES)
    return isinstance(key, str) and key.startswith(RESERVED_PREFIX)


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
            setter=RESERVED_SETTER,
        )
        self.lag = GroupLag(meter_provider, refresh_s=lag_refresh_s or REFRESH_S, scope=SCOPE)

    def close(self) -> None:
        self.lag.close()
