"""``PikaInstrumentor``: otel-eda's drop-in instrumentation of pika (RabbitMQ).

Registered as the ``otel_eda_pika`` entry point of ``opentelemetry_instrumentor``, so
``opentelemetry-instrument`` loads it when pika is installed (``pip install otel-eda[pika]``);
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_eda_pika`` keeps it out. In code:
``PikaInstrumentor().instrument(tracer_provider=..., meter_provider=...)``.

It wraps the classes (every connection and channel, created before or after), at one level
per call, so that each message gets exactly one PRODUCER and one CONSUMER span:

``BlockingConnection`` (its ``BlockingChannel``)

* ``basic_publish``: the message's event is a child of the event current in the caller (inside
  a handler: the handled message's event) or starts a flow; a PRODUCER span
  ``send {destination}`` covers the call, the broker's confirmation included under
  ``confirm_delivery()``; the event identity and the trace context go into the AMQP headers of
  a copy of the properties (the application's ``BasicProperties`` are not modified, its own
  headers are kept). A broker nack (``NackError``) or an unroutable message returned under
  ``mandatory`` (``UnroutableError``) is recorded on the send span (``error.type``) and
  counted; a returned one also in ``eda.bus.unrouted`` and recorded ``unrouted``.
* ``basic_consume`` callbacks run inside a CONSUMER span ``process {destination}`` linked to
  its producer, with the message's event, span and baggage current.
* the ``consume()`` generator and ``basic_get``: each message handed to the application gets
  its process span, current in the caller until the next message is requested, ``cancel()``,
  the loop's end, or ``OTEL_EDA_PROCESS_SPAN_MAX_S`` (:class:`~otel_eda.messaging.PullTracker`).

``SelectConnection`` (its ``Channel``, callback-driven)

* ``basic_publish``: the same send span, ended when the frame is written. Confirms arrive
  later on the ``confirm_delivery`` callback: a nack is counted (``eda.broker.nacks``) and
  logged with the event id; an unroutable message returned under ``mandatory`` is counted in
  ``eda.bus.unrouted``, recorded ``unrouted`` and logged with its event id.
* ``basic_consume`` and ``basic_get`` callbacks: as above.

Both

* ``basic_ack`` / ``basic_nack`` / ``basic_reject`` (``multiple`` too) settle the handlings
  of their delivery tags: ``completed``; ``retried`` (requeued); ``rejected`` (not requeued:
  a dead-letter exchange may move it); a nack or reject inside an ``except`` block records the
  exception being handled on the span. A callback that raises ends its handling ``failed``. On a
  ``BlockingConnection`` a settlement is recorded once its frame is written: an ack the lost
  connection did not let out ends ``failed`` (the broker redelivers the message).
  A handling still unsettled when its callback returns (the work was handed to a thread,
  which acknowledges through ``add_callback_threadsafe``) stays open until its message is
  settled, its channel closes (``failed``), or ``OTEL_EDA_PROCESS_SPAN_MAX_S`` (then it ends
  ``completed``, truncated); with ``auto_ack`` it ends with the callback.
* ``add_callback_threadsafe`` (``BlockingConnection``, and the ``SelectConnection`` ioloop's):
  the callback runs in the context of the code that scheduled it, so the event, span and
  baggage a worker thread had travel with it (a thread started with
  ``contextvars.copy_context().run``, or under ``opentelemetry-instrumentation-threading``).

Names, the delivery attempt (``x-delivery-count + 1`` on quorum queues, else 2 when
redelivered) and dead-lettering (``x-death``) follow :mod:`otel_eda.transports.rabbitmq`, as for
aio-pika. The queue depth and consumer count gauges are refreshed by a thread with a connection
of its own (:mod:`~otel_eda.transports.pika.depth`). Nothing here raises into the application: an
internal failure is logged and counted (``eda.internal.errors``), and the client's call goes ahead
uninstrumented.
"""

from __future__ import annotations

import contextvars
import copy
import functools
import logging
import sys
from collections.abc import Callable, Collection, Generator, Iterator, Mapping
from typing import Any, Final

import pika
import pika.channel
from opentelemetry import metrics
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.trace import Status, StatusCode
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.adapters.select_connection import IOLoop

from otel_eda import semconv
from otel_eda._selfmetrics import count_internal_error, count_invalid, internal_error
from otel_eda.messaging import TEXT_GETTER, TEXT_SETTER, Outcome, Processing, PullTracker, Rejected, error_type
from otel_eda.messaging.carriers import without_written
from otel_eda.transports.patching import patch as _patch
from otel_eda.transports.patching import unpatch as _unpatch
from otel_eda.transports.pika.contrib import uninstrument_contrib
from otel_eda.transports.pika.depth import PikaQueueDepth
from otel_eda.transports.rabbitmq import (
    MessageReturned,
    RabbitTelemetry,
    consumer_destination,
    current_outgoing,
    delivery_attempt,
    event_type,
    outgoing_event,
    producer_destination,
)
from otel_eda.version import VERSION

