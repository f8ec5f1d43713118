"""The embedded, in-process asyncio event bus: otel-eda's default transport.

>>> import asyncio
>>> async def main() -> list[str]:
...     seen: list[str] = []
...     async with EventBus(service="shop") as bus:
...         async def charge(delivery: Delivery) -> None:
...             seen.append(delivery.event.event_type)
...             await delivery.emit("payment_authorized", {"amount": 42})
...         bus.subscribe("order_placed", charge, subscriber="payment")
...         await bus.publish("order_placed", {"order": 1}, business_key="order-1")
...         await bus.join()
...         flow = bus.store.flow(bus.store.find("order-1")[0])
...     return seen + [e.event_type for e in flow]
>>> asyncio.run(main())
['order_placed', 'order_placed', 'payment_authorized']

Behaviour, all of it observable in spans, metrics and lifecycle records:

* several subscribers per event type, each with its own bounded queue and worker;
* ``publish`` waits up to ``publish_timeout_s`` for room in a full queue, then raises
  :class:`BusFull` (after delivering to every subscriber that had room) and counts the
  drop in ``eda.bus.dropped``;
* an event with no subscriber is counted in ``eda.bus.unrouted`` and logged at DEBUG;
* a handler that raises is retried per its :class:`RetryPolicy` (each attempt its own
  CONSUMER span with ``eda.delivery.attempt``); after the last attempt the event is
  dead-lettered: counted, recorded, kept in :attr:`EventBus.dead_letters` (bounded) and
  passed to dead-letter handlers. A handler that raises :class:`Rejected` is not retried
  and not dead-lettered: the event is recorded as failed;
* queue depth is the observable instrument ``eda.bus.queue.depth``.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import functools
import inspect
import itertools
import logging
import time
import types
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation

from otel_eda import semconv
from otel_eda._selfmetrics import internal_error
from otel_eda.flows.records import Recorder
from otel_eda.flows.store import EventStore
from otel_eda.identity import EventContext
from otel_eda.identity.validation import type_problem
from otel_eda.messaging import (
    Incoming,
    Messaging,
    Outcome,
    Processing,
    Rejected,
    error_message,
    error_type,
    service_name,
)
from otel_eda.settings import Settings, TraceMode, sdk_disabled
from otel_eda.version import VERSION

__all__ = [
    "BusFull",
    "DeadLetter",
    "Delivery",
    "EventBus",
    "Handler",
    "Outlet",
    "Rejected",
    "RetryPolicy",
    "Unsendable",
    "WireMessage",
    "report_unhandled",
]

_log = logging.getLogger(__name__)
_Coroutine: Final = types.CoroutineType
DEAD_LETTERS_KEPT: Final = 1000
# Enum members as module constants (on Python 3.11 ``Outcome.X`` is a descriptor call)
_COMPLETED: Final = Outcome.COMPLETED
_FAILED: Final = Outcome.FAILED
_REJECTED: Final = Outcome.REJECTED
_RETRIED: Final = Outcome.RETRIED
_DEAD_LETTERED: Final = Outcome.DEAD_LETTERED
_NO_AMBIENT_SPAN: Final = Context()


class Unsendable(TypeError):
    """An outlet cannot send this message at all (its payload cannot be serialised).

    ``publish`` raises it, after delivering to the local subscribers; the miss is counted
    in ``eda.bus.dropped`` and recorded as ``dropped`` for that outlet.
    """


class BusFull(Exception):
    """``publish`` waited ``publish_timeout_s`` and some subscriber queue stayed full.

    The event was delivered to every subscriber not listed in ``missed``; each drop
    is counted in ``eda.bus.dropped`` and recorded as ``dropped``.
    """

    def __init__(self, event: EventContext, missed: Sequence[str]):
        super().__init__(f"event {event.event_type} dropped for subscribers {', '.join(missed)}: queue full")
        self.event = event
        self.missed = tuple(missed)


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a failing handler is tried, and how long to wait between attempts.

    >>> RetryPolicy(max_attempts=4, initial_backoff_s=0.1).backoff(3)
    0.4
    """

    max_attempts: int = 3
    initial_backoff_s: float = 0.01
    multiplier: float = 2.0
    max_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff_s < 0 or self.multiplier < 1 or self.max_backoff_s < 0:
            raise ValueError("backoff values must be non-negative and the multiplier at least 1")

    def backoff(self, failed_attempt: int) -> float:
        """Seconds to wait after attempt number ``failed_attempt`` (1-based) failed."""
        return min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (failed_attempt - 1))


