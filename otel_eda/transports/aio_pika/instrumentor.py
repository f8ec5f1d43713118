"""``AioPikaInstrumentor``: otel-eda's drop-in instrumentation of aio-pika (RabbitMQ).

Registered as the ``otel_eda_aio_pika`` entry point of ``opentelemetry_instrumentor``, so
``opentelemetry-instrument`` loads it when aio-pika is installed (``pip install
otel-eda[aio-pika]``); ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_eda_aio_pika`` keeps it
out. In code: ``AioPikaInstrumentor().instrument(tracer_provider=..., meter_provider=...)``.

What it wraps, on the classes (every connection, robust or not, created before or after):

* ``Exchange.publish``: the message's event is a child of the event current in the caller
  (inside a handler: the handled message's event) or starts a flow; a PRODUCER span
  ``send {destination}`` covers the call, publisher confirmation included; the event identity
  and the trace context go into the AMQP headers of what is sent (a copy: the application's
  ``Message`` and its headers are not modified; its own headers are kept). The destination is
  ``{exchange}:{routing key}``, just ``{routing key}`` on the default exchange, ``amq.default``
  for the default exchange without a routing key (conventions v1.44). A broker nack
  (``DeliveryError``) or an unroutable message returned under ``mandatory`` (raised as
  ``PublishError``, or returned) is recorded on the send span (``error.type``) and counted;
  a returned message is also counted in ``eda.bus.unrouted`` and recorded as ``unrouted``.
* ``Queue.consume``: the callback runs inside a CONSUMER span ``process {destination}``
  (``{exchange}:{routing key}:{queue}``, empty parts left out, one of routing key and queue
  when equal), linked to its producer, with the message's event, span and baggage current.
* ``QueueIterator.__anext__`` (``async for message in queue.iterator()``) and ``Queue.get``:
  each message handed to the application gets its process span, current in the caller until
  the next message of that iterator or queue, the iterator's close, or
  ``OTEL_EDA_PROCESS_SPAN_MAX_S`` (:class:`~otel_eda.messaging.PullTracker`).
* ``IncomingMessage.ack`` / ``nack`` / ``reject`` (``message.process()`` calls them): settle
  the message's handling: ``completed``; ``retried`` (requeued); ``rejected`` (not requeued: a
  dead-letter exchange may move it, see below). The exception being handled, if any
  (``message.process()`` rejects inside its exit), is recorded on the span. A handling
  nothing settled ends with its callback (``completed``, or ``failed`` with the exception).

The delivery attempt (``eda.delivery.attempt``) is ``x-delivery-count + 1`` on quorum queues,
else 2 for a redelivered message, else 1. A message a dead-letter exchange moved carries an
``x-death`` header: its process span gets ``eda.dead_letter.reason`` / ``.queue`` / ``.count``,
and the first time this process reads it the original event gets a ``dead_lettered``
lifecycle record (same event id) and ``eda.broker.dead_letters`` counts it. The queue depth
and consumer count of every consumed queue are observable gauges refreshed in the background
(:mod:`~otel_eda.transports.aio_pika.depth`). Nothing here raises into the application: an
internal failure is logged and counted, and the client's call goes ahead uninstrumented.
"""

from __future__ import annotations

import inspect
import logging
import sys
import weakref
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

import aio_pika
import aiormq
from aio_pika.message import IncomingMessage
from aio_pika.queue import QueueIterator
from aio_pika.robust_queue import RobustQueueIterator
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.trace import Status, StatusCode

from otel_eda import semconv
from otel_eda._selfmetrics import count_invalid, internal_error
from otel_eda.messaging import TEXT_GETTER, TEXT_SETTER, Outcome, Processing, PullTracker, Rejected, error_type
from otel_eda.messaging.carriers import without_written
from otel_eda.transports.aio_pika.contrib import uninstrument_contrib
from otel_eda.transports.aio_pika.telemetry import AioPikaTelemetry
from otel_eda.transports.patching import patch as _patch
from otel_eda.transports.patching import unpatch as _unpatch
from otel_eda.transports.rabbitmq import (
    DeadLettering,
    MessageReturned,
    Outgoing,
    consumer_destination,
    current_outgoing,
    dead_lettering,
    event_type,
    outgoing_event,
    producer_destination,
)
from otel_eda.transports.rabbitmq import delivery_attempt as _attempt

