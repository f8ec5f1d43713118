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
  record (or failed to), with ``error.type`` on failure.
* ``AIOKafkaConsumer.getone`` (``async for`` calls it) and ``getmany``: each record handed to
  the application gets a CONSUMER span ``process {topic}``, linked to its producer span, and
  becomes current (event, span, baggage) in the caller until the next ``getone`` /
  ``getmany``, ``commit``, ``seek*`` or ``stop`` of that consumer, or :data:`PROCESS_SPAN_MAX_S`.
  A ``getmany`` that returned records also gets a CLIENT span ``poll {topic}`` (``poll``
  across topics) with one link per record; an empty one gets none. In the lists ``getmany``
  returns, iterating moves the current record: ``for msg in batch:`` runs each body with
  its own record current. :func:`processing` gives a handling exact bounds and records an
  exception of the handler.
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

import asyncio
import functools
import logging
import time
import weakref
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any, Final

import aiokafka  # type: ignore[import-untyped]
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from otel_eda import semconv
from otel_eda._selfmetrics import internal_error
from otel_eda.flows.records import Stage
from otel_eda.identity import EventContext, current_event
from otel_eda.messaging.telemetry import Attempt, error_type
from otel_eda.transports.aiokafka.contrib import uninstrument_contrib
from otel_eda.transports.aiokafka.headers import HeaderView, with_injected
from otel_eda.transports.aiokafka.telemetry import KafkaTelemetry

__all__ = ["PROCESS_SPAN_MAX_S", "AIOKafkaInstrumentor", "processing"]

_log = logging.getLogger(__name__)

_INSTRUMENTS: Final = ("aiokafka >= 0.11, < 1",)
#: Seconds after which a handling that nothing ended (no next fetch, commit, seek or stop)
#: ends on its own, so a stalled loop does not keep its span open forever.
PROCESS_SPAN_MAX_S: Final = 60.0
_MARK: Final = "__otel_eda_original__"

#: The handling of each record currently handed out, by ``id(record)`` (one per consumer).
_handlings: dict[int, _Handling] = {}


class _Handling:
    """One record handed to the application: its process span, current until it ends."""

    __slots__ = ("attempt", "context", "record", "started", "state", "task", "token")

    def __init__(self, state: _ConsumerState, record: Any, attempt: Attempt) -> None:
        self.state = state
        self.record = record
        self.attempt = attempt
        self.context = attempt.context
        self.token: object | None = otel_context.attach(attempt.context)
        self.task = asyncio.current_task()
        self.started = time.monotonic()
        _handlings[id(record)] = self
        state.current = self
        if state.watchdog is None:
            state.watch(PROCESS_SPAN_MAX_S)

    def end(self, exc: BaseException | None = None) -> None:
        """End the span (completed, or failed with ``exc``) and restore the caller's context."""
        self._forget()
        token, self.token = self.token, None
        if (
            token is not None
            and asyncio.current_task() is self.task
            and otel_context.get_current() is self.context  # nothing attached on top of it since
        ):
            otel_context.detach(token)  # type: ignore[arg-type]
        if exc is None:
            self.attempt.completed()
        else:
            self.attempt.failed(exc, Stage.FAILED)

    def expire(self) -> None:
        """:data:`PROCESS_SPAN_MAX_S` passed: end the span (the context stays until the next fetch)."""
        self._forget()
        self.attempt.completed()

    def _forget(self) -> None:
        if self.state.current is self:
            self.state.current = None
        if _handlings.get(id(self.record)) is self:
            del _handlings[id(self.record)]


