"""nats-py under ``opentelemetry-instrument`` with no code change, against the session's real nats-server.

Three services in fresh interpreters, a JetStream flow with no otel-eda code: ``order`` publishes,
``payment`` pull-fetches (it naks the first delivery and handles the redelivery, publishing a
payment), ``shipping`` handles the payment in a push consumer's callback. Their spans and metrics
are printed by the console exporters and read back.
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
from brokers import NatsServer, unique_name
from console_telemetry import read_json_stream

from otel_eda import semconv
from otel_eda.transports.nats.instrumentor import NATSInstrumentor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

VENV_BIN = Path(sys.executable).parent
INSTRUMENT = VENV_BIN / "opentelemetry-instrument"

SERVICE = textwrap.dedent(
    """
    import asyncio, os
    import nats
    from nats.js.api import StorageType, StreamConfig

    async def main():
        role, prefix = os.environ["ROLE"], os.environ["PREFIX"]
        nc = await nats.connect(os.environ["NATS_URL"])
        js = nc.jetstream()
        if role == "order":
            await js.add_stream(StreamConfig(name=prefix, subjects=[prefix + ".>"], storage=StorageType.MEMORY))
            await js.publish(prefix + ".placed", b"order 7")
        elif role == "payment":
            psub = await js.pull_subscribe(prefix + ".placed", durable="payment")
            for _ in range(2):
                for msg in await psub.fetch(1, timeout=10):
                    if msg.metadata.num_delivered == 1:
                        await msg.nak()  # not yet: JetStream redelivers it
                    else:
                        await js.publish(prefix + ".charged", msg.data + b" charged")
                        await msg.ack()
            await asyncio.sleep(1.5)  # the pending gauges are refreshed in the background
        else:
            handled = asyncio.Event()

            async def handle(msg):
                handled.set()

            await js.subscribe(prefix + ".charged", durable="shipping", cb=handle)
            await asyncio.wait_for(handled.wait(), 30)
        await nc.close()

    asyncio.run(main())
    """
)


def run_service(tmp_path: Path, server: NatsServer, role: str, prefix: str, **env: str) -> list[dict[str, Any]]:
    if not INSTRUMENT.exists():
        pytest.fail("opentelemetry-instrument is missing from the virtualenv: run scripts/setup-venv")
    script, out = tmp_path / "service.py", tmp_path / f"{role}.json"
    script.write_text(SERVICE)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "PYTHONPATH"}
    with out.open("w") as stdout:
        result = subprocess.run(
            [str(INSTRUMENT), sys.executable, str(script)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={
                **clean,
                "OTEL_SERVICE_NAME": role,
                "OTEL_TRACES_EXPORTER": "console",
                "OTEL_METRICS_EXPORTER": "console",
                "OTEL_METRIC_EXPORT_INTERVAL": "60000",  # one export, at shutdown
                "OTEL_LOGS_EXPORTER": "none",
                "OTEL_PROPAGATORS": "tracecontext,baggage,eda",
                "NATS_URL": server.url,
                "ROLE": role,
                "PREFIX": prefix,
                **env,
            },
            check=False,
        )
    assert result.returncode == 0, result.stderr
    return read_json_stream(out)


def spans_of(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if "kind" in o and "context" in o]


def gauge_points(objects: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    return [
        point
        for o in objects
        for rm in o.get("resource_metrics", ())
        for sm in rm["scope_metrics"]
        for m in sm["metrics"]
        if m["name"] == metric
        for point in m["data"]["data_points"]
    ]


def one(spans: list[dict[str, Any]], name: str, **attributes: Any) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name and all(s["attributes"].get(k) == v for k, v in attributes.items())]
    assert len(found) == 1, f"{len(found)} spans {name} {attributes} in {[s['name'] for s in spans]}"
    return found[0]


def test_one_correlation_id_linked_spans_attempts_and_pending_gauges_across_three_services(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    prefix = unique_name("SHOP").replace("-", "_")
    order = run_service(tmp_path, nats_server, "order", prefix)
    payment = run_service(tmp_path, nats_server, "payment", prefix)
    shipping = run_service(tmp_path, nats_server, "shipping", prefix)

    order_send = one(spans_of(order), f"send {prefix}.placed")
    first = one(spans_of(payment), f"process {prefix}.placed", **{semconv.EDA_DELIVERY_ATTEMPT: 1})
    second = one(spans_of(payment), f"process {prefix}.placed", **{semconv.EDA_DELIVERY_ATTEMPT: 2})
    payment_send = one(spans_of(payment), f"send {prefix}.charged")
    shipping_process = one(spans_of(shipping), f"process {prefix}.charged")
    correlation = order_send["attributes"][semconv.EDA_CORRELATION_ID]
    assert correlation == order_send["attributes"][semconv.MESSAGING_MESSAGE_ID]  # the root event's own id
    flow = [order_send, first, second, payment_send, shipping_process]
    assert [s["attributes"][semconv.EDA_CORRELATION_ID] for s in flow] == [correlation] * 5
    # the redelivery is the same event, a second attempt; the first was retried
    assert first["attributes"][semconv.MESSAGING_MESSAGE_ID] == second["attributes"][semconv.MESSAGING_MESSAGE_ID]
    assert (first["attributes"][semconv.EDA_OUTCOME], second["attributes"][semconv.EDA_OUTCOME]) == (
        "retried",
        "completed",
    )
    assert first["attributes"][semconv.MESSAGING_SYSTEM] == "nats"
    assert payment_send["attributes"][semconv.EDA_CAUSATION_ID] == second["attributes"][semconv.MESSAGING_MESSAGE_ID]
    for consumer, producer in ((first, order_send), (second, order_send), (shipping_process, payment_send)):
        assert [link["context"]["span_id"] for link in consumer["links"]] == [producer["context"]["span_id"]]
    fetches = [s for s in spans_of(payment) if s["name"] == f"fetch {prefix}.placed"]
    assert len(fetches) == 2 and all(s["kind"] == "SpanKind.CLIENT" for s in fetches)
    # the pending gauges of the payment's consumer: everything delivered and acknowledged
    want = {semconv.MESSAGING_DESTINATION_NAME: prefix, semconv.MESSAGING_CONSUMER_GROUP_NAME: "payment"}
    for metric in (semconv.METRIC_CONSUMER_LAG, semconv.METRIC_CONSUMER_ACK_PENDING):
        points = [p for p in gauge_points(payment, metric) if all(p["attributes"].get(k) == v for k, v in want.items())]
        assert points and points[-1]["value"] == 0, metric


def test_disabling_otel_edas_instrumentation_leaves_nats_alone(tmp_path: Path, nats_server: NatsServer) -> None:
    prefix = unique_name("OFF").replace("-", "_")
    objects = run_service(tmp_path, nats_server, "order", prefix, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="otel_eda_nats")
    assert [s for s in spans_of(objects) if prefix in s["name"]] == []


def test_an_application_without_nats_loads_nothing(tmp_path: Path) -> None:
    """opentelemetry-instrument's start-up, in an interpreter where ``import nats`` fails."""
    code = textwrap.dedent(
        """
        import json, sys
        sys.modules["nats"] = None  # as if nats-py were not installed
        from opentelemetry.instrumentation.auto_instrumentation import initialize
        initialize()
        print(json.dumps(sorted(m for m in sys.modules if "nats" in m and sys.modules[m] is not None)))
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
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == ["otel_eda.transports.nats"]  # the package's empty __init__: no client, no instrumentor


def test_instrumentation_dependencies_name_the_client() -> None:
    assert [d.split()[0] for d in NATSInstrumentor().instrumentation_dependencies()] == ["nats-py"]
