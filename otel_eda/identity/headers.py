"""A ``Getter`` that makes any broker's headers safe for ``propagate.extract``.

OpenTelemetry's own ``tracecontext`` and ``baggage`` propagators raise on a header value
that is not a ``str`` (``bytes``, ``None``, an ``int``, a string with a lone surrogate),
and the SDK's ``DefaultGetter`` raises on a carrier that is not a mapping. Broker headers
are often exactly that: Kafka delivers ``list[tuple[str, bytes]]``, AMQP and NATS may
deliver ``bytes`` values. An application that calls ``propagate.extract`` itself should pass
:data:`header_getter`::

    from opentelemetry import propagate
    from otel_eda.identity.headers import header_getter

    context = propagate.extract(message.headers, getter=header_getter)

It accepts a mapping or a sequence of ``(key, value)`` pairs; keys and values may be
``str`` or UTF-8 ``bytes`` (a list of them for a repeated header). Whatever else it finds
(another type, undecodable bytes, a lone surrogate, a carrier that is neither) is skipped,
never raised: the propagators then see no such header. Skipped values are counted in
``eda.propagation.invalid`` (``eda.field`` = the header asked for, ``eda.reason`` =
``not_a_string`` or ``bad_encoding``). Imports only the OpenTelemetry API.

>>> header_getter.get({"traceparent": b"00-abc"}, "traceparent")
['00-abc']
>>> header_getter.get([("baggage", b"k=v"), ("baggage", "k2=v2")], "baggage")
['k=v', 'k2=v2']
>>> header_getter.get({"traceparent": 7}, "traceparent") is None
True
>>> header_getter.keys(None)
[]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from opentelemetry.propagators.textmap import Getter

from otel_eda._selfmetrics import count_invalid

__all__ = ["SafeHeaderGetter", "header_getter"]

_NOT_A_STRING: Final = "not_a_string"
_BAD_ENCODING: Final = "bad_encoding"


def _text(value: object) -> str | None:
    """``value`` as text a propagator can read, or None."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    else:
        return None
    try:
        text.encode("utf-8")  # a lone surrogate makes the baggage propagator raise
    except UnicodeEncodeError:
        return None
    return text


class SafeHeaderGetter(Getter[Any]):
    """Reads ``str`` or UTF-8 ``bytes`` headers from a mapping or a list of pairs; never raises."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        try:
            raw = self._values(carrier, key)
            if not raw:
                return None
            values: list[str] = []
            for value in raw:
                text = _text(value)
                if text is None:
                    count_invalid(key, _BAD_ENCODING if isinstance(value, str | bytes) else _NOT_A_STRING)
                else:
                    values.append(text)
            return values or None
        except Exception:  # a carrier whose own methods raise: as if the header were absent
            return None

    def keys(self, carrier: Any) -> list[str]:
        try:
            if isinstance(carrier, Mapping):
                found: Iterable[object] = carrier.keys()
            elif isinstance(carrier, list | tuple):
                found = (pair[0] for pair in carrier if isinstance(pair, list | tuple) and len(pair) == 2)
            else:
                return []
            return [text for key in found if (text := _text(key)) is not None]
        except Exception:
            return []

    @staticmethod
    def _values(carrier: Any, key: str) -> list[object]:
        if isinstance(carrier, Mapping):
            value = carrier.get(key)
            if value is None and key not in carrier:
                value = carrier.get(key.encode())  # bytes keys
            if value is None:
                return []
            return list(value) if isinstance(value, list | tuple) else [value]
        if isinstance(carrier, list | tuple):  # Kafka-style headers: [(key, value), ...]
            wanted = (key, key.encode())
            pairs = (pair for pair in carrier if isinstance(pair, list | tuple) and len(pair) == 2)
            return [value for name, value in pairs if name in wanted]
        return []


#: The one instance to pass as ``getter=`` (stateless).
header_getter: Final = SafeHeaderGetter()
