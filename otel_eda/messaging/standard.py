"""The global W3C propagators, run with a faster baggage codec for the common case.

Every message a transport publishes or extracts goes through the global propagator
(``tracecontext,baggage`` plus otel-eda's ``eda``). OpenTelemetry's
``W3CBaggagePropagator`` URL-quotes every key and value, splits and validates the header
with several regular expressions and generators per entry: about a seventh of otel-eda's
telemetry cost per Kafka record. otel-eda's own baggage entries (the correlation and
causation ids) are UUIDs, whose quoted form is the text itself.

When the global propagator is exactly W3C trace context and baggage (with or without
otel-eda's propagator, nothing else: the check of :meth:`Messaging.in_process`),
:class:`StandardPropagation` runs the same propagators in the same order, but reads and
writes a baggage header whose keys and values only hold the characters that URL quoting
leaves alone (``A-Z a-z 0-9 _ . - ~``) and that is within the W3C limits directly; any
other header or entry (quoted characters, properties, whitespace, over a limit, not a
``str``) goes to OpenTelemetry's propagator itself. Headers written and contexts
extracted are the same either way (``tests/test_messaging.py`` compares them on ordinary
and hostile input).

>>> from opentelemetry import baggage
>>> from opentelemetry.baggage.propagation import W3CBaggagePropagator
>>> fast = StandardBaggage(W3CBaggagePropagator())
>>> ctx = baggage.set_baggage("eda.correlation_id", "0190f0c2-7a3e-7d51-9b1c-2f0e8a6d4c11")
>>> headers: dict[str, str] = {}
>>> fast.inject(headers, ctx)
>>> headers
{'baggage': 'eda.correlation_id=0190f0c2-7a3e-7d51-9b1c-2f0e8a6d4c11'}
>>> dict(baggage.get_all(fast.extract({"baggage": "a=1,b=x%2Cy"})))
{'a': '1', 'b': 'x,y'}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

from opentelemetry.baggage import get_all, set_baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, get_current
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

__all__ = ["StandardBaggage", "StandardPropagation"]

_HEADER: Final = "baggage"
#: characters ``urllib.parse.quote_plus`` never changes (and ``unquote_plus`` reads as themselves)
_PLAIN: Final = r"[A-Za-z0-9_.\-~]"
_PLAIN_KEY: Final = re.compile(_PLAIN + "+").fullmatch
_PLAIN_VALUE: Final = re.compile(_PLAIN + "*").fullmatch
_PLAIN_HEADER: Final = re.compile(rf"{_PLAIN}+={_PLAIN}*(?:,{_PLAIN}+={_PLAIN}*)*").fullmatch
#: the W3C baggage limits the SDK applies: 180 entries, 4096 bytes per entry, 8192 per header
#: (a plain header of at most 4096 characters is within both byte limits)
_MAX_PAIRS: Final = 180
_MAX_PLAIN: Final = 4096


class _Read(Getter[Any]):
    """Hands the values already read to the SDK's propagator (the carrier is not read twice)."""

    __slots__ = ("values",)

    def __init__(self, values: Any) -> None:
        self.values = values

    def get(self, carrier: Any, key: str) -> Any:
        return self.values if key == _HEADER else None

    def keys(self, carrier: Any) -> list[str]:
        return [_HEADER]


class StandardBaggage(TextMapPropagator):
    """``W3CBaggagePropagator`` with a direct path for plain headers (see the module docs)."""

    def __init__(self, inner: W3CBaggagePropagator) -> None:
        self.inner = inner

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        values = getter.get(carrier, _HEADER)
        if values is not None and not isinstance(values, list | tuple | str):
            values = list(values)  # a one-shot iterator: the general path below reads it again
        header = next(iter(values), None) if values is not None else None
        if not header:
            return context if context is not None else get_current()
        if (
            type(header) is str
            and len(header) <= _MAX_PLAIN
            and header.count(",") < _MAX_PAIRS
            and _PLAIN_HEADER(header) is not None
        ):
            ctx = context if context is not None else get_current()
            for entry in header.split(","):
                name, value = entry.split("=", 1)
                ctx = set_baggage(name, value, ctx)
            return ctx
        return self.inner.extract(carrier, context, getter=_Read(values))

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        entries = get_all(context)
        if not entries:
            return
        if len(entries) <= _MAX_PAIRS:
            pairs = []
            for key, value in entries.items():
                if type(key) is not str or type(value) is not str or not _PLAIN_KEY(key) or not _PLAIN_VALUE(value):
                    break
                pairs.append(key + "=" + value)
            else:
                header = ",".join(pairs)
                if len(header) <= _MAX_PLAIN:
                    setter.set(carrier, _HEADER, header)
                    return
        self.inner.inject(carrier, context, setter)

    @property
    def fields(self) -> set[str]:
        return self.inner.fields


class StandardPropagation(TextMapPropagator):
    """``propagators`` in their order, each W3C baggage propagator as :class:`StandardBaggage`."""

    def __init__(self, propagators: Sequence[TextMapPropagator]) -> None:
        self.propagators = tuple(StandardBaggage(p) if type(p) is W3CBaggagePropagator else p for p in propagators)

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        for propagator in self.propagators:
            context = propagator.extract(carrier, context, getter=getter)
        return context  # type: ignore[return-value]  # as CompositePropagator: never None here

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        for propagator in self.propagators:
            propagator.inject(carrier, context, setter=setter)

    @property
    def fields(self) -> set[str]:
        found: set[str] = set()
        for propagator in self.propagators:
            found |= propagator.fields
        return found


def leaves(textmap: object, members: Any) -> Iterable[object]:
    """The propagators of ``textmap`` in order, composites flattened (``members`` gives a
    composite's members, or ``None`` for a leaf)."""
    inner = members(textmap)
    if inner is None:
        yield textmap
        return
    for propagator in inner:
        yield from leaves(propagator, members)
