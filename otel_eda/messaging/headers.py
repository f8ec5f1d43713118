"""Message headers the messaging API writes and reads beside the propagators': event
metadata (``eda-meta-<key>``) and CloudEvents 1.0 binary-mode attributes.

Neither goes through the ``eda`` propagator, so neither is ever written into an
arbitrary outgoing HTTP request: only a transport that publishes an event writes them.

**Metadata.** Each entry of :attr:`EventContext.metadata` travels as one header
``eda-meta-<key>`` (never as baggage). Read back, keys and values are validated like the
ids (see :mod:`otel_eda.identity.validation`): an invalid entry, or one past the 16th, is
dropped and counted in ``eda.propagation.invalid``.

**CloudEvents.** The identity maps onto CloudEvents 1.0: ``id`` = event id, ``type`` =
event type, ``source`` = ``OTEL_EDA_CLOUDEVENTS_SOURCE`` (default ``/<service.name>``),
``time`` = creation time (RFC 3339), ``subject`` = business key, and the extension
attributes ``correlationid`` and ``causationid``. Header prefixes per protocol binding:
HTTP and NATS ``ce-``, Kafka ``ce_``, AMQP ``cloudEvents:`` (``cloudEvents_`` is read too).
``OTEL_EDA_CLOUDEVENTS``: ``off``; ``read`` (default): an incoming binary-mode CloudEvent
without otel-eda headers keeps its id, type and time instead of becoming a new root (an
invalid id is dropped and counted, and the message becomes a new root); ``write``: read,
and every published event also carries the CloudEvents headers.

>>> from otel_eda.identity import EventContext
>>> from otel_eda.messaging.carriers import TEXT_GETTER, TEXT_SETTER
>>> event = EventContext.root("order_placed", business_key="order-1", metadata={"tenant": "acme"})
>>> headers: dict[str, str] = {}
>>> write_metadata(TEXT_SETTER, headers, event.metadata)
>>> write_cloudevent(TEXT_SETTER, headers, Binding.HTTP, event, "/shop")
>>> headers["eda-meta-tenant"], headers["ce-type"], headers["ce-subject"], headers["ce-source"]
('acme', 'order_placed', 'order-1', '/shop')
>>> read_metadata(TEXT_GETTER, headers)
{'tenant': 'acme'}
>>> back = read_cloudevent(TEXT_GETTER, headers, Binding.HTTP)
>>> (back.event_id, back.event_type, back.created_ns) == (event.event_id, "order_placed", event.created_ns)
True
"""

from __future__ import annotations

import datetime
import enum
import time
from typing import Any, Final

from opentelemetry.propagators.textmap import Getter, Setter

from otel_eda._selfmetrics import count_invalid
from otel_eda.identity.event import EventContext
from otel_eda.identity.validation import (
    MAX_METADATA_ENTRIES,
    id_problem,
    metadata_key_problem,
    metadata_value_problem,
    type_problem,
)

__all__ = [
    "METADATA_PREFIX",
    "Binding",
    "read_cloudevent",
    "read_metadata",
    "write_cloudevent",
    "write_metadata",
]

METADATA_PREFIX: Final = "eda-meta-"
CLOUDEVENTS_SPEC_VERSION: Final = "1.0"


class Binding(enum.Enum):
    """A CloudEvents protocol binding: the header prefixes of binary mode (first one written)."""

    HTTP = ("ce-",)
    NATS = ("ce-",)
    KAFKA = ("ce_",)
    AMQP = ("cloudEvents:", "cloudEvents_")

    @property
    def prefixes(self) -> tuple[str, ...]:
        return self.value  # type: ignore[no-any-return]


def _first(getter: Getter[Any], carrier: Any, name: str) -> str | None:
    values = getter.get(carrier, name)
    return values[-1] if values else None


def write_metadata(setter: Setter[Any], carrier: Any, metadata: Any) -> None:
    """Write each metadata entry as a header ``eda-meta-<key>`` (already validated)."""
    for key, value in metadata.items():
        setter.set(carrier, METADATA_PREFIX + key, value)


