"""``NATSInstrumentor``: otel-eda's drop-in instrumentation of nats-py (core NATS and JetStream).

Registered as the ``otel_eda_nats`` entry point of ``opentelemetry_instrumentor``, so
``opentelemetry-instrument`` loads it when nats-py is installed (``pip install
otel-eda[nats]``); ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_eda_nats`` keeps it out. In
code: ``NATSInstrumentor().instrument(tracer_provider=..., meter_provider=...)``.
``messaging.system`` is ``nats``: the conventions have no well-known value for NATS yet.

What it wraps, on the classes (every connection, made before or after):

* ``Client.publish`` and ``JetStreamContext.publish``: the message's event is a child of the
  event current in the caller (inside a handler: the handled message's event) or starts a
  flow; a PRODUCER span ``send {subject}`` covers the call (for JetStream until the PubAck,
  whose stream and sequence it records: ``eda.nats.stream``, ``eda.nats.stream.sequence``,
  ``eda.nats.duplicate``); identity, trace context and baggage go into the NATS headers (a
  copy of the application's, whose own headers are kept; stale otel-eda and trace headers,
  as ``Msg.respond`` copies them from the request, are replaced). With ``msg_id=True`` (or
  ``OTEL_EDA_NATS_MSG_ID=true``) a JetStream publish without a ``Nats-Msg-Id`` gets the event
  id as one, so JetStream de-duplicates a republished event (:func:`outgoing_event` with
  ``event=``). A reply (a publish to an ``_INBOX.`` subject, as ``Msg.respond`` does) is an
  event of type ``reply`` and destination ``_INBOX``: a child of the request being handled.
* ``Client.subscribe(..., cb=...)`` (and so JetStream push subscriptions): each message's
  callback runs inside a CONSUMER span ``process {subject}`` linked to its producer, with
  its event, span and baggage current; it ends when the callback returns.
* ``Client.request``: the reply, when it carries otel-eda or trace headers, gets a CLIENT
  span ``request {subject}`` (``messaging.operation.type=receive``) linked to the
  responder's send span.
* ``PullSubscription.fetch``: a fetch that returned messages gets one CLIENT span
  ``fetch {subject}`` (``fetch`` across subjects) made after the call returns, with one link
  per message (a fetch that times out empty gets none); iterating the returned list hands
  each message over (so do unpacking and indexing) with its process span current until its
  ack/nak/term, the next message handed over, the next fetch, ``unsubscribe`` or
  ``OTEL_EDA_PROCESS_SPAN_MAX_S``. ``Subscription.next_msg``
  and ``async for msg in sub.messages`` hand over the same way.
* ``Msg.ack`` / ``ack_sync`` (completed), ``nak`` (retried; dead-lettered on the consumer's
  last delivery, ``MaxDeliver``), ``term`` (rejected), ``in_progress`` (counted on the span,
  ``eda.nats.in_progress``): the outcome of the handling; inside a callback or
  :func:`processing` it settles when the block ends, in a pull loop at once. A callback that
  raises on a JetStream message it did not settle is recorded as retried (JetStream
  redelivers it after ``AckWait``), or dead-lettered on its last delivery.

A JetStream message's ``metadata.num_delivered`` is its ``eda.delivery.attempt``; its
consumer is ``messaging.consumer.group.name`` (a core queue subscription: the queue).
Subjects of the server's own APIs (``$JS.``, ``$SYS.``) and of key-value and object stores
(``$KV.``, ``$O.``) are left alone: they are no application events.
Nothing here raises into the application: an internal failure is logged and counted, and
the client's call goes ahead uninstrumented.
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

import nats.aio.client
import nats.aio.msg
import nats.aio.subscription
import nats.js.client
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from otel_eda import semconv
from otel_eda._selfmetrics import count_invalid, internal_error
from otel_eda.identity import EventContext
from otel_eda.identity.validation import valid_type
from otel_eda.messaging import (
    TEXT_GETTER,
    TEXT_SETTER,
    Incoming,
    Outcome,
    Processing,
    PullTracker,
    Rejected,
    error_type,
)
from otel_eda.messaging.carriers import without_written
from otel_eda.transports.nats.telemetry import NatsTelemetry
from otel_eda.transports.patching import patch as _patch
from otel_eda.transports.patching import unpatch as _unpatch

__all__ = ["NATSInstrumentor", "Outgoing", "outgoing_event", "processing"]

_log = logging.getLogger(__name__)
_INSTRUMENTS: Final = ("nats-py >= 2.6, < 3",)
_MSG_ID_HEADER: Final = "Nats-Msg-Id"
_CE_TYPE: Final = "ce-type"
_JS_ACK_PREFIX: Final = "$JS.ACK."
#: subjects of the server's and JetStream's own APIs, key-value and object stores: never
#: application events (and a key-value key would make every key a metric attribute)
_SYSTEM_PREFIXES: Final = ("$JS.", "$SYS.", "$KV.", "$O.")
_INBOX_PREFIX: Final = "_INBOX."
_REPLY_DESTINATION: Final = "_INBOX"
_REPLY_TYPE: Final = "reply"
#: the event type of a message whose subject is no valid event type (``orders+eu``, say)
_FALLBACK_TYPE: Final = "nats"
#: the event type of each subject published to (bounded: past it, each publish checks again)
_SUBJECT_TYPES: dict[str, str] = {}
_MAX_SUBJECT_TYPES: Final = 4096
#: header names whose presence on a reply means it came from an instrumented responder
_TELLING_HEADERS: Final = ("eda-event-id", "traceparent", "ce-id")

_Msg = nats.aio.msg.Msg
_Client = nats.aio.client.Client
_Subscription = nats.aio.subscription.Subscription
_MessageIterator = nats.aio.subscription._SubscriptionMessageIterator  # not OpenTelemetry: nats-py's
_JetStream = nats.js.client.JetStreamContext


class Outgoing:
    """The event options of the publishes inside :func:`outgoing_event`, and the events they published."""

    __slots__ = ("business_key", "event", "event_type", "events", "metadata")

    def __init__(
        self,
        event_type: str | None,
        business_key: str | None,
        metadata: Mapping[str, str] | None,
        event: EventContext | None,
    ) -> None:
        self.event_type = event_type
        self.business_key = business_key
        self.metadata = metadata
        self.event = event
        #: the event of each message published inside the block, in order
        self.events: list[EventContext] = []


_OUTGOING: ContextVar[Outgoing | None] = ContextVar("otel_eda_nats_outgoing", default=None)
#: set inside an instrumented call: the client calls it makes (a JetStream publish's request,
#: an ack's publish, a fetch's next_msg) are its own work, not the application's
_INTERNAL: ContextVar[bool] = ContextVar("otel_eda_nats_internal", default=False)


@contextmanager
def outgoing_event(
    *,
    event_type: str | None = None,
    business_key: str | None = None,
    metadata: Mapping[str, str] | None = None,
    event: EventContext | None = None,
) -> Iterator[Outgoing]:
    """Give the messages published inside the block an event type (default: the subject, or
    the application's ``ce-type`` header), a business key and metadata; ``.events`` has their
    events. ``event=`` publishes that very event again (same id: with ``msg_id=True``
    JetStream de-duplicates it)::

        with outgoing_event(event_type="order_placed", business_key="order-7") as out:
            await js.publish("orders.placed", payload)
        out.events[0].event_id

    An invalid value is not used (the message is still published, as a ``nats`` event),
    logged and counted like any invalid input.
    """
    outgoing = Outgoing(event_type, business_key, metadata, event)
    token = _OUTGOING.set(outgoing)
    try:
        yield outgoing
    finally:
        _OUTGOING.reset(token)


# -- handlings ------------------------------------------------------------------------------
class _Handling:
    """The handling of one delivered message: its process span and the outcome its settle calls chose."""

    __slots__ = ("decided", "exact", "in_progress", "msg", "processing")

    def __init__(self, msg: Any, processing: Processing, exact: bool) -> None:
        self.msg = msg
        self.processing = processing
        #: inside a callback or processing(): a settle call decides, the block's end settles
        self.exact = exact
        self.decided: Outcome | None = None
        self.in_progress = 0


#: The handling of each message currently handed out, by ``id(msg)``.
_handlings: dict[int, _Handling] = {}


def _lookup(msg: Any) -> _Handling | None:
    handling = _handlings.get(id(msg))
    return handling if handling is not None and handling.msg is msg else None


def _forget(msg: Any) -> None:
    handling = _handlings.get(id(msg))
    if handling is not None and handling.msg is msg:
        del _handlings[id(msg)]


def _metadata(msg: Any) -> Any:
    """A JetStream message's metadata (stream, consumer, num_delivered, ...), else ``None``."""
    reply = msg.reply
    if not reply or not reply.startswith(_JS_ACK_PREFIX):
        return None
    try:
        return msg.metadata
    except Exception:
        count_invalid("nats_reply", "not_jetstream_metadata")
        return None


def _headers(msg: Any) -> Any:
    headers = msg.headers
    return headers if headers is not None else {}


def _js_attributes(meta: Any) -> dict[str, Any]:
    return {semconv.EDA_NATS_STREAM: meta.stream, semconv.EDA_NATS_STREAM_SEQUENCE: meta.sequence.stream}


def _retry_outcome(telemetry: NatsTelemetry, msg: Any) -> Outcome:
    """A failed or nak'ed JetStream delivery: retried, or dead-lettered if it was the consumer's last."""
    meta = _metadata(msg)
    if meta is not None:
        snapshot = telemetry.pending.snapshot(meta.stream, meta.consumer)
        max_deliver = snapshot.max_deliver if snapshot is not None else None
        if max_deliver is not None and max_deliver > 0 and meta.num_delivered >= max_deliver:
            return Outcome.DEAD_LETTERED
    return Outcome.RETRIED


def _finish(telemetry: NatsTelemetry, handling: _Handling, exc: BaseException | None) -> None:
    """Settle a handling at the end of its callback or ``processing`` block (never raises)."""
    try:
        _forget(handling.msg)
        processing = handling.processing
        processing.detach()
        decided = handling.decided
        if exc is None:
            processing.settle(decided or Outcome.COMPLETED)
        elif isinstance(exc, Rejected):
            processing.settle(Outcome.REJECTED, exc)
        elif decided in (Outcome.RETRIED, Outcome.DEAD_LETTERED, Outcome.REJECTED):
            processing.settle(decided, exc)
        elif decided is None and _metadata(handling.msg) is not None:
            processing.settle(_retry_outcome(telemetry, handling.msg), exc)
        else:
            processing.settle(Outcome.FAILED, exc)
    except Exception:
        internal_error("nats", "settling a message's handling")


@contextmanager
def processing(msg: Any) -> Iterator[None]:
    """Exact bounds for the handling of ``msg`` (from ``fetch``, ``next_msg`` or ``sub.messages``).

    Its process span ends when the block ends, with the outcome an ``ack`` / ``nak`` /
    ``term`` inside chose, failed with the exception if one escapes (re-raised). Inside a
    callback, or outside otel-eda's instrumentation, it does nothing::

        for msg in await psub.fetch(10):
            with processing(msg):
                await handle(msg)
                await msg.ack()
    """
    handling = _lookup(msg)
    if handling is None or handling.exact or _telemetry is None:
        yield
        return
    telemetry = _telemetry
    handling.exact = True
    try:
        yield
    except BaseException as exc:
        _finish(telemetry, handling, exc)
        raise
    _finish(telemetry, handling, None)


class _ConsumerState:
    """One pull consumer's (a pull subscription, or a subscription read with next_msg) tracker."""

    __slots__ = ("__weakref__", "current", "polled", "telemetry", "tracker")

    def __init__(self, telemetry: NatsTelemetry) -> None:
        self.telemetry = telemetry
        self.current: Any = None
        self.tracker: PullTracker[Any] | None = None
        #: the Incoming of each message of the last fetch, by id(msg): extracted once for the
        #: fetch span's links, handed to the message's process span
        self.polled: dict[int, Incoming] = {}

    def _tracker(self, msg: Any, group: str | None) -> PullTracker[Any]:
        tracker = self.tracker
        if tracker is None:
            meta = _metadata(msg)
            polled = self.polled

            def attempt(message: Any) -> int:
                meta = _metadata(message)
                return int(meta.num_delivered) if meta is not None else 1

            def attributes(message: Any) -> dict[str, Any] | None:
                meta = _metadata(message)
                return _js_attributes(meta) if meta is not None else None

            tracker = self.tracker = PullTracker(
                self.telemetry.messaging,
                destination=lambda message: message.subject,
                carrier=lambda message: polled.pop(id(message), None) or _headers(message),
                getter=TEXT_GETTER,
                consumer_group=meta.consumer if meta is not None else group,
                attributes=attributes,  # type: ignore[arg-type]
                attempt=attempt,
            )
        return tracker

    def hand_over(self, msg: Any, group: str | None) -> None:
        """Start ``msg``'s process span (ending the previous one) and make it current in the caller."""
        if msg.subject.startswith(_SYSTEM_PREFIXES):
            return
        try:
            self._forget_current()
            handling = self._tracker(msg, group).start(msg)
            self.current = msg
            _handlings[id(msg)] = _Handling(msg, handling, exact=False)
        except Exception:
            internal_error("nats", "starting a message's process span")

    def end_current(self) -> None:
        """End the handed-out message's process span (next fetch, next_msg, unsubscribe)."""
        self._forget_current()
        if self.tracker is not None:
            try:
                self.tracker.end_current()
            except Exception:
                internal_error("nats", "ending a message's process span")

    def _forget_current(self) -> None:
        current, self.current = self.current, None
        if current is not None:
            _forget(current)


class _FetchedMessages(list):  # type: ignore[type-arg]
    """A ``fetch`` result whose iteration makes each message current while its body runs."""

    __slots__ = ("_group", "_state")

    def __init__(self, msgs: list[Any], state: _ConsumerState, group: str | None) -> None:
        super().__init__(msgs)
        self._state = state
        self._group = group

    def __reduce__(self) -> tuple[Any, ...]:  # pickled or copied: a plain list of the messages
        return (list, (list(list.__iter__(self)),))

    def __iter__(self) -> Iterator[Any]:
        # the last message stays current after the loop until its ack/nak/term (the usual end of
        # a JetStream handling), the next fetch, unsubscribe or the maximum: so that unpacking,
        # ``(msg,) = await psub.fetch(1)``, hands the message over too
        for msg in list.__iter__(self):
            self._state.hand_over(msg, self._group)
            yield msg

    def __getitem__(self, index: Any) -> Any:
        item = list.__getitem__(self, index)
        if isinstance(index, int) and self._state.current is not item:
            self._state.hand_over(item, self._group)  # msgs[0] hands the message over
        return item


#: The instrumentation in effect (``processing()`` and the settle wrappers read it).
_telemetry: NatsTelemetry | None = None


class NATSInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """otel-eda's nats-py instrumentation (see the module docstring).

    ``instrument()`` accepts ``tracer_provider``, ``meter_provider``, ``recorders`` (lifecycle
    record sinks, e.g. an ``EventStore``), ``msg_id`` (default ``OTEL_EDA_NATS_MSG_ID``,
    false) and ``pending_refresh_s`` (seconds between two consumer-info requests of a
    JetStream consumer, default 1).
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        global _telemetry
        msg_id = kwargs.get("msg_id")
        telemetry = NatsTelemetry(
            tracer_provider=kwargs.get("tracer_provider"),
            meter_provider=kwargs.get("meter_provider"),
            recorders=kwargs.get("recorders", ()),
            msg_id=msg_id,
            pending_refresh_s=kwargs.get("pending_refresh_s"),
        )
        _telemetry = telemetry
        states: weakref.WeakKeyDictionary[Any, _ConsumerState] = weakref.WeakKeyDictionary()
        _patch(_Client, "publish", _publish_wrapper(telemetry))
        _patch(_Client, "request", _request_wrapper(telemetry))
        _patch(_Client, "subscribe", _subscribe_wrapper(telemetry))
        _patch(_Subscription, "next_msg", _next_msg_wrapper(telemetry, states))
        _patch(_Subscription, "unsubscribe", _unsubscribe_wrapper(telemetry, states, _Subscription.unsubscribe))
        _patch(_MessageIterator, "__anext__", _anext_wrapper(telemetry, states))
        for name, decide in _SETTLES.items():
            _patch(_Msg, name, _settle_wrapper(telemetry, name, decide))
        _patch(_JetStream, "publish", _js_publish_wrapper(telemetry))
        _patch(_JetStream, "subscribe_bind", _bind_wrapper(telemetry, _JetStream.subscribe_bind, push=True))
        _patch(_JetStream, "pull_subscribe_bind", _bind_wrapper(telemetry, _JetStream.pull_subscribe_bind, push=False))
        pull = _JetStream.PullSubscription
        _patch(pull, "fetch", _fetch_wrapper(telemetry, states))
        _patch(pull, "unsubscribe", _unsubscribe_wrapper(telemetry, states, pull.unsubscribe))

    def _uninstrument(self, **kwargs: Any) -> None:
        global _telemetry
        for cls, names in (
            (_Client, ("publish", "request", "subscribe")),
            (_Subscription, ("next_msg", "unsubscribe")),
            (_MessageIterator, ("__anext__",)),
            (_Msg, tuple(_SETTLES)),
            (_JetStream, ("publish", "subscribe_bind", "pull_subscribe_bind")),
            (_JetStream.PullSubscription, ("fetch", "unsubscribe")),
        ):
            for name in names:
                _unpatch(cls, name)
        if _telemetry is not None:
            _telemetry.close()
            _telemetry = None
        _handlings.clear()


# -- patching -------------------------------------------------------------------------------


# -- publishing -----------------------------------------------------------------------------
def _carrier(telemetry: NatsTelemetry, headers: Any) -> dict[str, Any]:
    """A copy of the application's headers without the ones a publish writes (``Msg.respond``
    copies the request's)."""
    return without_written(headers, telemetry.messaging.written_headers()) if headers else {}


def _event_type(subject: str, headers: Any) -> str:
    """A message's event type: the application's ``ce-type`` header, else its subject (``nats``
    for a subject that is no valid event type, ``reply`` for a reply)."""
    if subject.startswith(_INBOX_PREFIX):
        return _REPLY_TYPE
    if headers:
        found = TEXT_GETTER.get(headers, _CE_TYPE)
        if found and valid_type(found[0]):
            return found[0]
    known = _SUBJECT_TYPES.get(subject)
    if known is None:
        known = subject if valid_type(subject) else _FALLBACK_TYPE
        if len(_SUBJECT_TYPES) < _MAX_SUBJECT_TYPES:
            _SUBJECT_TYPES[subject] = known
    return known


def _publication(telemetry: NatsTelemetry, subject: str, carrier: dict[str, Any], headers: Any) -> Any:
    """Start the PRODUCER span of one publish and inject the identity into ``carrier``."""
    messaging = telemetry.messaging
    destination = _REPLY_DESTINATION if subject.startswith(_INBOX_PREFIX) else subject
    outgoing = _OUTGOING.get()
    try:
        if outgoing is None:
            publication = messaging.publish(
                _event_type(subject, headers), carrier, setter=TEXT_SETTER, destination=destination
            )
        else:
            publication = messaging.publish(
                outgoing.event_type or _event_type(subject, headers),
                carrier,
                setter=TEXT_SETTER,
                destination=destination,
                business_key=outgoing.business_key,
                metadata=outgoing.metadata,
                event=outgoing.event,
            )
    except ValueError as invalid:  # an event type, business key or metadata that is not valid
        count_invalid("publish", "invalid_event")
        _log.warning("otel-eda: a NATS message to %s is published as a plain nats event: %s", destination, invalid)
        publication = messaging.publish(_FALLBACK_TYPE, carrier, setter=TEXT_SETTER, destination=destination)
    publication.__enter__()
    if outgoing is not None:
        outgoing.events.append(publication.event)
    return publication


def _publish_wrapper(telemetry: NatsTelemetry) -> Callable[..., Any]:
    original = _Client.publish

    async def publish(self: Any, subject: str, payload: bytes = b"", reply: str = "", headers: Any = None) -> None:
        if _INTERNAL.get() or not isinstance(subject, str) or subject.startswith(_SYSTEM_PREFIXES):
            return await original(self, subject, payload, reply, headers)
        try:
            carrier = _carrier(telemetry, headers)
            publication = _publication(telemetry, subject, carrier, headers)
        except Exception:
            internal_error("nats", "starting a publish span")
            return await original(self, subject, payload, reply, headers)
        try:
            await original(self, subject, payload, reply, carrier)
        except BaseException as exc:
            publication.__exit__(type(exc), exc, exc.__traceback__)
            raise
        publication.__exit__(None, None, None)
        return None

    return publish


def _js_publish_wrapper(telemetry: NatsTelemetry) -> Callable[..., Any]:
    original = _JetStream.publish

    async def publish(
        self: Any,
        subject: str,
        payload: bytes = b"",
        timeout: float | None = None,
        stream: str | None = None,
        headers: Any = None,
        **kwargs: Any,
    ) -> Any:
        if _INTERNAL.get() or not isinstance(subject, str) or subject.startswith(_SYSTEM_PREFIXES):
            return await original(self, subject, payload, timeout, stream, headers, **kwargs)
        try:
            carrier = _carrier(telemetry, headers)
            publication = _publication(telemetry, subject, carrier, headers)
            if telemetry.msg_id and _MSG_ID_HEADER not in carrier:
                carrier[_MSG_ID_HEADER] = publication.event.event_id
        except Exception:
            internal_error("nats", "starting a JetStream publish span")
            return await original(self, subject, payload, timeout, stream, headers, **kwargs)
        token = _INTERNAL.set(True)
        try:
            ack = await original(self, subject, payload, timeout, stream, carrier, **kwargs)
        except BaseException as exc:
            _INTERNAL.reset(token)
            publication.__exit__(type(exc), exc, exc.__traceback__)
            raise
        _INTERNAL.reset(token)
        try:
            span = publication.span
            if span.is_recording():
                span.set_attribute(semconv.EDA_NATS_STREAM, ack.stream)
                span.set_attribute(semconv.EDA_NATS_STREAM_SEQUENCE, ack.seq)
                if ack.duplicate:
                    span.set_attribute(semconv.EDA_NATS_DUPLICATE, True)
        except Exception:
            internal_error("nats", "recording a PubAck")
        publication.__exit__(None, None, None)
        return ack

    return publish


def _request_wrapper(telemetry: NatsTelemetry) -> Callable[..., Any]:
    original = _Client.request
    messaging = telemetry.messaging

    async def request(
        self: Any,
        subject: str,
        payload: bytes = b"",
        timeout: float = 0.5,
        old_style: bool = False,
        headers: Any = None,
    ) -> Any:
        if _INTERNAL.get() or not isinstance(subject, str) or subject.startswith(_SYSTEM_PREFIXES):
            return await original(self, subject, payload, timeout, old_style, headers)
        start_ns = time.time_ns()
        reply = await original(self, subject, payload, timeout, old_style, headers)  # the publish is instrumented
        try:
            found = reply.headers
            if found and any(name in found for name in _TELLING_HEADERS):
                incoming = messaging.extract(found, destination=subject, getter=TEXT_GETTER)
                messaging.received([incoming], start_ns=start_ns, destination=subject, operation_name="request")
        except Exception:
            internal_error("nats", "recording a reply")
        return reply

    return request


# -- consuming ------------------------------------------------------------------------------
def _is_internal_callback(cb: Any) -> bool:
    """The client's own response handlers (requests, asynchronous JetStream publishes)."""
    func = getattr(cb, "__func__", None)
    return func is not None and func in (
        _Client.__dict__.get("_request_sub_callback"),
        _JetStream.__dict__.get("_handle_async_reply"),
    )


def _begin(telemetry: NatsTelemetry, msg: Any, queue: str | None) -> _Handling:
    meta = _metadata(msg)
    handling = telemetry.messaging.process(
        _headers(msg),
        destination=msg.subject,
        getter=TEXT_GETTER,
        consumer_group=meta.consumer if meta is not None else queue,
        attempt=int(meta.num_delivered) if meta is not None else 1,
        attributes=_js_attributes(meta) if meta is not None else None,
    )
    found = _Handling(msg, handling, exact=True)
    _handlings[id(msg)] = found
    return found


def _push_handler(telemetry: NatsTelemetry, cb: Callable[[Any], Any], queue: str | None) -> Callable[[Any], Any]:
    async def handler(msg: Any) -> None:
        if msg.subject.startswith(_SYSTEM_PREFIXES):  # a key-value watcher's updates, say
            await cb(msg)
            return
        try:
            handling = _begin(telemetry, msg, queue)
        except Exception:
            internal_error("nats", "starting a message's process span")
            await cb(msg)
            return
        handling.processing.attach()
        try:
            await cb(msg)
        except BaseException as exc:
            _finish(telemetry, handling, exc)
            raise
        _finish(telemetry, handling, None)

    functools.update_wrapper(handler, cb)
    return handler


def _subscribe_wrapper(telemetry: NatsTelemetry) -> Callable[..., Any]:
    original = _Client.subscribe

    async def subscribe(self: Any, subject: str, queue: str = "", cb: Any = None, *args: Any, **kwargs: Any) -> Any:
        if cb is not None and not _is_internal_callback(cb):
            try:
                cb = _push_handler(telemetry, cb, queue or None)
            except Exception:
                internal_error("nats", "wrapping a subscription's callback")
        return await original(self, subject, queue, cb, *args, **kwargs)

    return subscribe


def _state(
    telemetry: NatsTelemetry, states: weakref.WeakKeyDictionary[Any, _ConsumerState], sub: Any
) -> _ConsumerState:
    state = states.get(sub)
    if state is None:
        state = states[sub] = _ConsumerState(telemetry)
    return state


def _next_msg_wrapper(
    telemetry: NatsTelemetry, states: weakref.WeakKeyDictionary[Any, _ConsumerState]
) -> Callable[..., Any]:
    original = _Subscription.next_msg

    async def next_msg(self: Any, timeout: float | None = 1.0) -> Any:
        if _INTERNAL.get():
            return await original(self, timeout)
        state = _state(telemetry, states, self)
        state.end_current()
        msg = await original(self, timeout)
        state.hand_over(msg, self.queue or None)
        return msg

    return next_msg


def _anext_wrapper(
    telemetry: NatsTelemetry, states: weakref.WeakKeyDictionary[Any, _ConsumerState]
) -> Callable[..., Any]:
    original = _MessageIterator.__anext__

    async def anext_(self: Any) -> Any:
        sub = self._sub  # not OpenTelemetry: nats-py's iterator of sub.messages
        state = _state(telemetry, states, sub)
        state.end_current()
        msg = await original(self)
        state.hand_over(msg, sub.queue or None)
        return msg

    return anext_


def _unsubscribe_wrapper(
    telemetry: NatsTelemetry,
    states: weakref.WeakKeyDictionary[Any, _ConsumerState],
    original: Callable[..., Any],
) -> Callable[..., Any]:
    async def unsubscribe(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            for sub in (self, getattr(self, "_sub", None)):  # not OpenTelemetry: a JetStream subscription's own
                state = states.pop(sub, None) if sub is not None else None
                if state is not None:
                    state.end_current()
                    state.polled.clear()
            telemetry.pending.untrack(self)
        except Exception:
            internal_error("nats", "ending a subscription's telemetry")
        return await original(self, *args, **kwargs)

    return unsubscribe


def _fetch_wrapper(
    telemetry: NatsTelemetry, states: weakref.WeakKeyDictionary[Any, _ConsumerState]
) -> Callable[..., Any]:
    original = _JetStream.PullSubscription.fetch
    messaging = telemetry.messaging

    async def fetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _INTERNAL.get():
            return await original(self, *args, **kwargs)
        state = _state(telemetry, states, self)
        state.end_current()
        start_ns = time.time_ns()
        token = _INTERNAL.set(True)
        try:
            msgs = await original(self, *args, **kwargs)
        finally:
            _INTERNAL.reset(token)
        if not msgs or msgs[0].subject.startswith(_SYSTEM_PREFIXES):
            return msgs
        try:
            consumer = getattr(self, "_consumer", None)  # not OpenTelemetry: nats-py has no public accessor
            stream = getattr(self, "_stream", None)  # not OpenTelemetry: nats-py has no public accessor
            polled = state.polled
            polled.clear()  # messages of an earlier fetch never iterated
            incoming = []
            for msg in msgs:
                message = messaging.extract(_headers(msg), destination=msg.subject, getter=TEXT_GETTER)
                polled[id(msg)] = message
                incoming.append(message)
            subjects = {msg.subject for msg in msgs}
            messaging.received(
                incoming,
                start_ns=start_ns,
                destination=next(iter(subjects)) if len(subjects) == 1 else None,
                operation_name="fetch",
                consumer_group=consumer if isinstance(consumer, str) else None,
                attributes={semconv.EDA_NATS_STREAM: stream} if isinstance(stream, str) else None,
            )
            return _FetchedMessages(msgs, state, consumer if isinstance(consumer, str) else None)
        except Exception:
            internal_error("nats", "instrumenting a fetch result")
            return msgs

    return fetch


def _bind_wrapper(telemetry: NatsTelemetry, original: Callable[..., Any], *, push: bool) -> Callable[..., Any]:
    """``subscribe_bind`` / ``pull_subscribe_bind``: start the consumer's pending gauges."""

    async def bind(self: Any, *args: Any, **kwargs: Any) -> Any:
        subscription = await original(self, *args, **kwargs)
        try:
            stream = getattr(subscription, "_stream", None)  # not OpenTelemetry: nats-py has no public accessor
            consumer = getattr(subscription, "_consumer", None)  # not OpenTelemetry: nats-py has no public accessor
            if isinstance(stream, str) and isinstance(consumer, str):
                config = kwargs.get("config") if push else None
                max_deliver = getattr(config, "max_deliver", None)
                telemetry.pending.track(
                    subscription, stream, consumer, max_deliver if isinstance(max_deliver, int) else None
                )
        except Exception:
            internal_error("nats", "tracking a JetStream consumer")
        return subscription

    return bind


# -- settling -------------------------------------------------------------------------------
def _decide(telemetry: NatsTelemetry, handling: _Handling, outcome: Outcome) -> None:
    if handling.exact:
        handling.decided = outcome
        return
    _forget(handling.msg)  # a pull loop: the settle call ends the handling
    handling.processing.detach()
    handling.processing.settle(outcome)


def _completed(telemetry: NatsTelemetry, handling: _Handling) -> None:
    _decide(telemetry, handling, Outcome.COMPLETED)


def _nak(telemetry: NatsTelemetry, handling: _Handling) -> None:
    _decide(telemetry, handling, _retry_outcome(telemetry, handling.msg))


def _term(telemetry: NatsTelemetry, handling: _Handling) -> None:
    _decide(telemetry, handling, Outcome.REJECTED)


def _in_progress(telemetry: NatsTelemetry, handling: _Handling) -> None:
    handling.in_progress += 1
    handling.processing.span.set_attribute(semconv.EDA_NATS_IN_PROGRESS, handling.in_progress)


_SETTLES: Final[dict[str, Callable[[NatsTelemetry, _Handling], None]]] = {
    "ack": _completed,
    "ack_sync": _completed,
    "nak": _nak,
    "term": _term,
    "in_progress": _in_progress,
}


def _settle_wrapper(
    telemetry: NatsTelemetry, name: str, decide: Callable[[NatsTelemetry, _Handling], None]
) -> Callable[..., Any]:
    original = _Msg.__dict__[name]
    messaging = telemetry.messaging
    settle_spans = messaging.settings.settle_spans

    async def settle(self: Any, *args: Any, **kwargs: Any) -> Any:
        span = None
        if settle_spans:
            try:
                span = messaging.settle_span(self.subject, name)
            except Exception:
                internal_error("nats", "starting a settle span")
        token = _INTERNAL.set(True)
        try:
            result = await original(self, *args, **kwargs)
        except BaseException as exc:
            if span is not None:
                span.set_attribute(semconv.ERROR_TYPE, error_type(exc))
                span.end()
            raise
        finally:
            _INTERNAL.reset(token)
        if span is not None:
            span.end()
        try:
            handling = _lookup(self)
            if handling is not None:
                decide(telemetry, handling)
        except Exception:
            internal_error("nats", "recording a settle call")
        return result

    return settle
