"""``eda.broker.queue.depth`` and ``eda.broker.queue.consumers`` for pika: each consumed queue's
ready messages and consumers, as RabbitMQ reports them.

A queue is tracked from the first ``basic_consume``, ``consume()`` or ``basic_get`` of an
instrumented application on it (``BlockingConnection`` or ``SelectConnection``). pika's
connections are not thread-safe and a ``BlockingConnection`` only talks to the broker while the
application calls it, so the application's connection is never used: one daemon thread per
instrumentation (``otel-eda-pika-queue-depth``) opens a ``BlockingConnection`` of its own per
broker, with the application connection's parameters (host, port, virtual host, credentials,
TLS; one connection attempt, short socket timeouts, ``connection_name`` ``otel-eda queue
depth``), and every :data:`REFRESH_S` seconds asks it with a passive ``queue.declare`` per
tracked queue. The observable gauges' callbacks only read the last answers
(:mod:`otel_eda.transports.queue_gauges`, shared with aio-pika): never a network call inside the
SDK's collection, never one per message.

* A queue is forgotten (its series goes) once every channel that consumed it is closed or
  garbage-collected; at most :data:`MAX_QUEUES` queues and :data:`MAX_BROKERS` brokers are
  followed, more are left out, logged and counted once each.
* A refresh that fails (the broker is away, refuses the connection...) drops the values of the
  broker's queues until one succeeds, rather than reporting stale ones; each failed refresh of a
  broker is counted in ``eda.internal.errors`` (component ``queue_depth``), the first of an
  outage logged as a WARNING (later ones at DEBUG), the recovery at INFO. A queue the broker no
  longer has (``NOT_FOUND``) reports nothing until it is back.
* ``uninstrument()`` stops the thread, which closes its connections. After ``os.fork()`` the
  child forgets the parent's queues and connections (never touching the parent's sockets); its
  own consumers start a thread of its own (:mod:`otel_eda.process_hooks`).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import weakref
from typing import Any, Final

from opentelemetry import metrics
from opentelemetry.instrumentation.utils import suppress_instrumentation

from otel_eda._selfmetrics import count_internal_error, internal_error
from otel_eda.process_hooks import ForkHook, register_fork_hook, unregister_fork_hook
from otel_eda.transports.queue_gauges import COMPONENT, MAX_QUEUES, REFRESH_S, QueueGauges, TrackedQueue

__all__ = ["MAX_BROKERS", "MAX_QUEUES", "REFRESH_S", "PikaQueueDepth"]

_log = logging.getLogger(__name__)

#: Brokers (host, port, virtual host, user) followed at most: one connection each.
MAX_BROKERS: Final = 16
#: Socket and protocol-stack timeouts of the refresh connections (seconds).
_SOCKET_TIMEOUT_S: Final = 2.0
_STACK_TIMEOUT_S: Final = 5.0
#: Heartbeat timeout of the refresh connections: a broker that stops answering without closing
#: the socket (a frozen node, a partition) is noticed in about twice this, not the broker's 60 s
_HEARTBEAT_S: Final = 5
#: How often, between refreshes, the refresh connections answer the broker's heartbeats.
_SERVICE_S: Final = 1.0
_NOT_FOUND: Final = 404


def _broker_key(params: Any) -> tuple[Any, ...]:
    credentials = getattr(params, "credentials", None)
    return (
        getattr(params, "host", None),
        getattr(params, "port", None),
        getattr(params, "virtual_host", None),
        getattr(credentials, "username", None),
    )


def _own_parameters(params: Any) -> Any:
    """The application connection's parameters, for a connection of our own that gives up fast."""
    ssl_options = params.ssl_options  # shared, not copied (an SSLContext cannot be), as pika's own copy does
    own = copy.deepcopy(params, {id(ssl_options): ssl_options})  # the application's object is never changed
    own.connection_attempts = 1
    own.retry_delay = 0
    own.socket_timeout = _SOCKET_TIMEOUT_S
    own.stack_timeout = _STACK_TIMEOUT_S
    own.blocked_connection_timeout = _STACK_TIMEOUT_S
    own.heartbeat = _HEARTBEAT_S
    own.client_properties = {**(own.client_properties or {}), "connection_name": "otel-eda queue depth"}
    return own