@dataclasses.dataclass(slots=True)
class WireMessage:
    """A message as a transport carries it: a destination, string headers and a payload.

    ``local``: on a message published in this process, what its local subscribers get
    instead of extracting the headers (see ``Publication.local``); never pickled, so a
    message that crosses to another process is read from its headers there.
    """

    destination: str
    headers: dict[str, str]
    payload: Any
    enqueued_ns: int = 0
    local: Incoming | None = dataclasses.field(default=None, compare=False, repr=False)

    def __reduce__(self) -> tuple[type[WireMessage], tuple[Any, ...]]:
        return (WireMessage, (self.destination, self.headers, self.payload, self.enqueued_ns))


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event every attempt of a subscriber failed on (picklable when its payload is).

    ``error_message`` is the last exception's message under the redaction policy (``None``
    with ``OTEL_EDA_EXCEPTION_DETAIL=type``); the ``repr`` names the payload's type only.
    """

    event: EventContext
    payload: Any
    subscriber: str
    attempts: int
    error_type: str
    error_message: str | None = None

    def __repr__(self) -> str:
        return (
            f"DeadLetter(event={self.event.event_type} {self.event.event_id}, payload=<{type(self.payload).__name__}>, "
            f"subscriber={self.subscriber!r}, attempts={self.attempts}, error_type={self.error_type!r}, "
            f"error_message={self.error_message!r})"
        )


class Outlet(Protocol):
    """Forwards messages of some event types to another process (see ``interprocess``)."""

    name: str

    async def send(self, message: WireMessage) -> bool:
        """Forward ``message``; ``False`` when the other side stayed full past a timeout."""
        ...


class Delivery:
    """What a handler receives: the event (its metadata in ``event.metadata``), its
    payload, the attempt number, and ways to act within its flow."""

    __slots__ = ("_bus", "_processing", "attempt", "event", "payload", "subscriber")

    def __init__(self, bus: EventBus, processing: Processing, payload: Any, subscriber: str) -> None:
        self._bus = bus
        self._processing = processing
        self.event: EventContext = processing.event
        self.payload = payload
        self.attempt = processing.attempt
        self.subscriber = subscriber

    async def emit(
        self,
        event_type: str,
        payload: Any = None,
        *,
        business_key: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> EventContext:
        """Publish an event caused by this one (same correlation id, causation = this id)."""
        return await self._bus.publish(
            event_type, payload, business_key=business_key, metadata=metadata, cause=self.event
        )

    def set_business_key(self, key: str) -> bool:
        """Attach a business key (an order number, say) to this event and its descendants.

        It is set as ``eda.business_key`` on the span and indexed by the store
        (``EventStore.find``). An invalid key is ignored, logged and counted; returns
        whether the key was attached.
        """
        attached = self._processing.set_business_key(key)
        self.event = self._processing.event
        return attached


Handler = Callable[[Delivery], Awaitable[None] | None]
DeadLetterHandler = Callable[[DeadLetter], Awaitable[None] | None]


class _Subscription:
    __slots__ = ("event_type", "handler", "name", "queue", "retry", "sole", "task")

    def __init__(self, event_type: str, name: str, handler: Handler, retry: RetryPolicy, size: int):
        self.event_type = event_type
        self.name = name
        self.handler = handler
        self.retry = retry
        self.queue: asyncio.Queue[WireMessage] = asyncio.Queue(size)
        self.task: asyncio.Task[None] | None = None
        #: the only subscriber of its event type so far: it may take a message's local
        #: Incoming as published (no other consumer shares it)
        self.sole = True


async def _call(handler: Callable[[Any], Awaitable[None] | None], arg: Any) -> None:
    result = handler(arg)
    if type(result) is _Coroutine or (result is not None and inspect.isawaitable(result)):
        await result


def _put_nowait(subs: Sequence[_Subscription], message: WireMessage) -> list[_Subscription]:
    """Enqueue for every subscriber with room; returns those whose queue was full."""
    waiting = []
    for sub in subs:
        try:
            sub.queue.put_nowait(message)
        except asyncio.QueueFull:
            waiting.append(sub)
    return waiting


class EventBus:
    """An in-process asyncio publish/subscribe bus with full otel-eda telemetry.

    ``service`` names this process's service in lifecycle records (default: the tracer
    provider's ``service.name``). ``mode`` defaults to ``OTEL_EDA_TRACE_MODE``. Lifecycle
    records go to ``store`` (default: a new :class:`EventStore`) and to ``recorders``.
    """

    def __init__(
        self,
        *,
        service: str | None = None,
        mode: TraceMode | str | None = None,
        queue_size: int = 1024,
        publish_timeout_s: float = 1.0,
        retry: RetryPolicy | None = None,
        store: EventStore | None = None,
        recorders: Iterable[Recorder] = (),
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        settings: Settings | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        settings = settings or Settings.from_environ()
        self._check_sdk = tracer_provider is None
        self.store = store if store is not None else EventStore(settings.store_max_events)
        self.service = service or service_name(tracer_provider)
        self.queue_size = queue_size
        self.publish_timeout_s = publish_timeout_s
        self.retry = retry or RetryPolicy()
        self.messaging = Messaging(
            semconv.MESSAGING_SYSTEM_EDA,
            service=self.service,
            mode=TraceMode(mode) if mode is not None else settings.trace_mode,
            recorders=(self.store, *recorders),
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            settings=settings,
            operation_duration=False,
        )
        self.dead_letters: collections.deque[DeadLetter] = collections.deque(maxlen=DEAD_LETTERS_KEPT)
        self._subscriptions: dict[str, list[_Subscription]] = {}
        self._queues: tuple[asyncio.Queue[WireMessage], ...] = ()  # every subscription's, for join()
        self._outlets: dict[str, list[Outlet]] = {}
        self._dead_letter_handlers: list[DeadLetterHandler] = []
        self._closed = False
        self._unstarted = False
        _track_queue_depth(self, meter_provider)
        # reports what is still queued when the process exits or the bus is dropped unclosed
        # (holds the subscriptions, not the bus)
        self._report_key = next(_report_keys)
        _unhandled_reports[self._report_key] = weakref.finalize(
            self, _report_unhandled, self._report_key, self.service, self.messaging.system, self._subscriptions
        )

    # -- wiring -------------------------------------------------------------------------
    def subscribe(
        self,
        event_type: str,
        handler: Handler,
        *,
        subscriber: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """Deliver every ``event_type`` event to ``handler`` (sync or async).

        ``subscriber`` names the subscription (its consumer group); default: the
        handler's qualified name. One subscriber name per event type.
        """
        problem = type_problem(event_type)
        if problem is not None:  # publish() rejects it too: the handler could never run
            raise ValueError(f"invalid event_type: {problem}")
        name = subscriber or getattr(handler, "__qualname__", None) or repr(handler)
        subs = self._subscriptions.setdefault(event_type, [])
        if any(s.name == name for s in subs):
            raise ValueError(f"subscriber {name!r} already subscribes to {event_type!r}")
        sub = _Subscription(event_type, name, handler, retry or self.retry, self.queue_size)
        for other in subs:  # from now on messages of this type have several consumers
            other.sole = sub.sole = False
        subs.append(sub)
        self._queues = (*self._queues, sub.queue)
        self._start(sub)

    def subscribe_dead_letters(self, handler: DeadLetterHandler) -> None:
        """Call ``handler`` with every dead-lettered event."""
        self._dead_letter_handlers.append(handler)

    def add_outlet(self, event_type: str, outlet: Outlet) -> None:
        """Also forward ``event_type`` events to ``outlet`` (another process)."""
        self._outlets.setdefault(event_type, []).append(outlet)

    def _start(self, sub: _Subscription) -> None:
        if sub.task is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._unstarted = True  # started by the first publish/deliver/join in a loop
                return
            # A fresh context: a worker started inside a handler or a request must not inherit
            # its span (the process spans would become that span's children).
            sub.task = loop.create_task(
                self._worker(sub), name=f"otel-eda:{sub.event_type}:{sub.name}", context=contextvars.Context()
            )

    def _start_all(self) -> None:
        if not self._unstarted:
            return
        self._unstarted = False
        for subs in self._subscriptions.values():
            for sub in subs:
                self._start(sub)

    # -- publishing ---------------------------------------------------------------------
    async def publish(
        self,
        event_type: str,
        payload: Any = None,
        *,
        business_key: str | None = None,
        metadata: Mapping[str, str] | None = None,
        cause: EventContext | None = None,
        context: Context | None = None,
    ) -> EventContext:
        """Publish an event and return its identity.

        The event is a child of ``cause`` or, by default, of the event current in
        ``context`` (inside a handler: the handled event); otherwise it starts a flow.
        Raises :class:`BusFull` when a subscriber queue stayed full past the timeout.
        """
        if self._closed:
            raise RuntimeError("the bus is closed")
        if self._check_sdk:
            self._check_sdk = False
            _warn_if_uninstrumented()
        messaging = self.messaging
        # In-process subscribers get the event and its context as they are (no headers to
        # write and parse back); headers only for outlets, or a propagator of another kind.
        local = messaging.in_process()
        subs = self._subscriptions.get(event_type)
        if subs and local and not self._unstarted and event_type not in self._outlets:
            # telemetry off: the event and what its consumers get, without a producer span
            handed = messaging.hand_off(event_type, business_key, metadata, cause, context)
            if handed is not None:
                event = handed.event
                message = WireMessage(event_type, {}, payload, time.time_ns(), handed)
                try:
                    if len(subs) == 1:  # _put_nowait's common case
                        try:
                            subs[0].queue.put_nowait(message)
                            waiting = None
                        except asyncio.QueueFull:
                            waiting = subs
                    else:
                        waiting = _put_nowait(subs, message)
                    if waiting:
                        missed = await self._wait_for_room(waiting, message)
                        for name in missed:
                            messaging.dropped(event, event_type, name)
                        if missed:
                            raise BusFull(event, missed)
                except BaseException as exc:
                    messaging.handed_over(handed, exc)
                    raise
                messaging.handed_over(handed)
                return event
        headers: dict[str, str] | None = None if local and event_type not in self._outlets else {}
        with messaging.publish(
            event_type, headers, business_key=business_key, metadata=metadata, cause=cause, context=context
        ) as sent:
            message = WireMessage(
                event_type,
                headers if headers is not None else {},
                payload,
                time.time_ns(),
                sent.local() if local else None,
            )
            if subs and event_type not in self._outlets and not self._unstarted:
                # the common case, without the coroutine of _route: local subscribers only
                waiting = _put_nowait(subs, message)
                if waiting:
                    missed = await self._wait_for_room(waiting, message)
                    for name in missed:
                        messaging.dropped(sent.event, event_type, name)
                    if missed:
                        raise BusFull(sent.event, missed)
            else:
                await self._route(sent.event, message)
        return sent.event

    async def _route(self, event: EventContext, message: WireMessage) -> None:
        self._start_all()
        subs = self._subscriptions.get(message.destination, ())
        outlets = self._outlets.get(message.destination, ())
        if not subs and not outlets:
            self.messaging.unrouted(event, message.destination)
            return
        waiting = _put_nowait(subs, message)
        missed = await self._wait_for_room(waiting, message) if waiting else []
        for sub_name in missed:
            self.messaging.dropped(event, message.destination, sub_name)
        for outlet in outlets:
            try:
                sent = await outlet.send(message)
            except Unsendable:  # the publisher's error (local subscribers did receive it)
                self.messaging.dropped(event, message.destination, outlet.name)
                raise
            except Exception:
                internal_error("outlet", f"forwarding {message.destination}")
                sent = False
            if not sent:
                missed.append(outlet.name)
                self.messaging.dropped(event, message.destination, outlet.name)
        if missed:
            raise BusFull(event, missed)

    async def _enqueue_all(self, subs: Sequence[_Subscription], message: WireMessage) -> list[str]:
        """Enqueue for every subscriber; the full ones share one ``publish_timeout_s``.

        Returns the names of the subscribers whose queue stayed full.
        """
        waiting = _put_nowait(subs, message)
        return await self._wait_for_room(waiting, message) if waiting else []

    async def _wait_for_room(self, waiting: Sequence[_Subscription], message: WireMessage) -> list[str]:
        """Enqueue for the subscribers whose queue was full, waiting up to one shared
        ``publish_timeout_s``; returns the names of those whose queue stayed full."""
        started = time.perf_counter()
        puts = {asyncio.ensure_future(sub.queue.put(message)): sub for sub in waiting}
        done, pending = await asyncio.wait(puts, timeout=self.publish_timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        self.messaging.publish_waited(message.destination, time.perf_counter() - started)
        return [puts[t].name for t in puts if t not in done or t.cancelled()]

    async def deliver(self, message: WireMessage) -> None:
        """Hand a message that arrived from another process to the local subscribers.

        Its headers carry the producer's context; no new producer span is made. Raises
        :class:`BusFull` like ``publish``.
        """
        self._start_all()
        subs = self._subscriptions.get(message.destination, ())
        if not subs:
            self.messaging.unrouted(
                self.messaging.extract(message.headers, destination=message.destination).event, message.destination
            )
            return
        missed = await self._enqueue_all(subs, message)
        if missed:
            received = self.messaging.extract(message.headers, destination=message.destination)
            for name in missed:
                self.messaging.dropped(received.event, message.destination, name)
            raise BusFull(received.event, missed)

    # -- consuming ----------------------------------------------------------------------
    async def _worker(self, sub: _Subscription) -> None:
        # the handling of one message is inlined (one coroutine less per message)
        queue = sub.queue
        messaging = self.messaging
        name = sub.name
        handler = sub.handler
        while True:
            message = await queue.get()
            try:
                local = message.local
                if local is None:
                    incoming = messaging.extract(message.headers, destination=message.destination)
                elif sub.sole and not local.delivered:  # its only consumer: as published
                    incoming = local
                else:  # each consumer its own (a handler may set the event's business key)
                    incoming = local.again()
                enqueued_ns = message.enqueued_ns
                waited = (time.time_ns() - enqueued_ns) / 1e9 if enqueued_ns else 0.0
                if waited < 0.0:  # noqa: PLR1730  (the wall clock stepped back; max() is a call)
                    waited = 0.0
                attempt_no = 0
                while True:
                    attempt_no += 1
                    # messaging.process(incoming, consumer_group=name, attempt=attempt_no, queued_s=waited,
                    # context=_NO_AMBIENT_SPAN), without its frame and keyword arguments
                    processing = Processing(messaging, incoming, name, attempt_no, waited, None, _NO_AMBIENT_SPAN)
                    delivery = Delivery(self, processing, message.payload, name)
                    exc: BaseException | None = None
                    # the attempt's context is current while the handler runs; what it raises is
                    # this attempt's failure
                    processing.attach()
                    try:
                        try:
                            result = handler(delivery)
                            if type(result) is _Coroutine or (result is not None and inspect.isawaitable(result)):
                                await result
                        finally:
                            processing.detach()
                    except asyncio.CancelledError as cancelled:
                        task = asyncio.current_task()
                        if task is not None and task.cancelling():  # the bus is closing under the handler
                            processing.settle(_FAILED, cancelled)
                            raise
                        exc = cancelled  # the handler awaited a cancelled task: a failed attempt
                    except Exception as failed:
                        exc = failed
                    if exc is None:
                        processing.settle(_COMPLETED)
                        break
                    if isinstance(exc, Rejected):
                        processing.settle(_REJECTED, exc)  # logged by the lifecycle logs (INFO)
                        break
                    if attempt_no >= sub.retry.max_attempts:
                        processing.settle(_DEAD_LETTERED, exc)
                        letter = DeadLetter(
                            processing.event, message.payload, name, attempt_no, error_type(exc), error_message(exc)
                        )
                        await self._dead_letter(letter)
                        break
                    processing.settle(_RETRIED, exc)
                    started = time.perf_counter()
                    await asyncio.sleep(sub.retry.backoff(attempt_no))
                    waited = time.perf_counter() - started
            except Exception:
                internal_error("bus worker", f"handling {sub.event_type} for {name}")
            finally:
                queue.task_done()

    async def _dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters.append(letter)  # logged by the lifecycle logs (ERROR)
        for handler in self._dead_letter_handlers:
            try:
                await _call(handler, letter)
            except Exception:
                internal_error("dead-letter handler", "handling a dead letter")

    # -- lifecycle ----------------------------------------------------------------------
    def queue_depths(self) -> dict[tuple[str, str], int]:
        """Messages waiting, per (event type, subscriber)."""
        return {(s.event_type, s.name): s.queue.qsize() for subs in self._subscriptions.values() for s in subs}

    async def join(self) -> None:
        """Wait until every queued message has been handled (retries included)."""
        if self._unstarted:
            self._start_all()
        for queue in self._queues:
            await queue.join()

    async def close(self) -> None:
        """Handle what is queued, then stop the workers. Idempotent."""
        if self._closed:
            return
        await self.join()
        self._closed = True
        report = _unhandled_reports.pop(self._report_key, None)
        if report is not None:
            report.detach()  # handled everything: nothing to report
        tasks = [s.task for subs in self._subscriptions.values() for s in subs if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> EventBus:
        self._start_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# -- messages never handled --------------------------------------------------------------
_unhandled_reports: dict[int, weakref.finalize[Any, EventBus]] = {}  # by bus; a closed bus leaves
_report_keys = itertools.count()
_unhandled_total = 0


def report_unhandled() -> int:
    """Count and log, once per bus, the messages every live bus still holds; returns the total
    counted so far in this process. Called by ``otel_eda.shutdown()`` (at exit and on
    SIGTERM) and, for a bus dropped without ``close()``, when it is collected."""
    for report in list(_unhandled_reports.values()):
        report()
    return _unhandled_total


def _unfinished(queue: asyncio.Queue[Any]) -> int:
    """Messages put on ``queue`` and not yet marked done (asyncio's own count, else its size)."""
    return getattr(queue, "_unfinished_tasks", queue.qsize())  # not OpenTelemetry: asyncio's


def _report_unhandled(
    key: int, service: str, system: str, subscriptions: Mapping[str, Sequence[_Subscription]]
) -> None:
    global _unhandled_total
    _unhandled_reports.pop(key, None)
    try:
        pending = {
            (sub.event_type, sub.name): _unfinished(sub.queue) for subs in subscriptions.values() for sub in subs
        }
        pending = {key: count for key, count in pending.items() if count > 0}
        if not pending:
            return
        total = sum(pending.values())
        _unhandled_total += total
        counter = metrics.get_meter(semconv.SCOPE, VERSION).create_counter(
            semconv.METRIC_UNHANDLED,
            unit="{message}",
            description="Messages still queued in an embedded bus at exit (or when it was dropped unclosed)",
        )
        for (event_type, name), count in pending.items():
            counter.add(
                count,
                {
                    semconv.MESSAGING_SYSTEM: system,
                    semconv.MESSAGING_DESTINATION_NAME: event_type,
                    semconv.MESSAGING_CONSUMER_GROUP_NAME: name,
                },
            )
        shown = ", ".join(f"{n} for {name} ({event_type})" for (event_type, name), n in list(pending.items())[:5])
        _log.warning(
            "otel-eda: %d message(s) of service %s were still queued in the bus and were never handled: %s%s "
            "(%s; close the bus, e.g. 'async with EventBus()', before the process exits)",
            total,
            service,
            shown,
            ", ..." if len(pending) > 5 else "",
            semconv.METRIC_UNHANDLED,
        )
    except Exception:  # at exit or in a finalizer: never raise
        internal_error("bus", "reporting unhandled messages")


# One observable instrument per meter provider observes every live bus on it: a second
# registration of the same instrument name returns the first instrument and silently drops
# the new callback, so buses cannot each register their own.
_depth_sources: weakref.WeakKeyDictionary[metrics.MeterProvider, weakref.WeakSet[EventBus]] = (
    weakref.WeakKeyDictionary()
)
# Buses on the global provider share one registration made through the API's proxy, which
# follows the provider that configure() installs later.
_global_buses: weakref.WeakSet[EventBus] | None = None


def _track_queue_depth(bus: EventBus, meter_provider: metrics.MeterProvider | None) -> None:
    global _global_buses
    if meter_provider is None:
        buses = _global_buses
        if buses is None:
            buses = _global_buses = weakref.WeakSet()
            _register_depth(metrics.get_meter(semconv.SCOPE, VERSION), buses)
    else:
        buses = _depth_sources.get(meter_provider)
        if buses is None:
            buses = _depth_sources[meter_provider] = weakref.WeakSet()
            _register_depth(metrics.get_meter(semconv.SCOPE, VERSION, meter_provider=meter_provider), buses)
    buses.add(bus)


def _register_depth(meter: metrics.Meter, buses: weakref.WeakSet[EventBus]) -> None:
    meter.create_observable_up_down_counter(
        semconv.METRIC_QUEUE_DEPTH,
        callbacks=[functools.partial(_observe_depth, buses)],
        unit="{message}",
        description="Messages waiting in a subscriber queue of the embedded bus",
    )
    meter.create_observable_gauge(
        semconv.METRIC_QUEUE_UTILIZATION,
        callbacks=[functools.partial(_observe_utilization, buses)],
        unit="1",
        description="Messages waiting in a subscriber queue of the embedded bus, as a share of its queue_size",
    )


def _observe_utilization(buses: Iterable[EventBus], options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(
            depth / bus.queue_size,
            {
                semconv.MESSAGING_SYSTEM: bus.messaging.system,
                semconv.MESSAGING_DESTINATION_NAME: event_type,
                semconv.MESSAGING_CONSUMER_GROUP_NAME: name,
            },
        )
        for bus in list(buses)
        for (event_type, name), depth in bus.queue_depths().items()
    ]


def _observe_depth(buses: Iterable[EventBus], options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(
            depth,
            {
                semconv.MESSAGING_SYSTEM: bus.messaging.system,
                semconv.MESSAGING_DESTINATION_NAME: event_type,
                semconv.MESSAGING_CONSUMER_GROUP_NAME: name,
            },
        )
        for bus in list(buses)
        for (event_type, name), depth in bus.queue_depths().items()
    ]


@functools.cache
def _warn_if_uninstrumented() -> None:
    """One WARNING per process when a bus publishes with no OpenTelemetry SDK installed at all."""
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider) and not sdk_disabled():
        _log.warning(
            "no OpenTelemetry SDK is installed: event spans and metrics go nowhere (the store still records "
            "them). Call otel_eda.configure() at start-up, or run under opentelemetry-instrument with "
            "OTEL_PYTHON_DISTRO=otel_eda and OTEL_PYTHON_CONFIGURATOR=otel_eda"
        )
