"""The ``eda.broker.queue.depth`` and ``eda.broker.queue.consumers`` gauges of the RabbitMQ client
integrations (aio-pika, pika): what they share, whatever refreshes the numbers.

:class:`QueueGauges` registers the two observable gauges and keeps, per tracked queue, the last
answer of the broker; each client's refresh (a task on the queue's event loop for aio-pika, a
thread with a connection of its own for pika) writes there, and the gauges' callbacks only read
it: never a network call inside the SDK's collection. At most :data:`MAX_QUEUES` queues are
tracked per gauge pair; more are left out and counted once each in ``eda.internal.errors``
(component ``queue_depth``), with a warning. Thread-safe; a forked child gets a fresh lock
(:mod:`otel_eda.process_hooks`) until :meth:`QueueGauges.close`.

>>> gauges = QueueGauges(scope="otel_eda.doc")
>>> tracked = gauges.add("orders")
>>> tracked.depth, tracked.consumers = 3, 1
>>> gauges.add("orders") is None  # already tracked
True
>>> gauges.snapshot()
{'orders': (3, 1)}
>>> gauges.remove("orders", tracked)
>>> gauges.snapshot()
{}
>>> gauges.close()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from otel_eda import semconv
from otel_eda._selfmetrics import count_internal_error
from otel_eda.process_hooks import ForkHook, register_fork_hook, unregister_fork_hook

__all__ = ["COMPONENT", "MAX_QUEUES", "REFRESH_S", "QueueGauges", "TrackedQueue"]

_log = logging.getLogger(__name__)

#: Seconds between two reads of a queue's depth.
REFRESH_S: Final = 5.0
#: Queues whose depth is reported at most (per instrumentation, i.e. per process).
MAX_QUEUES: Final = 1000
#: ``eda.component`` of the internal errors counted here and by the refreshes.
COMPONENT: Final = "queue_depth"


class TrackedQueue:
    """One queue's attributes and the broker's last answer (``None``: not known yet, or not now)."""

    __slots__ = ("attributes", "consumers", "depth", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.attributes = {
            semconv.MESSAGING_SYSTEM: semconv.MESSAGING_SYSTEM_RABBITMQ,
            semconv.MESSAGING_DESTINATION_NAME: name,
        }
        self.depth: int | None = None
        self.consumers: int | None = None


class QueueGauges:
    """The two gauges over the queues :meth:`add` ed (see the module docstring)."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None, *, scope: str) -> None:
        self._queues: dict[str, TrackedQueue] = {}
        self._over_limit: set[str] = set()
        self._lock = threading.Lock()
        self._fork_hook = register_fork_hook(ForkHook(f"{scope} queue gauges", after_in_child=self._renew_lock))
        meter = metrics.get_meter(scope, meter_provider=meter_provider)
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

    def add(self, name: str) -> TrackedQueue | None:
        """Track ``name``: its entry, or ``None`` when it is tracked already or over the limit
        (logged and counted once per queue name)."""
        with self._lock:
            if name in self._queues:
                return None
            if len(self._queues) >= MAX_QUEUES:
                first = name not in self._over_limit and len(self._over_limit) < MAX_QUEUES
                if first:
                    self._over_limit.add(name)
            else:
                tracked = self._queues[name] = TrackedQueue(name)
                return tracked
        if first:
            _log.warning("otel-eda: more than %d queues: the depth of %s is not reported", MAX_QUEUES, name)
            count_internal_error(COMPONENT)
        return None

    def get(self, name: str) -> TrackedQueue | None:
        return self._queues.get(name)

    def remove(self, name: str, tracked: TrackedQueue) -> None:
        """Forget ``name`` if ``tracked`` is still its entry (its series goes)."""
        with self._lock:
            if self._queues.get(name) is tracked:
                del self._queues[name]

    def clear(self) -> None:
        with self._lock:
            self._queues.clear()

    def close(self) -> None:
        """Forget every queue and the fork hook (uninstrument): the gauges report nothing."""
        self.clear()
        unregister_fork_hook(self._fork_hook)

    def _renew_lock(self) -> None:
        self._lock = threading.Lock()  # a thread of the parent may have held it at fork time

    def after_fork_in_child(self) -> None:
        """Forget every queue, with a fresh lock: for a refresh whose child tracks the queues
        it consumes itself (pika's)."""
        self._renew_lock()
        self._queues.clear()

    def tracked(self) -> list[TrackedQueue]:
        with self._lock:
            return list(self._queues.values())

    def snapshot(self) -> dict[str, tuple[int | None, int | None]]:
        """The last answers: ``{queue: (ready messages, consumers)}``."""
        return {t.name: (t.depth, t.consumers) for t in self.tracked()}

    def _observe_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(t.depth, t.attributes) for t in self.tracked() if t.depth is not None]

    def _observe_consumers(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(t.consumers, t.attributes) for t in self.tracked() if t.consumers is not None]
