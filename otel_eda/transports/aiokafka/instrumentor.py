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
:data:`~otel_eda.transports.kafka_telemetry.DUPLICATE_WINDOW` event ids of this process is
marked ``eda.delivery.duplicate=true`` and counted in ``eda.delivery.duplicates``.
``messaging.kafka.message.key`` is written only with ``capture_message_key=True`` (keys
often hold personal data). Nothing here raises into the application: an internal failure
is logged and counted, and the client's call goes ahead uninstrumented.
"""

from __future__ import annotations

import functools
import logging
import operator
import time
import weakref
from collections.abc import Callable, Collection
from typing import Any, Final

import aiokafka  # type: ignore[import-untyped]
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from otel_eda._selfmetrics import internal_error
from otel_eda.messaging import error_type
from otel_eda.messaging.carriers import without_written_pairs
from otel_eda.transports.aiokafka.contrib import uninstrument_contrib
from otel_eda.transports.aiokafka.lag import ConsumerLag
from otel_eda.transports.kafka_records import (
    BatchRecords,
    ConsumerState,
    Outgoing,
    RecordAccess,
    guarded_hand_over,
    hand_over,
    outgoing_event,
    processing,
    receive,
    start_send,
)
from otel_eda.transports.kafka_telemetry import NO_EXEMPLAR, KafkaTelemetry
from otel_eda.transports.patching import patch as _patch
from otel_eda.transports.patching import unpatch as _unpatch

__all__ = ["SCOPE", "AIOKafkaInstrumentor", "Outgoing", "outgoing_event", "processing"]

_log = logging.getLogger(__name__)
_INSTRUMENTS: Final = ("aiokafka >= 0.11, < 1",)
#: Instrumentation scope of otel-eda's aiokafka spans and metrics.
SCOPE: Final = "otel_eda.aiokafka"
#: How an aiokafka ``ConsumerRecord`` reads.
_ACCESS: Final = RecordAccess(
    topic=operator.attrgetter("topic"),
    partition=operator.attrgetter("partition"),
    offset=operator.attrgetter("offset"),
    key=operator.attrgetter("key"),
    value=operator.attrgetter("value"),
    headers=operator.attrgetter("headers"),
)


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
        meter_provider = kwargs.get("meter_provider")
        refresh_s = kwargs.get("lag_refresh_s")
        telemetry = KafkaTelemetry(
            tracer_provider=kwargs.get("tracer_provider"),
            meter_provider=meter_provider,
            recorders=kwargs.get("recorders", ()),
            capture_message_key=bool(kwargs.get("capture_message_key", False)),
            scope=SCOPE,
            lag=ConsumerLag(meter_provider) if refresh_s is None else ConsumerLag(meter_provider, refresh_s=refresh_s),
        )
        self._telemetry = telemetry
        states: weakref.WeakKeyDictionary[Any, ConsumerState] = weakref.WeakKeyDictionary()
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


def _state(
    telemetry: KafkaTelemetry, states: weakref.WeakKeyDictionary[Any, ConsumerState], consumer: Any
) -> ConsumerState:
    state = states.get(consumer)
    if state is None:
        group = getattr(consumer, "_group_id", None)  # not OpenTelemetry: aiokafka has no public accessor
        state = states[consumer] = ConsumerState(
            telemetry, group if isinstance(group, str) else None, _ACCESS, "aiokafka"
        )
    return state


# -- producer -----------------------------------------------------------------------------
def _send_wrapper(telemetry: KafkaTelemetry) -> Callable[..., Any]:
    original = aiokafka.AIOKafkaProducer.send

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
            # a copy (the application's own list stays untouched) without the headers the send writes
            carrier = without_written_pairs(headers, telemetry.messaging.written_headers())
            publication = start_send(telemetry, topic, headers, carrier, key, value)
        except Exception:
            internal_error("aiokafka", "starting a send span")
            return await original(self, topic, value, key, partition, timestamp_ms, headers)
        started = time.perf_counter()
        try:
            future = await original(self, topic, value, key, partition, timestamp_ms, carrier)
        except BaseException as exc:
            publication.__exit__(type(exc), exc, exc.__traceback__)
            telemetry.send_duration.record(
                time.perf_counter() - started,
                telemetry.operation_attributes("send", topic, None, error_type(exc)),
                context=NO_EXEMPLAR,
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
            time.perf_counter() - started,
            telemetry.operation_attributes("send", topic, None, error),
            context=NO_EXEMPLAR,
        )
    except Exception:
        internal_error("aiokafka", "recording a delivery")


# -- consumer -----------------------------------------------------------------------------
def _track_lag(telemetry: KafkaTelemetry, state: ConsumerState, consumer: Any) -> None:
    if not state.lag_tracked:
        state.lag_tracked = True
        telemetry.lag.track(consumer, state.group)


def _getone_wrapper(
    telemetry: KafkaTelemetry, states: weakref.WeakKeyDictionary[Any, ConsumerState]
) -> Callable[..., Any]:
    original = aiokafka.AIOKafkaConsumer.getone

    async def getone(self: Any, *partitions: Any) -> Any:
        state = _state(telemetry, states, self)
        state.end_current()
        record = await original(self, *partitions)
        try:
            _track_lag(telemetry, state, self)
            hand_over(telemetry, state, record)
        except Exception:
            internal_error("aiokafka", "starting a record's process span")
        return record

    return getone


def _getmany_wrapper(
    telemetry: KafkaTelemetry, states: weakref.WeakKeyDictionary[Any, ConsumerState]
) -> Callable[..., Any]:
    original = aiokafka.AIOKafkaConsumer.getmany

    async def getmany(self: Any, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None) -> Any:
        state = _state(telemetry, states, self)
        state.end_current()
        start_ns = time.time_ns()
        records = await original(self, *partitions, timeout_ms=timeout_ms, max_records=max_records)
        if not records:
            return records
        try:
            _track_lag(telemetry, state, self)
            receive(telemetry, state, (record for batch in records.values() for record in batch), start_ns)
            hand = guarded_hand_over(telemetry, state)
            return {tp: BatchRecords(batch, state, hand) for tp, batch in records.items()}
        except Exception:
            internal_error("aiokafka", "instrumenting a getmany result")
            return records

    return getmany


def _ending_wrapper(
    original: Callable[..., Any], states: weakref.WeakKeyDictionary[Any, ConsumerState]
) -> Callable[..., Any]:
    async def ending(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = states.get(self)
        if state is not None:
            state.end_current()
        return await original(self, *args, **kwargs)

    return ending


def _ending_sync_wrapper(
    original: Callable[..., Any], states: weakref.WeakKeyDictionary[Any, ConsumerState]
) -> Callable[..., Any]:
    def ending(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = states.get(self)
        if state is not None:
            state.end_current()
        return original(self, *args, **kwargs)

    return ending


def _stop_wrapper(
    telemetry: KafkaTelemetry, states: weakref.WeakKeyDictionary[Any, ConsumerState]
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
