"""Drop-in use: ``opentelemetry-instrument python app.py`` with no code change, and configuration errors.

The application below never calls ``otel_eda.configure()`` unless ``CALL_CONFIGURE`` is set: under
``opentelemetry-instrument`` otel-eda's distro, configurator and post-instrument hook install it.
Each case runs in a fresh interpreter (OpenTelemetry's globals can be set once) and reports what is
installed with :func:`otel_eda.installation.configuration.installation`.

``opentelemetry-distro`` is kept outside the virtualenv (``scripts/setup-venv`` puts it in
``.venv/opt/opentelemetry-distro``) so that one venv serves the runs without it and, through
``PYTHONPATH``, the runs with it.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
INSTRUMENT = VENV_BIN / "opentelemetry-instrument"
DISTRO_DIR = Path(sys.prefix) / "opt" / "opentelemetry-distro"
EXIT_CONFIG = 78

APP = textwrap.dedent(
    """
    import asyncio, json, logging, os, sys
    import otel_eda
    from opentelemetry import metrics, trace
    from otel_eda.installation.configuration import installation

    if os.environ.get("CALL_CONFIGURE"):
        otel_eda.configure(on_alert=print if os.environ.get("ON_ALERT") else None)

    async def main():
        async with otel_eda.EventBus(service="app") as bus:
            bus.subscribe("order_placed", lambda d: None, subscriber="payment")
            event = await bus.publish("order_placed")
            await bus.join()
        return event, bus.messaging.mode.value

    event, mode = asyncio.run(main())
    if os.environ.get("LOG_RECORD"):
        logging.getLogger("app").warning("a log record for the logs exporter")
    state = installation()
    from otel_eda.anomaly.callbacks import CallbackSink
    from otel_eda.installation.configuration import anomaly_reader
    import threading
    reader = anomaly_reader(metrics.get_meter_provider())
    report = {**state.__dict__, "link_aware_sampler": state.link_aware_sampler,
              "correlation_id": event.correlation_id, "mode": mode,
              "anomaly_threads": sum(t.name == "otel-eda-anomaly" for t in threading.enumerate()),
              "callback_sinks": sum(isinstance(s, CallbackSink) for s in reader.engine.sinks) if reader else None}
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        if hasattr(provider, "shutdown"):
            provider.shutdown()
    print("REPORT " + json.dumps(report), file=sys.stderr)
    """
)


def run_app(
    tmp_path: Path,
    *,
    instrument: bool = True,
    with_distro: bool = False,
    flags: tuple[str, ...] = (),
    **env: str,
) -> subprocess.CompletedProcess[str]:
    if instrument and not INSTRUMENT.exists():
        pytest.fail("opentelemetry-instrument is missing from the virtualenv: run scripts/setup-venv")
    if with_distro and not (DISTRO_DIR / "opentelemetry" / "distro").is_dir():
        pytest.fail(f"opentelemetry-distro is missing from {DISTRO_DIR}: run scripts/setup-venv")
    script = tmp_path / "app.py"
    script.write_text(APP)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "PYTHONPATH"}
    if with_distro:
        clean["PYTHONPATH"] = str(DISTRO_DIR)
    prefix = (str(INSTRUMENT), *flags) if instrument else ()
    return subprocess.run(
        [*prefix, sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
        env={**clean, "OTEL_SERVICE_NAME": "app", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none", **env},
        check=False,
    )


def report_of(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("REPORT ")]
    assert lines, result.stderr
    return json.loads(lines[-1][len("REPORT ") :])  # type: ignore[no-any-return]


def log_lines(result: subprocess.CompletedProcess[str], needle: str) -> list[str]:
    return [line for line in result.stderr.splitlines() if needle in line]


def other_stderr(result: subprocess.CompletedProcess[str], *expected: str) -> list[str]:
    """stderr lines that are neither the report nor one of the ``expected`` messages.

    Without a logging configuration Python prints a record's message alone (no level name),
    so "no WARNING" is checked as "nothing else on stderr".
    """
    return [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not line.startswith("REPORT ") and not any(e in line for e in expected)
    ]


def assert_fully_installed(report: dict[str, object]) -> None:
    assert report["tracer_provider"] == "TracerProvider"
    assert report["event_processor"] is True
    assert report["link_aware_sampler"] is True
    assert report["anomaly_reader"] is True
    assert report["eda_propagator"] is True


# ------------------------------------------------------------------ auto-instrumentation


def test_alone_otel_eda_distro_and_configurator_install_everything(tmp_path: Path) -> None:
    result = run_app(tmp_path, OTEL_TRACES_EXPORTER="console")
    report = report_of(result)
    assert_fully_installed(report)
    assert report["span_exporters"] == ["ConsoleSpanExporter"]
    # spans are exported, and carry the flow's identity
    assert '"name": "send order_placed"' in result.stdout
    assert f'"eda.correlation_id": "{report["correlation_id"]}"' in result.stdout
    assert report["anomaly_threads"] == 1
    assert not other_stderr(result), result.stderr


def test_beside_opentelemetry_distro_the_two_variables_select_otel_eda(tmp_path: Path) -> None:
    result = run_app(
        tmp_path,
        with_distro=True,
        OTEL_PYTHON_DISTRO="otel_eda",
        OTEL_PYTHON_CONFIGURATOR="otel_eda",
        OTEL_TRACES_EXPORTER="console",
    )
    report = report_of(result)
    assert_fully_installed(report)
    assert f'"eda.correlation_id": "{report["correlation_id"]}"' in result.stdout
    # opentelemetry-instrument warns that the other configurator was not loaded: that is all
    assert not other_stderr(result, "Configuration of configurator not loaded"), result.stderr


def test_beside_opentelemetry_distro_without_the_variables_the_hook_completes_its_providers(tmp_path: Path) -> None:
    # opentelemetry-distro comes first on sys.path, so its distro and configurator are chosen; the
    # post-instrument hook adds otel-eda's processor, reader, propagator and sampler to its providers
    result = run_app(tmp_path, with_distro=True, OTEL_TRACES_EXPORTER="console")
    report = report_of(result)
    assert_fully_installed(report)
    assert report["anomaly_threads"] == 1
    assert f'"eda.correlation_id": "{report["correlation_id"]}"' in result.stdout
    # the system-metrics instrumentation the instrument command started keeps working (no callback
    # failures), and nothing else is logged but the instrument command's own note
    assert not other_stderr(result, "Configuration of otel_eda not loaded"), result.stderr


def test_another_configurator_chosen_by_name_is_respected(tmp_path: Path) -> None:
    # OTEL_PYTHON_CONFIGURATOR names a configurator that is not installed: none runs, and the
    # post-instrument hook does not build providers behind the user's back; it says so once
    result = run_app(tmp_path, OTEL_PYTHON_CONFIGURATOR="vendor_x", OTEL_TRACES_EXPORTER="console")
    report = report_of(result)
    assert report["tracer_provider"] == "ProxyTracerProvider"
    assert result.stdout == ""
    warnings = log_lines(result, "the configurator that ran installed no OpenTelemetry SDK TracerProvider")
    assert len(warnings) == 1, result.stderr


def test_opentelemetry_distro_defaults_that_fail_leave_one_warning_from_the_bus(tmp_path: Path) -> None:
    # opentelemetry-distro defaults every exporter to OTLP over gRPC, which is not installed: its
    # configurator fails and opentelemetry-instrument runs the app uninstrumented. otel-eda's hooks
    # never run then; the bus says so once.
    result = run_app(tmp_path, with_distro=True, OTEL_METRICS_EXPORTER="", OTEL_LOGS_EXPORTER="")
    report = report_of(result)
    assert report["tracer_provider"] == "ProxyTracerProvider"
    warnings = log_lines(result, "no OpenTelemetry SDK is installed")
    assert len(warnings) == 1, result.stderr
    assert "OTEL_PYTHON_CONFIGURATOR=otel_eda" in warnings[0]


def test_declarative_config_file_keeps_its_own_exporter_and_gets_otel_edas_pieces(tmp_path: Path) -> None:
    config = tmp_path / "otel.yaml"
    config.write_text(
        textwrap.dedent(
            """
            file_format: "1.1"
            resource:
              attributes:
                - name: service.name
                  value: from-config-file
            tracer_provider:
              processors:
                - simple:
                    exporter:
                      console: {}
            propagator:
              composite:
                - tracecontext: {}
                - baggage: {}
            """
        )
    )
    for instrument in (True, False):
        env = {"OTEL_CONFIG_FILE": str(config), "OTEL_TRACES_EXPORTER": "none"}
        if not instrument:
            env["CALL_CONFIGURE"] = "1"
        result = run_app(tmp_path, instrument=instrument, **env)
        report = report_of(result)
        # the file's console exporter receives the spans (OTEL_TRACES_EXPORTER=none is ignored) ...
        assert report["span_exporters"] == ["ConsoleSpanExporter"], result.stderr
        assert '"service.name": "from-config-file"' in result.stdout
        # ... stamped by otel-eda's processor, with otel-eda's reader and propagator added
        assert f'"eda.correlation_id": "{report["correlation_id"]}"' in result.stdout
        assert report["anomaly_reader"] is True
        assert report["eda_propagator"] is True
        assert report["link_aware_sampler"] is True  # the file's sampler, wrapped
        assert not other_stderr(result), result.stderr


class _OtlpSink(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, str]]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.path, self.headers.get("Content-Type", "")))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def otlp_endpoint() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    received: list[tuple[str, str]] = []
    handler = type("Sink", (_OtlpSink,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


def test_otlp_for_all_three_signals_works_with_only_the_http_exporter(
    tmp_path: Path, otlp_endpoint: tuple[str, list[tuple[str, str]]]
) -> None:
    # This records what arrives over OTLP/HTTP; the Collector itself is exercised by the Collector tests.
    url, received = otlp_endpoint
    result = run_app(
        tmp_path,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_LOGS_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=url,
        OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED="true",
        LOG_RECORD="1",
    )
    report = report_of(result)
    assert_fully_installed(report)
    assert report["span_exporters"] == ["OTLPSpanExporter"]
    assert (
        "OTLPMetricExporter" in report["metric_readers"] or "PeriodicExportingMetricReader" in report["metric_readers"]
    )
    paths = {path for path, _ in received}
    assert paths == {"/v1/traces", "/v1/metrics", "/v1/logs"}, (received, result.stderr)
    assert all(kind == "application/x-protobuf" for _, kind in received)
    assert not other_stderr(result, "a log record for the logs exporter"), result.stderr


def test_otel_eda_variables_are_opentelemetry_instrument_flags(tmp_path: Path) -> None:
    result = run_app(tmp_path, flags=("--eda_trace_mode", "link"), OTEL_TRACES_EXPORTER="none")
    assert report_of(result)["mode"] == "link"
    help_text = subprocess.run(
        [str(INSTRUMENT), "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    import otel_eda.environment_variables as variables
    from otel_eda.settings import _VARIABLES

    names = [name for name in dir(variables) if name.startswith("OTEL_EDA_")]
    assert sorted(names) == sorted(_VARIABLES)  # every variable is parsed by settings, and is a flag
    for name in names:
        assert f"--{name.removeprefix('OTEL_').lower()}" in help_text


# ------------------------------------------------------------------ invalid settings


@pytest.mark.parametrize("instrument", [True, False], ids=["instrumented", "configure()"])
def test_an_invalid_otel_eda_value_is_one_error_then_the_default(tmp_path: Path, instrument: bool) -> None:
    env = {"OTEL_EDA_ANOMALY_INTERVAL": "soon", "OTEL_TRACES_EXPORTER": "none"}
    if not instrument:
        env["CALL_CONFIGURE"] = "1"
    result = run_app(tmp_path, instrument=instrument, **env)
    report = report_of(result)
    assert_fully_installed(report)
    errors = log_lines(result, "OTEL_EDA_ANOMALY_INTERVAL")
    assert len(errors) == 1, result.stderr
    assert "'soon'" in errors[0] and "a positive number of seconds" in errors[0] and "default 5.0" in errors[0]


@pytest.mark.parametrize("instrument", [True, False], ids=["instrumented", "configure()"])
def test_invalid_values_are_counted_once(tmp_path: Path, instrument: bool) -> None:
    # instrumented, configure() runs twice (the configurator, then the post-instrument hook)
    result = run_app(
        tmp_path,
        instrument=instrument,
        CALL_CONFIGURE="" if instrument else "1",
        OTEL_EDA_TRACE_MODE="sideways",
        OTEL_EDA_BAGGAGE_KEYS="tenant id",
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="console",
    )
    report_of(result)
    counted = _counter_points(result.stdout, "eda.config.errors")
    assert counted == {"OTEL_EDA_TRACE_MODE": 1, "OTEL_EDA_BAGGAGE_KEYS": 1}, result.stdout[-2000:]
    assert len(log_lines(result, "invalid OTEL_EDA_")) == 2


def _counter_points(stdout: str, name: str) -> dict[str, int]:
    """The last value of each ``eda.setting`` of counter ``name`` in the console metric exporter's output."""
    points: dict[str, int] = {}
    decoder = json.JSONDecoder()
    text, index = stdout, 0
    while (start := text.find("{", index)) != -1:
        try:
            data, index = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            index = start + 1
            continue
        for rm in data.get("resource_metrics", []) if isinstance(data, dict) else []:
            for sm in rm["scope_metrics"]:
                for metric in sm["metrics"]:
                    if metric["name"] == name:
                        for point in metric["data"]["data_points"]:
                            points[point["attributes"]["eda.setting"]] = point["value"]
    return points


