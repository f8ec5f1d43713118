"""``FileSource``: spans from files, read whole and searched in memory.

Reads what the OpenTelemetry exporters write to files:

* the SDK's console exporter (``OTEL_TRACES_EXPORTER=console``): one span per JSON object,
  pretty-printed objects back to back, or one per line (JSON Lines);
* the Collector's file exporter (``collector-config.yaml``'s traces file): one OTLP JSON
  document (``{"resourceSpans": [...]}``) per line;
* Zipkin's JSON v2 as its API answers it (a list of spans, or a list of traces), saved.

Several files (and directories: every file in them) may be given, mixed formats included:
one service per file is common. Other JSON objects (metrics, logs) are passed over; text
that is not JSON (a line cut short while the writer was writing) is skipped up to the next
line, and counted in :attr:`FileSource.skipped` with the malformed spans.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from otel_eda.flows.explorer.decoding import from_console, from_otlp, from_zipkin, is_console_span, is_otlp_document
from otel_eda.flows.explorer.source import SourceError, json_stream
from otel_eda.flows.explorer.spans import SpanData, as_str

__all__ = ["FileSource"]

_log = logging.getLogger(__name__)


class FileSource:
    """Spans from files (see the module documentation). Files are read on first use."""

    def __init__(self, paths: Sequence[str | Path]) -> None:
        if not paths:
            raise ValueError("FileSource needs at least one path")
        self.paths = [Path(p) for p in paths]
        shown = ", ".join(str(p) for p in self.paths[:3]) + (" ..." if len(self.paths) > 3 else "")
        self.description = f"file(s) {shown}"
        self._spans: list[SpanData] | None = None
        self._by_trace: dict[str, list[SpanData]] = {}
        self._skipped = 0

    @property
    def skipped(self) -> int:
        return self._skipped

    def files(self) -> list[Path]:
        found: list[Path] = []
        for path in self.paths:
            if path.is_dir():
                found += sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            elif path.is_file():
                found.append(path)
            else:
                raise SourceError(f"no such file or directory: {path}")
        return found

    def spans(self) -> list[SpanData]:
        """Every span of every file (read once)."""
        if self._spans is None:
            spans: list[SpanData] = []
            for path in self.files():
                try:
                    text = path.read_text(encoding="utf-8", errors="replace")
                except OSError as exc:
                    raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
                spans.extend(self._decode(text, path))
            self._spans = spans
            for span in spans:
                self._by_trace.setdefault(span.trace_id, []).append(span)
        return self._spans

    def _decode(self, text: str, path: Path) -> Iterable[SpanData]:
        pos = 0
        while True:
            try:
                for value in json_stream(text, pos):
                    yield from self._spans_of(value)
                return
            except json.JSONDecodeError as exc:
                # Not JSON from here: skip to the next line and go on.
                self._skipped += 1
                _log.warning("%s: line %d is not JSON (%s); skipped", path, exc.lineno, exc.msg)
                newline = text.find("\n", exc.pos)
                if newline < 0:
                    return
                pos = newline + 1

    def _spans_of(self, value: object) -> Iterable[SpanData]:
        if is_otlp_document(value):
            for span in from_otlp(value):  # type: ignore[arg-type]
                if isinstance(span, ValueError):
                    self._skipped += 1
                    _log.debug("skipped a span: %s", span)
                else:
                    yield span
        elif is_console_span(value):
            try:
                yield from_console(value)  # type: ignore[arg-type]
            except ValueError as exc:
                self._skipped += 1
                _log.debug("skipped a span: %s", exc)
        elif isinstance(value, list):  # Zipkin's JSON v2: a list of spans, or of traces
            for item in value:
                if isinstance(item, list):
                    yield from self._spans_of(item)
                elif isinstance(item, dict) and "traceId" in item and "id" in item:
                    try:
                        yield from_zipkin(item)
                    except ValueError as exc:
                        self._skipped += 1
                        _log.debug("skipped a span: %s", exc)
        # anything else (metrics, logs) is not ours to read

    def traces_with(self, attribute: str, value: str) -> list[SpanData]:
        spans = self.spans()
        traces = {s.trace_id for s in spans if as_str(s.attributes.get(attribute)) == value}
        return [s for trace_id in sorted(traces) for s in self._by_trace[trace_id]]
