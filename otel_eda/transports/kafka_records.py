"""What otel-eda's Kafka instrumentations (aiokafka, confluent-kafka) share about records.

The two clients read a record differently (``record.topic`` against ``msg.topic()``): a
:class:`RecordAccess` says how, and everything else is written once here:

* the producer side: :func:`outgoing_event` (event options of the sends inside a block, for
  both clients), :func:`event_type` (a CloudEvents ``ce_type`` header, else the topic),
  :func:`key_text`;
* the consumer side: :class:`ConsumerState` (one consumer's :class:`~otel_eda.messaging.PullTracker`
  and its handed-out record), :func:`receive` (the ``poll`` CLIENT span of a fetch that
  returned records), :func:`hand_over` (a record's process span made current in the caller,
  duplicates marked), :class:`BatchRecords` (a fetched list whose iteration moves the
  current record) and :func:`processing` (exact bounds for one record's handling).

Nothing here imports a Kafka client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final, NamedTuple

from otel_eda import semconv
from otel_eda._selfmetrics import count_invalid, internal_error
from otel_eda.identity import EventContext
from otel_eda.messaging import (
    HEADER_LIST_GETTER,
    HEADER_LIST_SETTER,
    TEXT_GETTER,
    Incoming,
    Outcome,
    Processing,
    Publication,
    PullTracker,
)
from otel_eda.transports.kafka_telemetry import KafkaTelemetry

__all__ = [
    "BatchRecords",
    "ConsumerState",
    "Outgoing",
    "RecordAccess",
    "event_type",
    "hand_over",
    "header_map",
    "key_text",
    "outgoing_event",
    "processing",
    "receive",
    "start_send",
]

_log = logging.getLogger(__name__)
_CE_TYPE: Final = "ce_type"


# -- producer -------------------------------------------------------------------------------
class Outgoing:
    """The event options of the sends inside :func:`outgoing_event`, and the events they published."""

    __slots__ = ("business_key", "event_type", "events", "metadata")

    def __init__(self, event_type: str | None, business_key: str | None, metadata: Mapping[str, str] | None) -> None:
        self.event_type = event_type
        self.business_key = business_key
        self.metadata = metadata
        #: the event of each record sent inside the block, in order
        self.events: list[EventContext] = []


OUTGOING: ContextVar[Outgoing | None] = ContextVar("otel_eda_kafka_outgoing", default=None)


@contextmanager
def outgoing_event(
    *, event_type: str | None = None, business_key: str | None = None, metadata: Mapping[str, str] | None = None
) -> Iterator[Outgoing]:
    """Give the records sent inside the block an event type (default: the topic, or the
    record's ``ce_type`` header), a business key and metadata; ``.events`` has their events::

        with outgoing_event(event_type="order_placed", business_key="order-7") as out:
            await producer.send_and_wait("orders", payload)   # aiokafka
            producer.produce("orders", payload)               # confluent-kafka
        out.events[0].event_id

    An invalid value is not used (the record is still sent, as a ``kafka`` event when the
    type is the invalid one), logged and counted like any invalid input.
    """
    outgoing = Outgoing(event_type, business_key, metadata)
    token = OUTGOING.set(outgoing)
    try:
        yield outgoing
    finally:
        OUTGOING.reset(token)


def start_send(
    telemetry: KafkaTelemetry, topic: str, headers: Any, carrier: list[Any], key: Any, value: Any
) -> Publication[Any]:
    """Start (enter) the publication of one record to ``topic``: its event (a child of the
    current one, with the options of an enclosing :func:`outgoing_event`), its PRODUCER span,
    and its headers appended to ``carrier`` (``headers``: the application's own, read for a
    ``ce_type``). The caller sends with ``carrier`` and exits the publication."""
    attributes: dict[str, Any] | None = None
    if value is None:
        attributes = {semconv.MESSAGING_KAFKA_MESSAGE_TOMBSTONE: True}
    if telemetry.capture_message_key and key is not None:
        attributes = {**(attributes or {}), semconv.MESSAGING_KAFKA_MESSAGE_KEY: key_text(key)}
    messaging = telemetry.messaging
    outgoing = OUTGOING.get()
    try:
        if outgoing is None:
            publication = messaging.publish(
                event_type(topic, headers),
                carrier,
                setter=HEADER_LIST_SETTER,
                destination=topic,
                attributes=attributes,
            )
        else:
            publication = messaging.publish(
                outgoing.event_type or event_type(topic, headers),
                carrier,
                setter=HEADER_LIST_SETTER,
                destination=topic,
                attributes=attributes,
                business_key=outgoing.business_key,
                metadata=outgoing.metadata,
            )
    except ValueError as invalid:  # an event type, business key or metadata that is not valid
        count_invalid("send", "invalid_event")
        _log.warning("otel-eda: a Kafka record to %s is sent as a plain kafka event: %s", topic, invalid)
        publication = messaging.publish(
            "kafka", carrier, setter=HEADER_LIST_SETTER, destination=topic, attributes=attributes
        )
    publication.__enter__()
    if outgoing is not None:
        outgoing.events.append(publication.event)
    return publication


def event_type(topic: str, headers: Any) -> str:
    """The event type of a produced record: a CloudEvents ``ce_type`` header of the
    application, else the topic.

    >>> event_type("orders", [("ce_type", b"order_placed")]), event_type("orders", None)
    ('order_placed', 'orders')
    """
    if headers:
        found = HEADER_LIST_GETTER.get(headers, _CE_TYPE)
        if found:
            return found[0]
    return topic


def key_text(key: Any) -> str:
    """A record key as text for ``messaging.kafka.message.key``.

    >>> key_text(b"order-7"), key_text(7)
    ('order-7', '7')
    """
    if isinstance(key, bytes | bytearray):
        return bytes(key).decode(errors="replace")
    return str(key)


def header_map(headers: Any) -> dict[Any, Any]:
    """A record's headers as a dict for the safe ``TEXT_GETTER``: the last value of a key wins
    (Kafka's ``lastHeader``), as with the list getter, but each lookup costs one dict access
    instead of a scan of the list. Items that are not ``(name, value)`` pairs are skipped and
    counted.

    >>> header_map([("k", b"1"), ("a", b"x"), ("k", b"2")])
    {'k': b'2', 'a': b'x'}
    >>> header_map([("k", b"1"), ("broken",)])
    {'k': b'1'}
    """
    if not headers:
        return {}
    try:
        return dict(headers)
    except (TypeError, ValueError):
        count_invalid("carrier", "not_pairs")
        return {item[0]: item[1] for item in headers if isinstance(item, tuple) and len(item) == 2}


# -- consumer -------------------------------------------------------------------------------
class RecordAccess(NamedTuple):
    """How one client's consumed record reads (attributes for aiokafka, methods for confluent-kafka)."""

    topic: Callable[[Any], str]
    partition: Callable[[Any], int]
    offset: Callable[[Any], int]
    key: Callable[[Any], Any]
    value: Callable[[Any], Any]
    headers: Callable[[Any], Any]


#: The handling of each record currently handed out, by ``id(record)`` (one per consumer).
_handlings: dict[int, tuple[Any, Processing]] = {}


class ConsumerState:
    """One consumer's pull tracker, its current record and the records of its last poll."""

    __slots__ = ("__weakref__", "access", "component", "current", "group", "lag_tracked", "polled", "tracker")

    def __init__(self, telemetry: KafkaTelemetry, group: str | None, access: RecordAccess, component: str) -> None:
        self.group = group
        self.access = access
        #: the ``eda.component`` of internal errors (the client's name)
        self.component = component
        self.current: Any = None
        self.lag_tracked = False
        #: the Incoming of each record of the last poll, by id(record): extracted once for the
        #: poll span's links, handed to the record's process span
        self.polled: dict[int, Incoming] = {}
        capture_key = telemetry.capture_message_key
        partition_of, offset_of, key_of, value_of, headers_of = (
            access.partition,
            access.offset,
            access.key,
            access.value,
            access.headers,
        )

        def attributes(record: Any) -> dict[str, Any]:
            attrs: dict[str, Any] = {
                semconv.MESSAGING_DESTINATION_PARTITION_ID: str(partition_of(record)),
                semconv.MESSAGING_KAFKA_OFFSET: offset_of(record),
            }
            if capture_key:
                key = key_of(record)
                if key is not None:
                    attrs[semconv.MESSAGING_KAFKA_MESSAGE_KEY] = key_text(key)
            if value_of(record) is None:
                attrs[semconv.MESSAGING_KAFKA_MESSAGE_TOMBSTONE] = True
            return attrs

        polled = self.polled
        self.tracker: PullTracker[Any] = PullTracker(
            telemetry.messaging,
            destination=access.topic,
            carrier=lambda record: polled.pop(id(record), None) or header_map(headers_of(record)),
            getter=TEXT_GETTER,
            consumer_group=group,
            attributes=attributes,
        )

    def end_current(self) -> None:
        """End the handed-out record's process span (next fetch, commit, seek, close)."""
        try:
            self.forget()
            self.tracker.end_current()
        except Exception:
            internal_error(self.component, "ending a record's process span")

    def forget(self) -> None:
        """Drop the handed-out record (its handling is ending or ended elsewhere)."""
        current, self.current = self.current, None
        if current is not None:
            _drop_handling(current)


def receive(telemetry: KafkaTelemetry, state: ConsumerState, records: Iterable[Any], start_ns: int) -> None:
    """The CLIENT span ``poll {topic}`` (``poll`` across topics) of a fetch that returned
    ``records`` (at least one), one link per record; each record's headers are read once."""
    messaging = telemetry.messaging
    topic_of, headers_of = state.access.topic, state.access.headers
    polled = state.polled
    polled.clear()  # records of an earlier poll never handed over
    incoming = []
    topics = set()
    for record in records:
        topic = topic_of(record)
        message = messaging.extract(header_map(headers_of(record)), destination=topic, getter=TEXT_GETTER)
        polled[id(record)] = message
        incoming.append(message)
        topics.add(topic)
    messaging.received(
        incoming,
        start_ns=start_ns,
        destination=next(iter(topics)) if len(topics) == 1 else None,
        operation_name="poll",
        consumer_group=state.group,
    )


def hand_over(telemetry: KafkaTelemetry, state: ConsumerState, record: Any) -> None:
    """Start the process span of ``record`` and make it current in the caller."""
    state.forget()
    handling = state.tracker.start(record)  # ends the previous one first
    state.current = record
    _handlings[id(record)] = (record, handling)
    group = state.group or ""
    if telemetry.seen_before(group, handling.event.event_id):
        handling.span.set_attribute(semconv.EDA_DELIVERY_DUPLICATE, True)
        telemetry.duplicates.add(1, telemetry.operation_attributes("process", state.access.topic(record), state.group))


def guarded_hand_over(telemetry: KafkaTelemetry, state: ConsumerState) -> Callable[[Any], None]:
    """:func:`hand_over` for one consumer, an internal failure logged and counted."""

    def hand(record: Any) -> None:
        try:
            hand_over(telemetry, state, record)
        except Exception:
            internal_error(state.component, "starting a record's process span")

    return hand


@contextmanager
def processing(record: Any) -> Iterator[None]:
    """Exact bounds for the handling of ``record`` (handed out by an instrumented consumer).

    Its process span ends when the block ends, failed with the exception if one escapes
    (and the exception is re-raised). Outside otel-eda's instrumentation it does nothing::

        async for msg in consumer:          # aiokafka
            with processing(msg):
                await handle(msg)

        msg = consumer.poll(1.0)            # confluent-kafka
        if msg is not None and msg.error() is None:
            with processing(msg):
                handle(msg)
    """
    entry = _handlings.get(id(record))
    if entry is None or entry[0] is not record:
        yield
        return
    handling = entry[1]
    try:
        yield
    except BaseException as exc:
        _settle(record, handling, exc)
        raise
    _settle(record, handling, None)


def _drop_handling(record: Any) -> None:
    """Forget ``record``'s handling. The consumer's thread (the next poll) and a worker's
    (the end of ``processing(record)``) may both do it at once: the removal is one atomic
    ``pop``, and an entry of another record under a reused ``id`` is put back."""
    entry = _handlings.pop(id(record), None)
    if entry is not None and entry[0] is not record:
        _handlings.setdefault(id(entry[0]), entry)


def _settle(record: Any, handling: Processing, exc: BaseException | None) -> None:
    _drop_handling(record)
    handling.detach()
    if exc is None:
        handling.settle(Outcome.COMPLETED)
    else:
        handling.fail(exc)


class BatchRecords(list):  # type: ignore[type-arg]
    """A fetched list whose iteration makes each record current while its body runs."""

    __slots__ = ("_hand_over", "_state")

    def __init__(self, records: Iterable[Any], state: ConsumerState, hand_over: Callable[[Any], None]) -> None:
        super().__init__(records)
        self._state = state
        self._hand_over = hand_over

    def __reduce__(self) -> tuple[Any, ...]:  # pickled or copied: a plain list of the records
        return (list, (list(list.__iter__(self)),))

    def __iter__(self) -> Iterator[Any]:
        state = self._state
        try:
            for record in list.__iter__(self):
                self._hand_over(record)
                yield record
        finally:
            if state.current is not None:
                state.end_current()