__all__ = ["SCOPE", "MessageReturned", "PikaInstrumentor", "PikaTelemetry", "outgoing_event"]

_log = logging.getLogger(__name__)
_INSTRUMENTS: Final = ("pika >= 1.3, < 2",)
#: On a ``pika.channel.Channel``: otel-eda's state of that channel.
_STATE: Final = "_otel_eda_state"
#: Confirmations remembered per channel at most (a broker that never confirms does not grow memory).
MAX_UNCONFIRMED: Final = 100_000
#: Open handlings (unacknowledged messages) followed per channel at most: past it the oldest one
#: ends ``failed`` (truncated), logged once and counted in ``eda.internal.errors``.
MAX_OPEN_HANDLINGS: Final = 10_000
_over_cap_logged = False
#: Instrumentation scope of otel-eda's pika spans and metrics.
SCOPE: Final = "otel_eda.pika"


class PikaTelemetry(RabbitTelemetry):
    """The telemetry of one pika instrumentation: the shared RabbitMQ telemetry, the nack counter
    and the queue depth gauges (:mod:`~otel_eda.transports.pika.depth`)."""

    def __init__(self, *, depth_refresh_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(SCOPE, **kwargs)
        meter = metrics.get_meter(SCOPE + ".broker", VERSION, kwargs.get("meter_provider"))
        refresh = {} if depth_refresh_s is None else {"refresh_s": depth_refresh_s}
        self.depth = PikaQueueDepth(kwargs.get("meter_provider"), **refresh)
        self.nacks = meter.create_counter(
            semconv.METRIC_BROKER_NACKS,
            unit="{message}",
            description="Messages the broker refused (publisher confirms) after their send span ended",
        )

    def close(self) -> None:
        self.depth.close()


# -- per-channel state ------------------------------------------------------------------------
class _Confirms:
    """A SelectConnection channel in confirm mode: the event of each unconfirmed publish, by the
    delivery tag the broker gives it (1, 2, ... in publishing order)."""

    __slots__ = ("next_tag", "pending")

    def __init__(self) -> None:
        self.next_tag = 1
        self.pending: dict[int, tuple[str, str]] = {}

    def sent(self, event_id: str | None, destination: str) -> None:
        tag = self.next_tag
        self.next_tag += 1
        if event_id is None:
            return
        if len(self.pending) >= MAX_UNCONFIRMED:
            self.pending.pop(next(iter(self.pending)))
            count_internal_error("pika_confirms")
        self.pending[tag] = (event_id, destination)

    def confirmed(self, tag: int, multiple: bool) -> list[tuple[str, str]]:
        if not multiple:
            found = self.pending.pop(tag, None)
            return [] if found is None else [found]
        return [self.pending.pop(t) for t in _up_to(self.pending, tag, ordered=True)]


def _up_to(by_tag: Mapping[int, Any], tag: Any, *, ordered: bool = False) -> list[int]:
    """The delivery tags of ``by_tag`` up to ``tag`` (all of them for 0), as AMQP's ``multiple``
    means. Handlings are not in tag order (a ``consume()`` message buffered before a callback's
    is handed over after it), so every key is looked at; ``ordered`` keys (publisher confirms,
    numbered as sent) stop the scan at the first later one."""
    if not tag:
        return list(by_tag)
    if not ordered:
        return [key for key in by_tag if key <= tag]
    found = []
    for key in by_tag:
        if key > tag:
            break
        found.append(key)
    return found


class _Channel:
    """otel-eda's state of one ``pika.channel.Channel``: the open handlings by delivery tag, the
    pull trackers of ``consume()`` and ``basic_get``, confirm tracking, the return hook."""

    __slots__ = (
        "blocking",
        "blocking_confirms",
        "closing",
        "confirms",
        "consumer",
        "getter",
        "handlings",
        "returns_hooked",
        "telemetry",
    )

    def __init__(self, telemetry: PikaTelemetry) -> None:
        self.telemetry = telemetry
        #: owned by a BlockingChannel: publishing, consuming and confirms are handled at that level
        self.blocking = False
        self.blocking_confirms = False
        #: inside ``BlockingChannel.close``: its ``cancel()`` of ``consume()`` does not end the message
        self.closing = False
        self.confirms: _Confirms | None = None
        self.handlings: dict[int, tuple[Processing, PullTracker[Any] | None]] = {}
        self.consumer: _Pull | None = None
        self.getter: _Pull | None = None
        self.returns_hooked = False

    def forget(self, tag: Any) -> None:
        self.handlings.pop(tag, None)

    def close(self, reason: BaseException | None) -> None:
        """The channel closed: unsettled handlings failed (the broker redelivers their messages),
        the ``consume()`` and ``basic_get`` messages among them; then the pulls' spans end."""
        handlings, self.handlings = self.handlings, {}
        for processing, _ in handlings.values():
            try:
                processing.settle(Outcome.FAILED, reason)
            except Exception:
                internal_error("pika", "settling a message of a closed channel")
        for pull in (self.consumer, self.getter):
            if pull is not None:
                pull.end_current()


def _state(telemetry: PikaTelemetry, channel: Any) -> _Channel:
    """The state of ``channel`` (a ``pika.channel.Channel``), made on first use."""
    state: _Channel | None = channel.__dict__.get(_STATE)
    if state is None or state.telemetry is not telemetry:
        state = _Channel(telemetry)
        channel.__dict__[_STATE] = state
        try:
            channel.add_on_close_callback(lambda _channel, reason: state.close(reason))
        except Exception:
            internal_error("pika", "watching a channel's close")
    return state


def _blocking_state(telemetry: PikaTelemetry, channel: Any) -> _Channel:
    """The state of a BlockingChannel's underlying channel (marked as owned by it)."""
    state = _state(telemetry, channel._impl)  # not OpenTelemetry: BlockingChannel keeps its Channel there
    state.blocking = True
    return state


# -- consuming ----------------------------------------------------------------------------
def _attributes(method: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    tag = getattr(method, "delivery_tag", None)
    if isinstance(tag, int):
        attrs[semconv.MESSAGING_RABBITMQ_DELIVERY_TAG] = tag
    key = getattr(method, "routing_key", None)
    if isinstance(key, str) and key:
        attrs[semconv.MESSAGING_RABBITMQ_ROUTING_KEY] = key
    return attrs


def _headers(properties: Any) -> Any:
    headers = getattr(properties, "headers", None)
    return headers if headers is not None else {}


def _destination(method: Any, queue: str) -> str:
    exchange = getattr(method, "exchange", "")
    key = getattr(method, "routing_key", "")
    return consumer_destination(
        exchange if isinstance(exchange, str) else "", key if isinstance(key, str) else "", queue
    )


def _attempt(method: Any, properties: Any) -> int:
    return delivery_attempt(getattr(properties, "headers", None), getattr(method, "redelivered", False))


def _start(state: _Channel, method: Any, properties: Any, queue: str, auto_ack: bool) -> Processing:
    telemetry = state.telemetry
    headers = _headers(properties)
    processing = telemetry.messaging.process(
        headers,
        destination=_destination(method, queue),
        getter=TEXT_GETTER,
        attempt=_attempt(method, properties),
        attributes=_attributes(method),
    )
    if not auto_ack:
        state.handlings[method.delivery_tag] = (processing, None)
    telemetry.note_dead_letter(headers, processing)
    return processing


def _callback_wrapper(state: _Channel, queue: str, callback: Any, auto_ack: bool) -> Callable[..., Any]:
    """A consumer (or ``basic_get``) callback ``(channel, method, properties, body)`` run inside its
    message's process span."""

    def on_message(channel: Any, method: Any, properties: Any, body: Any) -> Any:
        processing: Processing | None = None
        try:
            processing = _start(state, method, properties, queue, auto_ack)
        except Exception:
            internal_error("pika", "starting a message's process span")
        if processing is None:
            return callback(channel, method, properties, body)
        processing.attach()
        try:
            result = callback(channel, method, properties, body)
        except BaseException as exc:
            processing.detach()
            state.forget(method.delivery_tag)
            processing.fail(exc) if isinstance(exc, Exception) else processing.settle(Outcome.FAILED, exc)
            raise
        processing.detach()
        if not processing.settled:
            try:
                _leave_open(state, method.delivery_tag, processing, auto_ack)
            except Exception:
                internal_error("pika", "following an unsettled message")
        return result

    functools.update_wrapper(on_message, callback)
    on_message.__wrapped_by_otel_eda__ = True  # type: ignore[attr-defined]
    return on_message


def _leave_open(state: _Channel, tag: Any, processing: Processing, auto_ack: bool) -> None:
    """A callback returned before its message was settled: end it now (auto-ack), or follow it
    until its ack, its channel's close, or the maximum process span duration."""
    entry = state.handlings.get(tag)
    if auto_ack or entry is None or entry[0] is not processing:
        processing.settle(Outcome.COMPLETED)
        return
    tracker: PullTracker[Any] = PullTracker(
        state.telemetry.messaging, destination=processing.destination, carrier=_headers
    )
    tracker.adopt(processing)
    state.handlings[tag] = (processing, tracker)
    _trim(state)


def _trim(state: _Channel) -> None:
    """Drop the oldest handlings already ended (``OTEL_EDA_PROCESS_SPAN_MAX_S``), then, past
    :data:`MAX_OPEN_HANDLINGS`, end the oldest ones ``failed`` (a consumer that never acks)."""
    global _over_cap_logged
    handlings = state.handlings
    while handlings:
        oldest = next(iter(handlings))
        processing = handlings[oldest][0]
        if processing.settled:
            del handlings[oldest]
        elif len(handlings) > MAX_OPEN_HANDLINGS:
            del handlings[oldest]
            count_internal_error("pika_handlings")
            if not _over_cap_logged:
                _over_cap_logged = True
                _log.warning(
                    "otel-eda: more than %d unacknowledged messages on a pika channel; "
                    "the oldest handlings end failed (truncated)",
                    MAX_OPEN_HANDLINGS,
                )
            processing.settle(Outcome.FAILED, truncated=True)
        else:
            return


def _wrapped(callback: Any) -> bool:
    return bool(getattr(callback, "__wrapped_by_otel_eda__", False))


class _Pull:
    """One channel's ``consume()`` generator (or its ``basic_get`` calls) and its current message."""

    __slots__ = ("auto_ack", "queue", "state", "tag", "tracker")

    def __init__(self, state: _Channel, queue: str, auto_ack: bool) -> None:
        self.state = state
        self.queue = queue
        self.auto_ack = auto_ack
        self.tag: Any = None
        self.tracker: PullTracker[tuple[Any, Any]] = PullTracker(
            state.telemetry.messaging,
            destination=lambda m: _destination(m[0], self.queue),
            carrier=lambda m: _headers(m[1]),
            getter=TEXT_GETTER,
            attributes=lambda m: _attributes(m[0]),
            attempt=lambda m: _attempt(m[0], m[1]),
        )

    def end_current(self) -> None:
        tag, self.tag = self.tag, None
        if tag is not None:
            self.state.forget(tag)
        try:
            self.tracker.end_current()
        except Exception:
            internal_error("pika", "ending a message's process span")

    def hand_over(self, method: Any, properties: Any) -> None:
        try:
            self.end_current()
            processing = self.tracker.start((method, properties))
            if not self.auto_ack:
                self.tag = method.delivery_tag
                self.state.handlings[self.tag] = (processing, None)
            self.state.telemetry.note_dead_letter(_headers(properties), processing)
        except Exception:
            internal_error("pika", "starting a message's process span")


def _blocking_consume_wrapper(telemetry: PikaTelemetry) -> Callable[..., Any]:
    original = BlockingChannel.consume

    def consume(self: Any, queue: Any, auto_ack: Any = False, *args: Any, **kwargs: Any) -> Any:
        inner = original(self, queue, auto_ack, *args, **kwargs)
        try:
            state = _blocking_state(telemetry, self)
            if state.consumer is None or state.consumer.queue != queue:
                state.consumer = _Pull(state, queue if isinstance(queue, str) else "", bool(auto_ack))
            pull = state.consumer
            telemetry.depth.track(self._impl, queue)
        except Exception:
            internal_error("pika", "following a consume() generator")
            return inner
        return _follow(pull, inner)

    return consume


def _follow(pull: _Pull, inner: Generator[Any, None, None]) -> Iterator[Any]:
    """Yield what ``consume()`` yields, each message's process span current in the loop body;
    it ends before the next message is requested (the wait is not its work)."""
    try:
        while True:
            pull.end_current()
            try:
                item = next(inner)
            except StopIteration:
                return
            if item[0] is not None:  # (None, None, None): an inactivity timeout
                pull.hand_over(item[0], item[1])
            yield item
    finally:
        pull.end_current()
        inner.close()


def _blocking_cancel_wrapper(telemetry: PikaTelemetry) -> Callable[..., Any]:
    original = BlockingChannel.cancel

    def cancel(self: Any) -> Any:
        try:
            state = _blocking_state(telemetry, self)
            if state.consumer is not None and not state.closing:  # closing: it ends ``failed``
                state.consumer.end_current()
        except Exception:
            internal_error("pika", "ending a message's process span")
        return original(self)

    return cancel


def _blocking_close_wrapper(telemetry: PikaTelemetry) -> Callable[..., Any]:
    original = BlockingChannel.close

    def close(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = None
        try:
            state = _blocking_state(telemetry, self)
            state.closing = True
        except Exception:
            internal_error("pika", "following a channel's close")
        try:
            return original(self, *args, **kwargs)
        finally:
            if state is not None:
                state.closing = False

    return close


def _blocking_get_wrapper(telemetry: PikaTelemetry) -> Callable[..., Any]:
    original = BlockingChannel.basic_get

    def basic_get(self: Any, queue: Any, auto_ack: Any = False) -> Any:
        pull = None
        try:
            state = _blocking_state(telemetry, self)
            if state.getter is None:
                state.getter = _Pull(state, "", False)
            pull = state.getter
            pull.end_current()
        except Exception:
            internal_error("pika", "ending a message's process span")
        result = original(self, queue, auto_ack)
        telemetry.depth.track(self._impl, queue)
        if pull is not None and result[0] is not None:
            pull.queue = queue if isinstance(queue, str) else ""
            pull.auto_ack = bool(auto_ack)
            pull.hand_over(result[0], result[1])
        return result

    return basic_get


def _blocking_basic_consume_wrapper(telemetry: PikaTelemetry) -> Callable[..., Any]:
    original = BlockingChannel.basic_consume

    def basic_consume(self: Any, queue: Any, on_message_callback: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            state = _blocking_state(telemetry, self)
            if not _wrapped(on_message_callback):
                auto_ack = bool(kwargs.get("auto_ack", args[0] if args else False))
                name = queue if isinstance(queue, str) else ""
                on_message_callback = _callback_wrapper(state, name, on_message_callback, auto_ack)
        except Exception:
            internal_error("pika", "wrapping a consumer callback")
        result = original(self, queue, on_message_callback, *args, **kwargs)
        telemetry.depth.track(self._impl, queue)
        return result

    return basic_consume


def _select_consume_wrapper(telemetry: PikaTelemetry) -> Callable[..., Any]:
    original = pika.channel.Channel.basic_consume

    def basic_consume(self: Any, queue: Any, on_message_callback: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            state = _state(telemetry, self)
            if not state.blocking and not _wrapped(on_message_callback):
                auto_ack = bool(kwargs.get("auto_ack", args[0] if args else False))
                name = queue if isinstance(queue, str) else ""
                on_message_callback = _callback_wrapper(state, name, on_message_callback, auto_ack)
                telemetry.depth.track(self, queue)
        except Exception:
            internal_error("pika", "wrapping a consumer callback")
        return original(self, queue, on_message_callback, *args, **kwargs)

    return basic_consume


def _select_get_wrapper(telemetry: PikaTelemetry) -> Callable[..., Any]:
    original = pika.channel.Channel.basic_get

    def basic_get(self: Any, queue: Any, callback: Any, auto_ack: Any = False) -> Any:
        try:
            state = _state(telemetry, self)
            if not state.blocking and not _wrapped(callback):
                callback = _callback_wrapper(state, queue if isinstance(queue, str) else "", callback, bool(auto_ack))
                telemetry.depth.track(self, queue)
        except Exception:
            internal_error("pika", "wrapping a basic_get callback")
        return original(self, queue, callback, auto_ack)

    return basic_get


# -- settling -----------------------------------------------------------------------------
def _settle_wrapper(telemetry: PikaTelemetry, kind: str) -> Callable[..., Any]:
    original = pika.channel.Channel.__dict__[f"basic_{kind}"]
    messaging = telemetry.messaging

    def settle(self: Any, delivery_tag: Any = 0, *args: Any, **kwargs: Any) -> Any:
        state: _Channel | None = self.__dict__.get(_STATE)
        if state is None or not state.handlings:
            return original(self, delivery_tag, *args, **kwargs)
        try:
            if kind == "reject":
                multiple = False
                requeue = kwargs.get("requeue", args[0] if args else True)
            else:
                multiple = bool(kwargs.get("multiple", args[0] if args else False))
                requeue = kwargs.get("requeue", args[1] if len(args) > 1 else True)
            if multiple:
                tags = _up_to(state.handlings, delivery_tag)
            else:
                tags = [delivery_tag] if delivery_tag in state.handlings else []
            settled = [state.handlings.pop(t)[0] for t in tags]
        except Exception:
            internal_error("pika", "settling a message")
            return original(self, delivery_tag, *args, **kwargs)
        if not settled:
            return original(self, delivery_tag, *args, **kwargs)
        handled = sys.exception() if kind != "ack" else None  # a nack inside ``except``: recorded with it
        span = None
        try:
            first = settled[0]
            span = messaging.settle_span(first.destination, kind, context=first.context)
        except Exception:
            internal_error("pika", "starting a settle span")
        try:
            result = original(self, delivery_tag, *args, **kwargs)
        except BaseException as exc:  # the channel is gone, say: the broker will redeliver them
            _Settling(settled, span, Outcome.FAILED, exc).end(exc)
            raise
        outcome = Outcome.COMPLETED if kind == "ack" else Outcome.RETRIED if requeue else Outcome.REJECTED
        settling = _Settling(settled, span, outcome, handled)
        deferred = _BLOCKING_SETTLE.get()
        if deferred is not None:  # BlockingChannel's call: it ends them once its frame is written
            deferred.append(settling)
        else:
            settling.end(None)
        return result

    return settle


class _Settling:
    """The handlings one settle call settles, its span, and their outcome if the frame goes out."""

    __slots__ = ("handled", "outcome", "settled", "span")

    def __init__(self, settled: list[Processing], span: Any, outcome: Outcome, handled: BaseException | None) -> None:
        self.settled = settled
        self.span = span
        self.outcome = outcome
        self.handled = handled

    def end(self, failure: BaseException | None) -> None:
        """End them: as settled, or ``failed`` with ``failure`` (the frame never went out)."""
        for processing in self.settled:
            if failure is None:
                _finish(processing, self.outcome, self.handled)
            else:
                _finish(processing, Outcome.FAILED, failure)
        if self.span is not None:
            if failure is not None:
                self.span.set_status(Status(StatusCode.ERROR, error_type(failure)))
                self.span.set_attribute(semconv.ERROR_TYPE, error_type(failure))
            self.span.end()


#: Inside a ``BlockingChannel`` settle call: the settlings its ``Channel`` call made, ended by it.
_BLOCKING_SETTLE: contextvars.ContextVar[list[_Settling] | None] = contextvars.ContextVar(
    "otel_eda_pika_blocking_settle", default=None
)


def _blocking_settle_wrapper(kind: str) -> Callable[..., Any]:
    """``BlockingChannel.basic_ack`` (``nack``, ``reject``): the ``Channel`` call only queues the
    frame, and the write that follows (``_flush_output``) is where a lost connection shows. A
    settlement is recorded once that write went through; when it raises, ``failed`` (the broker
    redelivers the message), never ``completed`` for an ack that did not leave the process."""
    original = BlockingChannel.__dict__[f"basic_{kind}"]

    def settle(self: Any, *args: Any, **kwargs: Any) -> Any:
        deferred: list[_Settling] = []
        token = _BLOCKING_SETTLE.set(deferred)
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            _BLOCKING_SETTLE.reset(token)
            for settling in deferred:
                settling.end(exc)
            raise
        _BLOCKING_SETTLE.reset(token)
        for settling in deferred:
            settling.end(None)
        return result

    return settle


def _finish(processing: Processing, outcome: Outcome, exc: BaseException | None) -> None:
    try:
        if isinstance(exc, Rejected) and outcome is Outcome.RETRIED:
            outcome = Outcome.REJECTED
        processing.settle(outcome, exc)
    except Exception:
        internal_error("pika", "settling a message")


# -- publishing -----------------------------------------------------------------------------
def _begin(telemetry: PikaTelemetry, exchange: Any, routing_key: Any, properties: Any) -> tuple[Any, Any, str]:
    """Start a send: ``(publication, properties to send, destination)``."""
    messaging = telemetry.messaging
    exchange = exchange if isinstance(exchange, str) else ""
    key = routing_key if isinstance(routing_key, str) else ""
    destination = producer_destination(exchange, key)
    headers = getattr(properties, "headers", None)
    carrier: dict[str, Any] = (
        without_written(headers, messaging.written_headers()) if isinstance(headers, Mapping) else {}
    )
    attributes = {semconv.MESSAGING_RABBITMQ_ROUTING_KEY: key} if key else None
    outgoing = current_outgoing()
    kind = event_type(getattr(properties, "type", None), headers, key, exchange)
    try:
        if outgoing is None:
            publication = messaging.publish(
                kind, carrier, setter=TEXT_SETTER, destination=destination, attributes=attributes
            )
        else:
            publication = messaging.publish(
                outgoing.event_type or kind,
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
    sent = copy.copy(properties) if properties is not None else pika.BasicProperties()
    sent.headers = carrier
    publication.__enter__()
    if outgoing is not None:
        outgoing.events.append(publication.event)
    return publication, sent, destination


def _blocking_publish_wrapper(telemetry: PikaTelemetry) -> Callable[..., Any]:
    original = BlockingChannel.basic_publish
    messaging = telemetry.messaging

    def basic_publish(
        self: Any, exchange: Any, routing_key: Any, body: Any, properties: Any = None, mandatory: Any = False
    ) -> Any:
        try:
            state = _blocking_state(telemetry, self)
            confirming = bool(self._delivery_confirmation)  # not OpenTelemetry: BlockingChannel's confirm flag
            state.blocking_confirms = confirming
            if mandatory and not confirming:
                _hook_returns(state, self._impl)  # returned later: counted when it comes back
            publication, sent, destination = _begin(telemetry, exchange, routing_key, properties)
        except Exception:
            internal_error("pika", "starting a send span")
            return original(self, exchange, routing_key, body, properties, mandatory)
        try:
            result = original(self, exchange, routing_key, body, sent, mandatory)
        except pika.exceptions.UnroutableError as exc:
            publication.__exit__(type(exc), exc, exc.__traceback__)
            try:
                messaging.unrouted(publication.event, destination, publication.span.get_span_context())
            except Exception:
                internal_error("pika", "recording an unroutable message")
            raise
        except BaseException as exc:
            publication.__exit__(type(exc), exc, exc.__traceback__)
            raise
        publication.__exit__(None, None, None)
        return result

    return basic_publish


def _select_publish_wrapper(telemetry: PikaTelemetry) -> Callable[..., Any]:
    original = pika.channel.Channel.basic_publish

    def basic_publish(
        self: Any, exchange: Any, routing_key: Any, body: Any, properties: Any = None, mandatory: Any = False
    ) -> Any:
        state: _Channel | None = self.__dict__.get(_STATE)
        if state is not None and state.blocking:  # BlockingChannel.basic_publish has its span
            return original(self, exchange, routing_key, body, properties, mandatory)
        publication = None
        try:
            state = _state(telemetry, self)
            if mandatory:
                _hook_returns(state, self)
            publication, sent, destination = _begin(telemetry, exchange, routing_key, properties)
        except Exception:
            internal_error("pika", "starting a send span")
        if publication is None or state is None:
            result = original(self, exchange, routing_key, body, properties, mandatory)
            if state is not None and state.confirms is not None:
                state.confirms.sent(None, "")
            return result
        try:
            result = original(self, exchange, routing_key, body, sent, mandatory)
        except BaseException as exc:
            publication.__exit__(type(exc), exc, exc.__traceback__)
            raise
        if state.confirms is not None:
            state.confirms.sent(publication.event.event_id, destination)
        publication.__exit__(None, None, None)
        return result

    return basic_publish


def _select_confirm_wrapper(telemetry: PikaTelemetry) -> Callable[..., Any]:
    original = pika.channel.Channel.confirm_delivery

    def confirm_delivery(self: Any, ack_nack_callback: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            state = _state(telemetry, self)
            if not state.blocking and callable(ack_nack_callback):
                confirms = state.confirms = _Confirms()
                ack_nack_callback = _confirmed_wrapper(telemetry, confirms, ack_nack_callback)
        except Exception:
            internal_error("pika", "following publisher confirms")
        return original(self, ack_nack_callback, *args, **kwargs)

    return confirm_delivery


def _confirmed_wrapper(telemetry: PikaTelemetry, confirms: _Confirms, callback: Any) -> Callable[..., Any]:
    def on_confirm(frame: Any) -> Any:
        try:
            method = frame.method
            settled = confirms.confirmed(int(method.delivery_tag), bool(method.multiple))
            if isinstance(method, pika.spec.Basic.Nack):
                for event_id, destination in settled:
                    _log.warning("otel-eda: the broker refused (nack) event %s sent to %s", event_id, destination)
                    telemetry.nacks.add(
                        1,
                        {
                            semconv.MESSAGING_SYSTEM: semconv.MESSAGING_SYSTEM_RABBITMQ,
                            semconv.MESSAGING_DESTINATION_NAME: destination,
                        },
                    )
        except Exception:
            internal_error("pika", "reading a publisher confirm")
        return callback(frame)

    functools.update_wrapper(on_confirm, callback)
    return on_confirm


def _hook_returns(state: _Channel, channel: Any) -> None:
    """Count the messages the broker returns on ``channel`` (once per channel)."""
    if state.returns_hooked:
        return
    state.returns_hooked = True
    messaging = state.telemetry.messaging

    def on_return(_channel: Any, method: Any, properties: Any, body: Any) -> None:
        if state.blocking_confirms:  # BlockingChannel raises UnroutableError: the send span has it
            return
        try:
            destination = producer_destination(method.exchange or "", method.routing_key or "")
            incoming = messaging.extract(_headers(properties), destination=destination, getter=TEXT_GETTER)
            _log.warning(
                "otel-eda: the broker returned event %s sent to %s as unroutable", incoming.event.event_id, destination
            )
            messaging.unrouted(incoming.event, destination, incoming.producer)  # the send span's
        except Exception:
            internal_error("pika", "reading a returned message")

    channel.add_on_return_callback(on_return)


# -- threads --------------------------------------------------------------------------------
def _threadsafe_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    def add_callback_threadsafe(self: Any, callback: Any, *args: Any, **kwargs: Any) -> Any:
        if callable(callback):
            callback = functools.partial(contextvars.copy_context().run, callback)
        return original(self, callback, *args, **kwargs)

    return add_callback_threadsafe


def _blocking_init_wrapper(telemetry: PikaTelemetry) -> Callable[..., Any]:
    original = BlockingChannel.__init__

    def __init__(self: Any, channel_impl: Any, *args: Any, **kwargs: Any) -> None:
        original(self, channel_impl, *args, **kwargs)
        try:
            _state(telemetry, channel_impl).blocking = True
        except Exception:
            internal_error("pika", "marking a blocking channel")

    return __init__


# -- the instrumentor -----------------------------------------------------------------------
_PATCHED: Final = (
    (BlockingChannel, "__init__"),
    (BlockingChannel, "basic_publish"),
    (BlockingChannel, "basic_consume"),
    (BlockingChannel, "consume"),
    (BlockingChannel, "cancel"),
    (BlockingChannel, "close"),
    (BlockingChannel, "basic_get"),
    (BlockingChannel, "basic_ack"),
    (BlockingChannel, "basic_nack"),
    (BlockingChannel, "basic_reject"),
    (pika.channel.Channel, "basic_publish"),
    (pika.channel.Channel, "basic_consume"),
    (pika.channel.Channel, "basic_get"),
    (pika.channel.Channel, "confirm_delivery"),
    (pika.channel.Channel, "basic_ack"),
    (pika.channel.Channel, "basic_nack"),
    (pika.channel.Channel, "basic_reject"),
    (BlockingConnection, "add_callback_threadsafe"),
    (IOLoop, "add_callback_threadsafe"),
)


class PikaInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """otel-eda's pika instrumentation (see the module docstring).

    ``instrument()`` accepts ``tracer_provider``, ``meter_provider``, ``recorders``
    (lifecycle record sinks, e.g. an ``EventStore``) and ``depth_refresh_s`` (default 5).
    """

    _telemetry: PikaTelemetry | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        uninstrument_contrib()
        telemetry = PikaTelemetry(
            tracer_provider=kwargs.get("tracer_provider"),
            meter_provider=kwargs.get("meter_provider"),
            recorders=kwargs.get("recorders", ()),
            depth_refresh_s=kwargs.get("depth_refresh_s"),
        )
        self._telemetry = telemetry
        wrappers: dict[tuple[type, str], Callable[..., Any]] = {
            (BlockingChannel, "__init__"): _blocking_init_wrapper(telemetry),
            (BlockingChannel, "basic_publish"): _blocking_publish_wrapper(telemetry),
            (BlockingChannel, "basic_consume"): _blocking_basic_consume_wrapper(telemetry),
            (BlockingChannel, "consume"): _blocking_consume_wrapper(telemetry),
            (BlockingChannel, "cancel"): _blocking_cancel_wrapper(telemetry),
            (BlockingChannel, "close"): _blocking_close_wrapper(telemetry),
            (BlockingChannel, "basic_get"): _blocking_get_wrapper(telemetry),
            (pika.channel.Channel, "basic_publish"): _select_publish_wrapper(telemetry),
            (pika.channel.Channel, "basic_consume"): _select_consume_wrapper(telemetry),
            (pika.channel.Channel, "basic_get"): _select_get_wrapper(telemetry),
            (pika.channel.Channel, "confirm_delivery"): _select_confirm_wrapper(telemetry),
            (BlockingConnection, "add_callback_threadsafe"): _threadsafe_wrapper(
                BlockingConnection.add_callback_threadsafe
            ),
            (IOLoop, "add_callback_threadsafe"): _threadsafe_wrapper(IOLoop.add_callback_threadsafe),
        }
        for kind in ("ack", "nack", "reject"):
            wrappers[(pika.channel.Channel, f"basic_{kind}")] = _settle_wrapper(telemetry, kind)
            wrappers[(BlockingChannel, f"basic_{kind}")] = _blocking_settle_wrapper(kind)
        for (cls, name), wrapper in wrappers.items():
            _patch(cls, name, wrapper)

    def _uninstrument(self, **kwargs: Any) -> None:
        for cls, name in _PATCHED:
            _unpatch(cls, name)
        if self._telemetry is not None:
            self._telemetry.close()
            self._telemetry = None
