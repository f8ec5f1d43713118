"""The anomaly reader aggregates only the instruments its rules read (issue 11, section 2)."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.metrics.view import View

from otel_eda.anomaly.reader import AnomalyMetricReader, attach
from otel_eda.anomaly.rules import Rule
from otel_eda.settings import Settings


class NamesSeen(AnomalyMetricReader):
    """The anomaly reader as configure() builds it (engine from settings), noting what it collects."""

    def __init__(self) -> None:
        super().__init__(settings=Settings.from_environ({}), start=False)
        self.collected: list[set[str]] = []

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        self.collected.append(
            {m.name for rm in metrics_data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
        )
        super()._receive_metrics(metrics_data, timeout_millis, **kwargs)


def _names(reader: InMemoryMetricReader) -> set[str]:
    data = reader.get_metrics_data()
    assert data is not None
    return {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


@pytest.mark.parametrize("attached", [False, True], ids=["constructed", "attached"])
def test_only_instruments_a_rule_reads_are_aggregated_for_the_anomaly_reader(attached: bool) -> None:
    exporting = InMemoryMetricReader()
    anomaly = NamesSeen()
    if attached:
        provider = MeterProvider(metric_readers=[exporting])
        attach(provider, anomaly)
    else:
        provider = MeterProvider(metric_readers=[exporting, anomaly])
        anomaly.start()  # as configure() starts the reader the SDK built
    meter = provider.get_meter("t")
    read = meter.create_histogram("messaging.process.duration", unit="s")  # a default rule reads it
    unread = meter.create_counter("messaging.client.sent.messages")  # no default rule reads it
    read.record(0.01, {"messaging.destination.name": "orders"})
    unread.add(1, {"messaging.destination.name": "orders"})
    anomaly.force_flush()
    assert anomaly.collected[-1] == {"messaging.process.duration"}
    # the exporting reader still aggregates everything
    assert _names(exporting) == {"messaging.process.duration", "messaging.client.sent.messages"}

    # a rule added at run time (the engine's rules replaced) is read from then on
    extra = Rule(name="sent", metric="messaging.client.sent.messages", signal="rate", detector={"kind": "zscore"})
    anomaly.engine.rules = (*anomaly.engine.rules, extra)
    unread.add(1, {"messaging.destination.name": "orders"})
    anomaly.force_flush()
    assert "messaging.client.sent.messages" in anomaly.collected[-1]

    # so is a metric whose statistics are asked for (the engine tracks it)
    jobs = meter.create_counter("jobs")
    jobs.add(1)
    anomaly.force_flush()
    assert "jobs" not in anomaly.collected[-1]
    anomaly.engine.track("jobs")
    jobs.add(1)
    anomaly.force_flush()
    assert "jobs" in anomaly.collected[-1]
    provider.shutdown()
    anomaly.shutdown()


def test_a_callers_own_engine_or_a_renaming_view_gets_every_instrument() -> None:
    from otel_eda.anomaly.engine import AnomalyEngine

    own = AnomalyMetricReader(AnomalyEngine([]), interval_s=3600, start=False)
    renaming = NamesSeen()
    for reader, views in ((own, ()), (renaming, (View(instrument_name="jobs", name="renamed.jobs"),))):
        provider = MeterProvider(metric_readers=[reader], views=list(views))
        reader.start()
        provider.get_meter("t").create_counter("jobs").add(1)
        assert reader._narrowed is isinstance(reader, NamesSeen)
        seen = reader.collect  # still collected: nothing was narrowed away
        seen()
        provider.shutdown()
    assert renaming.collected[-1] == {"renamed.jobs"}


def test_a_failing_rule_lookup_never_reaches_the_application() -> None:
    anomaly = NamesSeen()
    provider = MeterProvider(metric_readers=[anomaly])
    anomaly.start()
    anomaly.engine.rules = None  # type: ignore[assignment]  # _reads now raises
    provider.get_meter("t").create_counter("jobs").add(1)  # aggregated instead, no exception
    provider.shutdown()
