"""``ConfluentKafkaInstrumentor``: otel-eda's drop-in instrumentation of confluent-kafka.

Registered as the ``otel_eda_confluent_kafka`` entry point of ``opentelemetry_instrumentor``,
so ``opentelemetry-instrument`` loads it when confluent-kafka is installed (``pip install
otel-eda[confluent-kafka]``); ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_eda_confluent_kafka``
keeps it out. In code: ``ConfluentKafkaInstrumentor().instrument(tracer_provider=...,
meter_provider=...)``, before the application makes its clients.

**How it hooks in.** ``confluent_kafka.Producer`` and ``Consumer`` are classes of librdkafka's
C extension (``confluent_kafka.cimpl``): their methods cannot be replaced in place. While
instrumented, the module attributes ``confluent_kafka.Producer`` and
``confluent_kafka.Consumer`` are the subclasses :class:`Producer` and :class:`Consumer` of
this module (as the contrib instrumentation does), and ``confluent_kafka.SerializingProducer`` /
``DeserializingConsumer`` (Python classes deriving from the C ones) are :class:`SerializingProducer`
and :class:`DeserializingConsumer`, so clients made through them are instrumented;
``uninstrument()`` puts the original classes back, and an instrumented client made before then
passes its calls straight through. ``isinstance(client, confluent_kafka.Producer)`` holds for
every client, instrumented or not, whichever class the name held when the check was written (the
subclasses' metaclass accepts instances of the original class), and type hints naming these
classes keep working. One limit: a module that ran ``from confluent_kafka import Producer``
*before* instrumentation keeps the original class (under ``opentelemetry-instrument``
instrumentation comes first).

**Producer.** ``produce()`` is asynchronous: the record's event is a child of the event
current in the caller (inside a handling: the handled record's event) or starts a flow; a
PRODUCER span ``send {topic}`` covers the call, which hands the record to librdkafka's queue
(the span never waits for the broker, so none is held open); the event identity and the trace
context are appended to the record's headers (the application's headers, a list or a dict,
kept first and not modified). The delivery report (from ``poll()`` or ``flush()``, on the
application's thread) records ``messaging.client.operation.duration`` of ``send`` from the
call until the broker acknowledged the record or failed to, with ``error.type`` (the
librdkafka error name, such as ``_MSG_TIMED_OUT``) on failure (scope
``otel_eda.confluent_kafka.delivery``); a failed delivery is logged at WARNING with its event
id. The application's ``on_delivery`` (or ``callback``, or the one in the producer's
configuration) still runs, with the record's event and send span current; what it raises
reaches ``poll()`` / ``flush()`` as before. ``flush()`` and ``poll()`` are not wrapped. A
``BufferError`` (queue full) fails the send span and is re-raised.

**Consumer.** ``poll()`` and ``consume(num_messages)`` that returned records get a CLIENT
span ``poll {topic}`` (``poll`` across topics) with one link per record; an empty poll, and
error events (``msg.error()`` set), get none. Each record handed to the application gets a
CONSUMER span ``process {topic}``, linked to its producer span, current (event, span,
baggage) in the caller until the next ``poll`` / ``consume``, ``commit``, ``seek``,
``unassign``, ``unsubscribe`` or ``close`` of that consumer, or ``OTEL_EDA_PROCESS_SPAN_MAX_S``
(the messaging API's :class:`~otel_eda.messaging.PullTracker`). In the list ``consume``
returns, iterating moves the current record: ``for msg in msgs:`` runs each body with its
own record current. :func:`processing` gives a handling exact bounds and records an exception
of the handler. Header values may be ``None`` or any bytes: what cannot be read is ignored and
counted, never raised.

A record handled again in the same consumer group within the last
:data:`~otel_eda.transports.kafka_telemetry.DUPLICATE_WINDOW` event ids of this process is
marked ``eda.delivery.duplicate=true`` and counted in ``eda.delivery.duplicates``;
``eda.consumer.lag`` comes from :mod:`~otel_eda.transports.confluent_kafka.lag`.
``messaging.kafka.message.key`` is written only with ``capture_message_key=True``. Nothing
here raises into the application: an internal failure is logged and counted, and the
client's call goes ahead uninstrumented.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable, Collection
from typing import Any, Final

import confluent_kafka
from confluent_kafka import cimpl
from confluent_kafka.deserializing_consumer import DeserializingConsumer as _DeserializingConsumer
from confluent_kafka.serializing_producer import SerializingProducer as _SerializingProducer
from opentelemetry.context import Context, attach, detach
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from otel_eda._selfmetrics import internal_error
from otel_eda.identity import EventContext
from otel_eda.messaging import error_type
from otel_eda.messaging.carriers import without_written_pairs
from otel_eda.transports.confluent_kafka.contrib import uninstrument_contrib
from otel_eda.transports.confluent_kafka.lag import CachedConsumerLag
from otel_eda.transports.kafka_records import (
    BatchRecords,
    ConsumerState,
    Outgoing,
    RecordAccess,
    guarded_hand_over,
    outgoing_event,
    processing,
    receive,
    start_send,
)
from otel_eda.transports.kafka_telemetry import NO_EXEMPLAR, KafkaTelemetry

__all__ = [
    "SCOPE",
    "ConfluentKafkaInstrumentor",
    "Consumer",
    "DeserializingConsumer",
    "Outgoing",
    "Producer",
    "SerializingProducer",
    "outgoing_event",
    "processing",
]

_log = logging.getLogger(__name__)
_INSTRUMENTS: Final = ("confluent-kafka >= 2.4, < 3",)
_COMPONENT: Final = "confluent_kafka"
#: Instrumentation scope of otel-eda's confluent-kafka spans and metrics.
SCOPE: Final = "otel_eda.confluent_kafka"
#: ``Producer.produce``'s positional parameters after the topic, in librdkafka's order.
_PRODUCE_PARAMETERS: Final = ("value", "key", "partition", "callback", "on_delivery", "timestamp", "headers")
#: ``SerializingProducer.produce``'s positional parameters after the topic.
_SERIALIZING_PRODUCE_PARAMETERS: Final = ("key", "value", "partition", "on_delivery", "timestamp", "headers")
#: How a confluent-kafka ``Message`` reads.
_ACCESS: Final = RecordAccess(
    topic=operator.methodcaller("topic"),
    partition=operator.methodcaller("partition"),
    offset=operator.methodcaller("offset"),
    key=operator.methodcaller("key"),
    value=operator.methodcaller("value"),
    headers=operator.methodcaller("headers"),
)

#: The telemetry of the applied instrumentation; ``None`` when not instrumented (then the
#: instrumented classes pass every call straight through).
_telemetry: KafkaTelemetry | None = None


def _config_value(args: tuple[Any, ...], kwargs: dict[str, Any], key: str) -> Any:
    """A client configuration value, given as a dict (``Producer(conf)``) or as keywords."""
    if key in kwargs:
        return kwargs[key]
    conf = args[0] if args and isinstance(args[0], dict) else kwargs.get("conf")
    return conf.get(key) if isinstance(conf, dict) else None


class _InstrumentedClient(type):
    """Metaclass of the instrumented subclasses: ``isinstance`` / ``issubclass`` against the
    subclass accept the C class's instances and subclasses too (a client made before
    instrumentation, or by a library holding the C class). Subclasses the application
    derives from them check as usual."""

    def __instancecheck__(cls, instance: Any) -> bool:
        client = cls.__dict__.get("_otel_eda_client")
        if client is not None:
            return isinstance(instance, client)
        return type.__instancecheck__(cls, instance)

    def __subclasscheck__(cls, subclass: type) -> bool:
        client = cls.__dict__.get("_otel_eda_client")
        if client is not None:
            return issubclass(subclass, client)
        return type.__subclasscheck__(cls, subclass)


# -- producer -------------------------------------------------------------------------------
class _ProducerInstrumentation:
    """What an instrumented producer class adds to the client's class (listed after it in the bases)."""

    #: the parameters of the client class's ``produce`` after the topic, in its positional order
    _otel_eda_parameters: tuple[str, ...] = _PRODUCE_PARAMETERS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # the configuration's delivery callback: librdkafka skips it for a record that has its own
        self._otel_eda_on_delivery = _config_value(args, kwargs, "on_delivery")

    def produce(self, topic: Any, *args: Any, **kwargs: Any) -> None:
        telemetry = _telemetry
        produce = super().produce  # type: ignore[misc]
        if telemetry is None:
            return produce(topic, *args, **kwargs)  # type: ignore[no-any-return]
        return _produce(telemetry, self, produce, topic, args, kwargs)


