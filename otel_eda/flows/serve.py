"""``otel-eda serve``: the flow page with a search box, on 127.0.0.1.

The browser never talks to Zipkin or Jaeger (Jaeger's query API sends no CORS headers):
the page asks this server's ``api/flows`` and the server asks the backend. Routes:

* ``GET /``: the page (:func:`otel_eda.flows.page.render_page` with its search box);
  ``/?key=order-1003`` (or ``correlation_id=``, ``event=``) opens with that search done;
* ``GET /api/flows?key=K`` (or ``correlation_id=C``, ``event=E``): the document
  ``otel-eda flow --json`` prints (``200``, ``flows`` empty when nothing was found);
  ``400`` for a bad query, ``502`` when the backend cannot answer (``{"error": ...}``).

The server binds to 127.0.0.1 only: a flow's spans are not for the network to read. One
query runs at a time (a backend search is the slow part, and the sources are not shared
between threads).
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any, Final

from otel_eda.flows.explorer import FlowQuery, SourceError
from otel_eda.flows.page import render_page

__all__ = ["HOST", "MAX_QUERY_LENGTH", "FlowServer"]

HOST: Final = "127.0.0.1"
#: longer search texts are refused (400): no id or business key is this long
MAX_QUERY_LENGTH: Final = 512
_KINDS: Final = {"key": "business_key", "correlation_id": "correlation_id", "event": "event_id"}

_log = logging.getLogger("otel_eda.serve")

#: answers a query with the ``otel-eda flow --json`` document; raises SourceError
FindFlows = Callable[[FlowQuery], dict[str, Any]]


class BadQuery(ValueError):
    pass


def parse_query(query_string: str) -> FlowQuery:
    """The :class:`FlowQuery` of ``key=...``, ``correlation_id=...`` or ``event=...``.

    >>> parse_query("key=order-1003")
    FlowQuery(correlation_id=None, business_key='order-1003', event_id=None)
    """
    params = urllib.parse.parse_qs(query_string, keep_blank_values=True)
    given = [(name, values) for name, values in params.items() if name in _KINDS]
    if len(given) != 1 or len(given[0][1]) != 1:
        raise BadQuery("give one of key=, correlation_id=, event=")
    name, (value,) = given[0]
    value = value.strip()
    if not value:
        raise BadQuery(f"{name} is empty")
    if len(value) > MAX_QUERY_LENGTH:
        raise BadQuery(f"{name} is longer than {MAX_QUERY_LENGTH} characters")
    return FlowQuery(**{_KINDS[name]: value})


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    server_version = "otel-eda"

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", self.server.page)
        elif url.path == "/api/flows":
            self._api(url.query)
        else:
            self._json(404, {"error": f"no such page: {url.path}"})

    def _api(self, query_string: str) -> None:
        try:
            query = parse_query(query_string)
        except BadQuery as exc:
            self._json(400, {"error": str(exc)})
            return
        try:
            with self.server.query_lock:
                document = self.server.find(query)
        except SourceError as exc:
            _log.warning("%s: %s", query, exc)
            self._json(502, {"error": str(exc)})
            return
        except Exception:
            _log.exception("answering %s failed", query)
            self._json(500, {"error": f"answering {query} failed (see the server's log)"})
            return
        self._json(200, document)

    def _json(self, status: int, document: dict[str, Any]) -> None:
        body = json.dumps(document, separators=(",", ":"), default=str).encode()
        self._send(status, "application/json", body)

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s " + format, self.address_string(), *args)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    page: bytes
    find: FindFlows
    query_lock: threading.Lock


class FlowServer:
    """The page and its API on ``http://127.0.0.1:port`` (``port=0``: any free port).

    ``find`` answers a query with the ``otel-eda flow --json`` document for it.
    """

    def __init__(self, find: FindFlows, port: int = 0) -> None:
        self._server = _Server((HOST, port), _Handler)
        self._server.page = render_page(None, search=True).encode()
        self._server.find = find
        self._server.query_lock = threading.Lock()
        self._serving = False

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}/"

    def serve_forever(self) -> None:
        self._serving = True
        self._server.serve_forever()

    def start(self) -> threading.Thread:
        """Serve on a daemon thread (for tests and embedding); :meth:`close` stops it."""
        self._serving = True
        thread = threading.Thread(target=self._server.serve_forever, name="otel-eda-serve", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        if self._serving:
            self._server.shutdown()
        self._server.server_close()
