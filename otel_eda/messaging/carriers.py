"""Getter/setter pairs for the header carriers transports use: never a dict copy.

A transport passes its own header object to :meth:`Messaging.publish` and
:meth:`Messaging.extract` with the pair for its shape:

================================  ============================  =========================
carrier shape                     getter                        setter
================================  ============================  =========================
``MutableMapping[str, str]``      :data:`TEXT_GETTER`           :data:`TEXT_SETTER`
mapping with ``bytes`` values     :data:`TEXT_GETTER`           :data:`BYTES_SETTER`
``list[tuple[str, bytes]]``       :data:`HEADER_LIST_GETTER`    :data:`HEADER_LIST_SETTER`
(Kafka)
================================  ============================  =========================

Every getter here is *safe*: whatever a carrier holds (``bytes``, ``None``, numbers,
nested lists or dicts, invalid UTF-8), it returns ``None`` or a list of ``str`` and never
raises, so OpenTelemetry's own propagators (which raise on non-string values) can be
given it too. A value that cannot be read as text is ignored and counted in
``eda.propagation.invalid``. Applications that call ``propagate.extract`` on broker
headers themselves should pass :data:`TEXT_GETTER`::

    from opentelemetry import propagate
    from otel_eda.messaging.carriers import TEXT_GETTER
    ctx = propagate.extract(message.headers, getter=TEXT_GETTER)

For a duplicated key in a header list the last value wins (Kafka's ``lastHeader``).
Header names are matched exactly: otel-eda writes them in lower case, so a transport whose
header names are case-insensitive (HTTP) passes a mapping with lower-cased names.

>>> headers = [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), ("k", b"1"), ("k", b"2")]
>>> HEADER_LIST_GETTER.get(headers, "k")
['2']
>>> HEADER_LIST_SETTER.set(headers, "k", "3"); headers[-1]
('k', b'3')
>>> TEXT_GETTER.get({"a": b"\\xff", "b": 7, "c": b"ok"}, "c"), TEXT_GETTER.get({"a": b"\\xff"}, "a")
(['ok'], None)
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, MutableMapping, MutableSequence, Sequence
from typing import Any, Final

from opentelemetry.propagators.textmap import Getter, Setter

from otel_eda._selfmetrics import count_invalid

__all__ = [
    "BYTES_SETTER",
    "HEADER_LIST_GETTER",
    "HEADER_LIST_SETTER",
    "TEXT_GETTER",
    "TEXT_SETTER",
    "BytesSetter",
    "HeaderListGetter",
    "HeaderListSetter",
    "SafeGetter",
    "TextGetter",
    "TextSetter",
    "as_text",
    "without_written",
    "without_written_pairs",
]

#: Longest header value read, in bytes or characters; longer ones are ignored and counted
#: (the W3C baggage limit is 8192 bytes for the whole header).
MAX_HEADER_VALUE: Final = 8192


#: the prefix of the headers otel-eda writes (identity and ``eda-meta-*`` metadata)
WRITTEN_PREFIX: Final = "eda-"


def _written(name: object, fields: Container[str]) -> bool:
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    return isinstance(name, str) and (name in fields or name.startswith(WRITTEN_PREFIX))


def without_written(headers: Mapping[Any, Any] | None, fields: Container[str]) -> dict[Any, Any]:
    """A copy of an application's headers for a publish, without the headers the publish
    writes afresh: the propagator's ``fields`` and every ``eda-`` header.

    OpenTelemetry's propagator API asks for this ("if the carrier is reused, the fields
    should be deleted before calling inject"): an application that forwards a consumed
    message's headers would otherwise send the old event's ``tracestate``, business key or
    metadata wherever the new event has none.

    >>> without_written({"traceparent": "00-...", "eda-business-key": "order-1", "k": "v"}, {"traceparent"})
    {'k': 'v'}
    """
    if not headers:
        return {}
    return {name: value for name, value in headers.items() if not _written(name, fields)}


def without_written_pairs(headers: Iterable[tuple[Any, Any]] | None, fields: Container[str]) -> list[tuple[Any, Any]]:
    """:func:`without_written` for a header list of ``(name, value)`` pairs (Kafka).

    >>> without_written_pairs([("tracestate", b"a=1"), ("k", b"1"), (b"eda-meta-tenant", b"t")], {"tracestate"})
    [('k', b'1')]
    >>> without_written_pairs([None, ("k", b"1")], {"tracestate"})  # not a pair: the client's to report
    [None, ('k', b'1')]
    """
    if not headers:
        return []
    # an element that is not a pair is kept as it is: the client reports it, as without otel-eda
    return [pair for pair in headers if not (isinstance(pair, tuple | list) and pair and _written(pair[0], fields))]


def as_text(value: object, name: str = "header") -> str | None:  # noqa: PLR0911
    """A header value as ``str``, or ``None`` (counted) when it cannot be one.

    ``None`` and empty ``bytes`` are "no value" (not counted); ``bytes`` must be UTF-8.
    """
    if isinstance(value, str):
        text = value
    elif isinstance(value, bytes | bytearray | memoryview):
        if not value:
            return None
        if len(value) > MAX_HEADER_VALUE:
            count_invalid(name, "too_long")
            return None
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            count_invalid(name, "not_utf8")
            return None
    elif value is None:
        return None
    else:
        count_invalid(name, "not_text")
        return None
    if len(text) > MAX_HEADER_VALUE:
        count_invalid(name, "too_long")
        return None
    if not text.isascii():
        try:
            text.encode("utf-8")  # a lone surrogate: OpenTelemetry's baggage propagator raises on it
        except UnicodeEncodeError:
            count_invalid(name, "not_utf8")
            return None
    return text


def _texts(value: object, name: str) -> list[str] | None:
    """One header's value as the list a propagator reads: of a multi-valued header
    (a list or tuple) only the first value counts, as with the SDK's default getter."""
    # the usual values first: what as_text returns for them, without its ABC checks
    if type(value) is bytes:
        if value and len(value) <= MAX_HEADER_VALUE and value.isascii():
            return [value.decode("ascii")]
    elif type(value) is str and len(value) <= MAX_HEADER_VALUE and value.isascii():
        return [value]
    if isinstance(value, list | tuple):
        if not value:
            return None
        value = value[0]
    elif isinstance(value, Mapping | set | frozenset) and not value:
        return None
    text = as_text(value, name)
    return None if text is None else [text]


