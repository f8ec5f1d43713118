"""What every RabbitMQ client integration (aio-pika, pika) shares: the destination naming of the
messaging conventions v1.44, the event type of an outgoing message, ``outgoing_event``, the
delivery attempt, dead-lettering (``x-death``) and the telemetry object of one instrumentation.

Nothing here imports an AMQP client: each client's instrumentor reads its own message objects
and hands plain values (headers, flags, names) to these functions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry import metrics, trace

from otel_eda import semconv
from otel_eda._selfmetrics import count_invalid
from otel_eda.flows.records import Recorder, Stage
from otel_eda.identity import EventContext
from otel_eda.identity.validation import type_problem, valid_type
from otel_eda.messaging import TEXT_GETTER, Binding, Messaging, Processing, TraceMode
from otel_eda.messaging.carriers import as_text
from otel_eda.transports.recent import RecentKeys
from otel_eda.version import VERSION

__all__ = [
    "DEAD_LETTER_WINDOW",
    "DeadLettering",
    "MessageReturned",
    "Outgoing",
    "RabbitTelemetry",
    "consumer_destination",
    "current_outgoing",
    "dead_lettering",
    "delivery_attempt",
    "event_type",
    "outgoing_event",
    "producer_destination",
]

_DEFAULT_EXCHANGE: Final = "amq.default"
_CE_TYPE: Final = ("cloudEvents:type", "cloudEvents_type")
_MAX_DELIVERY_COUNT: Final = 2**31
#: Dead-lettered (event id, x-death count, queue) triples remembered per instrumentation, so that
#: a message redelivered from the dead-letter queue is not recorded as dead-lettered twice.
DEAD_LETTER_WINDOW: Final = 10_000


class MessageReturned(Exception):
    """Recorded on a send span when the broker returned the message as unroutable (``mandatory``)."""

    __module__ = "otel_eda.transports.rabbitmq"


# -- names -------------------------------------------------------------------------------
def producer_destination(exchange: str, routing_key: str) -> str:
    """``messaging.destination.name`` of a publish (conventions v1.44).

    >>> producer_destination("shop", "orders.created"), producer_destination("", "orders")
    ('shop:orders.created', 'orders')
    >>> producer_destination("", ""), producer_destination("events", "")
    ('amq.default', 'events')
    """
    if not exchange:
        return routing_key or _DEFAULT_EXCHANGE
    return f"{exchange}:{routing_key}" if routing_key else exchange


def consumer_destination(exchange: str, routing_key: str, queue: str) -> str:
    """``messaging.destination.name`` of a consumed message: ``{exchange}:{routing key}:{queue}``,
    empty parts left out, one of routing key and queue when they are equal.

    >>> consumer_destination("shop", "orders.created", "billing")
    'shop:orders.created:billing'
    >>> consumer_destination("", "orders", "orders"), consumer_destination("dlx", "", "dead")
    ('orders', 'dlx:dead')
    """
    parts = [exchange, routing_key] if routing_key != queue else [exchange]
    return ":".join(part for part in (*parts, queue) if part) or _DEFAULT_EXCHANGE


def event_type(kind: object, headers: object, routing_key: str, exchange: str) -> str:
    """The event type of an outgoing message: its ``type`` property, else its ``cloudEvents:type``
    header, else the routing key, else the exchange, else ``rabbitmq`` (the first valid one).

    >>> event_type(None, {"cloudEvents:type": "order_placed"}, "orders", "")
    'order_placed'
    >>> event_type("bad type\\n", None, "", "shop")
    'shop'
    """
    if isinstance(kind, str) and kind and valid_type(kind):
        return kind
    if headers:
        for name in _CE_TYPE:
            found = TEXT_GETTER.get(headers, name)
            if found and valid_type(found[0]):
                return found[0]
    for candidate in (routing_key, exchange):
        if candidate and valid_type(candidate):
            return candidate
    return semconv.MESSAGING_SYSTEM_RABBITMQ


# -- outgoing event options -----------------------------------------------------------------
class Outgoing:
    """The event options of the publishes inside :func:`outgoing_event`, and the events they published."""

    __slots__ = ("business_key", "event_type", "events", "metadata")

    def __init__(self, event_type: str | None, business_key: str | None, metadata: Mapping[str, str] | None) -> None:
        self.event_type = event_type
        self.business_key = business_key
        self.metadata = metadata
        #: the event of each message published inside the block, in order
        self.events: list[EventContext] = []


_OUTGOING: ContextVar[Outgoing | None] = ContextVar("otel_eda_rabbitmq_outgoing", default=None)


def current_outgoing() -> Outgoing | None:
    """The options of the innermost :func:`outgoing_event` block, if any."""
    return _OUTGOING.get()


@contextmanager
def outgoing_event(
    *, event_type: str | None = None, business_key: str | None = None, metadata: Mapping[str, str] | None = None
) -> Iterator[Outgoing]:
    """Give the messages published inside the block (by any instrumented RabbitMQ client) an
    event type (default: the message's ``type`` property, else its ``cloudEvents:type`` header,
    else the routing key, else the exchange), a business key and metadata; ``.events`` has
    their events::

        with outgoing_event(event_type="order_placed", business_key="order-7") as out:
            channel.basic_publish("", "orders", payload)
        out.events[0].event_id

    An invalid value is not used (the message is still published, as a ``rabbitmq`` event when
    the type is the invalid one), logged and counted like any invalid input.
    """
    outgoing = Outgoing(event_type, business_key, metadata)
    token = _OUTGOING.set(outgoing)
    try:
        yield outgoing
    finally:
        _OUTGOING.reset(token)


# -- delivery attempt and dead letters ------------------------------------------------------
def delivery_attempt(headers: object, redelivered: object) -> int:
    """The delivery attempt of a consumed message: ``x-delivery-count + 1`` (quorum queues),
    else 2 if the broker redelivered it, else 1. An invalid count is ignored and counted.

    >>> delivery_attempt({"x-delivery-count": 2}, True), delivery_attempt({}, True), delivery_attempt(None, False)
    (3, 2, 1)
    """
    count = headers.get("x-delivery-count") if isinstance(headers, Mapping) else None
    if count is not None:
        if isinstance(count, int) and not isinstance(count, bool) and 0 <= count < _MAX_DELIVERY_COUNT:
            return count + 1
        count_invalid("x-delivery-count", "not_a_count")
    return 2 if redelivered else 1


@dataclass(frozen=True, slots=True)
class DeadLettering:
    """The latest entry of a message's ``x-death`` header."""

    reason: str
    queue: str
    count: int


