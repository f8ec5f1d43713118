"""confluent-kafka under ``opentelemetry-instrument`` with no code change, beside the contrib instrumentation.

Each case runs an application in a fresh interpreter against the session's real Kafka: it
produces one record, handles it in a ``poll`` loop and polls three more times for nothing;
its spans are printed by the console exporter and read back. The contrib confluent-kafka
instrumentation is installed in the test virtualenv (the ``test`` extra), so every case here
is "both installed".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from brokers import KafkaBroker, unique_name
from console_telemetry import read_json_stream

from otel_eda import semconv
from otel_eda.transports.confluent_kafka.instrumentor import ConfluentKafkaInstrumentor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

VENV_BIN = Path(sys.executable).parent
INSTRUMENT = VENV_BIN / "opentelemetry-instrument"
DISTRO_DIR = Path(sys.prefix) / "opt" / "opentelemetry-distro"

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


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "PYTHONPATH"}


def run_app(
    tmp_path: Path, kafka: KafkaBroker, *, with_distro: bool = False, **env: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if not INSTRUMENT.exists():
        pytest.fail("opentelemetry-instrument is missing from the virtualenv: run scripts/setup-venv")
    script, spans, report = tmp_path / "app.py", tmp_path / "spans.json", tmp_path / "report.json"
    script.write_text(APP)
    clean = clean_environ()
    if with_distro:
        clean["PYTHONPATH"] = str(DISTRO_DIR)
    topic = unique_name("dropin")
    with spans.open("w") as out:
        result = subprocess.run(
            [str(INSTRUMENT), sys.executable, str(script)],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={
                **clean,
                "OTEL_SERVICE_NAME": "shop",
                "OTEL_TRACES_EXPORTER": "console",
                "OTEL_METRICS_EXPORTER": "none",
                "OTEL_LOGS_EXPORTER": "none",
                "OTEL_PROPAGATORS": "tracecontext,baggage,eda",
                "BOOTSTRAP": kafka.bootstrap_servers,
                "TOPIC": topic,
                "REPORT": str(report),
                **env,
            },
            check=False,
        )
    assert result.returncode == 0, result.stderr
    every = read_json_stream(spans)
    found = [s for s in every if topic in s["name"] or s["name"] == "recv"]
    return [{**s, "name": s["name"].replace(topic, "T")} for s in found], json.loads(report.read_text())


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


def test_an_application_without_confluent_kafka_loads_nothing(tmp_path: Path) -> None:
    """opentelemetry-instrument's start-up, in an interpreter where ``import confluent_kafka`` fails."""
    code = textwrap.dedent(
        """
        import json, sys
        sys.modules["confluent_kafka"] = None  # as if confluent-kafka were not installed
        from opentelemetry.instrumentation.auto_instrumentation import initialize
        initialize()
        print(json.dumps(sorted(m for m in sys.modules if "confluent_kafka" in m and sys.modules[m] is not None)))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **clean_environ(),
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        },
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    # only the distro's helper that decides about the contrib instrumentation (it imports no client)
    assert loaded == ["otel_eda.transports.confluent_kafka", "otel_eda.transports.confluent_kafka.contrib"]


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
    script = tmp_path / "service.py"
    script.write_text(SERVICE)
    placed, charged = unique_name("placed"), unique_name("charged")
    spans: dict[str, list[dict[str, Any]]] = {}
    for service, source, target in (("order", None, placed), ("payment", placed, charged), ("shipping", charged, None)):
        out = tmp_path / f"{service}.json"
        env = {
            **clean_environ(),
            "OTEL_SERVICE_NAME": service,
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_PROPAGATORS": "tracecontext,baggage,eda",
            "BOOTSTRAP": kafka.bootstrap_servers,
            **({"SOURCE": source} if source else {}),
            **({"TARGET": target} if target else {}),
        }
        with out.open("w") as stdout:
            result = subprocess.run(
                [str(INSTRUMENT), sys.executable, str(script)],
                stdout=stdout,
                stderr=subprocess.PIPE,
                text=True,
                timeout=120,
                env=env,
                check=False,
            )
        assert result.returncode == 0, result.stderr
        spans[service] = read_json_stream(out)

    def one(service: str, name: str) -> dict[str, Any]:
        (span,) = [s for s in spans[service] if s["name"] == name]
        return span

    order_send = one("order", f"send {placed}")
    payment_process, payment_send = one("payment", f"process {placed}"), one("payment", f"send {charged}")
    shipping_process = one("shipping", f"process {charged}")
    flow = [order_send, payment_process, payment_send, shipping_process]
    correlation = order_send["attributes"][semconv.EDA_CORRELATION_ID]
    assert [s["attributes"][semconv.EDA_CORRELATION_ID] for s in flow] == [correlation] * 4
    assert correlation == order_send["attributes"][semconv.MESSAGING_MESSAGE_ID]  # the root event's own id
    assert (
        payment_send["attributes"][semconv.EDA_CAUSATION_ID]
        == payment_process["attributes"][semconv.MESSAGING_MESSAGE_ID]
    )
    assert payment_process["links"][0]["context"]["span_id"] == order_send["context"]["span_id"]
    assert shipping_process["links"][0]["context"]["span_id"] == payment_send["context"]["span_id"]
    # no span per empty poll in the consuming services: one poll span each
    assert len([s for s in spans["payment"] if s["name"] == f"poll {placed}"]) == 1
    assert len([s for s in spans["shipping"] if s["name"] == f"poll {charged}"]) == 1
