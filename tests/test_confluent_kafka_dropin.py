"""confluent-kafka under ``opentelemetry-instrument`` with no code change, beside the contrib instrumentation.

Each case runs an application in a fresh interpreter against the session's real Kafka: it
produces one record, handles it in a ``poll`` loop and polls three more times for nothing;
its spans are printed by the console exporter and read back. The contrib confluent-kafka
instrumentation is installed in the test virtualenv (the ``test`` extra), so every case here
is "both installed".
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import test_aiokafka_dropin as aiokafka_dropin
from brokers import KafkaBroker

from otel_eda import semconv
from otel_eda.transports.confluent_kafka.instrumentor import ConfluentKafkaInstrumentor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


APP = textwrap.dedent(
    """
    import json, os, sys
    from confluent_kafka import Consumer, Producer
    from opentelemetry import trace

    servers, topic = os.environ["BOOTSTRAP"], os.environ["TOPIC"]
    producer = Producer({"bootstrap.servers": servers})
    producer.produce(topic, b"order")
    producer.flush(60)
    consumer = Consumer({"bootstrap.servers": servers, "group.id": topic, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    empty_polls = 0
    while True:
        msg = consumer.poll(0.2)
        if msg is None:
            empty_polls += 1
        elif msg.error() is None:
            break
    headers = [key for key, _ in msg.headers() or []]
    for _ in range(3):  # nothing more to take: empty polls, whatever happened before
        empty_polls += consumer.poll(0.2) is None
    consumer.close()
    report = {
        "headers": headers,
        "empty_polls": empty_polls,
        "disabled": os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", ""),
        "modules": sorted(
            m for m in sys.modules if "confluent_kafka" in m and m.startswith(("opentelemetry", "otel_eda"))
        ),
    }
    trace.get_tracer_provider().force_flush()
    with open(os.environ["REPORT"], "w") as f:
        json.dump(report, f)
    """
)


def run_app(tmp_path: Path, kafka: KafkaBroker, **kwargs: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The aiokafka drop-in test's runner with this application; the contrib's ``recv`` span kept too."""
    return aiokafka_dropin.run_app(tmp_path, kafka, app=APP, also_named=("recv",), **kwargs)


def names(spans: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((s["name"], s["kind"]) for s in spans)


OURS = [("poll T", "SpanKind.CLIENT"), ("process T", "SpanKind.CONSUMER"), ("send T", "SpanKind.PRODUCER")]


def test_otel_edas_instrumentation_wins_over_the_contrib_one(tmp_path: Path, kafka: KafkaBroker) -> None:
    spans, report = run_app(tmp_path, kafka)
    # exactly one producer and one process span for the record, one poll span, none for the empty polls
    assert report["empty_polls"] >= 3
    assert names(spans) == OURS
    by_name = {s["name"]: s for s in spans}
    send, poll, process = by_name["send T"], by_name["poll T"], by_name["process T"]
    assert send["attributes"][semconv.MESSAGING_SYSTEM] == "kafka"
    assert process["links"][0]["context"]["span_id"] == send["context"]["span_id"]
    assert poll["links"][0]["context"]["span_id"] == send["context"]["span_id"]
    assert "confluent_kafka" in report["disabled"].split(",")  # by otel-eda's distro, before loading
    assert "opentelemetry.instrumentation.confluent_kafka" not in report["modules"]  # so it never loaded
    assert report["headers"].count("traceparent") == 1  # injected once


def test_under_another_distro_the_contrib_instrumentation_is_undone(tmp_path: Path, kafka: KafkaBroker) -> None:
    spans, report = run_app(tmp_path, kafka, with_distro=True, OTEL_PYTHON_DISTRO="distro")
    assert "confluent_kafka" not in report["disabled"].split(",")  # otel-eda's distro did not run
    assert "opentelemetry.instrumentation.confluent_kafka" in report["modules"]  # the contrib one loaded ...
    assert names(spans) == OURS  # ... and was undone
    assert report["headers"].count("traceparent") == 1


def test_disabling_otel_edas_instrumentation_leaves_the_contrib_one(tmp_path: Path, kafka: KafkaBroker) -> None:
    spans, report = run_app(tmp_path, kafka, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="otel_eda_confluent_kafka")
    assert "otel_eda.transports.confluent_kafka.instrumentor" not in report["modules"]
    assert ("T send", "SpanKind.PRODUCER") in names(spans)  # the contrib's spans
    assert not [s for s in spans if s["name"] in ("send T", "poll T", "process T")]


def test_an_application_without_confluent_kafka_loads_nothing() -> None:
    """opentelemetry-instrument's start-up, in an interpreter where ``import confluent_kafka`` fails."""
    # only the distro's helper that decides about the contrib instrumentation (it imports no client)
    assert aiokafka_dropin.modules_loaded_without("confluent_kafka") == [
        "otel_eda.transports.confluent_kafka",
        "otel_eda.transports.confluent_kafka.contrib",
    ]


def test_instrumentation_dependencies_name_the_client() -> None:
    assert [d.split()[0] for d in ConfluentKafkaInstrumentor().instrumentation_dependencies()] == ["confluent-kafka"]


SERVICE = textwrap.dedent(
    """
    import os
    from confluent_kafka import Consumer, Producer
    from opentelemetry import trace

    servers = os.environ["BOOTSTRAP"]
    producer = Producer({"bootstrap.servers": servers})
    source, target = os.environ.get("SOURCE"), os.environ.get("TARGET")
    if source is None:  # the first service: a new order
        producer.produce(target, b"order")
    else:
        consumer = Consumer({"bootstrap.servers": servers, "group.id": source, "auto.offset.reset": "earliest"})
        consumer.subscribe([source])
        while True:  # the handler: no otel-eda code
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            if target:
                producer.produce(target, msg.value() + b" handled")
            break
        consumer.close()
    producer.flush(60)
    trace.get_tracer_provider().force_flush()
    """
)


def test_one_correlation_id_across_three_services(tmp_path: Path, kafka: KafkaBroker) -> None:
    """order -> payment -> shipping, three processes under opentelemetry-instrument, no otel-eda code."""
    spans, placed, charged = aiokafka_dropin.run_three_services(tmp_path, kafka, SERVICE)
    # no span per empty poll in the consuming services: one poll span each
    assert len([s for s in spans["payment"] if s["name"] == f"poll {placed}"]) == 1
    assert len([s for s in spans["shipping"] if s["name"] == f"poll {charged}"]) == 1