__all__ = [
    "AioPikaInstrumentor",
    "DeadLettering",
    "MessageReturned",
    "Outgoing",
    "consumer_destination",
    "dead_lettering",
    "delivery_attempt",
    "outgoing_event",
    "producer_destination",
]

_log = logging.getLogger(__name__)
_INSTRUMENTS: Final = ("aio-pika >= 9.4, < 11",)
_WRAPPED: Final = "__otel_eda_wrapped__"


def delivery_attempt(message: Any) -> int:
    """The delivery attempt of a consumed aio-pika message: ``x-delivery-count + 1`` (quorum
    queues), else 2 if the broker redelivered it, else 1 (see
    :func:`otel_eda.transports.rabbitmq.delivery_attempt`)."""
    return _attempt(message.headers, message.redelivered)


def _event_type(message: Any, routing_key: str, exchange: str) -> str:
    return event_type(getattr(message, "type", None), getattr(message, "headers", None), routing_key, exchange)


# -- consuming ----------------------------------------------------------------------------
#: The open handling of each consumed message, by ``id(message)`` (IncomingMessage has no
#: ``__weakref__``): ack, nack and reject settle it. Entries go when settled, when the
#: callback returns, or when a pull moves on.
_handlings: dict[int, tuple[Any, Processing]] = {}


def _headers(message: Any) -> Any:
    headers = message.headers
    return headers if headers is not None else {}