class Producer(_ProducerInstrumentation, cimpl.Producer, metaclass=_InstrumentedClient):
    """``confluent_kafka.Producer`` while otel-eda's instrumentation is applied (see the module
    docstring); it behaves as the C class in every other respect."""

    _otel_eda_client = cimpl.Producer


class SerializingProducer(_ProducerInstrumentation, _SerializingProducer, metaclass=_InstrumentedClient):
    """``confluent_kafka.SerializingProducer`` while otel-eda's instrumentation is applied: the
    serializers see the record's headers with otel-eda's appended."""

    _otel_eda_client = _SerializingProducer
    _otel_eda_parameters = _SERIALIZING_PRODUCE_PARAMETERS


class _Delivery:
    """The delivery callback otel-eda gives one record: records the outcome, then runs the
    application's callback with the record's event current."""

    __slots__ = ("callback", "context", "event", "started", "telemetry", "topic")

    def __init__(
        self,
        telemetry: KafkaTelemetry,
        topic: str,
        event: EventContext,
        context: Context,
        callback: Callable[[Any, Any], Any] | None,
    ) -> None:
        self.telemetry = telemetry
        self.topic = topic
        self.event = event
        self.context = context
        self.callback = callback
        self.started = time.perf_counter()

    def __call__(self, err: Any, msg: Any) -> None:
        telemetry = self.telemetry
        try:
            error = None if err is None else _error_name(err)
            telemetry.send_duration.record(
                time.perf_counter() - self.started,
                telemetry.operation_attributes("send", self.topic, None, error),
                context=NO_EXEMPLAR,
            )
            if error is not None:
                _log.warning(
                    "otel-eda: Kafka did not deliver event %s (%s) to %s: %s",
                    self.event.event_id,
                    self.event.event_type,
                    self.topic,
                    error,
                )
        except Exception:
            internal_error(_COMPONENT, "recording a delivery report")
        callback = self.callback
        if callback is not None:
            token = attach(self.context)
            try:
                callback(err, msg)
            finally:
                detach(token)


