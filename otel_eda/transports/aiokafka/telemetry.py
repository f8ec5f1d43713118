"""What otel-eda writes for aiokafka clients: one object per instrumentation.

:class:`KafkaTelemetry` holds the event telemetry (spans, metrics, lifecycle records of
publishing and handling events), the ``poll`` spans of ``getmany``, the client operation
durations, the duplicate window and the consumer lag gauge. The wrappers of
:mod:`~otel_eda.transports.aiokafka.instrumentor` call it; it never raises into them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Final

from opentelemetry import metrics, trace
from opentelemetry.trace import Link, SpanKind

from otel_eda import semconv
from otel_eda.flows.records import Recorder
from otel_eda.messaging.telemetry import EventTelemetry
from otel_eda.settings import Settings, TraceMode
from otel_eda.transports.aiokafka.headers import HeaderView
from otel_eda.transports.aiokafka.lag import ConsumerLag
from otel_eda.version import VERSION

__all__ = ["DUPLICATE_WINDOW", "KafkaTelemetry"]

#: Event ids remembered per process to mark a repeated one as a duplicate (per consumer group).
DUPLICATE_WINDOW: Final = 10_000


def _service_name(tracer_provider: trace.TracerProvider | None) -> str:
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    resource = getattr(provider, "resource", None)
    name = getattr(resource, "attributes", {}).get("service.name") if resource is not None else None
    return name if isinstance(name, str) and name else "unknown_service"


class KafkaTelemetry:
    """The telemetry of one aiokafka instrumentation (see the module docstring)."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        recorders: Sequence[Recorder] = (),
        capture_message_key: bool = False,
        mode: TraceMode | None = None,
        lag_refresh_s: float | None = None,
    ) -> None:
        self.events = EventTelemetry(
            _service_name(tracer_provider),
            system=semconv.MESSAGING_SYSTEM_KAFKA,
            mode=mode if mode is not None else Settings.from_environ().trace_mode,
            recorders=recorders,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        self.capture_message_key = capture_message_key
        self.tracer = trace.get_tracer(semconv.SCOPE, VERSION, tracer_provider)
        meter = metrics.get_meter(semconv.SCOPE, VERSION, meter_provider)
        self.operation_duration = meter.create_histogram(
            semconv.METRIC_CLIENT_OPERATION_DURATION,
            unit="s",
            description="Duration of a messaging operation initiated by a producer or consumer client",
            explicit_bucket_boundaries_advisory=list(semconv.DURATION_BUCKETS_S),
        )
        self.duplicates = meter.create_counter(
            semconv.METRIC_DUPLICATES,
            unit="{message}",
            description="Records whose event id this process handled before in the same consumer group",
        )
        self.lag = (
            ConsumerLag(meter_provider)
            if lag_refresh_s is None
            else ConsumerLag(meter_provider, refresh_s=lag_refresh_s)
        )
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._attribute_sets: dict[tuple[str, str, str | None, str | None], Mapping[str, str]] = {}

    def close(self) -> None:
        self.lag.close()

    # -- duplicates -----------------------------------------------------------------------
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

    # -- client operations ----------------------------------------------------------------
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

    def polled(self, records: Mapping[Any, Sequence[Any]], group: str | None, start_ns: int, seconds: float) -> None:
        """The ``poll`` CLIENT span of a non-empty ``getmany`` (one link per record) and its duration."""
        topics = {tp.topic for tp in records}
        destination = next(iter(topics)) if len(topics) == 1 else None
        self.operation_duration.record(seconds, self.operation_attributes("poll", destination, group))
        links: list[Link] = []
        count = 0
        for batch in records.values():
            for record in batch:
                count += 1
                extracted = self.events.extract(HeaderView(record.headers), record.topic)
                if extracted.link is not None:
                    links.append(extracted.link)
        attributes: dict[str, Any] = {
            semconv.MESSAGING_SYSTEM: semconv.MESSAGING_SYSTEM_KAFKA,
            semconv.MESSAGING_OPERATION_NAME: "poll",
            semconv.MESSAGING_OPERATION_TYPE: semconv.OPERATION_TYPE_RECEIVE,
            semconv.MESSAGING_BATCH_MESSAGE_COUNT: count,
        }
        if destination is not None:
            attributes[semconv.MESSAGING_DESTINATION_NAME] = destination
        if group:
            attributes[semconv.MESSAGING_CONSUMER_GROUP_NAME] = group
        span = self.tracer.start_span(
            f"poll {destination}" if destination is not None else "poll",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            links=links,
            start_time=start_ns,
        )
        span.end()
