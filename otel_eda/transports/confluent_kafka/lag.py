"""``eda.consumer.lag`` of confluent-kafka consumers: records behind, per partition.

Lag is the partition's high watermark minus the consumer's position (the offset after the
last record handed to the application): records written to the partition and not yet
handed over, prefetched ones included. librdkafka keeps both numbers itself: the position,
and the high watermark of the last fetch response (``get_watermark_offsets(tp,
cached=True)``), so the gauge's callback reads them at collection, without any network
request and without touching the application's thread. The gauge is
:class:`~otel_eda.transports.kafka_telemetry.PartitionLag`, as aiokafka's (same attributes,
same limit of partitions); only where the numbers come from differs.

A partition appears once the consumer handed over a record of it (before, librdkafka has no
position) and goes when the partition is revoked or the consumer closes. librdkafka stops
fetching a partition whose prefetch queue is full (``queued.max.messages.kbytes``): an
application that takes no records for long shows the lag of the last fetch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from otel_eda._selfmetrics import internal_error
from otel_eda.transports.kafka_telemetry import PartitionLag

__all__ = ["CachedConsumerLag", "cached_lag_of"]


def cached_lag_of(consumer: Any) -> dict[tuple[str, int], int]:
    """``{(topic, partition): lag}`` of every assigned partition with a position and a
    known high watermark, from librdkafka's cache (no request to the broker)."""
    assignment = consumer.assignment()
    if not assignment:
        return {}
    found: dict[tuple[str, int], int] = {}
    for tp in consumer.position(assignment):
        if tp.offset < 0:  # no record handed over yet: no position
            continue
        _low, high = consumer.get_watermark_offsets(tp, cached=True)
        if high is None or high < 0:
            continue
        found[(tp.topic, tp.partition)] = max(0, high - tp.offset)
    return found


class CachedConsumerLag(PartitionLag):
    """The ``eda.consumer.lag`` gauge of the confluent-kafka consumers handed to :meth:`track`,
    read from librdkafka's cache when the gauge is collected.

    A lock keeps a collection and a consumer's ``close()`` apart (the instrumentation calls
    :meth:`untrack` before the client closes: a closing client must not be read).
    """

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        self._lock = threading.Lock()
        super().__init__(meter_provider, scope="otel_eda.transports.confluent_kafka")

    def track(self, consumer: Any, group: str | None) -> None:
        """Report ``consumer``'s lag from now on. Idempotent; any thread."""
        with self._lock:
            super().track(consumer, group)

    def untrack(self, consumer: Any) -> None:
        """Stop reading ``consumer`` and drop its series (it closes)."""
        with self._lock:
            super().untrack(consumer)

    def refresh(self) -> None:
        """Read every tracked consumer's lag now (the gauge's callback does)."""
        with self._lock:
            for consumer, tracked in list(self._consumers.items()):
                try:
                    tracked.lags = self._bounded(cached_lag_of(consumer), tracked)
                except Exception:
                    internal_error("consumer_lag", "reading a consumer's positions and high watermarks")
                    tracked.lags = {}

    def lags(self) -> dict[tuple[str, int, str | None], int]:
        self.refresh()
        return super().lags()

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        self.refresh()
        return super()._observe(options)
