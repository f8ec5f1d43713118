"""``AIOKafkaInstrumentor``: otel-eda's drop-in instrumentation of aiokafka.

Registered as the ``otel_eda_aiokafka`` entry point of ``opentelemetry_instrumentor``, so
``opentelemetry-instrument`` loads it when aiokafka is installed (``pip install
otel-eda[aiokafka]``); ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_eda_aiokafka`` keeps it
out. In code: ``AIOKafkaInstrumentor().instrument(tracer_provider=..., meter_provider=...)``.

What it wraps, on the classes (every client, created before or after):

* ``AIOKafkaProducer.send`` (``send_and_wait`` calls it): the record's event is a child of
  the event current in the caller (inside a handler: the handled record's event) or starts
  a flow; a PRODUCER span ``send {topic}`` covers the call; the event identity and the trace
  context are appended to the record's headers (the application's headers kept, first).
  ``messaging.client.operation.duration`` of ``send`` runs until the broker acknowledged the
  record (or failed to), with ``error.type`` on failure (scope ``otel_eda.aiokafka.delivery``).
* ``AIOKafkaConsumer.getone`` (``async for`` calls it) and ``getmany``: each record handed to
  the application gets a CONSUMER span ``process {topic}``, linked to its producer span, and
  becomes current (event, span, baggage) in the caller until the next ``getone`` /
  ``getmany``, ``commit``, ``seek*`` or ``stop`` of that consumer, or
  ``OTEL_EDA_PROCESS_SPAN_MAX_S`` (the messaging API's :class:`~otel_eda.messaging.PullTracker`).
  A ``getmany`` that returned records also gets a CLIENT span ``poll {topic}`` (``poll``
  across topics) with one link per record; an empty one gets none. In the lists ``getmany``
  returns, iterating moves the current record: ``for msg in batch:`` runs each body with
  its own record current. :func:`processing` gives a handling exact bounds and records an
  exception of the handler (so does ``current_processing().fail(exc)`` in the loop).
* ``commit``, ``seek``, ``seek_to_*``, ``stop``: end the current handling first; ``stop``
  also ends the consumer's lag refresh.

A record handled again in the same consumer group within the last
:data:`~otel_eda.transports.aiokafka.telemetry.DUPLICATE_WINDOW` event ids of this process is
marked ``eda.delivery.duplicate=true`` and counted in ``eda.delivery.duplicates``.
``messaging.kafka.message.key`` is written only with ``capture_message_key=True`` (keys
often hold personal data). Nothing here raises into the application: an internal failure
is logged and counted, and the client's call goes ahead uninstrumented.
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final

import aiokafka  # type: ignore[import-untyped]
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

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
    PullTracker,
    error_type,
)
from otel_eda.transports.aiokafka.contrib import uninstrument_contrib
from otel_eda.transports.aiokafka.telemetry import KafkaTelemetry

__all__ = ["AIOKafkaInstrumentor", "Outgoing", "outgoing_event", "processing"]

_log = logging.getLogger(__name__)
_INSTRUMENTS: Final = ("aiokafka >= 0.11, < 1",)
_MARK: Final = "__otel_eda_original__"
_CE_TYPE: Final = "ce_type"


class Outgoing:
    """The event options of the sends inside :func:`outgoing_event`, and the events they published."""

    __slots__ = ("business_key", "event_type", "events", "metadata")

    def __init__(self, event_type: str | None, business_key: str | None, metadata: Mapping[str, str] | None) -> None:
        self.event_type = event_type
        self.business_key = business_key
        self.metadata = metadata
        #: the event of each record sent inside the block, in order
        self.events: list[EventContext] = []


_OUTGOING: ContextVar[Outgoing | None] = ContextVar("otel_eda_aiokafka_outgoing", default=None)


@contextmanager
def outgoing_event(
    *, event_type: str | None = None, business_key: str | None = None, metadata: Mapping[str, str] | None = None
) -> Iterator[Outgoing]:
    """Give the records sent inside the block an event type (default: the topic, or the
    record's ``ce_type`` header), a business key and metadata; ``.events`` has their events::

        with outgoing_event(event_type="order_placed", business_key="order-7") as out:
            await producer.send_and_wait("orders", payload)
        out.events[0].event_id

    An invalid value is not used (the record is still sent, as a ``kafka`` event when the
    type is the invalid one), logged and counted like any invalid input.
    """
    outgoing = Outgoing(event_type, business_key, metadata)
    token = _OUTGOING.set(outgoing)
    try:
        yield outgoing
    finally:
        _OUTGOING.reset(token)


#: The handling of each record currently handed out, by ``id(record)`` (one per consumer).
_handlings: dict[int, tuple[Any, Processing]] = {}


class _ConsumerState:
    """One consumer's pull tracker, its current record and the records of its last poll."""

    __slots__ = ("__weakref__", "current", "group", "lag_tracked", "polled", "tracker")

    def __init__(self, telemetry: KafkaTelemetry, group: str | None) -> None:
        self.group = group
        self.current: Any = None
        self.lag_tracked = False
        #: the Incoming of each record of the last getmany, by id(record): extracted once for the
        #: poll span's links, handed to the record's process span
        self.polled: dict[int, Incoming] = {}
        capture_key = telemetry.capture_message_key

        def attributes(record: Any) -> dict[str, Any]:
            attrs: dict[str, Any] = {
                semconv.MESSAGING_DESTINATION_PARTITION_ID: str(record.partition),
                semconv.MESSAGING_KAFKA_OFFSET: record.offset,
            }
            if capture_key and record.key is not None:
                attrs[semconv.MESSAGING_KAFKA_MESSAGE_KEY] = _key_text(record.key)
            if record.value is None:
                attrs[semconv.MESSAGING_KAFKA_MESSAGE_TOMBSTONE] = True
            return attrs

        polled = self.polled
        self.tracker: PullTracker[Any] = PullTracker(
            telemetry.messaging,
            destination=lambda record: record.topic,
            carrier=lambda record: polled.pop(id(record), None) or header_map(record.headers),
            getter=TEXT_GETTER,
            consumer_group=group,
            attributes=attributes,
        )

    def end_current(self) -> None:
        """End the handed-out record's process span (next fetch, commit, seek, stop)."""
        self._forget()
        try:
            self.tracker.end_current()
        except Exception:
            internal_error("aiokafka", "ending a record's process span")

    def _forget(self) -> None:
        current, self.current = self.current, None
        if current is not None:
            entry = _handlings.get(id(current))
            if entry is not None and entry[0] is current:
                del _handlings[id(current)]


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


def _hand_over(telemetry: KafkaTelemetry, state: _ConsumerState, record: Any) -> None:
    """Start the process span of ``record`` and make it current in the caller."""
    state._forget()
    handling = state.tracker.start(record)  # ends the previous one first
    state.current = record
    _handlings[id(record)] = (record, handling)
    group = state.group or ""
    if telemetry.seen_before(group, handling.event.event_id):
        handling.span.set_attribute(semconv.EDA_DELIVERY_DUPLICATE, True)
        telemetry.duplicates.add(1, telemetry.operation_attributes("process", record.topic, state.group))


@contextmanager
def processing(record: Any) -> Iterator[None]:
    """Exact bounds for the handling of ``record`` (from ``getone``, ``getmany`` or ``async for``).

    Its process span ends when the block ends, failed with the exception if one escapes
    (and the exception is re-raised). Outside otel-eda's instrumentation it does nothing::

        async for msg in consumer:
            with processing(msg):
                await handle(msg)
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


def _settle(record: Any, handling: Processing, exc: BaseException | None) -> None:
    entry = _handlings.get(id(record))
    if entry is not None and entry[0] is record:
        del _handlings[id(record)]
    handling.detach()
    if exc is None:
        handling.settle(Outcome.COMPLETED)
    else:
        handling.fail(exc)


class _BatchRecords(list):  # type: ignore[type-arg]
    """A ``getmany`` list whose iteration makes each record current while its body runs."""

    __slots__ = ("_hand_over", "_state")

    def __init__(self, records: list[Any], state: _ConsumerState, hand_over: Callable[[Any], None]) -> None:
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


class AIOKafkaInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """otel-eda's aiokafka instrumentation (see the module docstring).

    ``instrument()`` accepts ``tracer_provider``, ``meter_provider``, ``recorders`` (lifecycle
    record sinks, e.g. an ``EventStore``) and ``capture_message_key`` (default ``False``).
    """

    _telemetry: KafkaTelemetry | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        uninstrument_contrib()
        telemetry = KafkaTelemetry(
            tracer_provider=kwargs.get("tracer_provider"),
            meter_provider=kwargs.get("meter_provider"),
            recorders=kwargs.get("recorders", ()),
            capture_message_key=bool(kwargs.get("capture_message_key", False)),
            lag_refresh_s=kwargs.get("lag_refresh_s"),
        )
        self._telemetry = telemetry
        states: weakref.WeakKeyDictionary[Any, _ConsumerState] = weakref.WeakKeyDictionary()
        producer, consumer = aiokafka.AIOKafkaProducer, aiokafka.AIOKafkaConsumer
        _patch(producer, "send", _send_wrapper(telemetry))
        _patch(consumer, "getone", _getone_wrapper(telemetry, states))
        _patch(consumer, "getmany", _getmany_wrapper(telemetry, states))
        for name in ("commit", "seek_to_beginning", "seek_to_end", "seek_to_committed"):
            _patch(consumer, name, _ending_wrapper(getattr(consumer, name), states))
        _patch(consumer, "seek", _ending_sync_wrapper(consumer.seek, states))
        _patch(consumer, "stop", _stop_wrapper(telemetry, states))

    def _uninstrument(self, **kwargs: Any) -> None:
        for cls, name in (
            (aiokafka.AIOKafkaProducer, "send"),
            *(
                (aiokafka.AIOKafkaConsumer, name)
                for name in (
                    "getone",
                    "getmany",
                    "commit",
                    "seek",
                    "seek_to_beginning",
                    "seek_to_end",
                    "seek_to_committed",
                    "stop",
                )
            ),
        ):
            _unpatch(cls, name)
        if self._telemetry is not None:
            self._telemetry.close()
            self._telemetry = None


# -- patching -----------------------------------------------------------------------------
def _patch(cls: type, name: str, wrapper: Callable[..., Any]) -> None:
    original = cls.__dict__[name]
    functools.update_wrapper(wrapper, original)
    setattr(wrapper, _MARK, original)
    setattr(cls, name, wrapper)


def _unpatch(cls: type, name: str) -> None:
    current = cls.__dict__.get(name)
    original = getattr(current, _MARK, None)
    if original is not None:
        setattr(cls, name, original)


def _state(
    telemetry: KafkaTelemetry, states: weakref.WeakKeyDictionary[Any, _ConsumerState], consumer: Any
) -> _ConsumerState:
    state = states.get(consumer)
    if state is None:
        group = getattr(consumer, "_group_id", None)  # aiokafka has no public accessor for it
        state = states[consumer] = _ConsumerState(telemetry, group if isinstance(group, str) else None)
    return state


# -- producer -----------------------------------------------------------------------------
def _event_type(topic: str, headers: Any) -> str:
    """The event type of a produced record: a CloudEvents ``ce_type`` header of the
    application, else the topic."""
    if headers:
        found = HEADER_LIST_GETTER.get(headers, _CE_TYPE)
        if found:
            return found[0]
    return topic


def _send_wrapper(telemetry: KafkaTelemetry) -> Callable[..., Any]:
    original = aiokafka.AIOKafkaProducer.send
    messaging = telemetry.messaging

    async def send(
        self: Any,
        topic: str,
        value: Any = None,
        key: Any = None,
        partition: Any = None,
        timestamp_ms: Any = None,
        headers: Any = None,
    ) -> Any:
        try:
            carrier = list(headers) if headers else []  # the application's own list stays untouched
            attributes: dict[str, Any] | None = None
            if value is None:
                attributes = {semconv.MESSAGING_KAFKA_MESSAGE_TOMBSTONE: True}
            if telemetry.capture_message_key and key is not None:
                attributes = {**(attributes or {}), semconv.MESSAGING_KAFKA_MESSAGE_KEY: _key_text(key)}
            outgoing = _OUTGOING.get()
            try:
                if outgoing is None:
                    publication = messaging.publish(
                        _event_type(topic, headers),
                        carrier,
                        setter=HEADER_LIST_SETTER,
                        destination=topic,
                        attributes=attributes,
                    )
                else:
                    publication = messaging.publish(
                        outgoing.event_type or _event_type(topic, headers),
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
        except Exception:
            internal_error("aiokafka", "starting a send span")
            return await original(self, topic, value, key, partition, timestamp_ms, headers)
        started = time.perf_counter()
        try:
            future = await original(self, topic, value, key, partition, timestamp_ms, carrier)
        except BaseException as exc:
            publication.__exit__(type(exc), exc, exc.__traceback__)
            telemetry.send_duration.record(
                time.perf_counter() - started, telemetry.operation_attributes("send", topic, None, error_type(exc))
            )
            raise
        publication.__exit__(None, None, None)
        future.add_done_callback(functools.partial(_delivered, telemetry, topic, started))
        return future

    return send


def _delivered(telemetry: KafkaTelemetry, topic: str, started: float, future: Any) -> None:
    try:
        error = None
        if future.cancelled():
            error = "cancelled"
        elif future.exception() is not None:
            error = error_type(future.exception())
        telemetry.send_duration.record(
            time.perf_counter() - started, telemetry.operation_attributes("send", topic, None, error)
        )
    except Exception:
        internal_error("aiokafka", "recording a delivery")


def _key_text(key: Any) -> str:
    if isinstance(key, bytes | bytearray):
        return bytes(key).decode(errors="replace")
    return str(key)


# -- consumer -----------------------------------------------------------------------------
def _track_lag(telemetry: KafkaTelemetry, state: _ConsumerState, consumer: Any) -> None:
    if not state.lag_tracked:
        state.lag_tracked = True
        telemetry.lag.track(consumer, state.group)


def _getone_wrapper(
    telemetry: KafkaTelemetry, states: weakref.WeakKeyDictionary[Any, _ConsumerState]
) -> Callable[..., Any]:
    original = aiokafka.AIOKafkaConsumer.getone

    async def getone(self: Any, *partitions: Any) -> Any:
        state = _state(telemetry, states, self)
        state.end_current()
        record = await original(self, *partitions)
        try:
            _track_lag(telemetry, state, self)
            _hand_over(telemetry, state, record)
        except Exception:
            internal_error("aiokafka", "starting a record's process span")
        return record

    return getone


def _getmany_wrapper(
    telemetry: KafkaTelemetry, states: weakref.WeakKeyDictionary[Any, _ConsumerState]
) -> Callable[..., Any]:
    original = aiokafka.AIOKafkaConsumer.getmany
    messaging = telemetry.messaging

    async def getmany(self: Any, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None) -> Any:
        state = _state(telemetry, states, self)
        state.end_current()
        start_ns = time.time_ns()
        records = await original(self, *partitions, timeout_ms=timeout_ms, max_records=max_records)
        if not records:
            return records
        try:
            _track_lag(telemetry, state, self)
            polled = state.polled
            polled.clear()  # records of an earlier poll never iterated
            incoming = []
            for batch in records.values():
                for record in batch:
                    message = messaging.extract(
                        header_map(record.headers), destination=record.topic, getter=TEXT_GETTER
                    )
                    polled[id(record)] = message
                    incoming.append(message)
            topics = {tp.topic for tp in records}
            messaging.received(
                incoming,
                start_ns=start_ns,
                destination=next(iter(topics)) if len(topics) == 1 else None,
                operation_name="poll",
                consumer_group=state.group,
            )

            def hand_over(record: Any) -> None:
                try:
                    _hand_over(telemetry, state, record)
                except Exception:
                    internal_error("aiokafka", "starting a record's process span")

            return {tp: _BatchRecords(batch, state, hand_over) for tp, batch in records.items()}
        except Exception:
            internal_error("aiokafka", "instrumenting a getmany result")
            return records

    return getmany


def _ending_wrapper(
    original: Callable[..., Any], states: weakref.WeakKeyDictionary[Any, _ConsumerState]
) -> Callable[..., Any]:
    async def ending(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = states.get(self)
        if state is not None:
            state.end_current()
        return await original(self, *args, **kwargs)

    return ending


def _ending_sync_wrapper(
    original: Callable[..., Any], states: weakref.WeakKeyDictionary[Any, _ConsumerState]
) -> Callable[..., Any]:
    def ending(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = states.get(self)
        if state is not None:
            state.end_current()
        return original(self, *args, **kwargs)

    return ending


def _stop_wrapper(
    telemetry: KafkaTelemetry, states: weakref.WeakKeyDictionary[Any, _ConsumerState]
) -> Callable[..., Any]:
    original = aiokafka.AIOKafkaConsumer.stop

    async def stop(self: Any) -> Any:
        state = states.pop(self, None)
        if state is not None:
            state.end_current()
            state.polled.clear()
            telemetry.lag.untrack(self)
        return await original(self)

    return stop