def _death_text(entry: Mapping[Any, Any], name: str) -> str:
    value = entry.get(name)
    text = as_text(value, "x-death") if value is not None else None
    if text is None or type_problem(text) is not None:
        count_invalid("x-death", "bad_" + name)
        return "unknown"
    return text


def dead_lettering(headers: Any) -> DeadLettering | None:
    """The latest dead-lettering of a message (the first entry of its ``x-death`` header), or
    ``None``. Never raises: a malformed header is counted and ignored (or its bad fields
    reported as ``unknown``).

    >>> dead_lettering({"x-death": [{"count": 3, "reason": "rejected", "queue": "orders"}]})
    DeadLettering(reason='rejected', queue='orders', count=3)
    >>> dead_lettering({}) is None, dead_lettering({"x-death": "nonsense"}) is None
    (True, True)
    """
    try:
        deaths = headers.get("x-death") if isinstance(headers, Mapping) else None
        if deaths is None:
            return None
        if not isinstance(deaths, list | tuple) or not deaths or not isinstance(deaths[0], Mapping):
            count_invalid("x-death", "not_a_table_list")
            return None
        entry = deaths[0]
        count = entry.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or not 0 < count < _MAX_DELIVERY_COUNT:
            count_invalid("x-death", "bad_count")
            count = 1
        return DeadLettering(_death_text(entry, "reason"), _death_text(entry, "queue"), count)
    except Exception:
        count_invalid("x-death", "unreadable")
        return None


# -- the telemetry of one instrumentation ---------------------------------------------------
class RabbitTelemetry:
    """What one RabbitMQ client instrumentation writes: its :class:`~otel_eda.messaging.Messaging`
    (spans, metrics and lifecycle records of publishing and handling events, through the public
    messaging API only), the ``eda.broker.dead_letters`` counter and the window that records a
    dead-lettered event once. ``scope``: the instrumentation scope (``otel_eda.aio_pika``, ...)."""

    def __init__(
        self,
        scope: str,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        recorders: Sequence[Recorder] = (),
        mode: TraceMode | None = None,
    ) -> None:
        # a publish waits for the broker's confirmation (with publisher confirms): the messaging
        # API's send duration covers it
        self.messaging = Messaging(
            semconv.MESSAGING_SYSTEM_RABBITMQ,
            scope=scope,
            mode=mode,
            recorders=recorders,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            binding=Binding.AMQP,
        )
        meter = metrics.get_meter(scope + ".broker", VERSION, meter_provider)
        self.dead_letters = meter.create_counter(
            semconv.METRIC_BROKER_DEAD_LETTERS,
            unit="{message}",
            description="Messages the broker dead-lettered, read from a dead-letter queue",
        )
        self._dead_lettered = RecentKeys(DEAD_LETTER_WINDOW)
        self._attribute_sets: dict[tuple[str, str], Mapping[str, str]] = {}

    def close(self) -> None:
        """Stop what runs in the background (nothing here; a client's subclass may add gauges)."""

    def first_dead_letter(self, event_id: str, count: int, queue: str) -> bool:
        """Whether this (event, x-death count, queue) is seen for the first time in the window."""
        return not self._dead_lettered.seen_before((event_id, count, queue))

    def dead_letter_attributes(self, queue: str, reason: str) -> Mapping[str, str]:
        key = (queue, reason)
        attrs = self._attribute_sets.get(key)
        if attrs is None:
            attrs = {
                semconv.MESSAGING_SYSTEM: semconv.MESSAGING_SYSTEM_RABBITMQ,
                semconv.MESSAGING_DESTINATION_NAME: queue,
                semconv.EDA_DEAD_LETTER_REASON: reason,
            }
            if len(self._attribute_sets) < 4096:
                self._attribute_sets[key] = attrs
        return attrs

    def note_dead_letter(self, headers: object, processing: Processing) -> None:
        """After a message's process span started: if a dead-letter exchange moved it (an
        ``x-death`` header), put the dead-lettering on the span and, the first time, record the
        original event's ``dead_lettered`` stage and count it."""
        if not isinstance(headers, Mapping) or "x-death" not in headers:
            return
        death = dead_lettering(headers)
        if death is None:
            return
        span = processing.span
        span.set_attribute(semconv.EDA_DEAD_LETTER_REASON, death.reason)
        span.set_attribute(semconv.EDA_DEAD_LETTER_QUEUE, death.queue)
        span.set_attribute(semconv.EDA_DEAD_LETTER_COUNT, death.count)
        if self.first_dead_letter(processing.event.event_id, death.count, death.queue):
            self.dead_letters.add(1, self.dead_letter_attributes(death.queue, death.reason))
            self.messaging.record(
                Stage.DEAD_LETTERED,
                processing.event,
                span.get_span_context(),
                subscriber=death.queue,
                attempt=death.count,
            )
