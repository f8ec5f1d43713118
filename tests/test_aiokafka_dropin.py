"""aiokafka under ``opentelemetry-instrument`` with no code change, beside the contrib instrumentation.

Each case runs an application in a fresh interpreter against the session's real Kafka: it
produces one record and handles it with ``getone``; its spans are printed by the console
exporter and read back. The contrib aiokafka instrumentation is installed in the test
virtualenv (the ``test`` extra), so every case here is "both installed".
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
from otel_eda.transports.aiokafka.instrumentor import AIOKafkaInstrumentor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

VENV_BIN = Path(sys.executable).parent
INSTRUMENT = VENV_BIN / "opentelemetry-instrument"
DISTRO_DIR = Path(sys.prefix) / "opt" / "opentelemetry-distro"

APP = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from opentelemetry import trace

    async def main():
        servers, topic = os.environ["BOOTSTRAP"], os.environ["TOPIC"]
        producer = AIOKafkaProducer(bootstrap_servers=servers)
        await producer.start()
        await producer.send_and_wait(topic, b"order")
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=servers, group_id=topic, auto_offset_reset="earliest")
        await consumer.start()
        record = await consumer.getone()
        await consumer.stop()
        await producer.stop()
        return [key for key, _ in record.headers]

    headers = asyncio.run(main())
    report = {
        "headers": headers,
        "disabled": os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", ""),
        "modules": sorted(m for m in sys.modules if "aiokafka" in m and m.startswith(("opentelemetry", "otel_eda"))),
    }
    trace.get_tracer_provider().force_flush()
    with open(os.environ["REPORT"], "w") as f:
        json.dump(report, f)
    """
)


def run_app(
    tmp_path: Path,
    kafka: KafkaBroker,
    *,
    app: str = APP,
    also_named: tuple[str, ...] = (),
    with_distro: bool = False,
    **env: str,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run ``app`` under opentelemetry-instrument on a topic of its own (``TOPIC``); its spans
    whose name holds the topic (written ``T``) or is one of ``also_named``, and its report."""
    if not INSTRUMENT.exists():
        pytest.fail("opentelemetry-instrument is missing from the virtualenv: run scripts/setup-venv")
    script, spans, report = tmp_path / "app.py", tmp_path / "spans.json", tmp_path / "report.json"
    script.write_text(app)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "PYTHONPATH"}
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
    found = [s for s in read_json_stream(spans) if topic in s["name"] or s["name"] in also_named]
    return [{**s, "name": s["name"].replace(topic, "T")} for s in found], json.loads(report.read_text())


def names(spans: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((s["name"], s["kind"]) for s in spans)


def test_otel_edas_instrumentation_wins_over_the_contrib_one(tmp_path: Path, kafka: KafkaBroker) -> None:
    spans, report = run_app(tmp_path, kafka)
    assert names(spans) == [("process T", "SpanKind.CONSUMER"), ("send T", "SpanKind.PRODUCER")]
    send, process = sorted(spans, key=lambda s: s["name"], reverse=True)
    assert send["attributes"][semconv.MESSAGING_SYSTEM] == "kafka"
    assert process["links"][0]["context"]["span_id"] == send["context"]["span_id"]
    assert "aiokafka" in report["disabled"].split(",")  # by otel-eda's distro, before loading
    assert "opentelemetry.instrumentation.aiokafka" not in report["modules"]  # so it never loaded
    assert report["headers"].count("traceparent") == 1  # injected once


def test_under_another_distro_the_contrib_instrumentation_is_undone(tmp_path: Path, kafka: KafkaBroker) -> None:
    spans, report = run_app(tmp_path, kafka, with_distro=True, OTEL_PYTHON_DISTRO="distro")
    assert "aiokafka" not in report["disabled"].split(",")  # otel-eda's distro did not run
    assert "opentelemetry.instrumentation.aiokafka" in report["modules"]  # the contrib one loaded ...
    assert names(spans) == [("process T", "SpanKind.CONSUMER"), ("send T", "SpanKind.PRODUCER")]  # ... and was undone
    assert report["headers"].count("traceparent") == 1


def test_disabling_otel_edas_instrumentation_leaves_the_contrib_one(tmp_path: Path, kafka: KafkaBroker) -> None:
    spans, report = run_app(tmp_path, kafka, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="otel_eda_aiokafka")
    assert "otel_eda.transports.aiokafka.instrumentor" not in report["modules"]
    assert names(spans) == [("T receive", "SpanKind.CONSUMER"), ("T send", "SpanKind.PRODUCER")]  # contrib's


def test_an_application_without_aiokafka_loads_nothing() -> None:
    """opentelemetry-instrument's start-up, in an interpreter where ``import aiokafka`` fails."""
    # only the distro's helper that decides about the contrib instrumentation (it imports no client)
    assert modules_loaded_without("aiokafka") == [
        "otel_eda.transports.aiokafka",
        "otel_eda.transports.aiokafka.contrib",
    ]


def modules_loaded_without(client: str) -> list[str]:
    """The modules named after ``client`` that opentelemetry-instrument's start-up loads in an
    interpreter where ``import {client}`` fails (as if it were not installed)."""
    code = textwrap.dedent(
        f"""
        import json, sys
        sys.modules[{client!r}] = None  # as if {client} were not installed
        from opentelemetry.instrumentation.auto_instrumentation import initialize
        initialize()
        print(json.dumps(sorted(m for m in sys.modules if {client!r} in m and sys.modules[m] is not None)))
        """
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def test_instrumentation_dependencies_name_the_client() -> None:
    assert [d.split()[0] for d in AIOKafkaInstrumentor().instrumentation_dependencies()] == ["aiokafka"]


SERVICE = textwrap.dedent(
    """
    import asyncio, os
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from opentelemetry import trace

    async def main():
        servers = os.environ["BOOTSTRAP"]
        producer = AIOKafkaProducer(bootstrap_servers=servers)
        await producer.start()
        source, target = os.environ.get("SOURCE"), os.environ.get("TARGET")
        if source is None:  # the first service: a new order
            await producer.send_and_wait(target, b"order")
        else:
            consumer = AIOKafkaConsumer(
                source, bootstrap_servers=servers, group_id=source, auto_offset_reset="earliest"
            )
            await consumer.start()
            async for record in consumer:  # the handler: no otel-eda code
                if target:
                    await producer.send_and_wait(target, record.value + b" handled")
                break
            await consumer.stop()
        await producer.stop()

    asyncio.run(main())
    trace.get_tracer_provider().force_flush()
    """
)


def test_one_correlation_id_across_three_services(tmp_path: Path, kafka: KafkaBroker) -> None:
    """order -> payment -> shipping, three processes under opentelemetry-instrument, no otel-eda code."""
    run_three_services(tmp_path, kafka, SERVICE)


def run_three_services(
    tmp_path: Path, kafka: KafkaBroker, service_code: str
) -> tuple[dict[str, list[dict[str, Any]]], str, str]:
    """Run ``service_code`` as order -> payment -> shipping (``SOURCE`` and ``TARGET`` topics), each
    under opentelemetry-instrument; check that one flow crosses them. Returns the spans of each
    service and the two topics."""
    script = tmp_path / "service.py"
    script.write_text(service_code)
    placed, charged = unique_name("placed"), unique_name("charged")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "PYTHONPATH"}
    spans: dict[str, list[dict[str, Any]]] = {}
    for service, source, target in (("order", None, placed), ("payment", placed, charged), ("shipping", charged, None)):
        out = tmp_path / f"{service}.json"
        env = {
            **clean,
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
    return spans, placed, charged