def read_metadata(getter: Getter[Any], carrier: Any) -> dict[str, str]:
    """The valid ``eda-meta-*`` headers of ``carrier`` (at most 16; the rest dropped and counted)."""
    metadata: dict[str, str] = {}
    try:
        direct: int = getattr(getter, "direct_max", 0)
        if direct and type(carrier) is dict:  # TextGetter's keys, in one pass
            names = [n for n in carrier if isinstance(n, str) and n.startswith(METADATA_PREFIX)]
        else:
            names = [n for n in getter.keys(carrier) if isinstance(n, str) and n.startswith(METADATA_PREFIX)]
    except Exception:
        count_invalid("carrier", "unreadable")
        return metadata
    for name in names:
        key = name[len(METADATA_PREFIX) :]
        problem = metadata_key_problem(key)
        if problem is not None:
            count_invalid("metadata_key", problem)
            continue
        value = _first(getter, carrier, name)
        if value is None:
            continue
        problem = metadata_value_problem(value)
        if problem is not None:
            count_invalid("metadata_value", problem)
            continue
        if len(metadata) >= MAX_METADATA_ENTRIES:
            count_invalid("metadata", "too_many")
            break
        metadata[key] = value
    return metadata


def _rfc3339(ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(ns // 1_000_000_000, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 1_000_000_000:09d}Z"


def _parse_time(text: str) -> int | None:
    """Epoch nanoseconds of an RFC 3339 time, keeping up to nanosecond digits."""
    try:
        head, dot, rest = text.partition(".")
        fraction = ""
        if dot:
            digits = len(rest) - len(rest.lstrip("0123456789"))
            fraction, rest = rest[:digits], rest[digits:]
        moment = datetime.datetime.fromisoformat(head + rest.replace("z", "Z"))
        if moment.tzinfo is None:
            return None
        seconds = int(moment.timestamp())
        return seconds * 1_000_000_000 + int((fraction + "000000000")[:9] or 0)
    except (ValueError, OverflowError):
        return None


def write_cloudevent(setter: Setter[Any], carrier: Any, binding: Binding, event: EventContext, source: str) -> None:
    """Write ``event`` as CloudEvents binary-mode headers of ``binding``."""
    p = binding.prefixes[0]
    setter.set(carrier, p + "specversion", CLOUDEVENTS_SPEC_VERSION)
    setter.set(carrier, p + "id", event.event_id)
    setter.set(carrier, p + "type", event.event_type)
    setter.set(carrier, p + "source", source)
    setter.set(carrier, p + "time", _rfc3339(event.created_ns))
    if event.business_key is not None:
        setter.set(carrier, p + "subject", event.business_key)
    setter.set(carrier, p + "correlationid", event.correlation_id)
    if event.causation_id is not None:
        setter.set(carrier, p + "causationid", event.causation_id)


def read_cloudevent(getter: Getter[Any], carrier: Any, binding: Binding) -> EventContext | None:
    """The event of a binary-mode CloudEvent in ``carrier``, or ``None``.

    ``None`` when there is no ``id`` header of the binding, or when the id or type is
    invalid (counted). Invalid optional attributes (time, subject, correlation and
    causation ids) are dropped and counted; the time defaults to now.
    """
    for prefix in binding.prefixes:
        event_id = _first(getter, carrier, prefix + "id")
        if event_id is not None:
            break
    else:
        return None
    problem = id_problem(event_id)
    if problem is not None:
        count_invalid("ce-id", problem)
        return None
    event_type = _first(getter, carrier, prefix + "type")
    problem = type_problem(event_type) if event_type is not None else "missing"
    if problem is not None or event_type is None:
        count_invalid("ce-type", problem or "missing")
        return None

    def optional(name: str, check: Any) -> str | None:
        value = _first(getter, carrier, prefix + name)
        if value is not None and check(value) is not None:
            count_invalid("ce-" + name, check(value))
            return None
        return value

    created: int | None = None
    if (text := _first(getter, carrier, prefix + "time")) is not None:
        created = _parse_time(text)
        if created is None:
            count_invalid("ce-time", "bad_format")
    correlation = optional("correlationid", id_problem)
    causation = optional("causationid", id_problem)
    return EventContext(
        event_id,
        correlation or event_id,
        causation,
        event_type,
        created if created is not None else time.time_ns(),
        optional("subject", type_problem),
    )