class TextGetter(Getter[Any]):
    """Reads any mapping of headers (values ``str``, ``bytes``, or anything else); never raises."""

    safe = True
    #: the value of a ``dict`` that is an ASCII ``str`` of at most this length is read as it
    #: is (what ``get`` returns for it, as its only item): readers may skip the call
    direct_max = MAX_HEADER_VALUE

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.get is not TextGetter.get or cls.keys is not TextGetter.keys:
            cls.direct_max = 0  # a get or keys of its own: every read goes through them

    def get(self, carrier: Any, key: str) -> list[str] | None:
        try:
            value = carrier.get(key)
            return None if value is None else _texts(value, key)
        except Exception:
            count_invalid("carrier", "unreadable")
            return None

    def keys(self, carrier: Any) -> list[str]:
        try:
            return [k for k in carrier if isinstance(k, str)]
        except Exception:
            count_invalid("carrier", "unreadable")
            return []


class TextSetter(Setter[MutableMapping[str, str]]):
    """Writes ``str`` values into a mutable mapping."""

    def set(self, carrier: MutableMapping[str, str], key: str, value: str) -> None:
        carrier[key] = value


class BytesSetter(Setter[MutableMapping[str, Any]]):
    """Writes UTF-8 ``bytes`` values into a mutable mapping."""

    def set(self, carrier: MutableMapping[str, Any], key: str, value: str) -> None:
        carrier[key] = value.encode("utf-8")


class HeaderListGetter(Getter[Sequence[tuple[Any, Any]]]):
    """Reads a list of ``(name, value)`` tuples (Kafka); the last of duplicated names wins."""

    safe = True

    def get(self, carrier: Sequence[tuple[Any, Any]], key: str) -> list[str] | None:
        found: object = None
        try:
            for item in carrier if carrier is not None else ():
                name = item[0]
                if isinstance(name, bytes):
                    name = name.decode("latin-1")
                if name == key:
                    found = item[1]
            return None if found is None else _texts(found, key)
        except Exception:
            count_invalid("carrier", "unreadable")
            return None

    def keys(self, carrier: Sequence[tuple[Any, Any]]) -> list[str]:
        try:
            return list(dict.fromkeys(item[0] for item in carrier if isinstance(item[0], str)))
        except Exception:
            count_invalid("carrier", "unreadable")
            return []


class HeaderListSetter(Setter[MutableSequence[tuple[str, bytes]]]):
    """Appends ``(name, UTF-8 bytes)``, first removing earlier values of the same name (so a
    re-sent record carries one value per otel-eda header)."""

    def set(self, carrier: MutableSequence[tuple[str, bytes]], key: str, value: str) -> None:
        for item in carrier:
            if item[0] == key:  # rare (a re-sent record): rebuild without the stale values
                stale = [i for i, each in enumerate(carrier) if each[0] == key]
                for i in reversed(stale):
                    del carrier[i]
                break
        carrier.append((key, value.encode("utf-8")))


class SafeGetter(Getter[Any]):
    """Guards a getter of a transport's own: whatever it raises or returns, the result is
    ``None`` or a list of ``str`` (failures counted in ``eda.propagation.invalid``)."""

    safe = True

    def __init__(self, inner: Getter[Any]) -> None:
        self.inner = inner

    def get(self, carrier: Any, key: str) -> list[str] | None:
        try:
            value = self.inner.get(carrier, key)
            if value is None:
                return None
            return _texts(list(value) if not isinstance(value, str | bytes) else value, key)
        except Exception:
            count_invalid("carrier", "getter_failed")
            return None

    def keys(self, carrier: Any) -> list[str]:
        try:
            return [k for k in self.inner.keys(carrier) if isinstance(k, str)]
        except Exception:
            count_invalid("carrier", "getter_failed")
            return []


TEXT_GETTER: Final = TextGetter()
TEXT_SETTER: Final = TextSetter()
BYTES_SETTER: Final = BytesSetter()
HEADER_LIST_GETTER: Final = HeaderListGetter()
HEADER_LIST_SETTER: Final = HeaderListSetter()


def header_names(getter: Getter[Any], carrier: Any) -> Iterable[str]:
    """The carrier's header names, through ``getter`` (never raises)."""
    try:
        return list(getter.keys(carrier))
    except Exception:
        count_invalid("carrier", "unreadable")
        return []
