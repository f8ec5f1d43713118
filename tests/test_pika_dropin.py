"""pika under ``opentelemetry-instrument`` with no code change, beside the contrib instrumentation.

Each case runs an application in a fresh interpreter against the session's real RabbitMQ; its
spans are printed by the console exporter and read back. The contrib pika instrumentation is
installed in the test virtualenv (the ``test`` extra), so every case here is "both installed".
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
from brokers import RabbitBroker, unique_name
from console_telemetry import read_json_stream

from otel_eda import semconv
from otel_eda.transports.pika.instrumentor import PikaInstrumentor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

VENV_BIN = Path(sys.executable).parent
INSTRUMENT = VENV_BIN / "opentelemetry-instrument"
DISTRO_DIR = Path(sys.prefix) / "opt" / "opentelemetry-distro"

APP = textwrap.dedent(
    """
    import json, os, sys
    import pika
    from opentelemetry import trace

    connection = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
    channel = connection.channel()
    queue = os.environ["QUEUE"]
    channel.queue_declare(queue, auto_delete=True)
    seen = {}

    def handle(ch, method, properties, body):
        seen.update(properties.headers or {})
        ch.basic_ack(method.delivery_tag)
        ch.stop_consuming()

    channel.basic_consume(queue, handle)
    channel.basic_publish("", queue, b"order")
    channel.start_consuming()
    connection.close()
    report = {
        "headers": sorted(seen),
        "disabled": os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", ""),
        "modules": sorted(m for m in sys.modules if ".pika" in m and m.startswith(("opentelemetry", "otel_eda"))),
    }
    trace.get_tracer_provider().force_flush()
    with open(os.environ["REPORT"], "w") as f:
        json.dump(report, f)
    """
)


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "PYTHONPATH"}


def telemetry_environ(service: str, rabbitmq: RabbitBroker) -> dict[str, str]:
    return {
        **clean_environ(),
        "OTEL_SERVICE_NAME": service,
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_PROPAGATORS": "tracecontext,baggage,eda",
        "AMQP_URL": rabbitmq.url,
    }


def run_app(
    tmp_path: Path, rabbitmq: RabbitBroker, *, with_distro: bool = False, **env: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if not INSTRUMENT.exists():
        pytest.fail("opentelemetry-instrument is missing from the virtualenv: run scripts/setup-venv")
    script, spans, report = tmp_path / "app.py", tmp_path / "spans.json", tmp_path / "report.json"
    script.write_text(APP)
    environ = telemetry_environ("shop", rabbitmq)
    if with_distro:
        environ["PYTHONPATH"] = str(DISTRO_DIR)
    queue = unique_name("dropin")
    with spans.open("w") as out:
        result = subprocess.run(
            [str(INSTRUMENT), sys.executable, str(script)],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={**environ, "QUEUE": queue, "REPORT": str(report), **env},
            check=False,
        )
    assert result.returncode == 0, result.stderr
    found = [s for s in read_json_stream(spans) if queue in s["name"]]
    return [{**s, "name": s["name"].replace(queue, "Q")} for s in found], json.loads(report.read_text())


def names(spans: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((s["name"], s["kind"]) for s in spans)


def test_otel_edas_instrumentation_wins_over_the_contrib_one(tmp_path: Path, rabbitmq: RabbitBroker) -> None:
    spans, report = run_app(tmp_path, rabbitmq)
    assert names(spans) == [("process Q", "SpanKind.CONSUMER"), ("send Q", "SpanKind.PRODUCER")]
    send, process = sorted(spans, key=lambda s: s["name"], reverse=True)
    assert send["attributes"][semconv.MESSAGING_SYSTEM] == "rabbitmq"
    assert process["links"][0]["context"]["span_id"] == send["context"]["span_id"]
    assert "pika" in report["disabled"].split(",")  # by otel-eda's distro, before loading
    assert "opentelemetry.instrumentation.pika" not in report["modules"]  # so it never loaded
    assert "traceparent" in report["headers"] and "eda-event-id" in report["headers"]


def test_under_another_distro_the_contrib_instrumentation_is_undone(tmp_path: Path, rabbitmq: RabbitBroker) -> None:
    spans, report = run_app(tmp_path, rabbitmq, with_distro=True, OTEL_PYTHON_DISTRO="distro")
    assert "pika" not in report["disabled"].split(",")  # otel-eda's distro did not run
    assert "opentelemetry.instrumentation.pika" in report["modules"]  # the contrib one loaded ...
    assert names(spans) == [("process Q", "SpanKind.CONSUMER"), ("send Q", "SpanKind.PRODUCER")]  # ... and was undone


def test_disabling_otel_edas_instrumentation_leaves_the_contrib_one(tmp_path: Path, rabbitmq: RabbitBroker) -> None:
    spans, report = run_app(tmp_path, rabbitmq, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="otel_eda_pika")
    assert "otel_eda.transports.pika.instrumentor" not in report["modules"]
    # the contrib's own shape: two nested PRODUCER spans per publish (contrib defect), no otel-eda headers
    kinds = [kind for _, kind in names(spans)]
    assert kinds.count("SpanKind.PRODUCER") == 2 and kinds.count("SpanKind.CONSUMER") == 1
    assert "eda-event-id" not in report["headers"]


def test_an_application_without_pika_loads_nothing() -> None:
    """opentelemetry-instrument's start-up, in an interpreter where ``import pika`` fails."""
    code = textwrap.dedent(
        """
        import json, sys
        sys.modules["pika"] = None  # as if pika were not installed
        from opentelemetry.instrumentation.auto_instrumentation import initialize
        initialize()
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("otel_eda.transports.pika")
                                and sys.modules[m] is not None)))
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
    assert loaded == ["otel_eda.transports.pika", "otel_eda.transports.pika.contrib"]


def test_instrumentation_dependencies_name_the_client() -> None:
    assert [d.split()[0] for d in PikaInstrumentor().instrumentation_dependencies()] == ["pika"]


# order (BlockingConnection.basic_publish) -> payment (SelectConnection callback: fails once, then
# publishes) -> shipping (BlockingConnection consume() generator)
ORDER = textwrap.dedent(
    """
    import os
    import pika
    from opentelemetry import trace

    connection = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(os.environ["TARGET"])
    channel.basic_publish("", os.environ["TARGET"], b"order")
    connection.close()
    trace.get_tracer_provider().force_flush()
    """
)
PAYMENT = textwrap.dedent(
    """
    import os
    import pika
    from opentelemetry import trace

    source, target = os.environ["SOURCE"], os.environ["TARGET"]
    attempts = []

    def on_channel(channel):
        def on_message(ch, method, properties, body):  # the handler: no otel-eda code
            attempts.append(1)
            if len(attempts) == 1:
                ch.basic_nack(method.delivery_tag, requeue=True)  # the card service is down: try again
                return
            ch.basic_publish("", target, body + b" paid")
            ch.basic_ack(method.delivery_tag)
            connection.close()

        def on_declared(_frame):
            channel.basic_consume(source, on_message)

        channel.queue_declare(target, callback=lambda _f: channel.queue_declare(source, callback=on_declared))

    connection = pika.SelectConnection(
        pika.URLParameters(os.environ["AMQP_URL"]),
        on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
    )
    connection.add_on_close_callback(lambda conn, reason: conn.ioloop.stop())
    connection.ioloop.call_later(60, connection.ioloop.stop)
    connection.ioloop.start()
    assert len(attempts) == 2, attempts
    trace.get_tracer_provider().force_flush()
    """
)
SHIPPING = textwrap.dedent(
    """
    import os
    import pika
    from opentelemetry import trace

    connection = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
    channel = connection.channel()
    for method, properties, body in channel.consume(os.environ["SOURCE"], inactivity_timeout=60):
        assert method is not None, "no message"
        channel.basic_ack(method.delivery_tag)
        break
    channel.cancel()
    channel.queue_delete(os.environ["SOURCE"])
    connection.close()
    trace.get_tracer_provider().force_flush()
    """
)


def test_one_correlation_id_across_blocking_and_select_services(tmp_path: Path, rabbitmq: RabbitBroker) -> None:
    placed, paid = unique_name("placed"), unique_name("paid")
    spans: dict[str, list[dict[str, Any]]] = {}
    steps = (("order", ORDER, None, placed), ("payment", PAYMENT, placed, paid), ("shipping", SHIPPING, paid, None))
    for service, code, source, target in steps:
        script, out = tmp_path / f"{service}.py", tmp_path / f"{service}.json"
        script.write_text(code)
        env = {
            **telemetry_environ(service, rabbitmq),
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

    def named(service: str, name: str) -> list[dict[str, Any]]:
        return [s for s in spans[service] if s["name"] == name]

    def producers(service: str) -> list[dict[str, Any]]:
        return [s for s in spans[service] if s["kind"] == "SpanKind.PRODUCER"]

    (order_send,) = producers("order")  # exactly one producer span per publish
    assert order_send["name"] == f"send {placed}"
    first, second = named("payment", f"process {placed}")
    (payment_send,) = producers("payment")
    assert payment_send["name"] == f"send {paid}"
    (shipping_process,) = named("shipping", f"process {paid}")
    assert producers("shipping") == []
    flow = [order_send, first, second, payment_send, shipping_process]
    correlation = order_send["attributes"][semconv.EDA_CORRELATION_ID]
    assert [s["attributes"][semconv.EDA_CORRELATION_ID] for s in flow] == [correlation] * 5
    assert correlation == order_send["attributes"][semconv.MESSAGING_MESSAGE_ID]  # the root event's own id
    assert first["attributes"][semconv.MESSAGING_MESSAGE_ID] == second["attributes"][semconv.MESSAGING_MESSAGE_ID]
    assert [s["attributes"][semconv.EDA_DELIVERY_ATTEMPT] for s in (first, second)] == [1, 2]
    assert [s["attributes"][semconv.EDA_OUTCOME] for s in (first, second)] == ["retried", "completed"]
    assert payment_send["attributes"][semconv.EDA_CAUSATION_ID] == second["attributes"][semconv.MESSAGING_MESSAGE_ID]
    assert second["links"][0]["context"]["span_id"] == order_send["context"]["span_id"]
    assert shipping_process["links"][0]["context"]["span_id"] == payment_send["context"]["span_id"]
    assert shipping_process["attributes"][semconv.EDA_OUTCOME] == "completed"