def test_strict_mode_turns_an_invalid_value_into_a_start_up_failure(tmp_path: Path) -> None:
    env = {"OTEL_EDA_STRICT": "true", "OTEL_EDA_TRACE_MODE": "sideways", "OTEL_TRACES_EXPORTER": "none"}
    instrumented = run_app(tmp_path, **env)
    assert instrumented.returncode == EXIT_CONFIG, instrumented.stderr
    assert "REPORT" not in instrumented.stderr  # the application never started
    assert len(log_lines(instrumented, "OTEL_EDA_STRICT=true: invalid OTEL_EDA_TRACE_MODE='sideways'")) == 1
    plain = run_app(tmp_path, instrument=False, CALL_CONFIGURE="1", **env)
    assert plain.returncode == 1
    assert "otel_eda.installation.configuration.ConfigurationError: OTEL_EDA_STRICT=true" in plain.stderr


@pytest.mark.parametrize(
    "text",
    ["rules:\n  - name: x\n    metric: [unclosed\n", "rules:\n  - name: x\n    metric: !!python/object:os.system {}\n"],
    ids=["syntax error", "unsafe tag"],
)
def test_a_malformed_rules_file_is_reported_with_file_and_line(tmp_path: Path, text: str) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(text)
    result = run_app(tmp_path, OTEL_EDA_RULES_FILE=str(rules), OTEL_TRACES_EXPORTER="none")
    assert_fully_installed(report_of(result))
    errors = log_lines(result, "invalid OTEL_EDA_RULES_FILE")
    assert len(errors) == 1, result.stderr
    assert f"{rules}:" in errors[0]
    strict = run_app(tmp_path, OTEL_EDA_RULES_FILE=str(rules), OTEL_EDA_STRICT="true", OTEL_TRACES_EXPORTER="none")
    assert strict.returncode == EXIT_CONFIG