def _error_name(err: Any) -> str:
    """``error.type`` of a delivery failure: librdkafka's error name (``_MSG_TIMED_OUT``)."""
    try:
        name = err.name()
    except Exception:
        return type(err).__qualname__
    return name if isinstance(name, str) and name else type(err).__qualname__


def _produce(
    telemetry: KafkaTelemetry,
    producer: _ProducerInstrumentation,
    produce: Callable[..., None],
    topic: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    try:
        params = dict(kwargs)
        if args:
            parameters = producer._otel_eda_parameters
            positional = dict(zip(parameters, args, strict=False))
            if len(args) > len(parameters) or positional.keys() & params.keys():
                return produce(topic, *args, **kwargs)  # the client raises its own TypeError
            params.update(positional)
        headers = params.get("headers")
        if headers is None:
            carrier: list[Any] = []
        elif isinstance(headers, list):
            # a copy (the application's own list stays untouched) without the headers the send writes
            carrier = without_written_pairs(headers, telemetry.messaging.written_headers())
        elif isinstance(headers, dict):
            carrier = without_written_pairs(headers.items(), telemetry.messaging.written_headers())
        else:
            return produce(topic, *args, **kwargs)  # the client raises its own TypeError
        if not isinstance(topic, str):
            return produce(topic, *args, **kwargs)
        callback = params.pop("on_delivery", None) or params.pop("callback", None) or producer._otel_eda_on_delivery
        params.pop("callback", None)
        publication = start_send(telemetry, topic, carrier, carrier, params.get("key"), params.get("value"))
    except Exception:
        internal_error(_COMPONENT, "starting a send span")
        return produce(topic, *args, **kwargs)
    params["headers"] = carrier
    params["on_delivery"] = _Delivery(telemetry, topic, publication.event, publication.context, callback)
    started = time.perf_counter()
    try:
        produce(topic, **params)
    except BaseException as exc:
        publication.__exit__(type(exc), exc, exc.__traceback__)
        telemetry.send_duration.record(
            time.perf_counter() - started,
            telemetry.operation_attributes("send", topic, None, error_type(exc)),
            context=NO_EXEMPLAR,
        )
        raise
    publication.__exit__(None, None, None)
    return None


# -- consumer -------------------------------------------------------------------------------
class _ConsumerInstrumentation:
    """What an instrumented consumer class adds to the client's class (listed after it in the bases)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        group = _config_value(args, kwargs, "group.id")
        self._otel_eda_group = group if isinstance(group, str) and group else None
        self._otel_eda_state: tuple[KafkaTelemetry, ConsumerState] | None = None

    def poll(self, *args: Any, **kwargs: Any) -> Any:
        telemetry = _telemetry
        if telemetry is None:
            return super().poll(*args, **kwargs)  # type: ignore[misc]
        state = _state(telemetry, self)
        state.end_current()
        start_ns = time.time_ns()
        msg = super().poll(*args, **kwargs)  # type: ignore[misc]
        if msg is None:
            return None
        try:
            if msg.error() is None:
                _track_lag(telemetry, state, self)
                receive(telemetry, state, (msg,), start_ns)
                guarded_hand_over(telemetry, state)(msg)
        except Exception:
            internal_error(_COMPONENT, "instrumenting a poll result")
        return msg

    def consume(self, *args: Any, **kwargs: Any) -> Any:
        telemetry = _telemetry
        if telemetry is None:
            return super().consume(*args, **kwargs)  # type: ignore[misc]
        state = _state(telemetry, self)
        state.end_current()
        start_ns = time.time_ns()
        msgs = super().consume(*args, **kwargs)  # type: ignore[misc]
        if not msgs:
            return msgs
        try:
            records = [msg for msg in msgs if msg.error() is None]
            if not records:
                return msgs
            _track_lag(telemetry, state, self)
            receive(telemetry, state, records, start_ns)
            hand = guarded_hand_over(telemetry, state)

            def hand_over(msg: Any) -> None:
                if msg.error() is None:
                    hand(msg)
                elif state.current is not None:  # an error event: no record is being handled
                    state.end_current()

            return BatchRecords(msgs, state, hand_over)
        except Exception:
            internal_error(_COMPONENT, "instrumenting a consume result")
            return msgs

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        self._otel_eda_end()
        return super().commit(*args, **kwargs)  # type: ignore[misc]

    def seek(self, *args: Any, **kwargs: Any) -> Any:
        self._otel_eda_end()
        return super().seek(*args, **kwargs)  # type: ignore[misc]

    def unassign(self, *args: Any, **kwargs: Any) -> Any:
        self._otel_eda_end()
        return super().unassign(*args, **kwargs)  # type: ignore[misc]

    def unsubscribe(self, *args: Any, **kwargs: Any) -> Any:
        self._otel_eda_end()
        return super().unsubscribe(*args, **kwargs)  # type: ignore[misc]

    def close(self, *args: Any, **kwargs: Any) -> Any:
        held, self._otel_eda_state = self._otel_eda_state, None
        if held is not None:
            telemetry, state = held
            state.end_current()
            state.polled.clear()
            try:
                telemetry.lag.untrack(self)
            except Exception:
                internal_error(_COMPONENT, "untracking a closed consumer's lag")
        return super().close(*args, **kwargs)  # type: ignore[misc]

    def _otel_eda_end(self) -> None:
        held = self._otel_eda_state
        if held is not None:
            held[1].end_current()


class Consumer(_ConsumerInstrumentation, cimpl.Consumer, metaclass=_InstrumentedClient):
    """``confluent_kafka.Consumer`` while otel-eda's instrumentation is applied (see the module
    docstring); it behaves as the C class in every other respect."""

    _otel_eda_client = cimpl.Consumer


class DeserializingConsumer(_ConsumerInstrumentation, _DeserializingConsumer, metaclass=_InstrumentedClient):
    """``confluent_kafka.DeserializingConsumer`` while otel-eda's instrumentation is applied: a
    record's handling starts once its key and value are deserialized."""

    _otel_eda_client = _DeserializingConsumer


