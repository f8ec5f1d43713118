"""``eda.broker.queue.depth`` and ``eda.broker.queue.consumers``: each consumed queue's ready
messages and consumers, as RabbitMQ reports them.

A queue is tracked from the first ``consume``, ``iterator`` or ``get`` of an instrumented
application on it. A refresh task on the queue's own event loop asks the broker every
:data:`REFRESH_S` seconds with a passive ``queue.declare`` on a channel of its own (opened on
the queue's connection: a failed declare, a deleted queue say, closes only that channel), and
the observable gauges' callbacks only read the last answer: never a network call inside the
SDK's collection, never one per message. A queue whose broker does not answer keeps its last
value until it does again (a robust connection reconnecting); a queue whose channel the
application closed, or that was garbage-collected, is forgotten (its series goes).

Both gauges carry ``messaging.system=rabbitmq`` and ``messaging.destination.name`` (the queue).
At most :data:`MAX_QUEUES` queues are tracked per process; more are left out and counted once
each in ``eda.internal.errors`` (component ``queue_depth``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Iterable
from typing import Any, Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from otel_eda import semconv
from otel_eda._selfmetrics import count_internal_error
from otel_eda.transports.refresh_task import cancel_from_anywhere

__all__ = ["MAX_QUEUES", "REFRESH_S", "QueueDepth"]

_log = logging.getLogger(__name__)

#: Seconds between two reads of a queue's depth.
REFRESH_S: Final = 5.0
#: Queues whose depth is reported at most (per process).
MAX_QUEUES: Final = 1000
#: How long one passive declare may take.
_DECLARE_WAIT_S: Final = 5.0


class _Tracked:
    __slots__ = ("attributes", "consumers", "depth", "task")

    def __init__(self, name: str) -> None:
        self.attributes = {
            semconv.MESSAGING_SYSTEM: semconv.MESSAGING_SYSTEM_RABBITMQ,
            semconv.MESSAGING_DESTINATION_NAME: name,
        }
        self.depth: int | None = None
        self.consumers: int | None = None
        self.task: asyncio.Task[None] | None = None


class QueueDepth:
    """The queue depth and consumer count gauges of the queues handed to :meth:`track`."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None, *, refresh_s: float = REFRESH_S) -> None:
        self._refresh_s = refresh_s
        self._queues: dict[str, _Tracked] = {}
        self._over_limit: set[str] = set()
        self._closed = False
        meter = metrics.get_meter("otel_eda.transports.aio_pika", meter_provider=meter_provider)
        meter.create_observable_gauge(
            semconv.METRIC_BROKER_QUEUE_DEPTH,
            callbacks=[self._observe_depth],
            unit="{message}",
            description="Messages ready in the broker's queue (as of the last refresh)",
        )
        meter.create_observable_gauge(
            semconv.METRIC_BROKER_QUEUE_CONSUMERS,
            callbacks=[self._observe_consumers],
            unit="{consumer}",
            description="Consumers of the broker's queue (as of the last refresh)",
        )

    def track(self, queue: Any) -> None:
        """Start refreshing ``queue``'s depth (an aio-pika ``Queue``); call from its event loop.
        Idempotent per queue name."""
        name = getattr(queue, "name", None)
        if self._closed or not isinstance(name, str) or not name or name in self._queues:
            return
        if len(self._queues) >= MAX_QUEUES:
            if name not in self._over_limit and len(self._over_limit) < MAX_QUEUES:
                self._over_limit.add(name)
                _log.warning("otel-eda: more than %d queues: the depth of %s is not reported", MAX_QUEUES, name)
                count_internal_error("queue_depth")
            return
        tracked = self._queues[name] = _Tracked(name)
        tracked.task = asyncio.get_running_loop().create_task(
            self._refresh(weakref.ref(queue), name, tracked), name="otel-eda queue depth"
        )

    def close(self) -> None:
        """Stop every refresh (uninstrument); the gauges report nothing afterwards."""
        self._closed = True
        for tracked in list(self._queues.values()):
            cancel_from_anywhere(tracked.task)
        self._queues.clear()

    def depths(self) -> dict[str, tuple[int | None, int | None]]:
        """The last snapshot: ``{queue: (ready messages, consumers)}``."""
        return {name: (t.depth, t.consumers) for name, t in list(self._queues.items())}

    async def _refresh(self, ref: weakref.ref[Any], name: str, tracked: _Tracked) -> None:
        own: Any = None  # our aiormq channel on the queue's connection
        try:
            while True:
                queue = ref()
                if queue is None or _closed_for_good(queue):
                    return
                try:
                    if own is None or own.is_closed:
                        underlay = await queue.channel.get_underlay_channel()
                        own = await asyncio.wait_for(underlay.connection.channel(), _DECLARE_WAIT_S)
                    ok = await asyncio.wait_for(own.queue_declare(name, passive=True), _DECLARE_WAIT_S)
                    tracked.depth = int(ok.message_count)
                    tracked.consumers = int(ok.consumer_count)
                except asyncio.CancelledError:
                    raise
                except Exception:  # the broker is away, or the queue is gone: try again later
                    _log.debug("otel-eda: the depth of queue %s is not known now", name, exc_info=True)
                del queue  # no strong reference while sleeping: a dropped queue is collected
                await asyncio.sleep(self._refresh_s)
        except asyncio.CancelledError:
            pass
        finally:
            if self._queues.get(name) is tracked:
                del self._queues[name]
            if own is not None and not own.is_closed:
                with contextlib.suppress(Exception):
                    await asyncio.shield(own.close())

    def _observe_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(t.depth, t.attributes) for t in list(self._queues.values()) if t.depth is not None]

    def _observe_consumers(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(t.consumers, t.attributes) for t in list(self._queues.values()) if t.consumers is not None]


def _closed_for_good(queue: Any) -> bool:
    """Whether the application closed the queue's channel (a robust channel that is reconnecting
    is not closed for good: aio-pika completes this future only on a final close)."""
    closed = getattr(queue.channel, "_closed", None)  # not OpenTelemetry: aio-pika has no public flag
    return isinstance(closed, asyncio.Future) and closed.done()