class _Watched:
    """A tracked queue: its gauge entry, the broker it is on, the application channels consuming it."""

    __slots__ = ("channels", "key", "params", "tracked")

    def __init__(self, tracked: TrackedQueue, key: tuple[Any, ...], params: Any) -> None:
        self.tracked = tracked
        self.key = key
        self.params = params
        self.channels: weakref.WeakSet[Any] = weakref.WeakSet()

    def in_use(self) -> bool:
        return any(not channel.is_closed for channel in list(self.channels))


class _Broker:
    """The refresh thread's connection to one broker (used by that thread only)."""

    __slots__ = ("channel", "connection", "params")

    def __init__(self, params: Any) -> None:
        self.params = params
        self.connection: Any = None
        self.channel: Any = None

    def declare(self, queue: str) -> tuple[int, int]:
        import pika  # the thread runs only when pika is in use

        if self.connection is None or not self.connection.is_open:
            self.close()
            self.connection = pika.BlockingConnection(self.params)
        if self.channel is None or not self.channel.is_open:
            self.channel = self.connection.channel()
        ok = self.channel.queue_declare(queue, passive=True).method
        return int(ok.message_count), int(ok.consumer_count)

    def service(self) -> None:
        """Process what the broker sent (heartbeats) without waiting; a failure closes the
        connection (the next refresh opens a new one and counts a failure if that fails)."""
        connection = self.connection
        if connection is None or not connection.is_open:
            return
        try:
            connection.process_data_events(0)
        except Exception:
            _log.debug("otel-eda: a queue depth connection failed between refreshes", exc_info=True)
            self.close()

    def close(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:
                _log.debug("otel-eda: closing a queue depth connection failed", exc_info=True)


class PikaQueueDepth:
    """The queue depth and consumer count gauges of the queues handed to :meth:`track`."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None, *, refresh_s: float = REFRESH_S) -> None:
        self._refresh_s = refresh_s
        self._gauges = QueueGauges(meter_provider, scope="otel_eda.transports.pika")
        self._watched: dict[str, _Watched] = {}
        self._brokers: set[tuple[Any, ...]] = set()
        self._over_limit: set[tuple[Any, ...]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._fork_hook = register_fork_hook(ForkHook("pika queue depth", after_in_child=self._after_fork_in_child))

    def track(self, channel: Any, queue: Any) -> None:
        """Follow ``queue``'s depth while ``channel`` (a ``pika.channel.Channel`` consuming it)
        is open. Cheap when the queue is followed already; never raises."""
        if self._closed or not isinstance(queue, str) or not queue:
            return
        try:
            watched = self._watched.get(queue)
            if watched is None:
                watched = self._watch(channel, queue)
                if watched is None:
                    return
            if channel not in watched.channels:
                with self._lock:
                    watched.channels.add(channel)
            if self._thread is None:
                self._start()
        except Exception:
            internal_error(COMPONENT, "following a queue's depth")

    def _watch(self, channel: Any, queue: str) -> _Watched | None:
        params = channel.connection.params
        key = _broker_key(params)
        with self._lock:
            new_broker = key not in self._brokers
            over = new_broker and len(self._brokers) >= MAX_BROKERS
            first = over and key not in self._over_limit and len(self._over_limit) < MAX_BROKERS
            if first:
                self._over_limit.add(key)
        if over:
            if first:
                _log.warning(
                    "otel-eda: more than %d brokers: the queue depths of %s:%s are left out", MAX_BROKERS, *key[:2]
                )
                count_internal_error(COMPONENT)
            return None
        tracked = self._gauges.add(queue)
        if tracked is None:
            return self._watched.get(queue)
        watched = _Watched(tracked, key, _own_parameters(params))
        with self._lock:
            self._brokers.add(key)
            self._watched[queue] = watched
        return watched

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="otel-eda-pika-queue-depth", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the refresh thread (uninstrument); the gauges report nothing afterwards."""
        self._closed = True
        self._stop.set()
        unregister_fork_hook(self._fork_hook)
        with self._lock:
            self._watched.clear()
            thread = self._thread
        self._gauges.close()
        if thread is not None and thread is not threading.current_thread():
            thread.join(_SOCKET_TIMEOUT_S)

    def depths(self) -> dict[str, tuple[int | None, int | None]]:
        """The last snapshot: ``{queue: (ready messages, consumers)}``."""
        return self._gauges.snapshot()

    @property
    def thread(self) -> threading.Thread | None:
        """The refresh thread (``None`` until a queue is tracked)."""
        return self._thread

    # -- the refresh thread ---------------------------------------------------------------
    def _run(self) -> None:
        brokers: dict[tuple[Any, ...], _Broker] = {}  # this thread's own: a forked child never sees them
        failing: set[tuple[Any, ...]] = set()  # brokers in an outage (kept while their queues come and go)
        stop = self._stop
        try:
            while not stop.is_set():
                try:
                    self._refresh(brokers, failing)
                except Exception:  # never let the thread die: the next pass tries again
                    internal_error(COMPONENT, "refreshing the depth of pika queues")
                self._wait(brokers)
        finally:
            for broker in brokers.values():
                broker.close()

    def _wait(self, brokers: dict[tuple[Any, ...], _Broker]) -> None:
        """Wait for the next refresh, letting each connection answer the broker's heartbeats
        about every second (a ``BlockingConnection`` only does I/O when called: idle for
        longer than two heartbeats, the broker would close it)."""
        stop = self._stop
        deadline = time.monotonic() + self._refresh_s
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if stop.wait(min(remaining, _SERVICE_S)):
                return
            for broker in brokers.values():
                broker.service()

    def _refresh(self, brokers: dict[tuple[Any, ...], _Broker], failing: set[tuple[Any, ...]]) -> None:
        with self._lock:
            watched = list(self._watched.items())
        down: set[tuple[Any, ...]] = set()  # brokers that failed in this pass: not asked again before the next
        for name, entry in watched:
            if self._stop.is_set():
                return
            if not entry.in_use():
                self._forget(name, entry)
                continue
            tracked = entry.tracked
            if entry.key in down:
                tracked.depth = tracked.consumers = None
                continue
            broker = brokers.get(entry.key)
            if broker is None:
                broker = brokers[entry.key] = _Broker(entry.params)
            try:
                with suppress_instrumentation():
                    tracked.depth, tracked.consumers = broker.declare(name)
            except Exception as exc:
                tracked.depth = tracked.consumers = None
                if getattr(exc, "reply_code", None) == _NOT_FOUND:
                    _log.debug("otel-eda: queue %s is not on the broker now", name)
                    continue
                down.add(entry.key)
                broker.close()
                count_internal_error(COMPONENT)
                level = logging.DEBUG if entry.key in failing else logging.WARNING
                if len(failing) < MAX_BROKERS:
                    failing.add(entry.key)
                _log.log(
                    level, "otel-eda: the depth of queue %s is not known now (%s: %s)", name, type(exc).__name__, exc
                )
                continue
            if entry.key in failing:
                failing.discard(entry.key)
                _log.info("otel-eda: queue depths are read again from %s", entry.key[:2])
        with self._lock:
            wanted = {entry.key for entry in self._watched.values()}
        for key in [key for key in brokers if key not in wanted]:
            brokers.pop(key).close()

    def _forget(self, name: str, entry: _Watched) -> None:
        with self._lock:
            if entry.in_use():  # a channel started consuming it meanwhile (track() adds under the lock)
                return
            if self._watched.get(name) is entry:
                del self._watched[name]
            if all(w.key != entry.key for w in self._watched.values()):
                self._brokers.discard(entry.key)
        self._gauges.remove(name, entry.tracked)

    def _after_fork_in_child(self) -> None:
        # the thread did not survive the fork; the parent's channels and connections are not ours
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._watched.clear()
        self._brokers.clear()
        self._gauges.after_fork_in_child()
        if self._closed:
            self._stop.set()