def _state(telemetry: KafkaTelemetry, consumer: _ConsumerInstrumentation) -> ConsumerState:
    held = consumer._otel_eda_state
    if held is not None and held[0] is telemetry:
        return held[1]
    state = ConsumerState(telemetry, consumer._otel_eda_group, _ACCESS, _COMPONENT)
    consumer._otel_eda_state = (telemetry, state)
    return state


def _track_lag(telemetry: KafkaTelemetry, state: ConsumerState, consumer: _ConsumerInstrumentation) -> None:
    if not state.lag_tracked:
        state.lag_tracked = True
        telemetry.lag.track(consumer, state.group)


#: The ``confluent_kafka`` module attributes replaced while instrumented, and by what.
_INSTRUMENTED: Final[dict[str, Any]] = {
    "Producer": Producer,
    "Consumer": Consumer,
    "SerializingProducer": SerializingProducer,
    "DeserializingConsumer": DeserializingConsumer,
}


# -- instrumentor ---------------------------------------------------------------------------
class ConfluentKafkaInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """otel-eda's confluent-kafka instrumentation (see the module docstring).

    ``instrument()`` accepts ``tracer_provider``, ``meter_provider``, ``recorders`` (lifecycle
    record sinks, e.g. an ``EventStore``) and ``capture_message_key`` (default ``False``).

    >>> import confluent_kafka
    >>> instrumentor = ConfluentKafkaInstrumentor()
    >>> instrumentor.instrument()
    >>> producer = confluent_kafka.Producer({"bootstrap.servers": "127.0.0.1:9"})
    >>> type(producer).__module__, isinstance(producer, confluent_kafka.cimpl.Producer)
    ('otel_eda.transports.confluent_kafka.instrumentor', True)
    >>> instrumentor.uninstrument()
    >>> confluent_kafka.Producer is confluent_kafka.cimpl.Producer, isinstance(producer, confluent_kafka.Producer)
    (True, True)
    """

    _originals: dict[str, type] | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        global _telemetry
        uninstrument_contrib()
        meter_provider = kwargs.get("meter_provider")
        telemetry = KafkaTelemetry(
            tracer_provider=kwargs.get("tracer_provider"),
            meter_provider=meter_provider,
            recorders=kwargs.get("recorders", ()),
            capture_message_key=bool(kwargs.get("capture_message_key", False)),
            scope=SCOPE,
            lag=CachedConsumerLag(meter_provider),
        )
        # the module attributes, not the C classes (which cannot be changed): see the module docstring
        self._originals = {name: getattr(confluent_kafka, name) for name in _INSTRUMENTED}
        for name, instrumented in _INSTRUMENTED.items():
            setattr(confluent_kafka, name, instrumented)
        _telemetry = telemetry

    def _uninstrument(self, **kwargs: Any) -> None:
        global _telemetry
        originals = self._originals or {name: client._otel_eda_client for name, client in _INSTRUMENTED.items()}
        for name, instrumented in _INSTRUMENTED.items():
            if getattr(confluent_kafka, name) is instrumented:
                setattr(confluent_kafka, name, originals[name])
        self._originals = None
        telemetry, _telemetry = _telemetry, None
        if telemetry is not None:
            telemetry.close()
