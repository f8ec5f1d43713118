"""What otel-eda writes for Kafka clients (aiokafka, confluent-kafka): one object per instrumentation.

:class:`KafkaTelemetry` holds the :class:`~otel_eda.messaging.Messaging` of the
instrumentation (spans, metrics and lifecycle records of publishing and handling events,
through the public messaging API only), the send-until-acknowledged operation duration,
the duplicate window and the consumer lag gauge, a :class:`PartitionLag` whose subclass
each client has (:mod:`otel_eda.transports.aiokafka.lag`,
:mod:`otel_eda.transports.confluent_kafka.lag`): they differ only in where the numbers come
from. Nothing here imports a Kafka client.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation

from otel_eda import semconv
from otel_eda._selfmetrics import count_internal_error
from otel_eda.flows.records import Recorder
from otel_eda.messaging import Binding, Messaging, TraceMode
from otel_eda.transports.recent import RecentKeys
from otel_eda.version import VERSION

__all__ = ["DUPLICATE_WINDOW", "MAX_PARTITIONS", "NO_EXEMPLAR", "KafkaTelemetry", "PartitionLag"]

_log = logging.getLogger(__name__)

#: the context of the send durations' measurements: no span, so no exemplar (no default rule
#: reads one; the other brokers' operation durations have none either)
NO_EXEMPLAR: Final = Context()
#: Event ids remembered per process to mark a repeated one as a duplicate (per consumer group).
DUPLICATE_WINDOW: Final = 10_000


class KafkaTelemetry:
    """The telemetry of one Kafka instrumentation (see the module docstring).

    ``scope``: the instrumentation scope of its spans and metrics; ``lag``: its client's
    consumer lag gauge.
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        recorders: Sequence[Recorder] = (),
        capture_message_key: bool = False,
        mode: TraceMode | None = None,
        scope: str,
        lag: PartitionLag,
    ) -> None:
        # A send's duration runs until the broker acknowledged the record (the future
        # aiokafka's send returns), not until send() returned: recorded here, not by Messaging.
        self.messaging = Messaging(
            semconv.MESSAGING_SYSTEM_KAFKA,
            scope=scope,
            mode=mode,
            recorders=recorders,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            binding=Binding.KAFKA,
            operation_duration=False,
        )
        self.capture_message_key = capture_message_key
        meter = metrics.get_meter(scope + ".delivery", VERSION, meter_provider)
        self.send_duration = meter.create_histogram(
            semconv.METRIC_OPERATION_DURATION,
            unit="s",
            description="Duration of a send, from the call until the broker acknowledged the record or failed to",
            explicit_bucket_boundaries_advisory=list(semconv.DURATION_BUCKETS_S),
        )
        self.duplicates = meter.create_counter(
            semconv.METRIC_DUPLICATES,
            unit="{message}",
            description="Records whose event id this process handled before in the same consumer group",
        )
        self.lag = lag
        self._seen = RecentKeys(DUPLICATE_WINDOW)
        self._attribute_sets: dict[tuple[str, str, str | None, str | None], Mapping[str, str]] = {}

    def close(self) -> None:
        self.lag.close()

    def seen_before(self, group: str, event_id: str) -> bool:
        """Whether ``event_id`` was handled in ``group`` within the last :data:`DUPLICATE_WINDOW` ids."""
        return self._seen.seen_before((group, event_id))

    def operation_attributes(
        self, operation: str, destination: str | None, group: str | None, error: str | None = None
    ) -> Mapping[str, str]:
        key = (operation, destination or "", group, error)
        attrs = self._attribute_sets.get(key)
        if attrs is None:
            attrs = {
                semconv.MESSAGING_SYSTEM: semconv.MESSAGING_SYSTEM_KAFKA,
                semconv.MESSAGING_OPERATION_NAME: operation,
            }
            if destination:
                attrs[semconv.MESSAGING_DESTINATION_NAME] = destination
            if group:
                attrs[semconv.MESSAGING_CONSUMER_GROUP_NAME] = group
            if error:
                attrs[semconv.ERROR_TYPE] = error
            if len(self._attribute_sets) < 4096:
                self._attribute_sets[key] = attrs
        return attrs


#: Partitions (over all consumers of the process) whose lag is reported at most.
MAX_PARTITIONS: Final = 10_000


class Tracked:
    """One tracked consumer: its group, its last lag snapshot, its series' attributes."""

    __slots__ = ("attributes", "group", "lags", "listed_at", "task")

    def __init__(self, group: str | None) -> None:
        self.group = group
        self.lags: Mapping[tuple[str, int], int] = {}
        self.attributes: dict[tuple[str, int], dict[str, str]] = {}
        #: the client's own refresh (aiokafka: a task on the consumer's loop), if it has one
        self.task: Any = None
        self.listed_at = 0.0


class PartitionLag:
    """The ``eda.consumer.lag`` gauge (unit ``{message}``) of the consumers handed to
    :meth:`track`: each consumer's last snapshot ``{(topic, partition): lag}``, with
    ``messaging.system=kafka``, ``messaging.destination.name``,
    ``messaging.destination.partition.id`` and ``messaging.consumer.group.name`` (when the
    consumer has a group). At most :data:`MAX_PARTITIONS` partitions are reported per process;
    more are left out and counted once each in ``eda.internal.errors`` (component
    ``consumer_lag``). A client's subclass fills the snapshots."""

    def __init__(self, meter_provider: metrics.MeterProvider | None, *, scope: str) -> None:
        self._consumers: weakref.WeakKeyDictionary[Any, Tracked] = weakref.WeakKeyDictionary()
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
        """Report ``consumer``'s lag from now on. Idempotent."""
        if not self._closed and consumer not in self._consumers:
            self._consumers[consumer] = Tracked(group)

    def untrack(self, consumer: Any) -> None:
        """Stop reporting ``consumer``'s lag and drop its series (it stopped)."""
        self._consumers.pop(consumer, None)

    def close(self) -> None:
        """Stop every consumer's reporting (uninstrument); the gauge reports nothing afterwards."""
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

    def _bounded(self, lags: dict[tuple[str, int], int], tracked: Tracked) -> dict[tuple[str, int], int]:
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
