"""Bounded shutdown and SIGTERM (issue 12, points 2 and 3): real processes, real signals.

Each probe (``tests/shutdown_probe.py``) makes 3,000 spans (more than the SDK's 2,048-span
queue), then exits or is sent SIGTERM, while its exporter's backend refuses connections,
accepts them and never answers (a listening socket nobody accepts on), or answers each
request after 1.5 s. The bound is ``OTEL_EDA_SHUTDOWN_TIMEOUT=2``; the checks allow 10 s
more for a loaded machine. Before this, an OTLP backend that refused or hung held the exit
for 30 s or more (the SDK's join timeout, then each batch's retries), and SIGTERM lost every
queued span without a word.
"""

from __future__ import annotations

import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPANS = 3000
BOUND_S = 2.0
SLACK_S = 10.0  # a loaded machine; the unbounded shutdown took 30 s and more
SLOW_REPLY_S = 1.5
LINE = re.compile(
    r"otel-eda shutdown (?P<what>.*?); spans exported (?P<exported>\d+), lost (?P<lost>\d+) \((?P<why>[^)]*)"
)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Slow(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(SLOW_REPLY_S)
        self.send_response(202 if "/api/v2/spans" in self.path else 200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Iterator[int]:
    """A port whose backend behaves as ``request.param`` says: refused, hanging or slow."""
    state = request.param
    if state == "refused":
        yield free_port()
    elif state == "hanging":
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1024)  # connections complete in the backlog; nobody reads them
            yield int(listener.getsockname()[1])
    else:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield int(server.server_address[1])
        finally:
            server.shutdown()
            server.server_close()


def exporter_env(exporter: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        PYTHONPATH=str(ROOT),
        OTEL_SERVICE_NAME="shutdown-probe",
        OTEL_LOGS_EXPORTER="none",
        OTEL_EDA_SHUTDOWN_TIMEOUT=str(BOUND_S),
    )
    if exporter == "otlp":
        env.update(
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_METRICS_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        )
    else:
        env.update(
            OTEL_TRACES_EXPORTER="zipkin_json",
            OTEL_METRICS_EXPORTER="none",
            OTEL_EXPORTER_ZIPKIN_ENDPOINT=f"http://127.0.0.1:{port}/api/v2/spans",
        )
    env.update(extra)
    return env


def final_line(stderr: str) -> re.Match[str]:
    found = list(LINE.finditer(stderr))
    assert len(found) == 1, f"expected one final shutdown line:\n{stderr[-4000:]}"
    return found[0]


def assert_counts_add_up(line: re.Match[str]) -> None:
    exported, lost = int(line["exported"]), int(line["lost"])
    assert exported + lost == SPANS, line.group(0)


STATES = ["refused", "hanging", "slow"]


@pytest.mark.parametrize("exporter", ["otlp", "zipkin"])
@pytest.mark.parametrize("backend", STATES, indirect=True)
def test_exit_is_bounded_and_says_what_it_lost(exporter: str, backend: int, request: pytest.FixtureRequest) -> None:
    probe = subprocess.Popen(
        [sys.executable, str(HERE / "shutdown_probe.py"), str(SPANS), "exit"],
        env=exporter_env(exporter, backend),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = probe.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        probe.kill()
        probe.communicate()
        pytest.fail("the probe did not exit within 90 s")
    ended = time.time()
    assert probe.returncode == 0, stderr[-4000:]
    exiting = float(stdout.split("EXITING ")[1].split()[0])
    took = ended - exiting
    line = final_line(stderr)
    state = request.node.callspec.params["backend"]
    print(f"\n{exporter} {state}: exit took {took:.2f} s; {line.group(0)}")
    assert took < BOUND_S + SLACK_S, f"exit took {took:.1f} s: {line.group(0)}"
    assert_counts_add_up(line)
    if state != "slow":
        assert int(line["exported"]) == 0 and int(line["lost"]) == SPANS
    assert "Traceback" not in stderr, stderr[-4000:]


@pytest.mark.parametrize("backend", ["hanging"], indirect=True)
def test_sigterm_flushes_within_the_bound_counts_the_loss_then_dies_of_sigterm(backend: int) -> None:
    probe = subprocess.Popen(
        [sys.executable, str(HERE / "shutdown_probe.py"), str(SPANS), "sigterm"],
        env=exporter_env("otlp", backend),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert probe.stdout is not None
    assert probe.stdout.readline().strip() == "READY"
    began = time.monotonic()
    probe.send_signal(signal.SIGTERM)
    try:
        _, stderr = probe.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        probe.kill()
        probe.communicate()
        pytest.fail("the probe did not end within 60 s of SIGTERM")
    took = time.monotonic() - began
    assert probe.returncode == -signal.SIGTERM, stderr[-4000:]  # then the default behaviour
    line = final_line(stderr)
    print(f"\nSIGTERM, OTLP hanging: ended after {took:.2f} s; {line.group(0)}")
    assert took < BOUND_S + SLACK_S
    assert_counts_add_up(line)
    assert int(line["lost"]) == SPANS


@pytest.mark.parametrize("backend", ["refused"], indirect=True)
def test_sigterm_opt_out_leaves_the_default_action(backend: int) -> None:
    probe = subprocess.Popen(
        [sys.executable, str(HERE / "shutdown_probe.py"), "10", "sigterm"],
        env=exporter_env("zipkin", backend, OTEL_EDA_HANDLE_SIGTERM="false"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert probe.stdout is not None
    assert probe.stdout.readline().strip() == "READY"
    probe.send_signal(signal.SIGTERM)
    _, stderr = probe.communicate(timeout=60)
    assert probe.returncode == -signal.SIGTERM
    assert not LINE.search(stderr)  # nothing ran: the default action killed it at once


def test_an_application_handler_for_sigterm_is_left_in_place() -> None:
    script = """
import signal
def mine(signum, frame): pass
signal.signal(signal.SIGTERM, mine)
import otel_eda
otel_eda.configure()
assert signal.getsignal(signal.SIGTERM) is mine
print("kept")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(PYTHONPATH=str(ROOT), OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none")
    env["OTEL_LOGS_EXPORTER"] = "none"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "kept", result.stderr[-3000:]
