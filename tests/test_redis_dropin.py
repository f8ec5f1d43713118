"""redis-py consumer-group applications under ``opentelemetry-instrument`` with no code change.

Each service runs in a fresh interpreter against the session's real redis-server; spans and
metrics are printed by the console exporters and read back. The contrib redis instrumentation
is installed in the test virtualenv (the ``test`` extra), so every case here has both: its
command spans nest under otel-eda's messaging spans.
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
from brokers import RedisServer, unique_name
from console_telemetry import read_json_stream

from otel_eda import semconv
from otel_eda.transports.redis.instrumentor import RedisStreamsInstrumentor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

VENV_BIN = Path(sys.executable).parent
INSTRUMENT = VENV_BIN / "opentelemetry-instrument"

SERVICE = textwrap.dedent(
    """
    import os, time
    import redis
    from opentelemetry import metrics, trace

    r = redis.Redis(host="127.0.0.1", port=int(os.environ["REDIS_PORT"]))
    source, target, group = os.environ.get("SOURCE"), os.environ.get("TARGET"), os.environ.get("GROUP")
    if source is None:  # the first service: a new order
        r.xadd(target, {"order": "7"})
    else:
        try:
            r.xgroup_create(source, group, id="0", mkstream=True)
        except redis.ResponseError:
            pass
        if os.environ.get("CLAIM"):  # a consumer took the entry and died: this one claims it
            r.xreadgroup(group, "died", {source: ">"}, count=1)
            _, entries, _ = r.xautoclaim(source, group, "worker", min_idle_time=0)
        else:
            [[_, entries]] = r.xreadgroup(group, "worker", {source: ">"}, count=1, block=10000)
        for entry_id, fields in entries:  # the handler: no otel-eda code
            if target:
                r.xadd(target, {**{k.decode(): v for k, v in fields.items()}, "handled": "1"})
            r.xack(source, group, entry_id)
        time.sleep(float(os.environ.get("LINGER_S", "0")))  # the lag gauge refreshes in the background
    trace.get_tracer_provider().force_flush()
    """
)


def run_service(tmp_path: Path, server: RedisServer, service: str, **env: str) -> list[dict[str, Any]]:
    if not INSTRUMENT.exists():
        pytest.fail("opentelemetry-instrument is missing from the virtualenv: run scripts/setup-venv")
    script = tmp_path / "service.py"
    script.write_text(SERVICE)
    out = tmp_path / f"{service}.json"
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
                "OTEL_SERVICE_NAME": service,
                "OTEL_TRACES_EXPORTER": "console",
                "OTEL_METRICS_EXPORTER": "console",
                "OTEL_METRIC_EXPORT_INTERVAL": "600000",
                "OTEL_LOGS_EXPORTER": "none",
                "OTEL_PROPAGATORS": "tracecontext,baggage,eda",
                "REDIS_PORT": str(server.port),
                **env,
            },
            check=False,
        )
    assert result.returncode == 0, result.stderr
    return read_json_stream(out)


def spans_of(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if "context" in o and "kind" in o]


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


def test_one_correlation_id_across_three_services_a_claim_and_the_lag_gauge(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """order -> payment (claims the entry a dead consumer took) -> shipping, no otel-eda code."""
    placed, charged = unique_name("placed"), unique_name("charged")
    order = spans_of(run_service(tmp_path, redis_server, "order", TARGET=placed))
    payment_all = run_service(
        tmp_path, redis_server, "payment", SOURCE=placed, TARGET=charged, GROUP="payment", CLAIM="1", LINGER_S="1.5"
    )
    payment = spans_of(payment_all)
    shipping = spans_of(run_service(tmp_path, redis_server, "shipping", SOURCE=charged, GROUP="shipping"))

    def one(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
        (span,) = [s for s in spans if s["name"] == name]
        return span

    order_send = one(order, f"send {placed}")
    payment_process, payment_send = one(payment, f"process {placed}"), one(payment, f"send {charged}")
    shipping_process = one(shipping, f"process {charged}")
    flow = [order_send, payment_process, payment_send, shipping_process]
    correlation = order_send["attributes"][semconv.EDA_CORRELATION_ID]
    assert [s["attributes"][semconv.EDA_CORRELATION_ID] for s in flow] == [correlation] * 4
    assert correlation == order_send["attributes"][semconv.MESSAGING_MESSAGE_ID]
    assert (
        payment_send["attributes"][semconv.EDA_CAUSATION_ID]
        == payment_process["attributes"][semconv.MESSAGING_MESSAGE_ID]
    )
    assert payment_process["links"][0]["context"]["span_id"] == order_send["context"]["span_id"]
    assert shipping_process["links"][0]["context"]["span_id"] == payment_send["context"]["span_id"]
    # the claimed entry's second delivery: its attempt number from XPENDING
    assert payment_process["attributes"][semconv.EDA_DELIVERY_ATTEMPT] == 2
    assert shipping_process["attributes"][semconv.EDA_DELIVERY_ATTEMPT] == 1
    # two receives in payment: the dead consumer's read and the claim, each linking the entry
    receives = [s for s in payment if s["name"] == f"receive {placed}"]
    assert len(receives) == 2 and all(s["kind"] == "SpanKind.CLIENT" for s in receives)
    # the lag gauge of the payment group, refreshed in the background
    lag = [
        p
        for p in gauge_points(payment_all, semconv.METRIC_CONSUMER_LAG)
        if p["attributes"].get(semconv.MESSAGING_DESTINATION_NAME) == placed
    ]
    assert [(p["attributes"][semconv.MESSAGING_CONSUMER_GROUP_NAME], p["value"]) for p in lag] == [("payment", 0)]
    pending = gauge_points(payment_all, semconv.METRIC_CONSUMER_PENDING)
    assert [p["value"] for p in pending if p["attributes"][semconv.MESSAGING_DESTINATION_NAME] == placed] == [0]
    # the contrib redis instrumentation is installed too: its command spans are otel-eda's children
    by_id = {s["context"]["span_id"]: s for s in payment}
    xadd = [s for s in payment if s["name"] == "XADD"]
    xack = [s for s in payment if s["name"] == "XACK"]
    assert [by_id[s["parent_id"]]["name"] for s in xadd] == [f"send {charged}"]
    assert [by_id[s["parent_id"]]["name"] for s in xack] == [f"process {placed}"]
    kinds = {s["kind"] for s in payment if s["name"] in ("XADD", "XACK", "XREADGROUP", "XAUTOCLAIM")}
    assert kinds == {"SpanKind.CLIENT"}
    messaging_spans = [s for s in payment if semconv.MESSAGING_OPERATION_TYPE in s["attributes"]]
    assert sorted(s["name"] for s in messaging_spans) == sorted(
        [f"receive {placed}", f"receive {placed}", f"process {placed}", f"send {charged}"]
    )


def test_disabling_otel_edas_instrumentation_leaves_only_the_contrib_command_spans(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    stream = unique_name("placed")
    disabled = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "otel_eda_redis"}
    spans = spans_of(run_service(tmp_path, redis_server, "order", TARGET=stream, **disabled))
    assert [s["name"] for s in spans] == ["XADD"]


def test_an_application_without_redis_loads_nothing(tmp_path: Path) -> None:
    """opentelemetry-instrument's start-up, in an interpreter where ``import redis`` fails."""
    code = textwrap.dedent(
        """
        import json, sys
        sys.modules["redis"] = None  # as if redis-py were not installed
        from opentelemetry.instrumentation.auto_instrumentation import initialize
        initialize()
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("otel_eda.transports.redis"))))
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
    # the entry point's import stops at ``import redis``: only the (empty) package was imported
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["otel_eda.transports.redis"]


def test_instrumentation_dependencies_name_the_client() -> None:
    assert [d.split()[0] for d in RedisStreamsInstrumentor().instrumentation_dependencies()] == ["redis"]