# ------------------------------------------------------------------ the SDK's own configuration fails


SDK_FAILURES = {
    "unknown exporter": {"OTEL_TRACES_EXPORTER": "zipkin_jsn"},
    "non-positive OTEL_BSP_*": {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_MAX_QUEUE_SIZE": "0"},
    "missing exporter package": {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
}


@pytest.mark.parametrize("instrument", [True, False], ids=["instrumented", "configure()"])
@pytest.mark.parametrize("case", list(SDK_FAILURES))
def test_a_failed_sdk_configuration_is_one_clear_error_and_otel_eda_still_works(
    tmp_path: Path, case: str, instrument: bool
) -> None:
    env = dict(SDK_FAILURES[case])
    if not instrument:
        env["CALL_CONFIGURE"] = "1"
    result = run_app(tmp_path, instrument=instrument, **env)
    report = report_of(result)  # the application ran
    errors = log_lines(result, "OpenTelemetry SDK configuration failed")
    assert len(errors) == 1, result.stderr
    # it says what is installed, and that the exporters are not
    assert "Installed: TracerProvider" in errors[0] and "NOT installed" in errors[0]
    assert report["span_exporters"] == []
    # context still propagates and the anomaly engine still watches
    assert report["event_processor"] is True
    assert report["eda_propagator"] is True
    assert report["anomaly_reader"] is True
    strict = run_app(tmp_path, instrument=instrument, OTEL_EDA_STRICT="true", **env)
    assert strict.returncode == (EXIT_CONFIG if instrument else 1), strict.stderr
    assert "REPORT" not in strict.stderr
    assert "Installed: nothing (OTEL_EDA_STRICT=true)" in strict.stderr
    assert strict.stdout == ""


def test_a_failure_halfway_through_the_sdk_keeps_what_it_installed_and_one_reader(tmp_path: Path) -> None:
    # tracing is installed, then the metrics step fails (an export interval of 0 is refused)
    result = run_app(
        tmp_path,
        instrument=False,
        CALL_CONFIGURE="1",
        ON_ALERT="1",
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="console",
        OTEL_METRIC_EXPORT_INTERVAL="0",
    )
    report = report_of(result)
    assert report["span_exporters"] == ["ConsoleSpanExporter"]
    assert_fully_installed(report)
    assert report["anomaly_threads"] == 1  # no second reader left running for nobody
    assert report["callback_sinks"] == 1
    (error,) = log_lines(result, "OpenTelemetry SDK configuration failed")
    assert "NOT installed: metrics exporters ['console']" in error
    assert "traces exporters" not in error
