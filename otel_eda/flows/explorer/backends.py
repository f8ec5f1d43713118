"""Spans from a tracing backend's query API: :class:`ZipkinSource` and :class:`JaegerSource`.

* Zipkin: ``GET /api/v2/traces?annotationQuery=<attribute>=<value>`` finds every trace
  holding a span tagged so, whatever its service. Zipkin keeps no span links: the
  explorer follows ``eda.producer.*`` and ``eda.causation_id`` there (and the
  ``otlp.link.<i>`` tags the Collector's translator writes, when present).
* Jaeger (v2, query service): its tag search exists on the v1 HTTP API only and needs a
  service, so :class:`JaegerSource` asks ``/api/traces?service=S&tags=...`` for each
  service of ``/api/services``, then fetches each trace found from ``/api/v3/traces/{id}``,
  which returns OTLP JSON with links and their attributes.

Both search ``lookback_s`` seconds back from now and return at most ``max_traces`` traces
per search (a search that returns exactly that many may have been cut short: it is logged).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import time
import urllib.parse
from typing import Any, Final

from otel_eda.flows.explorer.decoding import from_otlp, from_zipkin
from otel_eda.flows.explorer.source import SourceError, get_json
from otel_eda.flows.explorer.spans import SpanData

__all__ = ["DEFAULT_LOOKBACK_S", "DEFAULT_MAX_TRACES", "JaegerSource", "ZipkinSource"]

_log = logging.getLogger(__name__)

DEFAULT_LOOKBACK_S: Final = 86_400.0
DEFAULT_MAX_TRACES: Final = 10_000
#: Parallel trace fetches from Jaeger's v3 API.
_FETCHERS: Final = 8


def _base(url: str) -> str:
    return url.strip().rstrip("/")


class ZipkinSource:
    """Spans from Zipkin's v2 query API at ``url`` (e.g. ``http://127.0.0.1:9411``)."""

    def __init__(
        self, url: str, *, lookback_s: float = DEFAULT_LOOKBACK_S, max_traces: int = DEFAULT_MAX_TRACES
    ) -> None:
        self.url = _base(url)
        self.lookback_s = lookback_s
        self.max_traces = max_traces
        self.description = f"Zipkin at {self.url}"
        self._skipped = 0

    @property
    def skipped(self) -> int:
        return self._skipped

    def traces_with(self, attribute: str, value: str) -> list[SpanData]:
        traces = get_json(
            f"{self.url}/api/v2/traces",
            f"Zipkin at {self.url}",
            {
                "annotationQuery": f"{attribute}={value}",
                "endTs": int(time.time() * 1000),
                "lookback": int(self.lookback_s * 1000),
                "limit": self.max_traces,
            },
        )
        if not isinstance(traces, list):
            raise SourceError(f"Zipkin at {self.url} answered a {type(traces).__name__}, not a list of traces")
        if len(traces) >= self.max_traces:
            _log.warning("Zipkin returned %d traces, the limit: the flow may be cut short", len(traces))
        spans: list[SpanData] = []
        for trace in traces:
            for raw in trace if isinstance(trace, list) else ():
                try:
                    spans.append(from_zipkin(raw))
                except ValueError as exc:
                    self._skipped += 1
                    _log.debug("skipped a span: %s", exc)
        return spans


class JaegerSource:
    """Spans from Jaeger's query service at ``url`` (e.g. ``http://127.0.0.1:16686``)."""

    def __init__(
        self, url: str, *, lookback_s: float = DEFAULT_LOOKBACK_S, max_traces: int = DEFAULT_MAX_TRACES
    ) -> None:
        self.url = _base(url)
        self.lookback_s = lookback_s
        self.max_traces = max_traces
        self.description = f"Jaeger at {self.url}"
        self._skipped = 0

    @property
    def skipped(self) -> int:
        return self._skipped

    def services(self) -> list[str]:
        answer = get_json(f"{self.url}/api/services", self.description)
        data = answer.get("data") if isinstance(answer, dict) else None
        return [s for s in data or () if isinstance(s, str)]

    def trace_ids_with(self, attribute: str, value: str) -> list[str]:
        end_us = int(time.time() * 1_000_000)
        found: dict[str, None] = {}
        for service in self.services():
            answer = get_json(
                f"{self.url}/api/traces",
                self.description,
                {
                    "service": service,
                    "tags": json.dumps({attribute: value}),
                    "start": end_us - int(self.lookback_s * 1_000_000),
                    "end": end_us,
                    "limit": self.max_traces,
                },
            )
            traces = answer.get("data") if isinstance(answer, dict) else None
            traces = traces or []
            if len(traces) >= self.max_traces:
                _log.warning("Jaeger returned %d traces for %s (the limit): flow cut short?", len(traces), service)
            for trace in traces:
                if isinstance(trace, dict) and isinstance(trace.get("traceID"), str):
                    found[trace["traceID"]] = None
        return list(found)

    def trace(self, trace_id: str) -> list[SpanData]:
        try:
            answer: Any = get_json(f"{self.url}/api/v3/traces/{urllib.parse.quote(trace_id)}", self.description)
        except SourceError as exc:
            if " 404 " in str(exc):  # gone since the search (evicted from memory storage)
                _log.warning("trace %s was found, then not returned by Jaeger: skipped", trace_id)
                return []
            raise
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, dict):
            raise SourceError(f"{self.description} answered trace {trace_id} without a result")
        spans: list[SpanData] = []
        for span in from_otlp(result):
            if isinstance(span, ValueError):
                self._skipped += 1
                _log.debug("skipped a span: %s", span)
            else:
                spans.append(span)
        return spans

    def traces_with(self, attribute: str, value: str) -> list[SpanData]:
        trace_ids = self.trace_ids_with(attribute, value)
        if not trace_ids:
            return []
        with concurrent.futures.ThreadPoolExecutor(min(_FETCHERS, len(trace_ids))) as pool:
            return [span for spans in pool.map(self.trace, trace_ids) for span in spans]