def _attributes(message: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    tag = message.delivery_tag
    if isinstance(tag, int):
        attrs[semconv.MESSAGING_RABBITMQ_DELIVERY_TAG] = tag
    if message.routing_key:
        attrs[semconv.MESSAGING_RABBITMQ_ROUTING_KEY] = message.routing_key
    return attrs


def _started(telemetry: AioPikaTelemetry, message: Any, processing: Processing, no_ack: bool) -> None:
    """After a message's process span started: register it for settling; record a dead letter."""
    if not no_ack:
        _handlings[id(message)] = (message, processing)
    telemetry.note_dead_letter(message.headers, processing)


def _forget(message: Any) -> None:
    entry = _handlings.get(id(message))
    if entry is not None and entry[0] is message:
        del _handlings[id(message)]


def _queue_name(queue: Any) -> str:
    name = getattr(queue, "name", "")
    return name if isinstance(name, str) else ""


def _callback_wrapper(telemetry: AioPikaTelemetry, queue: Any, callback: Any, no_ack: bool) -> Callable[..., Any]:
    messaging = telemetry.messaging
    queue_name = _queue_name(queue)

    async def on_message(message: Any) -> Any:
        processing: Processing | None = None
        try:
            processing = messaging.process(
                _headers(message),
                destination=consumer_destination(message.exchange or "", message.routing_key or "", queue_name),
                getter=TEXT_GETTER,
                attempt=delivery_attempt(message),
                attributes=_attributes(message),
            )
            _started(telemetry, message, processing, no_ack)
        except Exception:
            internal_error("aio_pika", "starting a message's process span")
        if processing is None:
            result = callback(message)
            return await result if inspect.isawaitable(result) else result
        processing.attach()
        try:
            result = callback(message)
            if inspect.isawaitable(result):
                result = await result
        except BaseException as exc:
            processing.detach()
            _forget(message)
            processing.fail(exc) if isinstance(exc, Exception) else processing.settle(Outcome.FAILED, exc)
            raise
        processing.detach()
        _forget(message)
        processing.settle(Outcome.COMPLETED)
        return result

    setattr(on_message, _WRAPPED, True)
    with_name = getattr(callback, "__name__", None)
    if isinstance(with_name, str):
        on_message.__name__ = with_name
    return on_message


def _consume_wrapper(telemetry: AioPikaTelemetry) -> Callable[..., Any]:
    original = aio_pika.Queue.consume

    async def consume(self: Any, callback: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            telemetry.depth.track(self)
            # an iterator's own callback only queues the message: its handling starts in __anext__;
            # a robust queue re-consumes with the callback it was given (already wrapped)
            if not isinstance(getattr(callback, "__self__", None), QueueIterator) and not getattr(
                callback, _WRAPPED, False
            ):
                no_ack = bool(kwargs.get("no_ack", args[0] if args else False))
                callback = _callback_wrapper(telemetry, self, callback, no_ack)
        except Exception:
            internal_error("aio_pika", "wrapping a consumer callback")
        return await original(self, callback, *args, **kwargs)

    return consume


class _PullState:
    """One iterator's (or one queue's ``get``) pull tracker and its current message."""

    __slots__ = ("__weakref__", "current", "no_ack", "telemetry", "tracker")

    def __init__(self, telemetry: AioPikaTelemetry, queue_name: str, no_ack: bool) -> None:
        self.telemetry = telemetry
        self.no_ack = no_ack
        self.current: Any = None
        self.tracker: PullTracker[Any] = PullTracker(
            telemetry.messaging,
            destination=lambda m: consumer_destination(m.exchange or "", m.routing_key or "", queue_name),
            carrier=_headers,
            getter=TEXT_GETTER,
            attributes=_attributes,
            attempt=delivery_attempt,
        )

    def end_current(self) -> None:
        current, self.current = self.current, None
        if current is not None:
            _forget(current)
        try:
            self.tracker.end_current()
        except Exception:
            internal_error("aio_pika", "ending a message's process span")

    def hand_over(self, message: Any) -> None:
        try:
            self.end_current()
            processing = self.tracker.start(message)
            self.current = message
            _started(self.telemetry, message, processing, self.no_ack)
        except Exception:
            internal_error("aio_pika", "starting a message's process span")


def _iterator_state(
    telemetry: AioPikaTelemetry, states: weakref.WeakKeyDictionary[Any, _PullState], iterator: Any
) -> _PullState:
    state = states.get(iterator)
    if state is None:
        queue = getattr(iterator, "_amqp_queue", None)  # not OpenTelemetry: aio-pika's iterator keeps its queue there
        kwargs = getattr(iterator, "_consume_kwargs", None)  # not OpenTelemetry: the iterator's consume arguments
        no_ack = bool(kwargs.get("no_ack", False)) if isinstance(kwargs, Mapping) else False
        state = states[iterator] = _PullState(telemetry, _queue_name(queue), no_ack)
    return state


def _anext_wrapper(
    telemetry: AioPikaTelemetry, states: weakref.WeakKeyDictionary[Any, _PullState], original: Callable[..., Any]
) -> Callable[..., Any]:
    async def anext(self: Any) -> Any:
        state = None
        try:
            state = _iterator_state(telemetry, states, self)
            state.end_current()  # the wait for the next message is not the previous one's work
        except Exception:
            internal_error("aio_pika", "ending a message's process span")
        message = await original(self)
        if state is not None:
            state.hand_over(message)
        return message

    return anext


def _close_wrapper(
    states: weakref.WeakKeyDictionary[Any, _PullState], original: Callable[..., Any]
) -> Callable[..., Any]:
    async def close(self: Any) -> Any:
        state = states.get(self)
        if state is not None:
            state.end_current()
        return await original(self)

    return close


def _get_wrapper(
    telemetry: AioPikaTelemetry, getters: weakref.WeakKeyDictionary[Any, _PullState]
) -> Callable[..., Any]:
    original = aio_pika.Queue.get

    async def get(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = None
        try:
            telemetry.depth.track(self)
            state = getters.get(self)
            if state is None:
                state = getters[self] = _PullState(telemetry, _queue_name(self), bool(kwargs.get("no_ack", False)))
            state.end_current()
        except Exception:
            internal_error("aio_pika", "ending a message's process span")
        message = await original(self, *args, **kwargs)
        if message is not None and state is not None:
            state.no_ack = bool(kwargs.get("no_ack", False))
            state.hand_over(message)
        return message

    return get


# -- settling -----------------------------------------------------------------------------
def _settle_wrapper(telemetry: AioPikaTelemetry, original: Callable[..., Any], kind: str) -> Callable[..., Any]:
    messaging = telemetry.messaging

    async def settle(self: Any, *args: Any, **kwargs: Any) -> Any:
        entry = _handlings.get(id(self))
        if entry is None or entry[0] is not self:
            return await original(self, *args, **kwargs)
        processing = entry[1]
        handled = sys.exception()  # message.process() rejects while its block's exception is handled
        span = None
        try:
            span = messaging.settle_span(processing.destination, kind, context=processing.context)
        except Exception:
            internal_error("aio_pika", "starting a settle span")
        try:
            result = await original(self, *args, **kwargs)
        except BaseException as exc:  # the channel is gone, say: the broker will redeliver it
            _finish(self, processing, Outcome.FAILED, exc)
            if span is not None:  # its type only: the process span records the exception itself
                span.set_status(Status(StatusCode.ERROR, error_type(exc)))
                span.set_attribute(semconv.ERROR_TYPE, error_type(exc))
                span.end()
            raise
        if span is not None:
            span.end()
        if kind == "ack":
            outcome = Outcome.COMPLETED
        else:
            if kind == "nack":
                requeue = kwargs.get("requeue", args[1] if len(args) > 1 else True)
            else:
                requeue = kwargs.get("requeue", args[0] if args else False)
            outcome = Outcome.RETRIED if requeue else Outcome.REJECTED
        _finish(self, processing, outcome, handled if outcome is not Outcome.COMPLETED else None)
        return result

    return settle


def _finish(message: Any, processing: Processing, outcome: Outcome, exc: BaseException | None) -> None:
    try:
        _forget(message)
        if isinstance(exc, Rejected) and outcome is Outcome.RETRIED:
            outcome = Outcome.REJECTED
        processing.settle(outcome, exc)
    except Exception:
        internal_error("aio_pika", "settling a message")


# -- publishing -----------------------------------------------------------------------------
class _Sent:
    """What ``Exchange.publish`` sends: the message's body and a copy of its properties
    carrying otel-eda's headers (the application's message stays as it was)."""

    __slots__ = ("body", "properties")

    def __init__(self, body: bytes, properties: Any) -> None:
        self.body = body
        self.properties = properties


def _publish_wrapper(telemetry: AioPikaTelemetry) -> Callable[..., Any]:
    original: Callable[..., Any] = aio_pika.Exchange.publish
    messaging = telemetry.messaging

    async def publish(self: Any, message: Any, routing_key: Any, **kwargs: Any) -> Any:
        try:
            exchange = self.name if isinstance(self.name, str) else ""
            key = routing_key if isinstance(routing_key, str) else ""
            destination = producer_destination(exchange, key)
            headers = message.headers
            carrier: dict[str, Any] = without_written(headers, messaging.written_headers())
            attributes = {semconv.MESSAGING_RABBITMQ_ROUTING_KEY: key} if key else None
            outgoing = current_outgoing()
            try:
                if outgoing is None:
                    publication = messaging.publish(
                        _event_type(message, key, exchange),
                        carrier,
                        setter=TEXT_SETTER,
                        destination=destination,
                        attributes=attributes,
                    )
                else:
                    publication = messaging.publish(
                        outgoing.event_type or _event_type(message, key, exchange),
                        carrier,
                        setter=TEXT_SETTER,
                        destination=destination,
                        attributes=attributes,
                        business_key=outgoing.business_key,
                        metadata=outgoing.metadata,
                    )
            except ValueError as invalid:  # an event type, business key or metadata that is not valid
                count_invalid("send", "invalid_event")
                _log.warning("otel-eda: a message to %s is sent as a plain rabbitmq event: %s", destination, invalid)
                publication = messaging.publish(
                    semconv.MESSAGING_SYSTEM_RABBITMQ,
                    carrier,
                    setter=TEXT_SETTER,
                    destination=destination,
                    attributes=attributes,
                )
            properties = message.properties
            properties.headers = carrier
            sent = _Sent(message.body, properties)
            publication.__enter__()
            if outgoing is not None:
                outgoing.events.append(publication.event)
        except Exception:
            internal_error("aio_pika", "starting a send span")
            return await original(self, message, routing_key, **kwargs)
        try:
            result = await original(self, sent, routing_key, **kwargs)
        except BaseException as exc:
            publication.__exit__(type(exc), exc, exc.__traceback__)
            raise
        if isinstance(result, aiormq.abc.DeliveredMessage):  # returned: unroutable under mandatory
            returned = MessageReturned(f"the broker returned the message to {destination} as unroutable")
            publication.__exit__(MessageReturned, returned, None)
            try:
                messaging.unrouted(publication.event, destination, publication.span.get_span_context())
            except Exception:
                internal_error("aio_pika", "recording a returned message")
        else:
            publication.__exit__(None, None, None)
        return result

    return publish


# -- the instrumentor -----------------------------------------------------------------------
class AioPikaInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """otel-eda's aio-pika instrumentation (see the module docstring).

    ``instrument()`` accepts ``tracer_provider``, ``meter_provider``, ``recorders`` (lifecycle
    record sinks, e.g. an ``EventStore``) and ``depth_refresh_s`` (default 5).
    """

    _telemetry: AioPikaTelemetry | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        uninstrument_contrib()
        telemetry = AioPikaTelemetry(
            tracer_provider=kwargs.get("tracer_provider"),
            meter_provider=kwargs.get("meter_provider"),
            recorders=kwargs.get("recorders", ()),
            depth_refresh_s=kwargs.get("depth_refresh_s"),
        )
        self._telemetry = telemetry
        iterators: weakref.WeakKeyDictionary[Any, _PullState] = weakref.WeakKeyDictionary()
        getters: weakref.WeakKeyDictionary[Any, _PullState] = weakref.WeakKeyDictionary()
        _patch(aio_pika.Exchange, "publish", _publish_wrapper(telemetry))
        _patch(aio_pika.Queue, "consume", _consume_wrapper(telemetry))
        _patch(aio_pika.Queue, "get", _get_wrapper(telemetry, getters))
        for cls in (QueueIterator, RobustQueueIterator):
            if "__anext__" in cls.__dict__:
                _patch(cls, "__anext__", _anext_wrapper(telemetry, iterators, cls.__dict__["__anext__"]))
            if "close" in cls.__dict__:
                _patch(cls, "close", _close_wrapper(iterators, cls.__dict__["close"]))
        for kind in ("ack", "nack", "reject"):
            _patch(IncomingMessage, kind, _settle_wrapper(telemetry, IncomingMessage.__dict__[kind], kind))

    def _uninstrument(self, **kwargs: Any) -> None:
        for cls, name in (
            (aio_pika.Exchange, "publish"),
            (aio_pika.Queue, "consume"),
            (aio_pika.Queue, "get"),
            (QueueIterator, "__anext__"),
            (QueueIterator, "close"),
            (RobustQueueIterator, "__anext__"),
            (RobustQueueIterator, "close"),
            (IncomingMessage, "ack"),
            (IncomingMessage, "nack"),
            (IncomingMessage, "reject"),
        ):
            _unpatch(cls, name)
        if self._telemetry is not None:
            self._telemetry.close()
            self._telemetry = None
