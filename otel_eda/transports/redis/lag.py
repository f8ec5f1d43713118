"""``eda.consumer.lag`` and ``eda.consumer.pending`` of Redis Streams consumer groups.

Per (stream, consumer group) that an instrumented client read with ``XREADGROUP``, a
background refresh asks the server ``XINFO GROUPS <stream>`` every :data:`REFRESH_S`
seconds and keeps the answer; the observable gauges' callbacks only read that snapshot, so
the SDK's collection never makes a network call. Redis 7 reports, per group:

* ``lag``: entries of the stream not yet delivered to the group (``eda.consumer.lag``); Redis
  answers nil when it cannot tell (after ``XDEL`` or trimming past the group's position):
  that group's lag is then not reported;
* ``pending``: entries delivered to the group's consumers and not acknowledged
  (``eda.consumer.pending``).

Where the refresh runs: a sync client (``redis.Redis``, thread-safe) is read from one daemon
thread per instrumentation; an asyncio client (``redis.asyncio.Redis``) from a task on the
event loop that first read with it, since its connections belong to that loop. The
refresh's own commands run with OpenTelemetry instrumentation suppressed (no span per
refresh from the contrib redis instrumentation). A failed refresh (server away) drops the
group's values until the next one succeeds, rather than reporting stale ones. At most
:data:`MAX_GROUPS` (stream, group) pairs are tracked per process; more are left out and
counted once each in ``eda.internal.errors`` (component ``consumer_lag``).

The gauges (unit ``{message}``) carry ``messaging.system=redis``,
``messaging.destination.name`` and ``messaging.consumer.group.name``. The conventions have no
lag metric yet (semconv #792).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Final

from opentelemetry import metrics
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.metrics import CallbackOptions, Observation

from otel_eda import semconv
from otel_eda._selfmetrics import count_internal_error, internal_error
from otel_eda.process_hooks import ForkHook, register_fork_hook, unregister_fork_hook
from otel_eda.transports.refresh_task import cancel_from_anywhere

__all__ = ["MAX_GROUPS", "REFRESH_S", "GroupLag", "parse_groups"]

_log = logging.getLogger(__name__)

#: Seconds between two ``XINFO GROUPS`` of a stream.
REFRESH_S: Final = 1.0
#: (stream, group) pairs whose lag is reported at most, per process.
MAX_GROUPS: Final = 10_000


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)


def parse_groups(reply: Any) -> dict[str, tuple[int | None, int | None]]:
    """``{group: (lag, pending)}`` from redis-py's ``xinfo_groups`` reply (never raises).

    >>> parse_groups([{"name": b"billing", "pending": 2, "lag": 5}, {"name": "audit", "pending": 0, "lag": None}])
    {'billing': (5, 2), 'audit': (None, 0)}
    """
    found: dict[str, tuple[int | None, int | None]] = {}
    try:
        for group in reply or ():
            if not isinstance(group, Mapping):
                continue
            lag, pending = group.get("lag"), group.get("pending")
            found[_text(group.get("name"))] = (
                int(lag) if isinstance(lag, int) and lag >= 0 else None,
                int(pending) if isinstance(pending, int) and pending >= 0 else None,
            )
    except Exception:
        _log.debug("otel-eda: an XINFO GROUPS reply not understood", exc_info=True)
    return found


class _Client:
    """The streams and groups of one client, and the last values read."""

    __slots__ = ("groups", "task", "values")

    def __init__(self) -> None:
        self.groups: dict[str, set[str]] = {}  # stream -> groups
        self.values: dict[tuple[str, str], tuple[int | None, int | None]] = {}
        self.task: asyncio.Task[None] | None = None


class GroupLag:
    """The ``eda.consumer.lag`` and ``eda.consumer.pending`` gauges of the tracked clients."""

    def __init__(
        self, meter_provider: metrics.MeterProvider | None = None, *, refresh_s: float = REFRESH_S, scope: str
    ) -> None:
        self._refresh_s = refresh_s
        self._sync: weakref.WeakKeyDictionary[Any, _Client] = weakref.WeakKeyDictionary()
        self._async: weakref.WeakKeyDictionary[Any, _Client] = weakref.WeakKeyDictionary()
        self._count = 0
        self._over_limit = False
        self._closed = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._attributes: dict[tuple[str, str], dict[str, str]] = {}
        meter = metrics.get_meter(scope, meter_provider=meter_provider)
        meter.create_observable_gauge(
            semconv.METRIC_CONSUMER_LAG,
            callbacks=[self._observe_lag],
            unit="{message}",
            description="Stream entries not yet delivered to the consumer group (XINFO GROUPS lag)",
        )
        meter.create_observable_gauge(
            semconv.METRIC_CONSUMER_PENDING,
            callbacks=[self._observe_pending],
            unit="{message}",
            description="Entries delivered to the consumer group and not acknowledged (its pending entries list)",
        )
        self._fork_hook = register_fork_hook(ForkHook("redis consumer lag", after_in_child=self._after_fork_in_child))

    # -- tracking -------------------------------------------------------------------------
    def track(self, client: Any, stream: str, group: str, *, is_async: bool) -> None:
        """Start refreshing ``group``'s lag on ``stream`` through ``client`` (idempotent; an
        asyncio client must be tracked from its event loop)."""
        if self._closed:
            return
        clients = self._async if is_async else self._sync
        with self._lock:
            tracked = clients.get(client)
            if tracked is None:
                tracked = clients[client] = _Client()
            groups = tracked.groups.setdefault(stream, set())
            if group in groups:
                return
            if self._count >= MAX_GROUPS:
                if not self._over_limit:
                    self._over_limit = True
                    _log.warning("otel-eda: more than %d consumer groups: the lag of more is not reported", MAX_GROUPS)
                    count_internal_error("consumer_lag")
                return
            groups.add(group)
            self._count += 1
        if is_async:
            if tracked.task is None or tracked.task.done():
                tracked.task = asyncio.get_running_loop().create_task(
                    self._refresh_async(weakref.ref(client), tracked), name="otel-eda redis consumer lag"
                )
        elif self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="otel-eda-redis-consumer-lag", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop every refresh (uninstrument); the gauges report nothing afterwards."""
        self._closed = True
        self._wake.set()
        unregister_fork_hook(self._fork_hook)
        for _, tracked in self._tracked(self._async):
            cancel_from_anywhere(tracked.task)
        self._sync.clear()
        self._async.clear()

    def _tracked(self, clients: weakref.WeakKeyDictionary[Any, _Client]) -> list[tuple[Any, _Client]]:
        """A snapshot of ``clients`` (track() may add to it from another thread meanwhile)."""
        with self._lock:
            return list(clients.items())

    def values(self) -> dict[tuple[str, str], tuple[int | None, int | None]]:
        """The last snapshot: ``{(stream, group): (lag, pending)}`` over every tracked client."""
        found: dict[tuple[str, str], tuple[int | None, int | None]] = {}
        for clients in (self._sync, self._async):
            for _, tracked in self._tracked(clients):
                found.update(dict(tracked.values))
        return found

    # -- refreshing -----------------------------------------------------------------------
    def _read(self, tracked: _Client, stream: str, reply: Any) -> None:
        groups = parse_groups(reply)
        with self._lock:
            wanted = list(tracked.groups.get(stream, ()))
        for group in wanted:
            value = groups.get(group)
            if value is None:
                tracked.values.pop((stream, group), None)
            else:
                tracked.values[(stream, group)] = value

    def _failed(self, tracked: _Client, stream: str) -> None:
        _log.debug("otel-eda: XINFO GROUPS %s failed", stream, exc_info=True)
        with self._lock:
            wanted = list(tracked.groups.get(stream, ()))
        for group in wanted:
            tracked.values.pop((stream, group), None)

    def _run(self) -> None:
        while not self._closed:
            try:
                for client, tracked in self._tracked(self._sync):
                    with self._lock:
                        streams = list(tracked.groups)
                    for stream in streams:
                        try:
                            with suppress_instrumentation():
                                reply = client.xinfo_groups(stream)
                        except Exception:
                            self._failed(tracked, stream)
                        else:
                            self._read(tracked, stream, reply)
                    del client
            except Exception:  # never let the thread die: the next pass tries again
                internal_error("consumer_lag", "refreshing the lag of redis consumer groups")
            if self._wake.wait(self._refresh_s):
                return

    async def _refresh_async(self, ref: weakref.ref[Any], tracked: _Client) -> None:
        me = asyncio.current_task()
        # A cancellation the client library swallows still ends the refresh: asking the task
        # whether it is being cancelled does not depend on the CancelledError reaching here.
        while not self._closed and not (me is not None and me.cancelling()):
            client = ref()
            if client is None:
                return
            with self._lock:
                streams = list(tracked.groups)
            for stream in streams:
                try:
                    with suppress_instrumentation():
                        reply = await client.xinfo_groups(stream)
                except asyncio.CancelledError:
                    return
                except Exception:
                    self._failed(tracked, stream)
                else:
                    self._read(tracked, stream, reply)
            del client  # no strong reference while sleeping: a dropped client is collected
            try:
                await asyncio.sleep(self._refresh_s)
            except asyncio.CancelledError:
                return

    def _after_fork_in_child(self) -> None:
        self._thread = None  # the thread did not survive the fork: the next track() starts one
        self._lock = threading.Lock()
        for tracked in list(self._async.values()):
            tracked.task = None

    # -- observing ------------------------------------------------------------------------
    def _attrs(self, stream: str, group: str) -> dict[str, str]:
        attributes = self._attributes.get((stream, group))
        if attributes is None:
            attributes = self._attributes[(stream, group)] = {
                semconv.MESSAGING_SYSTEM: semconv.MESSAGING_SYSTEM_REDIS,
                semconv.MESSAGING_DESTINATION_NAME: stream,
                semconv.MESSAGING_CONSUMER_GROUP_NAME: group,
            }
        return attributes

    def _observe(self, index: int) -> Iterable[Observation]:
        observations = []
        for (stream, group), value in self.values().items():
            number = value[index]
            if number is not None:
                observations.append(Observation(number, self._attrs(stream, group)))
        return observations

    def _observe_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe(0)

    def _observe_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe(1)
