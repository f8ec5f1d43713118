"""configure(): the SDK's own configuration, plus otel-eda's pieces, exactly once.

Each case runs in a fresh interpreter: OpenTelemetry's global providers can be set once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent

APP = textwrap.dedent(
    """
    import asyncio, json, sys, threading
    from opentelemetry import propagate, trace
    import otel_eda
    from otel_eda.installation.configuration import has_event_processor

    import os
    if os.environ.get("PRESET_PROVIDER"):  # an SDK provider installed before otel-eda's configure()
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
        preset = TracerProvider()
        preset.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        trace.set_tracer_provider(preset)
    threads_before = threading.active_count()
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1):
        otel_eda.configure()

    async def main():
        async with otel_eda.EventBus(service="app") as bus:
            bus.subscribe("order_placed", lambda d: None, subscriber="payment")
            event = await bus.publish("order_placed")
            await bus.join()
        return event, len(bus.store)

    event, stored = asyncio.run(main())
    provider = trace.get_tracer_provider()
    processors = getattr(getattr(provider, "_active_span_processor", None), "_span_processors", ())
    report = {
        "provider": type(provider).__name__,
        "eda_processors": sum(type(p).__name__ == "EventSpanProcessor" for p in processors),
        "sampler": getattr(getattr(provider, "sampler", None), "get_description", lambda: None)(),
        "propagators": [type(p).__name__ for p in getattr(propagate.get_global_textmap(), "_propagators", [])],
        "new_threads": threading.active_count() - threads_before,
        "stored": stored,
        "correlation_id": event.correlation_id,
    }
    if hasattr(provider, "force_flush"):
        provider.force_flush()
    print("REPORT " + json.dumps(report), file=sys.stderr)
    """
)


def _run(tmp_path: Path, *args: str, prefix: tuple[str, ...] = (), **env: str) -> tuple[dict[str, object], str]:
    script = tmp_path / "app.py"
    script.write_text(APP)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [*prefix, sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "OTEL_SERVICE_NAME": "app", **env},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("REPORT ")]
    assert lines, result.stderr
    return json.loads(lines[-1][len("REPORT ") :]), result.stdout


def test_defaults_to_console_traces_with_the_processor_and_link_aware_sampler(tmp_path: Path) -> None:
    report, stdout = _run(tmp_path)
    assert report["provider"] == "TracerProvider"
    assert report["eda_processors"] == 1
    assert str(report["sampler"]).startswith("LinkAwareSampler{ParentBased")
    assert "EdaPropagator" in report["propagators"]  # type: ignore[operator]
    assert report["stored"] == 1
    assert '"name": "send order_placed"' in stdout
    assert f'"eda.correlation_id": "{report["correlation_id"]}"' in stdout
    assert '"service.name": "app"' in stdout


def test_is_idempotent(tmp_path: Path) -> None:
    report, stdout = _run(tmp_path, "3")
    assert report["eda_processors"] == 1
    assert report["propagators"].count("EdaPropagator") == 1  # type: ignore[union-attr]
    assert stdout.count('"name": "send order_placed"') == 1


def test_respects_the_configured_exporter_and_sampler(tmp_path: Path) -> None:
    report, stdout = _run(
        tmp_path, OTEL_TRACES_EXPORTER="none", OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG="0.1"
    )
    assert stdout == ""
    assert str(report["sampler"]).startswith("LinkAwareSampler{TraceIdRatioBased{0.1}")
    assert report["stored"] == 1


def test_sdk_disabled_installs_nothing_and_starts_no_thread_but_the_bus_works(tmp_path: Path) -> None:
    report, stdout = _run(tmp_path, OTEL_SDK_DISABLED="true")
    assert report["provider"] == "ProxyTracerProvider"
    assert report["eda_processors"] == 0
    assert report["new_threads"] == 0
    assert report["stored"] == 1
    assert stdout == ""


def test_completes_an_sdk_provider_that_is_already_installed(tmp_path: Path) -> None:
    report, stdout = _run(tmp_path, "2", PRESET_PROVIDER="1")
    # the preset provider is kept, its sampler wrapped in LinkAwareSampler ...
    assert str(report["sampler"]).startswith("LinkAwareSampler{ParentBased")
    # ... completed with exactly one EventSpanProcessor, exporting through the preset exporter
    assert report["eda_processors"] == 1
    assert stdout.count('"name": "send order_placed"') == 1
    assert f'"eda.correlation_id": "{report["correlation_id"]}"' in stdout


def test_runs_under_opentelemetry_instrument_with_the_eda_propagator(tmp_path: Path) -> None:
    instrument = VENV_BIN / "opentelemetry-instrument"
    if not instrument.exists():
        pytest.fail("opentelemetry-instrument is missing from the virtualenv: run scripts/setup-venv")
    report, stdout = _run(
        tmp_path,
        "2",
        prefix=(str(instrument),),
        OTEL_PROPAGATORS="tracecontext,baggage,eda",
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    assert report["provider"] == "TracerProvider"
    assert report["eda_processors"] == 1
    assert report["propagators"] == ["TraceContextTextMapPropagator", "W3CBaggagePropagator", "EdaPropagator"]
    assert f'"eda.correlation_id": "{report["correlation_id"]}"' in stdout


def run_script(tmp_path: Path, source: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``source`` in a fresh interpreter with no OTEL_* variable but ``env``; it must succeed."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env={**clean, **env}, check=False
    )
    assert result.returncode == 0, result.stderr
    return result


def test_on_alert_is_registered_once_per_call(tmp_path: Path) -> None:
    result = run_script(
        tmp_path,
        """
        from opentelemetry import metrics
        import otel_eda
        from otel_eda.anomaly.callbacks import CallbackSink
        from otel_eda.installation.configuration import anomaly_reader

        def callbacks():
            reader = anomaly_reader(metrics.get_meter_provider())
            return sum(isinstance(sink, CallbackSink) for sink in reader.engine.sinks)

        otel_eda.configure(on_alert=print)
        first = callbacks()
        otel_eda.configure(on_alert=repr)  # a second call adds its callback, and only that
        print("CALLBACKS", first, callbacks())
        """,
        OTEL_TRACES_EXPORTER="none",
    )
    assert "CALLBACKS 1 2" in result.stdout


def test_an_app_installed_meter_provider_gets_the_reader_and_one_warning_about_traces(tmp_path: Path) -> None:
    result = run_script(
        tmp_path,
        """
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from otel_eda.testing import TelemetryCapture

        capture = TelemetryCapture()  # a private provider elsewhere in the process: not the app's
        app_meters = MeterProvider()
        metrics.set_meter_provider(app_meters)
        import otel_eda
        from otel_eda.installation.configuration import anomaly_reader, installation
        otel_eda.configure()
        print("READER", anomaly_reader(app_meters) is not None, installation().span_exporters)
        """,
        OTEL_TRACES_EXPORTER="console",
    )
    assert "READER True ()" in result.stdout
    assert result.stderr.count("otel-eda installed one without span exporters") == 1, result.stderr


def test_concurrent_calls_install_everything_once(tmp_path: Path) -> None:
    result = run_script(
        tmp_path,
        """
        import threading
        from opentelemetry import trace
        import otel_eda
        from otel_eda.installation.configuration import installation

        start = threading.Barrier(8)

        def call():
            start.wait()
            otel_eda.configure()

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        processors = trace.get_tracer_provider()._active_span_processor._span_processors
        print("PROCESSORS", sum(type(p).__name__ == "EventSpanProcessor" for p in processors))
        print("READERS", sum(t.name == "otel-eda-anomaly" for t in threading.enumerate()))
        print("STATE", installation().missing())
        """,
        OTEL_TRACES_EXPORTER="none",
    )
    assert "PROCESSORS 1" in result.stdout and "READERS 1" in result.stdout and "STATE []" in result.stdout
    assert "Overriding" not in result.stderr, result.stderr