class _ConsumerState:
    __slots__ = ("__weakref__", "current", "group", "lag_tracked", "watchdog")

    def __init__(self, group: str | None) -> None:
        self.group = group
        self.current: _Handling | None = None
        self.lag_tracked = False
        #: one timer per consumer (not one per record) that ends a handling older than the maximum
        self.watchdog: asyncio.TimerHandle | None = None

    def end_current(self) -> None:
        current = self.current
        if current is not None:
            try:
                current.end()
            except Exception:
                internal_error("aiokafka", "ending a record's process span")

    def watch(self, delay_s: float) -> None:
        self.watchdog = asyncio.get_running_loop().call_later(delay_s, _watch, weakref.ref(self))

    def stop_watching(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None


def _watch(ref: weakref.ref[_ConsumerState]) -> None:
    state = ref()
    if state is None:
        return
    state.watchdog = None
    current = state.current
    if current is None:
        return  # re-armed by the next hand-over
    age = time.monotonic() - current.started
    try:
        if age >= PROCESS_SPAN_MAX_S:
            current.expire()
        else:
            state.watch(PROCESS_SPAN_MAX_S - age)
    except Exception:
        internal_error("aiokafka", "ending an overdue process span")


@contextmanager
def processing(record: Any) -> Iterator[None]:
    """Exact bounds for the handling of ``record`` (from ``getone``, ``getmany`` or ``async for``).

    Its process span ends when the block ends, failed with the exception if one escapes
    (and the exception is re-raised). Outside otel-eda's instrumentation it does nothing::

        async for msg in consumer:
            with processing(msg):
                await handle(msg)
    """
    handling = _handlings.get(id(record))
    if handling is None or handling.record is not record:
        yield
        return
    try:
        yield
    except BaseException as exc:
        handling.end(exc)
        raise
    handling.end()


class _BatchRecords(list):  # type: ignore[type-arg]
    """A ``getmany`` list whose iteration makes each record current while its body runs."""

    __slots__ = ("_hand_over",)

    def __init__(self, records: list[Any], hand_over: Callable[[Any], _Handling | None]) -> None:
        super().__init__(records)
        self._hand_over = hand_over

    def __reduce__(self) -> tuple[Any, ...]:  # pickled or copied: a plain list of the records
        return (list, (list(list.__iter__(self)),))

    def __iter__(self) -> Iterator[Any]:
        handling: _Handling | None = None
        try:
            for record in list.__iter__(self):
                if handling is not None and handling.token is not None:
                    handling.end()
                handling = self._hand_over(record)
                yield record
        finally:
            if handling is not None and handling.token is not None:
                handling.end()


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


def _state(states: weakref.WeakKeyDictionary[Any, _ConsumerState], consumer: Any) -> _ConsumerState:
    state = states.get(consumer)
    if state is None:
        group = getattr(consumer, "_group_id", None)  # aiokafka has no public accessor for it
        state = states[consumer] = _ConsumerState(group if isinstance(group, str) else None)
    return state


# -- producer -----------------------------------------------------------------------------
def _event_type(topic: str, headers: Any) -> str:
    """The event type of a produced record: a CloudEvents ``ce_type`` header of the
    application, else the topic."""
    if headers:
        value = HeaderView(headers).get("ce_type")
        if value:
            return str(value)
    return topic


def _send_wrapper(telemetry: KafkaTelemetry) -> Callable[..., Any]:
    original = aiokafka.AIOKafkaProducer.send
    events = telemetry.events

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
            cause = current_event()
            event_type = _event_type(topic, headers)
            try:
                event = cause.child(event_type) if cause is not None else EventContext.root(event_type)
            except ValueError:  # a topic or ce_type that is no valid event type
                event = cause.child("kafka") if cause is not None else EventContext.root("kafka")
            injected: dict[str, str] = {}
            publishing = events.publishing(event, topic, injected)
            span = publishing.__enter__()
        except Exception:
            internal_error("aiokafka", "starting a send span")
            return await original(self, topic, value, key, partition, timestamp_ms, headers)
        started = time.perf_counter()
        try:
            if span.is_recording():
                if value is None:
                    span.set_attribute(semconv.MESSAGING_KAFKA_MESSAGE_TOMBSTONE, True)
                if telemetry.capture_message_key and key is not None:
                    span.set_attribute(semconv.MESSAGING_KAFKA_MESSAGE_KEY, _key_text(key))
            future = await original(self, topic, value, key, partition, timestamp_ms, with_injected(headers, injected))
        except BaseException as exc:
            publishing.__exit__(type(exc), exc, exc.__traceback__)
            telemetry.operation_duration.record(
                time.perf_counter() - started, telemetry.operation_attributes("send", topic, None, error_type(exc))
            )
            raise
        publishing.__exit__(None, None, None)
        future.add_done_callback(functools.partial(_delivered, telemetry, topic, started))
        return future

    return send


def _delivered(telemetry: KafkaTelemetry, topic: str, started: float, future: asyncio.Future[Any]) -> None:
    try:
        error = None
        if future.cancelled():
            error = "cancelled"
        elif future.exception() is not None:
            error = error_type(future.exception())  # type: ignore[arg-type]
        telemetry.operation_duration.record(
            time.perf_counter() - started, telemetry.operation_attributes("send", topic, None, error)
        )
    except Exception:
        internal_error("aiokafka", "recording a delivery")


def _key_text(key: Any) -> str:
    if isinstance(key, bytes | bytearray):
        return bytes(key).decode(errors="replace")
    return str(key)


# -- consumer -----------------------------------------------------------------------------
def _hand_over(telemetry: KafkaTelemetry, state: _ConsumerState, record: Any) -> _Handling:
    """Start the process span of ``record`` and make it current in the caller."""
    events = telemetry.events
    group = state.group or ""
    received = events.receive(HeaderView(record.headers), record.topic, group)
    attempt = events.start_attempt(received, record.topic, group, 1, 0.0)
    span = attempt.span
    duplicate = telemetry.seen_before(group, attempt.event.event_id)
    if span.is_recording():
        span.set_attribute(semconv.MESSAGING_DESTINATION_PARTITION_ID, str(record.partition))
        span.set_attribute(semconv.MESSAGING_KAFKA_OFFSET, record.offset)
        if telemetry.capture_message_key and record.key is not None:
            span.set_attribute(semconv.MESSAGING_KAFKA_MESSAGE_KEY, _key_text(record.key))
        if duplicate:
            span.set_attribute(semconv.EDA_DELIVERY_DUPLICATE, True)
    if duplicate:
        telemetry.duplicates.add(1, telemetry.operation_attributes("process", record.topic, state.group))
    return _Handling(state, record, attempt)


def _track_lag(telemetry: KafkaTelemetry, state: _ConsumerState, consumer: Any) -> None:
    if not state.lag_tracked:
        state.lag_tracked = True
        telemetry.lag.track(consumer, state.group)


def _getone_wrapper(
    telemetry: KafkaTelemetry, states: weakref.WeakKeyDictionary[Any, _ConsumerState]
) -> Callable[..., Any]:
    original = aiokafka.AIOKafkaConsumer.getone

    async def getone(self: Any, *partitions: Any) -> Any:
        state = _state(states, self)
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

    async def getmany(self: Any, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None) -> Any:
        state = _state(states, self)
        state.end_current()
        start_ns = time.time_ns()
        started = time.perf_counter()
        records = await original(self, *partitions, timeout_ms=timeout_ms, max_records=max_records)
        if not records:
            return records
        try:
            _track_lag(telemetry, state, self)
            telemetry.polled(records, state.group, start_ns, time.perf_counter() - started)

            def hand_over(record: Any) -> _Handling | None:
                try:
                    return _hand_over(telemetry, state, record)
                except Exception:
                    internal_error("aiokafka", "starting a record's process span")
                    return None

            return {tp: _BatchRecords(batch, hand_over) for tp, batch in records.items()}
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
            state.stop_watching()
            telemetry.lag.untrack(self)
        return await original(self)

    return stop
