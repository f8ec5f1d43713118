"""What otel-eda writes for Kafka clients (aiokafka, confluent-kafka): one object per instrumentation.

:class:`KafkaTelemetry` holds the :class:`~otel_eda.messaging.Messaging` of the
instrumentation (spans, metrics and lifecycle records of publishing and handling events,
through the public messaging API only), the send-until-acknowledged operation duration,
the duplicate window and the consumer lag gauge.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Final

from opentelemetry import metrics, trace

from otel_eda import semconv
from otel_eda.flows.records import Recorder
from otel_eda.messaging import Binding, Messaging, TraceMode
from otel_eda.transports.aiokafka.lag import ConsumerLag
from otel_eda.version import VERSION

__all__ = ["DUPLICATE_WINDOW", "SCOPE", "KafkaTelemetry"]

#: Instrumentation scope of otel-eda's aiokafka spans and metrics.
SCOPE: Final = "otel_eda.aiokafka"
#: Event ids remembered per process to mark a repeated one as a duplicate (per consumer group).
DUPLICATE_WINDOW: Final = 10_000


class KafkaTelemetry:
    """The telemetry of one Kafka instrumentation (see the module docstring).

    ``scope``: the instrumentation scope of its spans and metrics (default aiokafka's);
    ``lag``: the consumer lag gauge (default: aiokafka's, refreshed every ``lag_refresh_s``).
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        recorders: Sequence[Recorder] = (),
        capture_message_key: bool = False,
        mode: TraceMode | None = None,
        lag_refresh_s: float | None = None,
        scope: str = SCOPE,
        lag: ConsumerLag | None = None,
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
        self.lag = lag or (
            ConsumerLag(meter_provider)
            if lag_refresh_s is None
            else ConsumerLag(meter_provider, refresh_s=lag_refresh_s)
        )
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._attribute_sets: dict[tuple[str, str, str | None, str | None], Mapping[str, str]] = {}

    def close(self) -> None:
        self.lag.close()

    def seen_before(self, group: str, event_id: str) -> bool:
        """Whether ``event_id`` was handled in ``group`` within the last :data:`DUPLICATE_WINDOW` ids."""
        key = (group, event_id)
        seen = self._seen
        if key in seen:
            seen.move_to_end(key)
            return True
        seen[key] = None
        if len(seen) > DUPLICATE_WINDOW:
            seen.popitem(last=False)
        return False

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
