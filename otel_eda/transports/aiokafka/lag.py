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

The gauge (unit ``{message}``) carries ``messaging.system=kafka``,
``messaging.destination.name``, ``messaging.destination.partition.id`` and
``messaging.consumer.group.name`` (when the consumer has a group). The conventions have no
lag metric yet (semconv #792 proposes ``messaging.consumer.lag``). A partition appears after
the consumer's first fetch from it; its series goes when the partition is revoked or the
consumer stops. At most :data:`MAX_PARTITIONS` partitions are tracked per process; more are
left out and counted once each in ``eda.internal.errors`` (component ``consumer_lag``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from otel_eda import semconv
from otel_eda._selfmetrics import count_internal_error, internal_error

__all__ = ["MAX_PARTITIONS", "REFRESH_S", "ConsumerLag", "lag_of"]

_log = logging.getLogger(__name__)

#: Seconds between two reads of a consumer's high watermarks and positions.
REFRESH_S: Final = 1.0
#: Partitions (over all consumers of the process) whose lag is reported at most.
MAX_PARTITIONS: Final = 10_000
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


class _Tracked:
    __slots__ = ("attributes", "group", "lags", "listed_at", "task")

    def __init__(self, group: str | None) -> None:
        self.group = group
        self.lags: Mapping[tuple[str, int], int] = {}
        self.attributes: dict[tuple[str, int], dict[str, str]] = {}
        self.task: asyncio.Task[None] | None = None
        self.listed_at = 0.0


class ConsumerLag:
    """The ``eda.consumer.lag`` gauge of the aiokafka consumers handed to :meth:`track`."""

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        refresh_s: float = REFRESH_S,
        scope: str = "otel_eda.transports.aiokafka",
    ) -> None:
        self._refresh_s = refresh_s
        self._consumers: weakref.WeakKeyDictionary[Any, _Tracked] = weakref.WeakKeyDictionary()
        self._over_limit: set[tuple[str, int, str | None]] = set()
        self._closed = False
        meter = metrics.get_meter(scope, meter_provider=meter_provider)
        meter.create_observable_gauge(
            semconv.METRIC_CONSUMER_LAG,
            callbacks=[self._observe],
            unit="{message}",
            description="Records behind the partition's high watermark (not yet handed to the application)",
        )

    def track(self, consumer: Any, group: str | None) -> None:
        """Start refreshing ``consumer``'s lag; call from its event loop. Idempotent."""
        if self._closed or consumer in self._consumers:
            return
        tracked = _Tracked(group)
        self._consumers[consumer] = tracked
        tracked.task = asyncio.get_running_loop().create_task(
            self._refresh(weakref.ref(consumer), tracked), name="otel-eda consumer lag"
        )

    def untrack(self, consumer: Any) -> None:
        """Stop refreshing ``consumer``'s lag and drop its series (it stopped)."""
        tracked = self._consumers.pop(consumer, None)
        if tracked is not None and tracked.task is not None:
            tracked.task.cancel()

    def close(self) -> None:
        """Stop every refresh (uninstrument); the gauge reports nothing afterwards."""
        self._closed = True
        for consumer in list(self._consumers):
            self.untrack(consumer)

    def lags(self) -> dict[tuple[str, int, str | None], int]:
        """The last snapshot: ``{(topic, partition, group): lag}`` over every tracked consumer."""
        return {
            (topic, partition, tracked.group): lag
            for tracked in list(self._consumers.values())
            for (topic, partition), lag in tracked.lags.items()
        }

    async def _refresh(self, ref: weakref.ref[Any], tracked: _Tracked) -> None:
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

    def _bounded(self, lags: dict[tuple[str, int], int], tracked: _Tracked) -> dict[tuple[str, int], int]:
        known = sum(len(t.lags) for t in list(self._consumers.values()) if t is not tracked)
        kept: dict[tuple[str, int], int] = {}
        for key, lag in lags.items():
            if known + len(kept) >= MAX_PARTITIONS:
                full_key = (*key, tracked.group)
                if full_key not in self._over_limit and len(self._over_limit) < MAX_PARTITIONS:
                    self._over_limit.add(full_key)
                    _log.warning(
                        "otel-eda: more than %d partitions: the lag of %s is not reported", MAX_PARTITIONS, key
                    )
                    count_internal_error("consumer_lag")
                continue
            kept[key] = lag
        return kept

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for tracked in list(self._consumers.values()):
            for (topic, partition), lag in tracked.lags.items():
                attributes = tracked.attributes.get((topic, partition))
                if attributes is None:
                    attributes = {
                        semconv.MESSAGING_SYSTEM: semconv.MESSAGING_SYSTEM_KAFKA,
                        semconv.MESSAGING_DESTINATION_NAME: topic,
                        semconv.MESSAGING_DESTINATION_PARTITION_ID: str(partition),
                    }
                    if tracked.group is not None:
                        attributes[semconv.MESSAGING_CONSUMER_GROUP_NAME] = tracked.group
                    tracked.attributes[(topic, partition)] = attributes
                observations.append(Observation(lag, attributes))
            if len(tracked.attributes) > len(tracked.lags):  # partitions revoked: forget their attributes
                tracked.attributes = {key: tracked.attributes[key] for key in tracked.lags if key in tracked.attributes}
        return observations
