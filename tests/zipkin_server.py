"""A real OpenZipkin server for tests: start it, query it, count its spans, stop and restart it.

Not a conftest: a test module imports what it needs (``tests/`` has no ``__init__.py``, so
pytest's default ``prepend`` import mode puts it on ``sys.path`` before importing a test)::

    from zipkin_server import ZipkinServer, zipkin_fixture

    zipkin = zipkin_fixture()  # a module-scoped fixture named "zipkin"
    pytestmark = pytest.mark.timeout(300)  # Zipkin may take up to 120 s to start on a busy machine


    def test_something(zipkin: ZipkinServer) -> None:
        ...  # send spans to zipkin.spans_endpoint, then read them back
        assert zipkin.wait_for_span_count(12) == 12

The server is ``scripts/zipkin``'s: OpenZipkin's exec jar (downloaded once per machine,
``scripts/zipkin install``), in-memory storage, listening on 127.0.0.1 only, on a free port,
with its log and PID in its own directory. If it does not start, the test fails with the
script's output and the server's log: it is never skipped.

:meth:`ZipkinServer.stop` and :meth:`ZipkinServer.start` (or :meth:`ZipkinServer.restart`)
take the server down and up again on the same port, e.g. to simulate an outage of the
trace backend; the storage is in memory, so a restarted server starts empty.

**Counting spans exactly.** Zipkin's query API has no "count" and no "all spans": a query
returns *traces*, and its ``limit`` counts traces, not spans. :meth:`ZipkinServer.spans`
asks ``/api/v2/traces`` for every trace whose spans lie between the epoch and a day from now,
without a service name (so no service is left out), with a ``limit`` far above what a test
stores, and fails if that many traces came back (the answer could have been cut short). The
in-memory storage answers with every stored span of each trace, unmerged. It keeps the spans
of a trace in a set, so a span received twice with identical content (a client retrying a
request whose response it missed) is stored, and counted, once; :meth:`received_span_count`
is the collector's own count of spans received, duplicates included
(``zipkin_collector_spans_total`` on ``/prometheus``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import psutil
import pytest
from processes import listening_addresses

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "zipkin"

#: ``ZIPKIN_READY_TIMEOUT_S`` of ``scripts/zipkin start``: seconds to wait for ``GET /health``.
READY_TIMEOUT_S = 120
#: More traces than any test stores: a query returning this many may have been cut short.
TRACE_LIMIT = 1_000_000
_DAY_MS = 86_400_000
Scope = Literal["session", "package", "module", "class", "function"]

__all__ = [
    "READY_TIMEOUT_S",
    "ZipkinHTTPError",
    "ZipkinServer",
    "ZipkinStartError",
    "free_port",
    "install_zipkin",
    "zipkin_fixture",
]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ZipkinStartError(RuntimeError):
    """``scripts/zipkin`` could not install or start the server; the message has its output and log."""


class ZipkinHTTPError(AssertionError):
    """Zipkin answered a query with an HTTP error status."""

    def __init__(self, url: str, status: int, body: str) -> None:
        super().__init__(f"GET {url}: HTTP {status}: {body}")
        self.status = status


def install_zipkin(timeout_s: float = 900.0) -> Path:
    """Download (once per machine) and verify Zipkin's jar; return its path."""
    try:
        proc = subprocess.run([str(SCRIPT), "install"], capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ZipkinStartError(f"scripts/zipkin install did not finish within {timeout_s:g} s") from exc
    if proc.returncode != 0:
        raise ZipkinStartError(f"scripts/zipkin install failed (exit {proc.returncode}):\n{proc.stderr}")
    return Path(proc.stdout.strip().splitlines()[-1])


class ZipkinServer:
    """One Zipkin process, run by ``scripts/zipkin`` from ``directory`` on 127.0.0.1:``port``.

    A context manager: ``with ZipkinServer(tmp_path) as zipkin: ...`` starts and stops it.
    """

    def __init__(self, directory: Path, port: int | None = None, *, ready_timeout_s: float = READY_TIMEOUT_S):
        self.directory = Path(directory)
        self.port = port if port is not None else free_port()
        self.ready_timeout_s = ready_timeout_s
        self.url = f"http://127.0.0.1:{self.port}"
        #: where an exporter sends spans (``OTEL_EXPORTER_ZIPKIN_ENDPOINT``)
        self.spans_endpoint = f"{self.url}/api/v2/spans"
        #: seconds the last :meth:`start` took (the JVM start, mostly)
        self.start_seconds: float | None = None

    def __repr__(self) -> str:
        return f"ZipkinServer({self.url}, directory={str(self.directory)!r})"

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> ZipkinServer:
        """Start the server and wait until it answers ``GET /health`` (``scripts/zipkin start``)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        install_zipkin()
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [str(SCRIPT), "start", str(self.directory), str(self.port)],
                capture_output=True,
                text=True,
                timeout=self.ready_timeout_s + 60,
                check=False,
                env={**os.environ, "ZIPKIN_READY_TIMEOUT_S": f"{self.ready_timeout_s:g}"},
            )
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise ZipkinStartError(f"scripts/zipkin start hung for {exc.timeout:g} s\n{self.log()}") from exc
        if proc.returncode != 0:  # its output has the server's log
            raise ZipkinStartError(
                f"scripts/zipkin start {self.directory} {self.port} failed (exit {proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}"
            )
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop the server (TERM, then KILL); does nothing if it is not running."""
        if self.directory.is_dir():
            subprocess.run([str(SCRIPT), "stop", str(self.directory)], capture_output=True, timeout=60, check=False)

    def restart(self) -> ZipkinServer:
        """Stop and start again on the same port: an empty server at the same address."""
        self.stop()
        return self.start()

    def __enter__(self) -> ZipkinServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def log_file(self) -> Path:
        return self.directory / "zipkin.log"

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    @property
    def pid(self) -> int | None:
        """The server's PID while it runs (from ``zipkin.pid``), else ``None``."""
        try:
            return int((self.directory / "zipkin.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid
        return pid is not None and psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE

    def listening_addresses(self) -> set[tuple[str, str, int]]:
        """Every ``(protocol, ip, port)`` the server process listens on (TCP) or has bound (UDP)."""
        pid = self.pid
        assert pid is not None, "Zipkin is not running"
        return listening_addresses(pid)

    # -- the HTTP API ----------------------------------------------------------------------
    def get(self, path: str, query: Mapping[str, object] | None = None, timeout_s: float = 10.0) -> bytes:
        """``GET path?query`` (``None`` values left out); raises :class:`ZipkinHTTPError` on an HTTP error."""
        params = urllib.parse.urlencode({k: v for k, v in (query or {}).items() if v is not None})
        url = f"{self.url}{path}" + (f"?{params}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                body: bytes = response.read()
        except urllib.error.HTTPError as exc:
            raise ZipkinHTTPError(url, exc.code, exc.read().decode(errors="replace")) from None
        return body

    def api(self, path: str, **query: object) -> Any:
        """The JSON answer of ``GET path?query``, e.g. ``api("/api/v2/services")``."""
        return json.loads(self.get(path, query))

    def services(self) -> list[str]:
        """``/api/v2/services``: the ``localEndpoint.serviceName`` of every stored span (lower case)."""
        return list(self.api("/api/v2/services"))

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """``/api/v2/trace/{traceId}``: the spans of one trace (``[]`` if there is none)."""
        try:
            return list(self.api(f"/api/v2/trace/{trace_id}"))
        except ZipkinHTTPError as exc:
            if exc.status == 404:
                return []
            raise

    def traces(self, **query: object) -> list[list[dict[str, Any]]]:
        """``/api/v2/traces``: *every* trace matching ``query`` (``serviceName``, ``spanName``,
        ``annotationQuery``, ...), whenever its spans happened: not cut short by ``limit``."""
        end_ms = int(time.time() * 1000) + _DAY_MS
        query = {"endTs": end_ms, "lookback": end_ms, "limit": TRACE_LIMIT, **query}
        found: list[list[dict[str, Any]]] = self.api("/api/v2/traces", **query)
        assert len(found) < int(str(query["limit"])), f"{len(found)} traces: the answer may be cut short by limit"
        return found

    def spans(self, **query: object) -> list[dict[str, Any]]:
        """Every stored span of every trace matching ``query`` (all of them without one)."""
        return [span for trace in self.traces(**query) for span in trace]

    def span_count(self) -> int:
        """The number of spans stored, of all services (exact: see the module's docstring)."""
        return len(self.spans())

    def collector_metric(self, name: str, transport: str = "http") -> float:
        """A Prometheus counter of Zipkin's collector, e.g. ``zipkin_collector_spans_total``."""
        text = self.get("/prometheus").decode()
        pattern = rf'^{re.escape(name)}\{{transport="{re.escape(transport)}",?\}} (\S+)$'
        match = re.search(pattern, text, re.MULTILINE)
        assert match is not None, f"no {name}{{transport={transport!r}}} in Zipkin's /prometheus"
        return float(match.group(1))

    def received_span_count(self) -> int:
        """Spans received over HTTP since the server started, duplicates included."""
        return int(self.collector_metric("zipkin_collector_spans_total"))

    def wait_for_span_count(self, expected: int, timeout_s: float = 15.0) -> int:
        """Poll until ``expected`` spans are stored (or ``timeout_s`` passed); return the count.

        Returns early, with the count, if more than ``expected`` are stored.
        """
        return wait_for(self.span_count, lambda n: n >= expected, timeout_s)


def wait_for(probe: Callable[[], int], done: Callable[[int], bool], timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def zipkin_fixture(scope: Scope = "module", name: str = "zipkin") -> Any:
    """A pytest fixture (``scope``, named ``name``) yielding a started :class:`ZipkinServer`.

    Assign it to a module-level name of a test module: ``zipkin = zipkin_fixture()``. A server
    that does not start fails the test (``pytest.fail`` with the output and the log).
    """

    @pytest.fixture(scope=scope, name=name)
    def _zipkin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZipkinServer]:
        server = ZipkinServer(tmp_path_factory.mktemp("zipkin"))
        problem = None
        try:
            server.start()
        except ZipkinStartError as exc:
            problem = str(exc)
        if problem is not None:
            server.stop()
            pytest.fail(problem, pytrace=False)
        try:
            yield server
        finally:
            server.stop()

    return _zipkin
