"""``eda.consumer.lag``: how many records each aiokafka consumer is behind, per partition.

Lag is the partition's high watermark (``consumer.highwater(tp)``, or the last stable
offset under ``isolation_level="read_committed"``) minus the consumer's position (the next
offset it hands to the application): records written to the partition and not yet handed
over, prefetched ones included. aiokafka learns the high watermark from every fetch
response, so both numbers are already in the client: a refresh task on the consumer's own
event loop reads them every :data:`REFRESH_S` seconds (never per record), and the observable
gauge's callback only reads the last snapshot, so the SDK's collection never touches the
loop or the network. One exception, measured against Kafka 4.4: aiokafka stops fetching a
partition while records of it wait in its buffer, so an application that stopped taking
records would show a frozen lag. When a partition's last fetch response is older than
:data:`STALE_S`, the refresh task (not the collection) asks the broker for its end offset
with ``consumer.end_offsets``, at most once every 5 s per consumer.

The gauge is :class:`~otel_eda.transports.kafka_telemetry.PartitionLag` (its attributes,
its limit of :data:`MAX_PARTITIONS` partitions per process). The conventions have no lag
metric yet (semconv #792 proposes ``messaging.consumer.lag``). A partition appears after the
consumer's first fetch from it; its series goes when the partition is revoked or the
consumer stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any, Final

from opentelemetry import metrics

from otel_eda._selfmetrics import internal_error
from otel_eda.transports.kafka_telemetry import MAX_PARTITIONS, PartitionLag, Tracked
from otel_eda.transports.refresh_task import cancel_from_anywhere

__all__ = ["MAX_PARTITIONS", "REFRESH_S", "ConsumerLag", "lag_of"]

_log = logging.getLogger(__name__)

#: Seconds between two reads of a consumer's high watermarks and positions.
REFRESH_S: Final = 1.0
#: How long a refresh waits for ``consumer.position(tp)``: it answers at once when the position
#: is known, and otherwise would wait for a reset that needs the network.
_POSITION_WAIT_S: Final = 0.05
#: Seconds after which the high watermark a partition's last fetch brought is stale (see lag_of).
STALE_S: Final = 5.0
#: Seconds between two end-offset requests of one consumer, and how long one may take.
_LIST_OFFSETS_EVERY_S: Final = 5.0
_LIST_OFFSETS_WAIT_S: Final = 2.0


async def lag_of(consumer: Any, *, ask_broker_when_stale: bool = False) -> dict[tuple[str, int], int]:
    """``{(topic, partition): lag}`` of every assigned partition whose high watermark is known.

    With ``ask_broker_when_stale``, partitions whose last fetch response is older than
    :data:`STALE_S` (aiokafka does not fetch a partition while records of it wait in its
    buffer, so a slow application freezes the high watermark it knows) get their end offset
    from one ``consumer.end_offsets`` request.
    """
    found: dict[tuple[str, int], int] = {}
    ends: dict[Any, int] = {}
    stale = []
    now_ms = time.time() * 1000
    for tp in consumer.assignment():
        try:
            end = consumer.highwater(tp)
            stable = consumer.last_stable_offset(tp)
            polled_ms = consumer.last_poll_timestamp(tp)
        except AssertionError:  # revoked between assignment() and here
            continue
        if stable is not None and stable >= 0:
            end = stable
        if end is None:
            continue
        ends[tp] = int(end)
        if polled_ms is not None and now_ms - polled_ms > STALE_S * 1000:
            stale.append(tp)
    if stale and ask_broker_when_stale:
        try:
            listed = await asyncio.wait_for(consumer.end_offsets(stale), _LIST_OFFSETS_WAIT_S)
        except Exception:  # the broker is away or the partitions moved: keep what the client knows
            _log.debug("otel-eda: end offsets of %d partitions not listed", len(stale), exc_info=True)
        else:
            ends.update({tp: max(ends[tp], int(offset)) for tp, offset in listed.items() if tp in ends})
    for tp, end in ends.items():
        try:
            position = await asyncio.wait_for(consumer.position(tp), _POSITION_WAIT_S)
        except Exception:  # no valid position yet (timed out), or revoked: nothing to report
            continue
        found[(tp.topic, tp.partition)] = max(0, end - int(position))
    return found


class ConsumerLag(PartitionLag):
    """The ``eda.consumer.lag`` gauge of the aiokafka consumers handed to :meth:`track`."""

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        refresh_s: float = REFRESH_S,
        scope: str = "otel_eda.transports.aiokafka",
    ) -> None:
        super().__init__(meter_provider, scope=scope)
        self._refresh_s = refresh_s

    def track(self, consumer: Any, group: str | None) -> None:
        """Start refreshing ``consumer``'s lag; call from its event loop. Idempotent."""
        if self._closed or consumer in self._consumers:
            return
        tracked = Tracked(group)
        self._consumers[consumer] = tracked
        tracked.task = asyncio.get_running_loop().create_task(
            self._refresh(weakref.ref(consumer), tracked), name="otel-eda consumer lag"
        )

    def untrack(self, consumer: Any) -> None:
        """Stop refreshing ``consumer``'s lag and drop its series (it stopped)."""
        tracked = self._consumers.pop(consumer, None)
        if tracked is not None:
            cancel_from_anywhere(tracked.task)

    async def _refresh(self, ref: weakref.ref[Any], tracked: Tracked) -> None:
        while True:
            consumer = ref()
            if consumer is None:
                return
            ask = time.monotonic() - tracked.listed_at >= _LIST_OFFSETS_EVERY_S
            if ask:
                tracked.listed_at = time.monotonic()
            try:
                tracked.lags = self._bounded(await lag_of(consumer, ask_broker_when_stale=ask), tracked)
            except Exception:
                internal_error("consumer_lag", "reading a consumer's high watermarks")
                return
            del consumer  # no strong reference while sleeping: a dropped consumer is collected
            try:
                await asyncio.sleep(self._refresh_s)
            except asyncio.CancelledError:  # untrack(): the consumer stopped
                return
