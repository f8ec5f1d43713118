"""``RedisStreamsInstrumentor``: otel-eda's drop-in instrumentation of Redis Streams in redis-py.

Registered as the ``otel_eda_redis`` entry point of ``opentelemetry_instrumentor``, so
``opentelemetry-instrument`` loads it when redis-py is installed (``pip install
otel-eda[redis]``); ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_eda_redis`` keeps it out. In
code: ``RedisStreamsInstrumentor().instrument(tracer_provider=..., meter_provider=...)``.

What it wraps, on ``redis.Redis`` and ``redis.asyncio.Redis`` (every client, created before
or after; ``RedisCluster`` is not wrapped):

* ``xadd`` is a send: the entry's event is a child of the event current in the caller (inside
  a handling: the handled entry's event) or starts a flow; a PRODUCER span ``send {stream}``
  covers the call; the identity and the trace context travel in one extra field,
  ``otel-eda:headers`` (:data:`~otel_eda.transports.redis.telemetry.PACKED_FIELD`, one
  ``name=value`` line per header; entries with one ``otel-eda:<header>`` field per header are
  read too); the application's own dict is not modified. In a pipeline the span covers the
  queueing only.
* ``xreadgroup`` and ``xread`` are a receive: after the call returns, a CLIENT span
  ``receive {stream}`` (``receive`` across streams) with one link per entry, none for an
  empty read. The reserved fields are taken out of every entry returned (also by ``xrange``,
  ``xrevrange``, ``xclaim`` and ``xautoclaim``), so ``dict(fields)`` is what was produced.
* Handling an entry is a CONSUMER span ``process {stream}``, linked to its producer, with the
  entry's event, span and baggage current. **When it starts**: when the loop over the entries
  of a stream hands the entry over (``for entry_id, fields in entries:``), or at ``with
  processing(entry):``. **When it ends**: at the earliest of ``XACK`` of the entry (completed;
  the command runs inside the handling's context), the end of the ``processing(entry)``
  block (failed with the exception if one escapes), the next entry handed over or the
  client's next read in that thread or task (so the last entry of a loop stays current
  after the loop until then: a loop cannot be told from an unpacking such as
  ``[[stream, [(entry_id, fields)]]] = r.xreadgroup(..., count=1)``), or
  ``OTEL_EDA_PROCESS_SPAN_MAX_S`` (then ``eda.process.truncated=true``). Consuming a list in
  one go (``list(entries)``, ``dict(entries)``, unpacking several) hands each entry over and
  ends it at once: handle such entries inside ``with processing(entry):``, which then starts
  a handling of its own.
* Redelivery: entries claimed with ``xclaim`` / ``xautoclaim``, or read again from the
  group's history with ``xreadgroup`` at an id other than ``>``, get their delivery count from
  one ``XPENDING`` range call per batch as ``eda.delivery.attempt``.
  :func:`dead_letter_past_limit` routes an entry past a delivery limit to a dead-letter stream.

Nothing here raises into the application: an internal failure is logged and counted, and the
client's call goes ahead uninstrumented. Hostile field values (not UTF-8, huge, wrong types)
are ignored and counted in ``eda.propagation.invalid``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import operator
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final

import redis
import redis.asyncio
from opentelemetry import trace
from opentelemetry.context import attach, detach, get_current
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import suppress_instrumentation

from otel_eda import otel_internals, semconv
from otel_eda._selfmetrics import count_invalid, internal_error
from otel_eda.identity import EventContext
from otel_eda.messaging import Incoming, Outcome, Processing, PullTracker
from otel_eda.process_hooks import ForkHook, fresh_lock_in_child, register_fork_hook, unregister_fork_hook
from otel_eda.transports.redis.telemetry import RedisTelemetry, pack_reserved, split_reserved

__all__ = [
    "Outgoing",
    "RedisStreamsInstrumentor",
    "adead_letter_past_limit",
    "dead_letter_past_limit",
    "delivery_attempt",
    "outgoing_event",
    "processing",
]

_log = logging.getLogger(__name__)
_current_context: Final[Callable[[], Any]] = otel_internals.current_context_getter() or get_current
_INSTRUMENTS: Final = ("redis >= 5",)
_MARK: Final = "__otel_eda_original__"
_READS: Final = ("xreadgroup", "xread")
_CLAIMS: Final = ("xclaim", "xautoclaim")
_STRIPS: Final = ("xrange", "xrevrange")
_WRAPPED: Final = ("xadd", "xack", *_READS, *_CLAIMS, *_STRIPS)
#: Most pending entries one XPENDING call of a claimed batch asks for.
_MAX_PENDING_QUERY: Final = 10_000


class Outgoing:
    """The event options of the ``xadd`` calls inside :func:`outgoing_event`, and their events."""

    __slots__ = ("business_key", "event_type", "events", "metadata")

    def __init__(self, event_type: str | None, business_key: str | None, metadata: Mapping[str, str] | None) -> None:
        self.event_type = event_type
        self.business_key = business_key
        self.metadata = metadata
        #: the event of each entry added inside the block, in order
        self.events: list[EventContext] = []


_OUTGOING: ContextVar[Outgoing | None] = ContextVar("otel_eda_redis_outgoing", default=None)


@contextmanager
def outgoing_event(
    *, event_type: str | None = None, business_key: str | None = None, metadata: Mapping[str, str] | None = None
) -> Iterator[Outgoing]:
    """Give the entries added inside the block an event type (default: the stream's name), a
    business key and metadata; ``.events`` has their events::

        with outgoing_event(event_type="order_placed", business_key="order-7") as out:
            r.xadd("orders", {"order": "7"})
        out.events[0].event_id

    An invalid value is not used (the entry is still added, as a ``redis`` event), logged and
    counted like any invalid input.
    """
    outgoing = Outgoing(event_type, business_key, metadata)
    token = _OUTGOING.set(outgoing)
    try:
        yield outgoing
    finally:
        _OUTGOING.reset(token)


# -- deliveries -----------------------------------------------------------------------------
class _Delivery:
    """One entry as delivered to this process, and its handling once handed over."""

    __slots__ = (
        "attempt",
        "carrier",
        "ended_implicitly",
        "entry_id",
        "group",
        "handling",
        "incoming",
        "key",
        "state",
        "stream",
    )

    def __init__(
        self,
        incoming: Incoming,
        carrier: dict[str, Any],
        stream: str,
        group: str | None,
        entry_id: str,
        state: _OwnerState,
    ) -> None:
        self.incoming = incoming
        self.carrier = carrier
        self.stream = stream
        self.group = group
        self.entry_id = entry_id
        #: its key in the registry of open handlings (XACK settles them), if read in a group
        self.key = (stream, group, entry_id) if group is not None else None
        self.attempt = 1
        self.state = state
        self.handling: Processing | None = None
        #: its handling ended because the next entry was handed over or read (not XACK, not
        #: processing(), not a dead letter): processing(entry) then starts a new one
        self.ended_implicitly = False


class Entry(tuple):  # type: ignore[type-arg]
    """A stream entry ``(entry_id, fields)`` returned by an instrumented read: a tuple that also
    knows its delivery (unpacking, indexing and equality are the tuple's; pickled or copied, it
    is a plain tuple)."""

    otel_eda_delivery: _Delivery | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (tuple, (tuple(self),))


def _delivery(entry: Any) -> _Delivery | None:
    return getattr(entry, "otel_eda_delivery", None) if type(entry) is Entry else None


#: Handlings handed over and not settled yet, by (stream, group, entry id): XACK settles them.
_open: dict[tuple[str, str, str], _Delivery] = {}
_open_lock = threading.Lock()
fresh_lock_in_child(__name__, "_open_lock")


class _OwnerState:
    """What one thread or task reading with one client has open: at most one handling."""

    __slots__ = ("current", "telemetry", "trackers")

    def __init__(self, telemetry: RedisTelemetry) -> None:
        self.telemetry = telemetry
        self.trackers: dict[str | None, PullTracker[_Delivery]] = {}
        self.current: _Delivery | None = None

    def tracker(self, group: str | None) -> PullTracker[_Delivery]:
        tracker = self.trackers.get(group)
        if tracker is None:
            tracker = self.trackers[group] = PullTracker(
                self.telemetry.messaging,
                destination=_STREAM_OF,
                carrier=_INCOMING_OF,
                consumer_group=group,
                attempt=_ATTEMPT_OF,
            )
        return tracker

    def end_current(self) -> None:
        """End the handed-over entry's handling (next entry, next read, loop end): completed."""
        current, self.current = self.current, None
        if current is None:
            return
        current.ended_implicitly = True
        _forget(current)
        try:
            self.tracker(current.group).end_current()
        except Exception:
            internal_error("redis", "ending an entry's process span")


_STREAM_OF: Final = operator.attrgetter("stream")
_INCOMING_OF: Final = operator.attrgetter("incoming")
_ATTEMPT_OF: Final = operator.attrgetter("attempt")


def _forget(delivery: _Delivery) -> None:
    key = delivery.key
    if key is not None and _open.get(key) is delivery:
        with _open_lock:
            if _open.get(key) is delivery:
                del _open[key]


def _owner() -> int:
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return id(task) if task is not None else threading.get_ident()


class _States:
    """Owner states by client (weakly) and by thread or task."""

    def __init__(self, telemetry: RedisTelemetry) -> None:
        self.telemetry = telemetry
        self._clients: weakref.WeakKeyDictionary[Any, dict[int, _OwnerState]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._fork_hook = register_fork_hook(
            ForkHook("redis consumer states", after_in_child=self._after_fork_in_child)
        )

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a thread of the parent may have held it

    def get(self, client: Any) -> _OwnerState:
        owner = _owner()
        with self._lock:
            owners = self._clients.get(client)
            if owners is None:
                owners = self._clients[client] = {}
            state = owners.get(owner)
            if state is None:
                if len(owners) >= 256:  # threads and tasks come and go: forget the idle ones
                    for key in [key for key, s in owners.items() if s.current is None]:
                        del owners[key]
                state = owners[owner] = _OwnerState(self.telemetry)
        return state

    def close(self) -> None:
        """End every open handling (uninstrument); the calling thread's context is restored."""
        unregister_fork_hook(self._fork_hook)
        with self._lock:
            states = [state for owners in self._clients.values() for state in owners.values()]
            self._clients.clear()
        for state in states:
            state.end_current()


def _hand_over(delivery: _Delivery) -> None:
    """Start the process span of ``delivery`` and make it current in the caller."""
    state = delivery.state
    if state.current is not None:
        state.end_current()
    tracker = state.trackers.get(delivery.group) or state.tracker(delivery.group)
    delivery.handling = tracker.start(delivery)
    state.current = delivery
    if delivery.key is not None:
        with _open_lock:  # not between another thread's look-up and removal of the same key
            _open[delivery.key] = delivery


class _Entries(list):  # type: ignore[type-arg]
    """A list of entries whose iteration makes each entry current while its body runs."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:  # pickled or copied: a plain list of plain tuples
        return (list, ([tuple(entry) for entry in list.__iter__(self)],))

    def __iter__(self) -> Iterator[Any]:
        # The last entry handed over stays current after the loop (until the next read, XACK,
        # ...): a loop cannot be told from an unpacking, ``[(entry_id, fields)] = entries``,
        # whose handling must go on after it.
        for entry in list.__iter__(self):
            delivery = _delivery(entry)
            if delivery is not None and delivery.handling is None:
                try:
                    _hand_over(delivery)
                except Exception:
                    internal_error("redis", "starting an entry's process span")
            yield entry


@contextmanager
def processing(entry: Any) -> Iterator[Processing | None]:
    """Exact bounds for the handling of ``entry`` (an ``(entry_id, fields)`` of an instrumented
    read): its process span starts here if the loop did not start it, ends when the block ends,
    failed with the exception if one escapes (re-raised). Outside otel-eda's instrumentation it
    does nothing and yields ``None``::

        for stream, entries in r.xreadgroup("billing", "worker-1", {"orders": ">"}, count=10):
            for entry in entries:
                with processing(entry):
                    handle(entry[1])
                    r.xack(stream, "billing", entry[0])
    """
    delivery = _delivery(entry)
    handling = None
    if delivery is not None:
        try:
            if delivery.handling is None or (delivery.handling.settled and delivery.ended_implicitly):
                _hand_over(delivery)
            handling = delivery.handling
        except Exception:
            internal_error("redis", "starting an entry's process span")
    if delivery is None or handling is None:
        yield None
        return
    try:
        yield handling
    except BaseException as exc:
        _settle(delivery, handling, exc)
        raise
    _settle(delivery, handling, None)


def _settle(delivery: _Delivery, handling: Processing, exc: BaseException | None) -> None:
    _forget(delivery)
    state = delivery.state
    if state.current is delivery:
        state.current = None
    handling.detach()
    if exc is None:
        handling.settle(Outcome.COMPLETED)
    else:
        handling.fail(exc)


def delivery_attempt(entry: Any) -> int | None:
    """The delivery attempt of an entry of an instrumented read (1 for a first delivery; from
    ``XPENDING`` for claimed entries and re-read history), else ``None``."""
    delivery = _delivery(entry)
    return delivery.attempt if delivery is not None else None


# -- dead letters ---------------------------------------------------------------------------
def _dead_letter_plan(entry: Any, max_deliveries: int) -> tuple[_Delivery, dict[Any, Any]] | None:
    delivery = _delivery(entry)
    if delivery is None or delivery.group is None or delivery.attempt <= max_deliveries:
        return None
    fields = dict(entry[1] or {})
    pack_reserved(delivery.carrier, fields)  # the entry's own identity and producer context
    return delivery, fields


def _dead_lettered(delivery: _Delivery) -> None:
    try:
        if delivery.handling is None or (delivery.handling.settled and delivery.ended_implicitly):
            _hand_over(delivery)
        handling = delivery.handling
        if handling is not None:
            _forget(delivery)
            if delivery.state.current is delivery:
                delivery.state.current = None
            handling.detach()
            handling.settle(Outcome.DEAD_LETTERED)
    except Exception:
        internal_error("redis", "recording a dead letter")


def dead_letter_past_limit(client: Any, entry: Any, *, max_deliveries: int, dead_letter_stream: str) -> bool:
    """Route ``entry`` to ``dead_letter_stream`` if its delivery attempt is past ``max_deliveries``.

    Opt-in, for a sync client: call it on each entry of a claim (or any group read) before
    handling it. Past the limit, the entry's fields (its identity and producer context
    included, so the dead-letter consumer sees the same event) are added to the dead-letter
    stream, the entry is acknowledged in its group, and its handling is settled
    ``dead_lettered`` (``eda.bus.dead_letters``, the lifecycle stage). Returns whether it did; a
    failing command raises the client's own error (nothing is settled then)::

        _, claimed, _ = r.xautoclaim("orders", "billing", "worker-2", min_idle_time=60_000)
        for entry in claimed:
            if dead_letter_past_limit(r, entry, max_deliveries=5, dead_letter_stream="orders.dead"):
                continue
            ...
    """
    plan = _dead_letter_plan(entry, max_deliveries)
    if plan is None:
        return False
    delivery, fields = plan
    with suppress_instrumentation():  # the event moves, it is not published again
        _original(type(client), "xadd")(client, dead_letter_stream, fields)
    _original(type(client), "xack")(client, delivery.stream, delivery.group, entry[0])
    _dead_lettered(delivery)
    return True


async def adead_letter_past_limit(client: Any, entry: Any, *, max_deliveries: int, dead_letter_stream: str) -> bool:
    """:func:`dead_letter_past_limit` for an asyncio client."""
    plan = _dead_letter_plan(entry, max_deliveries)
    if plan is None:
        return False
    delivery, fields = plan
    with suppress_instrumentation():
        await _original(type(client), "xadd")(client, dead_letter_stream, fields)
    await _original(type(client), "xack")(client, delivery.stream, delivery.group, entry[0])
    _dead_lettered(delivery)
    return True


# -- the instrumentor -----------------------------------------------------------------------
class RedisStreamsInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """otel-eda's Redis Streams instrumentation (see the module docstring).

    ``instrument()`` accepts ``tracer_provider``, ``meter_provider``, ``recorders`` (lifecycle
    record sinks, e.g. an ``EventStore``) and ``lag_refresh_s`` (seconds between two reads of
    a group's lag; default 1).
    """

    _telemetry: RedisTelemetry | None = None
    _states: _States | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        telemetry = RedisTelemetry(
            tracer_provider=kwargs.get("tracer_provider"),
            meter_provider=kwargs.get("meter_provider"),
            recorders=kwargs.get("recorders", ()),
            lag_refresh_s=kwargs.get("lag_refresh_s"),
        )
        self._telemetry = telemetry
        self._states = states = _States(telemetry)
        for cls, is_async in ((redis.Redis, False), (redis.asyncio.Redis, True)):
            _patch(cls, "xadd", _xadd_wrapper(telemetry, cls, is_async))
            _patch(cls, "xack", _xack_wrapper(telemetry, cls, is_async))
            for name in _READS:
                _patch(cls, name, _read_wrapper(telemetry, states, cls, name, is_async))
            for name in _CLAIMS:
                _patch(cls, name, _claim_wrapper(telemetry, states, cls, name, is_async))
            for name in _STRIPS:
                _patch(cls, name, _strip_wrapper(cls, name, is_async))

    def _uninstrument(self, **kwargs: Any) -> None:
        for cls in (redis.Redis, redis.asyncio.Redis):
            for name in _WRAPPED:
                _unpatch(cls, name)
        if self._states is not None:
            self._states.close()
            self._states = None
        if self._telemetry is not None:
            self._telemetry.close()
            self._telemetry = None


# -- patching -------------------------------------------------------------------------------
_PIPELINES: Final = (redis.client.Pipeline, redis.asyncio.client.Pipeline)
#: client class -> whether it is a pipeline: redis-py's client classes are typing Protocols,
#: whose ``isinstance`` runs in Python (about 1 µs each, on every wrapped call)
_pipeline_classes: dict[type, bool] = {}


def _is_pipeline(client: object) -> bool:
    cls = type(client)
    found = _pipeline_classes.get(cls)
    if found is None:
        found = _pipeline_classes[cls] = issubclass(cls, _PIPELINES)
    return found


def _patch(cls: type, name: str, wrapper: Callable[..., Any]) -> None:
    original = getattr(cls, name)
    functools.update_wrapper(wrapper, original)
    setattr(wrapper, _MARK, (original, name in cls.__dict__))
    setattr(cls, name, wrapper)


def _unpatch(cls: type, name: str) -> None:
    current = cls.__dict__.get(name)
    marked = getattr(current, _MARK, None)
    if marked is None:
        return
    original, own = marked
    if own:
        setattr(cls, name, original)
    else:
        delattr(cls, name)  # the method is the mixin's again


def _original(cls: type, name: str) -> Callable[..., Any]:
    """The uninstrumented method ``name`` of a client class (instrumented or not)."""
    method = getattr(cls, name)
    marked = getattr(method, _MARK, None)
    return marked[0] if marked is not None else method  # type: ignore[no-any-return]


def _text(value: Any) -> str:
    if type(value) is str:  # decode_responses=True, and every name the application passes as str
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


# -- producer -------------------------------------------------------------------------------
def _start_publication(telemetry: RedisTelemetry, stream: Any, fields: Any) -> tuple[Any, dict[Any, Any]] | None:
    """Start the send of one entry: ``(publication, the fields to send)``, or ``None`` when
    ``fields`` is not what redis-py takes (a non-empty ``dict``): redis-py reports it, as
    without otel-eda, and nothing is started."""
    if not isinstance(fields, dict) or not fields:
        return None
    carrier = dict(fields)  # the application's own dict stays untouched
    messaging = telemetry.messaging
    headers: dict[str, str] = {}  # what the propagators write, packed into the entry's fields
    destination = _text(stream)
    outgoing = _OUTGOING.get()
    try:
        if outgoing is None:
            publication = messaging.publish(destination, headers, destination=destination)
        else:
            publication = messaging.publish(
                outgoing.event_type or destination,
                headers,
                destination=destination,
                business_key=outgoing.business_key,
                metadata=outgoing.metadata,
            )
    except ValueError as invalid:  # a stream name, business key or metadata that is not a valid event
        count_invalid("send", "invalid_event")
        _log.warning("otel-eda: an entry added to %r is sent as a plain redis event: %s", destination[:200], invalid)
        publication = messaging.publish(semconv.MESSAGING_SYSTEM_REDIS, headers, destination=destination)
    publication.__enter__()
    if outgoing is not None:
        outgoing.events.append(publication.event)
    try:
        split_reserved(carrier)  # stale otel-eda fields of a forwarded entry: only this event's go
        pack_reserved(headers, carrier)
    except Exception:
        internal_error("redis", "packing the reserved field")
    return publication, carrier


def _xadd_wrapper(telemetry: RedisTelemetry, cls: type, is_async: bool) -> Callable[..., Any]:
    original: Callable[..., Any] = cls.xadd  # type: ignore[attr-defined]

    def xadd_sync(self: Any, name: Any, fields: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            started = _start_publication(telemetry, name, fields)
        except Exception:
            internal_error("redis", "starting a send span")
            return original(self, name, fields, *args, **kwargs)
        if started is None:
            return original(self, name, fields, *args, **kwargs)
        publication, carrier = started
        try:
            result = original(self, name, carrier, *args, **kwargs)
        except BaseException as exc:
            publication.__exit__(type(exc), exc, exc.__traceback__)
            raise
        publication.__exit__(None, None, None)
        return result

    if not is_async:
        return xadd_sync

    async def xadd_async(self: Any, name: Any, fields: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            started = _start_publication(telemetry, name, fields)
        except Exception:
            internal_error("redis", "starting a send span")
            return await original(self, name, fields, *args, **kwargs)
        if started is None:
            return await original(self, name, fields, *args, **kwargs)
        publication, carrier = started
        try:
            result = await original(self, name, carrier, *args, **kwargs)
        except BaseException as exc:
            publication.__exit__(type(exc), exc, exc.__traceback__)
            raise
        publication.__exit__(None, None, None)
        return result

    def xadd(self: Any, name: Any, fields: Any, *args: Any, **kwargs: Any) -> Any:
        if _is_pipeline(self):  # queued: the pipeline (or its coroutine) comes back
            return xadd_sync(self, name, fields, *args, **kwargs)
        return xadd_async(self, name, fields, *args, **kwargs)

    return xadd


# -- consumer -------------------------------------------------------------------------------
def _pairs(response: Any) -> Iterator[tuple[Any, list[Any], Callable[[list[Any]], None]]]:
    """``(stream, entries, replace)`` of an XREAD/XREADGROUP reply in any of redis-py's shapes:
    RESP2 ``[[stream, entries], ...]``, RESP3 ``{stream: [entries]}`` or ``{stream: entries}``."""
    if isinstance(response, dict):
        for stream, value in list(response.items()):
            if value and isinstance(value, list) and isinstance(value[0], list):
                for i, entries in enumerate(value):
                    yield stream, entries, functools.partial(value.__setitem__, i)
            elif isinstance(value, list):
                yield stream, value, functools.partial(response.__setitem__, stream)
    elif isinstance(response, list):
        for item in response:
            if isinstance(item, list) and len(item) == 2 and isinstance(item[1], list):
                yield item[0], item[1], functools.partial(item.__setitem__, 1)


def _deliveries(
    telemetry: RedisTelemetry, state: _OwnerState, stream: Any, entries: list[Any], group: str | None
) -> tuple[_Entries, list[_Delivery]]:
    """Strip, extract and wrap the entries of one stream."""
    messaging = telemetry.messaging
    destination = _text(stream)
    wrapped = _Entries()
    found = []
    for entry in entries:
        if not (isinstance(entry, tuple) and len(entry) == 2) or entry[1] is None:
            wrapped.append(entry)  # an id only (JUSTID), or a deleted entry of the history
            continue
        carrier = split_reserved(entry[1])
        incoming = messaging.extract(carrier, destination=destination)  # its getter: TEXT_GETTER
        delivery = _Delivery(incoming, carrier, destination, group, _text(entry[0]), state)
        item = Entry(entry)
        item.otel_eda_delivery = delivery
        wrapped.append(item)
        found.append(delivery)
    return wrapped, found


def _pending_query(deliveries: list[_Delivery]) -> tuple[str, str, str, int] | None:
    """``(stream, min id, max id, count)`` of the XPENDING range covering a claimed batch."""
    if not deliveries:
        return None
    ids = sorted((d.entry_id for d in deliveries), key=_id_key)
    return deliveries[0].stream, ids[0], ids[-1], min(_MAX_PENDING_QUERY, 4 * len(ids) + 16)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)


def _apply_attempts(deliveries: list[_Delivery], pending: Any) -> None:
    counts: dict[str, int] = {}
    try:
        for item in pending or ():
            counts[_text(item["message_id"])] = int(item["times_delivered"])
    except Exception:
        _log.debug("otel-eda: an XPENDING reply not understood", exc_info=True)
    for delivery in deliveries:
        count = counts.get(delivery.entry_id)
        # not in the reply (acknowledged meanwhile, or the range was crowded): a redelivery at least
        delivery.attempt = count if count is not None and count >= 1 else 2


def _announce(
    telemetry: RedisTelemetry, deliveries: list[_Delivery], streams: set[str], group: str | None, start_ns: int
) -> None:
    telemetry.messaging.received(
        [d.incoming for d in deliveries],
        start_ns=start_ns,
        destination=next(iter(streams)) if len(streams) == 1 else None,
        operation_name=semconv.OPERATION_TYPE_RECEIVE,
        consumer_group=group,
    )


def _read_wrapper(
    telemetry: RedisTelemetry, states: _States, cls: type, name: str, is_async: bool
) -> Callable[..., Any]:
    original = getattr(cls, name)
    grouped = name == "xreadgroup"

    def before(self: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[_OwnerState, Any] | None:
        try:
            state = states.get(self)
            state.end_current()  # the next read ends the handling of the last entry handed over
            if grouped:
                group, consumer = _arg(args, kwargs, 0, "groupname"), _arg(args, kwargs, 1, "consumername")
                streams = _arg(args, kwargs, 2, "streams") or {}
                for stream in streams:
                    telemetry.lag.track(self, _text(stream), _text(group), is_async=is_async)
                history = any(_text(position) != ">" for position in streams.values())
                return state, (_text(group), _text(consumer), history)
            return state, (None, None, False)
        except Exception:
            internal_error("redis", "starting a read")
            return None

    def after(state: _OwnerState, how: Any, response: Any) -> tuple[Any, list[_Delivery]]:
        """Strip, extract and wrap every stream's entries (the reply is changed in place)."""
        all_deliveries: list[_Delivery] = []
        for stream, entries, replace in list(_pairs(response)):
            wrapped, deliveries = _deliveries(telemetry, state, stream, entries, how[0])
            replace(wrapped)
            all_deliveries.extend(deliveries)
        return response, all_deliveries

    def by_stream(deliveries: list[_Delivery]) -> list[list[_Delivery]]:
        split: dict[str, list[_Delivery]] = {}
        for delivery in deliveries:
            split.setdefault(delivery.stream, []).append(delivery)
        return list(split.values())

    def finish(how: Any, deliveries: list[_Delivery], start_ns: int) -> None:
        if deliveries:
            _announce(telemetry, deliveries, {d.stream for d in deliveries}, how[0], start_ns)

    def read_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _is_pipeline(self):
            return original(self, *args, **kwargs)
        prepared = before(self, args, kwargs)
        start_ns = time.time_ns()
        response = original(self, *args, **kwargs)
        if prepared is None or not response:
            return response
        state, how = prepared
        try:
            response, deliveries = after(state, how, response)
            if how[2] and deliveries:  # the group's history: delivered before
                for batch in by_stream(deliveries):
                    _attempts_sync(self, cls, batch, how[0], how[1])
            finish(how, deliveries, start_ns)
        except Exception:
            internal_error("redis", "instrumenting a read")
        return response

    if not is_async:
        return read_sync

    async def read_async(self: Any, *args: Any, **kwargs: Any) -> Any:
        prepared = before(self, args, kwargs)
        start_ns = time.time_ns()
        response = await original(self, *args, **kwargs)
        if prepared is None or not response:
            return response
        state, how = prepared
        try:
            response, deliveries = after(state, how, response)
            if how[2] and deliveries:
                for batch in by_stream(deliveries):
                    await _attempts_async(self, cls, batch, how[0], how[1])
            finish(how, deliveries, start_ns)
        except Exception:
            internal_error("redis", "instrumenting a read")
        return response

    def read(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _is_pipeline(self):
            return original(self, *args, **kwargs)
        return read_async(self, *args, **kwargs)

    return read


def _attempts_sync(client: Any, cls: type, deliveries: list[_Delivery], group: str, consumer: str) -> None:
    query = _pending_query(deliveries)
    if query is None:
        return
    stream, low, high, count = query
    try:
        with suppress_instrumentation():
            pending = _original(cls, "xpending_range")(client, stream, group, low, high, count, consumername=consumer)
    except Exception:
        _log.debug("otel-eda: XPENDING for the attempt numbers failed", exc_info=True)
        pending = None
    _apply_attempts(deliveries, pending)


async def _attempts_async(client: Any, cls: type, deliveries: list[_Delivery], group: str, consumer: str) -> None:
    query = _pending_query(deliveries)
    if query is None:
        return
    stream, low, high, count = query
    try:
        with suppress_instrumentation():
            pending = await _original(cls, "xpending_range")(
                client, stream, group, low, high, count, consumername=consumer
            )
    except Exception:
        _log.debug("otel-eda: XPENDING for the attempt numbers failed", exc_info=True)
        pending = None
    _apply_attempts(deliveries, pending)


def _claim_wrapper(
    telemetry: RedisTelemetry, states: _States, cls: type, name: str, is_async: bool
) -> Callable[..., Any]:
    """``xclaim(name, groupname, consumername, min_idle_time, message_ids, ...)`` returns the
    entries; ``xautoclaim(name, groupname, consumername, min_idle_time, ...)`` returns
    ``[next id, entries, deleted ids]`` (entries only when not ``justid``)."""
    original = getattr(cls, name)
    auto = name == "xautoclaim"

    def prepare(self: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], response: Any) -> Any:
        if auto:
            if not (isinstance(response, list) and len(response) >= 2 and isinstance(response[1], list)):
                return None
            entries = response[1]
        elif isinstance(response, list):
            entries = response
        else:
            return None
        stream, group = _arg(args, kwargs, 0, "name"), _text(_arg(args, kwargs, 1, "groupname"))
        consumer = _text(_arg(args, kwargs, 2, "consumername"))
        state = states.get(self)
        state.end_current()
        wrapped, deliveries = _deliveries(telemetry, state, stream, entries, group)
        if auto:
            response[1] = wrapped
        else:
            response = wrapped
        return response, deliveries, group, consumer

    def claim_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
        start_ns = time.time_ns()
        response = original(self, *args, **kwargs)
        if _is_pipeline(self):
            return response
        try:
            prepared = prepare(self, args, kwargs, response)
            if prepared is None:
                return response
            response, deliveries, group, consumer = prepared
            _attempts_sync(self, cls, deliveries, group, consumer)
            if deliveries:
                _announce(telemetry, deliveries, {deliveries[0].stream}, group, start_ns)
        except Exception:
            internal_error("redis", "instrumenting a claim")
        return response

    if not is_async:
        return claim_sync

    async def claim_async(self: Any, *args: Any, **kwargs: Any) -> Any:
        start_ns = time.time_ns()
        response = await original(self, *args, **kwargs)
        try:
            prepared = prepare(self, args, kwargs, response)
            if prepared is None:
                return response
            response, deliveries, group, consumer = prepared
            await _attempts_async(self, cls, deliveries, group, consumer)
            if deliveries:
                _announce(telemetry, deliveries, {deliveries[0].stream}, group, start_ns)
        except Exception:
            internal_error("redis", "instrumenting a claim")
        return response

    def claim(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _is_pipeline(self):
            return original(self, *args, **kwargs)
        return claim_async(self, *args, **kwargs)

    return claim


def _strip_entries(response: Any) -> Any:
    if isinstance(response, list):
        for entry in response:
            if isinstance(entry, tuple) and len(entry) == 2 and entry[1] is not None:
                split_reserved(entry[1])
    return response


def _strip_wrapper(cls: type, name: str, is_async: bool) -> Callable[..., Any]:
    original = getattr(cls, name)

    def strip_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
        response = original(self, *args, **kwargs)
        if _is_pipeline(self):
            return response
        return _strip_entries(response)

    if not is_async:
        return strip_sync

    async def strip_async(self: Any, *args: Any, **kwargs: Any) -> Any:
        return _strip_entries(await original(self, *args, **kwargs))

    def strip(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _is_pipeline(self):
            return original(self, *args, **kwargs)
        return strip_async(self, *args, **kwargs)

    return strip


# -- settling -------------------------------------------------------------------------------
def _acked(stream: Any, group: Any, ids: tuple[Any, ...]) -> list[_Delivery]:
    """The open handlings of the entries an XACK names (each lookup is one atomic dict read)."""
    if not _open:
        return []
    key_stream = stream if type(stream) is str else _text(stream)
    key_group = group if type(group) is str else _text(group)
    if len(ids) == 1:
        entry_id = ids[0]
        found = _open.get((key_stream, key_group, entry_id if type(entry_id) is str else _text(entry_id)))
        return [] if found is None else [found]
    return [d for d in (_open.get((key_stream, key_group, _text(i))) for i in ids) if d is not None]


def _settle_acked(deliveries: list[_Delivery]) -> None:
    for delivery in deliveries:
        handling = delivery.handling
        if handling is None:
            continue
        try:
            _forget(delivery)
            state = delivery.state
            delivery.ended_implicitly = False  # settled by its XACK: processing(entry) starts no other
            if state.current is delivery:
                state.current = None
                state.tracker(delivery.group).end_current()  # detaches (this thread or task), completed
            else:
                handling.settle(Outcome.COMPLETED)
        except Exception:
            internal_error("redis", "settling an acknowledged entry")


def _xack_wrapper(telemetry: RedisTelemetry, cls: type, is_async: bool) -> Callable[..., Any]:
    original: Callable[..., Any] = cls.xack  # type: ignore[attr-defined]
    messaging = telemetry.messaging
    settle_spans = messaging.settings.settle_spans  # the settings are frozen

    def enter(stream: Any, deliveries: list[_Delivery]) -> tuple[Any, Any]:
        """Run the command in the handling's context (its command span is the handling's child)."""
        token = span = None
        try:
            handling = deliveries[0].handling if len(deliveries) == 1 else None
            context = handling.context if handling is not None and not handling.settled else None
            if settle_spans:
                span = messaging.settle_span(_text(stream), "ack", context=context)
                if span is not None:
                    context = trace.set_span_in_context(span, context)
            if context is not None and context is not _current_context():  # in its handling's loop: current already
                token = attach(context)
        except Exception:
            internal_error("redis", "starting an acknowledgement")
        return token, span

    def leave(token: Any, span: Any) -> None:
        if token is not None:
            detach(token)
        if span is not None:
            span.end()

    def xack_sync(self: Any, name: Any, groupname: Any, *ids: Any) -> Any:
        if _is_pipeline(self):
            return original(self, name, groupname, *ids)
        deliveries = _acked(name, groupname, ids)
        if not deliveries and not settle_spans:
            return original(self, name, groupname, *ids)
        token, span = enter(name, deliveries)
        try:
            result = original(self, name, groupname, *ids)
        finally:
            leave(token, span)
        _settle_acked(deliveries)
        return result

    if not is_async:
        return xack_sync

    async def xack_async(self: Any, name: Any, groupname: Any, *ids: Any) -> Any:
        deliveries = _acked(name, groupname, ids)
        if not deliveries and not settle_spans:
            return await original(self, name, groupname, *ids)
        token, span = enter(name, deliveries)
        try:
            result = await original(self, name, groupname, *ids)
        finally:
            leave(token, span)
        _settle_acked(deliveries)
        return result

    def xack(self: Any, name: Any, groupname: Any, *ids: Any) -> Any:
        if _is_pipeline(self):
            return original(self, name, groupname, *ids)
        return xack_async(self, name, groupname, *ids)

    return xack
