"""aio-pika under ``opentelemetry-instrument`` with no code change, beside the contrib instrumentation.

Each case runs an application in a fresh interpreter against the session's real RabbitMQ: it
publishes one message and handles it with a ``queue.consume`` callback; its spans are printed by
the console exporter and read back. The contrib aio-pika instrumentation is installed in the test
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
from brokers import RabbitBroker, unique_name
from console_telemetry import read_json_stream

from otel_eda import semconv
from otel_eda.flows.explorer import build_flows
from otel_eda.flows.explorer.decoding import from_console
from otel_eda.transports.aio_pika.instrumentor import AioPikaInstrumentor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

VENV_BIN = Path(sys.executable).parent
INSTRUMENT = VENV_BIN / "opentelemetry-instrument"
DISTRO_DIR = Path(sys.prefix) / "opt" / "opentelemetry-distro"

APP = textwrap.dedent(
    """
    import asyncio, json, os, sys
    import aio_pika
    from opentelemetry import trace

    async def main():
        connection = await aio_pika.connect_robust(os.environ["AMQP_URL"])
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(os.environ["QUEUE"], auto_delete=True)
            seen = asyncio.get_running_loop().create_future()

            async def handle(message):
                async with message.process():
                    seen.set_result(dict(message.headers))

            await queue.consume(handle)
            await channel.default_exchange.publish(aio_pika.Message(b"order"), routing_key=queue.name)
            return await asyncio.wait_for(seen, 60)

    headers = asyncio.run(main())
    report = {
        "headers": sorted(headers),
        "disabled": os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", ""),
        "modules": sorted(m for m in sys.modules if "aio_pika" in m and m.startswith(("opentelemetry", "otel_eda"))),
    }
    trace.get_tracer_provider().force_flush()
    with open(os.environ["REPORT"], "w") as f:
        json.dump(report, f)
    """
)


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "PYTHONPATH"}


def run_app(
    tmp_path: Path, rabbitmq: RabbitBroker, *, with_distro: bool = False, **env: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if not INSTRUMENT.exists():
        pytest.fail("opentelemetry-instrument is missing from the virtualenv: run scripts/setup-venv")
    script, spans, report = tmp_path / "app.py", tmp_path / "spans.json", tmp_path / "report.json"
    script.write_text(APP)
    clean = clean_environ()
    if with_distro:
        clean["PYTHONPATH"] = str(DISTRO_DIR)
    queue = unique_name("dropin")
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
                "AMQP_URL": rabbitmq.url,
                "QUEUE": queue,
                "REPORT": str(report),
                **env,
            },
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
    assert "aio-pika" in report["disabled"].split(",")  # by otel-eda's distro, before loading
    assert "opentelemetry.instrumentation.aio_pika" not in report["modules"]  # so it never loaded
    assert "traceparent" in report["headers"] and "eda-event-id" in report["headers"]


def test_under_another_distro_the_contrib_instrumentation_is_undone(tmp_path: Path, rabbitmq: RabbitBroker) -> None:
    spans, report = run_app(tmp_path, rabbitmq, with_distro=True, OTEL_PYTHON_DISTRO="distro")
    assert "aio-pika" not in report["disabled"].split(",")  # otel-eda's distro did not run
    assert "opentelemetry.instrumentation.aio_pika" in report["modules"]  # the contrib one loaded ...
    assert names(spans) == [("process Q", "SpanKind.CONSUMER"), ("send Q", "SpanKind.PRODUCER")]  # ... and was undone


def test_disabling_otel_edas_instrumentation_leaves_the_contrib_one(tmp_path: Path, rabbitmq: RabbitBroker) -> None:
    spans, report = run_app(tmp_path, rabbitmq, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="otel_eda_aio_pika")
    assert "otel_eda.transports.aio_pika.instrumentor" not in report["modules"]
    assert names(spans) == [(",Q send", "SpanKind.PRODUCER"), ("Q receive", "SpanKind.CONSUMER")]  # contrib's


def test_an_application_without_aio_pika_loads_nothing() -> None:
    """opentelemetry-instrument's start-up, in an interpreter where ``import aio_pika`` fails."""
    code = textwrap.dedent(
        """
        import json, sys
        sys.modules["aio_pika"] = None  # as if aio-pika were not installed
        from opentelemetry.instrumentation.auto_instrumentation import initialize
        initialize()
        print(json.dumps(sorted(m for m in sys.modules if "aio_pika" in m and sys.modules[m] is not None)))
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
    assert loaded == ["otel_eda.transports.aio_pika", "otel_eda.transports.aio_pika.contrib"]


def test_instrumentation_dependencies_name_the_client() -> None:
    assert [d.split()[0] for d in AioPikaInstrumentor().instrumentation_dependencies()] == ["aio-pika"]


SERVICE = textwrap.dedent(
    """
    import asyncio, os
    import aio_pika
    from opentelemetry import trace

    async def main():
        connection = await aio_pika.connect_robust(os.environ["AMQP_URL"])
        async with connection:
            channel = await connection.channel()
            source, target = os.environ.get("SOURCE"), os.environ.get("TARGET")
            if source is None:  # the first service: a new order
                await channel.declare_queue(target, durable=False, auto_delete=False)
                await channel.default_exchange.publish(aio_pika.Message(b"order"), routing_key=target)
                return
            if target:
                await channel.declare_queue(target, auto_delete=False)
            queue = await channel.declare_queue(source, auto_delete=False)
            attempts = 0
            async with queue.iterator() as messages:
                async for message in messages:  # the handler: no otel-eda code
                    attempts += 1
                    if os.environ.get("FAIL_ONCE") and attempts == 1:
                        await message.nack(requeue=True)  # the payment service is down: try again
                        continue
                    if target:
                        reply = aio_pika.Message(message.body + b" handled")
                        await channel.default_exchange.publish(reply, routing_key=target)
                    await message.ack()
                    break
            await queue.delete(if_unused=False, if_empty=False)

    asyncio.run(main())
    trace.get_tracer_provider().force_flush()
    """
)


def test_one_correlation_id_across_three_services_with_a_redelivery(tmp_path: Path, rabbitmq: RabbitBroker) -> None:
    """order -> payment (fails once, redelivered) -> shipping, three processes under
    opentelemetry-instrument, no otel-eda code."""
    script = tmp_path / "service.py"
    script.write_text(SERVICE)
    placed, charged = unique_name("placed"), unique_name("charged")
    spans: dict[str, list[dict[str, Any]]] = {}
    steps = (("order", None, placed, False), ("payment", placed, charged, True), ("shipping", charged, None, False))
    for service, source, target, fail_once in steps:
        out = tmp_path / f"{service}.json"
        env = {
            **clean_environ(),
            "OTEL_SERVICE_NAME": service,
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_PROPAGATORS": "tracecontext,baggage,eda",
            "AMQP_URL": rabbitmq.url,
            **({"SOURCE": source} if source else {}),
            **({"TARGET": target} if target else {}),
            **({"FAIL_ONCE": "1"} if fail_once else {}),
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

    (order_send,) = named("order", f"send {placed}")
    first, second = named("payment", f"process {placed}")
    (payment_send,) = named("payment", f"send {charged}")
    (shipping_process,) = named("shipping", f"process {charged}")
    flow = [order_send, first, second, payment_send, shipping_process]
    correlation = order_send["attributes"][semconv.EDA_CORRELATION_ID]
    assert [s["attributes"][semconv.EDA_CORRELATION_ID] for s in flow] == [correlation] * 5
    assert correlation == order_send["attributes"][semconv.MESSAGING_MESSAGE_ID]  # the root event's own id
    # the redelivery: the same event, attempt 2, after a retried attempt 1
    assert first["attributes"][semconv.MESSAGING_MESSAGE_ID] == second["attributes"][semconv.MESSAGING_MESSAGE_ID]
    assert [s["attributes"][semconv.EDA_DELIVERY_ATTEMPT] for s in (first, second)] == [1, 2]
    assert [s["attributes"][semconv.EDA_OUTCOME] for s in (first, second)] == ["retried", "completed"]
    assert payment_send["attributes"][semconv.EDA_CAUSATION_ID] == second["attributes"][semconv.MESSAGING_MESSAGE_ID]
    assert second["links"][0]["context"]["span_id"] == order_send["context"]["span_id"]
    assert shipping_process["links"][0]["context"]["span_id"] == payment_send["context"]["span_id"]


DEAD_LETTERS = textwrap.dedent(
    """
    import asyncio, os
    import aio_pika
    from opentelemetry import trace

    async def main():
        connection = await aio_pika.connect_robust(os.environ["AMQP_URL"])
        async with connection:
            channel = await connection.channel()
            name = os.environ["QUEUE"]
            dlx = await channel.declare_exchange(name + "-dlx", aio_pika.ExchangeType.FANOUT, auto_delete=True)
            dead = await channel.declare_queue(name + "-dead", auto_delete=True)
            await dead.bind(dlx)
            work = await channel.declare_queue(name, auto_delete=True, arguments={"x-dead-letter-exchange": dlx.name})
            await channel.default_exchange.publish(aio_pika.Message(b"order"), routing_key=work.name)
            message = await work.get(timeout=30)
            await message.reject()  # the handler gives up: the broker dead-letters it
            dead_letter = await dead.get(timeout=30)  # an audit consumer of the dead letters
            await dead_letter.ack()

    asyncio.run(main())
    trace.get_tracer_provider().force_flush()
    """
)


def test_a_broker_dead_letter_shows_in_the_flow(tmp_path: Path, rabbitmq: RabbitBroker) -> None:
    script, out = tmp_path / "app.py", tmp_path / "spans.json"
    script.write_text(DEAD_LETTERS)
    queue = unique_name("dead-letters")
    with out.open("w") as stdout:
        result = subprocess.run(
            [str(INSTRUMENT), sys.executable, str(script)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env={
                **clean_environ(),
                "OTEL_SERVICE_NAME": "billing",
                "OTEL_TRACES_EXPORTER": "console",
                "OTEL_METRICS_EXPORTER": "none",
                "OTEL_LOGS_EXPORTER": "none",
                "OTEL_PROPAGATORS": "tracecontext,baggage,eda",
                "AMQP_URL": rabbitmq.url,
                "QUEUE": queue,
            },
            check=False,
        )
    assert result.returncode == 0, result.stderr
    spans = [from_console(s) for s in read_json_stream(out) if queue in s["name"]]
    (flow,) = build_flows(spans).values()
    (event,) = flow.events
    statuses = {name: handling.status.value for name, handling in event.handlings.items()}
    assert statuses == {"billing": "dead_lettered", f"billing ({queue}-dlx:{queue}:{queue}-dead)": "completed"}
    assert flow.status.value == "dead_lettered"
