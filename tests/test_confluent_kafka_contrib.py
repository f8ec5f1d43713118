"""How otel-eda keeps the contrib confluent-kafka instrumentation out (no broker needed)."""

from __future__ import annotations

import logging

import confluent_kafka
import pytest
from confluent_kafka import cimpl, deserializing_consumer, serializing_producer
from opentelemetry.instrumentation.confluent_kafka import ConfluentKafkaInstrumentor as ContribInstrumentor

from otel_eda.transports.confluent_kafka import contrib
from otel_eda.transports.confluent_kafka.instrumentor import ConfluentKafkaInstrumentor, Consumer, Producer


def test_the_distro_disables_the_contrib_entry_point_and_says_so_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(contrib.REPLACEMENT, "logged", False)
    caplog.set_level(logging.INFO, logger=contrib.__name__)
    first: dict[str, str] = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "urllib"}
    second: dict[str, str] = {}
    assert contrib.disable_contrib_before_load(first) is True
    assert contrib.disable_contrib_before_load(second) is True
    assert first["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] == "urllib,confluent_kafka"
    assert second["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] == "confluent_kafka"
    messages = [r.getMessage() for r in caplog.records if r.name == contrib.__name__]
    assert len(messages) == 1 and "replaces opentelemetry-instrumentation-confluent_kafka" in messages[0]


@pytest.mark.parametrize(
    "disabled", ["otel_eda_confluent_kafka", "*", "confluent_kafka", "requests, otel_eda_confluent_kafka"]
)
def test_nothing_changes_when_either_is_disabled_already(disabled: str) -> None:
    environ = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": disabled}
    assert contrib.disable_contrib_before_load(environ) is False
    assert environ == {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": disabled}


@pytest.mark.parametrize("contrib_first", [True, False])
def test_in_either_order_only_otel_edas_classes_remain(contrib_first: bool) -> None:
    """The contrib instrumentor swaps the module attributes too: whichever ran first, otel-eda's
    instrumentor (contrib applied before) or its post-instrument hook (contrib applied after)
    leaves otel-eda's classes in place."""
    ours, theirs = ConfluentKafkaInstrumentor(), ContribInstrumentor()
    try:
        if contrib_first:
            theirs.instrument()
            ours.instrument()
        else:
            ours.instrument()
            theirs.instrument()
            assert confluent_kafka.Producer is not Producer  # the contrib's class replaced ours
            contrib.after_instrumentors()
        assert confluent_kafka.Producer is Producer and confluent_kafka.Consumer is Consumer
        assert not theirs.is_instrumented_by_opentelemetry
    finally:
        theirs.uninstrument()
        ours.uninstrument()
    assert confluent_kafka.Producer is cimpl.Producer and confluent_kafka.Consumer is cimpl.Consumer
    assert confluent_kafka.SerializingProducer is serializing_producer.SerializingProducer
    assert confluent_kafka.DeserializingConsumer is deserializing_consumer.DeserializingConsumer
