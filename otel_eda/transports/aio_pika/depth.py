"""``eda.broker.queue.depth`` and ``eda.broker.queue.consumers``: each consumed queue's ready
messages and consumers, as RabbitMQ reports them.

A queue is tracked from the first ``consume``, ``iterator`` or ``get`` of an instrumented
application on it. A refresh task on the queue's own event loop asks the broker every
:data:`REFRESH_S` seconds with a passive ``queue.declare`` on a channel of its own (opened on
the queue's connection: a failed declare, a deleted queue say, closes only that channel), and
the observable gauges' callbacks only read the last answer: never a network call inside the
SDK's collection, never one per message. While the broker does not answer (within
``_DECLARE_WAIT_S``, 5 s; a robust connection reconnecting, say) the gauges report nothing for
the queue rather than a stale value;
each failed refresh is counted in ``eda.internal.errors`` (component ``queue_depth``), the
first of an outage logged as a WARNING (later ones at DEBUG), the recovery at INFO, as pika's
depth thread does. A queue the broker no longer has reports nothing (not counted: the
application may have deleted it); a queue whose channel the application closed, or that was
garbage-collected, is forgotten (its series goes).

The gauges and their limit (:data:`MAX_QUEUES` queues, more counted in ``eda.internal.errors``,
component ``queue_depth``) are :mod:`otel_eda.transports.queue_gauges`, shared with pika.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import Any, Final

from aiormq.exceptions import ChannelNotFoundEntity
from opentelemetry import metrics

from otel_eda._selfmetrics import count_internal_error
from otel_eda.transports.queue_gauges import COMPONENT, MAX_QUEUES, REFRESH_S, QueueGauges, TrackedQueue
from otel_eda.transports.refresh_task import cancel_from_anywhere

__all__ = ["MAX_QUEUES", "REFRESH_S", "QueueDepth"]

_log = logging.getLogger(__name__)

#: How long one passive declare may take.
_DECLARE_WAIT_S: Final = 5.0


class QueueDepth:
    """The queue depth and consumer count gauges of the queues handed to :meth:`track`."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None, *, refresh_s: float = REFRESH_S) -> None:
        self._refresh_s = refresh_s
        self._gauges = QueueGauges(meter_provider, scope="otel_eda.transports.aio_pika")
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        #: queues whose last refresh failed: the first to fail logs the outage, the last to recover its end
        self._failing: set[str] = set()

    def track(self, queue: Any) -> None:
        """Start refreshing ``queue``'s depth (an aio-pika ``Queue``); call from its event loop.
        Idempotent per queue name."""
        name = getattr(queue, "name", None)
        if self._closed or not isinstance(name, str) or not name or self._gauges.get(name) is not None:
            return
        tracked = self._gauges.add(name)
        if tracked is None:
            return
        self._tasks[name] = asyncio.get_running_loop().create_task(
            self._refresh(weakref.ref(queue), tracked), name="otel-eda queue depth"
        )

    def close(self) -> None:
        """Stop every refresh (uninstrument); the gauges report nothing afterwards."""
        self._closed = True
        for task in list(self._tasks.values()):
            cancel_from_anywhere(task)
        self._tasks.clear()
        self._gauges.close()

    def depths(self) -> dict[str, tuple[int | None, int | None]]:
        """The last snapshot: ``{queue: (ready messages, consumers)}``."""
        return self._gauges.snapshot()

    async def _refresh(self, ref: weakref.ref[Any], tracked: TrackedQueue) -> None:
        name = tracked.name
        own: Any = None  # our aiormq channel on the queue's connection
        try:
            while True:
                queue = ref()
                if queue is None or _closed_for_good(queue):
                    return
                try:
                    if own is None or own.is_closed:
                        # a robust channel's underlay waits for the reconnection: bounded too
                        underlay = await asyncio.wait_for(queue.channel.get_underlay_channel(), _DECLARE_WAIT_S)
                        own = await asyncio.wait_for(underlay.connection.channel(), _DECLARE_WAIT_S)
                    ok = await asyncio.wait_for(own.queue_declare(name, passive=True), _DECLARE_WAIT_S)
                    tracked.depth = int(ok.message_count)
                    tracked.consumers = int(ok.consumer_count)
                    self._recovered(name)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the broker is away, or the queue is gone: try again later
                    tracked.depth = tracked.consumers = None
                    self._failed(name, exc)
                    if isinstance(exc, TimeoutError) and own is not None and not own.is_closed:
                        # a late answer must not land on the next declare: a new channel then
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(own.close(), _DECLARE_WAIT_S)
                        own = None
                del queue  # no strong reference while sleeping: a dropped queue is collected
                await asyncio.sleep(self._refresh_s)
        except asyncio.CancelledError:
            pass
        finally:
            self._failing.discard(name)
            self._gauges.remove(name, tracked)
            if self._tasks.get(name) is asyncio.current_task():
                del self._tasks[name]
            if own is not None and not own.is_closed:
                with contextlib.suppress(Exception):
                    await asyncio.shield(own.close())

    def _failed(self, name: str, exc: Exception) -> None:
        if isinstance(exc, ChannelNotFoundEntity):  # the broker answered: no outage (for this queue)
            _log.debug("otel-eda: queue %s is not on the broker now", name)
            self._recovered(name)
            return
        count_internal_error(COMPONENT)
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing.add(name)
        _log.log(level, "otel-eda: the depth of queue %s is not known now (%s: %s)", name, type(exc).__name__, exc)

    def _recovered(self, name: str) -> None:
        if name in self._failing:
            self._failing.discard(name)
            if not self._failing:
                _log.info("otel-eda: queue depths are read again")


def _closed_for_good(queue: Any) -> bool:
    """Whether the application closed the queue's channel (a robust channel that is reconnecting
    is not closed for good: aio-pika completes this future only on a final close)."""
    closed = getattr(queue.channel, "_closed", None)  # not OpenTelemetry: aio-pika has no public flag
    return isinstance(closed, asyncio.Future) and closed.done()
