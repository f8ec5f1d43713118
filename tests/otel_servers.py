"""otel-eda's self-built servers for tests: Jaeger v2 (``scripts/jaeger``) and the Collector (``scripts/otelcol``).

Importable by test modules (``tests/`` is on ``sys.path`` under pytest's default import mode),
like ``zipkin_server.py``. The binaries are built before pytest (``scripts/test`` runs
``scripts/jaeger install`` and ``scripts/otelcol install``); a missing one fails the test and
names the install command. Servers run on free ports, every listener on 127.0.0.1, started and
stopped by the scripts; one that does not start fails the test (never a skip).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
JAEGER = ROOT / "scripts" / "jaeger"
OTELCOL = ROOT / "scripts" / "otelcol"
COLLECTOR_CONFIG = ROOT / "collector-config.yaml"
START_TIMEOUT_S = 90


# ---------------------------------------------------------------------------------- helpers


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (all sockets held open until every port is chosen)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def built_binary(script: Path) -> Path:
    """The cached binary of ``script`` (``scripts/jaeger`` or ``scripts/otelcol``); fail if it is not built."""
    proc = subprocess.run([str(script), "path"], capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"{script.relative_to(ROOT)} has no binary: run 'scripts/{script.name} install' before pytest "
            f"(scripts/test does).\n{proc.stderr}",
            pytrace=False,
        )
    return Path(proc.stdout.strip())


def run_script(args: list[str], env: dict[str, str], what: str) -> float:
    """Run a server script; fail with its output if it fails. Returns the seconds it took."""
    started = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=START_TIMEOUT_S, env=env, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    return time.monotonic() - started


def stop(script: Path, directory: Path) -> None:
    subprocess.run([str(script), "stop", str(directory)], capture_output=True, timeout=60, check=False)


def listeners(pid: int) -> list[str]:
    """Local addresses (``ip:port``) of every TCP listener and bound UDP socket of ``pid``, from ``ss``."""
    ss = shutil.which("ss") or "/usr/bin/ss"
    if not Path(ss).exists():
        pytest.fail("'ss' (Debian's iproute2) is needed to check the servers' listeners", pytrace=False)
    out = subprocess.run([ss, "-Hltunp"], capture_output=True, text=True, timeout=10, check=True).stdout
    return [line.split()[4] for line in out.splitlines() if f"pid={pid}," in line]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any OTELCOL_* / JAEGER_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTELCOL_", "JAEGER_"))}
    env.update(extra)
    return env


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last error: {last_error!r})")
        time.sleep(0.1)


def id_as_int(value: str) -> int:
    """A trace or span id from Jaeger's APIs (hex in both its v1 and its v3 JSON) as an integer."""
    return int(value, 16)


# --------------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Jaeger:
    directory: Path
    otlp_grpc: int
    otlp_http: int
    query: int
    query_grpc: int
    health: int
    metrics: int
    start_s: float

    @property
    def pid(self) -> int:
        return int((self.directory / "jaeger.pid").read_text())


@dataclass(frozen=True)
class Collector:
    directory: Path
    otlp_grpc: int
    otlp_http: int
    health: int
    metrics: int
    start_s: float

    @property
    def pid(self) -> int:
        return int((self.directory / "otelcol.pid").read_text())

    @property
    def logs_file(self) -> Path:
        """The logs pipeline's file exporter output (OTLP JSON, one export request a line)."""
        return self.directory / "logs.jsonl"


@contextlib.contextmanager
def running_jaeger(directory: Path) -> Iterator[Jaeger]:
    """Jaeger v2 on free ports (OTLP in, in-memory storage, query API), stopped on exit."""
    built_binary(JAEGER)
    ports = free_ports(6)
    names = ("OTLP_GRPC", "OTLP_HTTP", "QUERY", "QUERY_GRPC", "HEALTH", "METRICS")
    env = clean_env(**{f"JAEGER_{name}_PORT": str(port) for name, port in zip(names, ports, strict=True)})
    try:
        start_s = run_script([str(JAEGER), "start", str(directory)], env, "scripts/jaeger start")
        otlp_grpc, otlp_http, query, query_grpc, health, metrics = ports
        yield Jaeger(directory, otlp_grpc, otlp_http, query, query_grpc, health, metrics, start_s=start_s)
    finally:
        stop(JAEGER, directory)


@contextlib.contextmanager
def running_collector(
    directory: Path, jaeger: Jaeger | None, zipkin_spans_endpoint: str | None = None
) -> Iterator[Collector]:
    """The Collector with the repository's collector-config.yaml on free ports, exporting to ``jaeger``
    and to ``zipkin_spans_endpoint`` (default: a free port where no Jaeger or Zipkin listens) and log
    records to ``directory / "logs.jsonl"`` (:attr:`Collector.logs_file`), stopped on exit."""
    built_binary(OTELCOL)
    otlp_grpc, otlp_http, health, metrics, no_zipkin, no_jaeger = free_ports(6)
    env = clean_env(
        OTELCOL_OTLP_GRPC_ENDPOINT=f"127.0.0.1:{otlp_grpc}",
        OTELCOL_OTLP_HTTP_ENDPOINT=f"127.0.0.1:{otlp_http}",
        OTELCOL_HEALTH_ENDPOINT=f"127.0.0.1:{health}",
        OTELCOL_METRICS_PORT=str(metrics),
        OTELCOL_ZIPKIN_ENDPOINT=zipkin_spans_endpoint or f"http://127.0.0.1:{no_zipkin}/api/v2/spans",
        OTELCOL_JAEGER_OTLP_ENDPOINT=f"127.0.0.1:{jaeger.otlp_grpc if jaeger is not None else no_jaeger}",
        OTELCOL_LOGS_FILE=str(directory / "logs.jsonl"),
    )
    try:
        start_s = run_script(
            [str(OTELCOL), "start", str(directory), str(COLLECTOR_CONFIG)], env, "scripts/otelcol start"
        )
        yield Collector(directory, otlp_grpc, otlp_http, health, metrics, start_s=start_s)
    finally:
        stop(OTELCOL, directory)
