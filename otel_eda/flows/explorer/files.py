"""``FileSource``: spans from files, searched in memory.

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
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from otel_eda.flows.explorer.decoding import from_console, from_otlp, from_zipkin, is_console_span, is_otlp_document
from otel_eda.flows.explorer.source import SourceError, json_stream
from otel_eda.flows.explorer.spans import SpanData, as_str

__all__ = ["FileSource"]

_log = logging.getLogger(__name__)


#: Trace ids as the line formats write them: OTLP ``"traceId":"<hex>"``, console ``"trace_id": "0x<hex>"``.
_TRACE_ID_IN_TEXT: Final = re.compile(r'"trace(?:Id|_id)"\s*:\s*"(?:0x)?([0-9a-fA-F]{32})"')
#: Values whose JSON text is the same whoever wrote it (Go escapes ``<>&``, Python non-ASCII):
#: only these are searched as text before a line is decoded.
_PLAIN_VALUE: Final = re.compile(r"[A-Za-z0-9_.:/@+=, -]+")


class _LinesFile:
    """A JSON Lines file (the Collector's, or the console exporter's once it writes lines),
    searched as text first: only the lines that can hold what is asked are decoded, and a
    decoded line is kept for the next question."""

    __slots__ = ("decoded", "lines", "path")

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.split("\n")
        self.decoded: dict[int, list[SpanData]] = {}


class FileSource:
    """Spans from files (see the module documentation). Files are read on first use.

    A JSON Lines file is searched line by line, so memory follows the flows asked for, not
    the file (the file's text is held); any other file (pretty-printed console output) is
    decoded whole, once.
    """

    def __init__(self, paths: Sequence[str | Path]) -> None:
        if not paths:
            raise ValueError("FileSource needs at least one path")
        self.paths = [Path(p) for p in paths]
        shown = ", ".join(str(p) for p in self.paths[:3]) + (" ..." if len(self.paths) > 3 else "")
        self.description = f"file(s) {shown}"
        self._loaded: list[_LinesFile | list[SpanData]] | None = None
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

    def _files(self) -> list[_LinesFile | list[SpanData]]:
        if self._loaded is None:
            loaded: list[_LinesFile | list[SpanData]] = []
            for path in self.files():
                try:
                    text = path.read_text(encoding="utf-8", errors="replace")
                except OSError as exc:
                    raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
                loaded.append(_LinesFile(path, text) if _is_json_lines(text) else list(self._decode(text, path)))
            self._loaded = loaded
        return self._loaded

    def spans(self) -> list[SpanData]:
        """Every span of every file."""
        spans: list[SpanData] = []
        for file in self._files():
            if isinstance(file, _LinesFile):
                for index in range(len(file.lines)):
                    spans.extend(self._line(file, index))
            else:
                spans.extend(file)
        return spans

    def _line(self, file: _LinesFile, index: int) -> list[SpanData]:
        spans = file.decoded.get(index)
        if spans is None:
            line = file.lines[index]
            spans = []
            if line.strip():
                try:
                    value = json.loads(line)
                except ValueError as exc:
                    self._skipped += 1
                    _log.warning("%s: line %d is not JSON (%s); skipped", file.path, index + 1, exc)
                else:
                    spans = list(self._spans_of(value))
            file.decoded[index] = spans
        return spans

    def traces_with(self, attribute: str, value: str) -> list[SpanData]:
        files = self._files()
        needle = json.dumps(value) if _PLAIN_VALUE.fullmatch(value) else None
        wanted: set[str] = set()
        for file in files:
            if isinstance(file, _LinesFile):
                candidates: Iterable[SpanData] = (
                    span
                    for index, line in enumerate(file.lines)
                    if needle is None or needle in line
                    for span in self._line(file, index)
                )
            else:
                candidates = file
            wanted.update(s.trace_id for s in candidates if as_str(s.attributes.get(attribute)) == value)
        if not wanted:
            return []
        found: list[SpanData] = []
        for file in files:
            if isinstance(file, _LinesFile):
                for index, line in enumerate(file.lines):
                    if index not in file.decoded and not any(
                        trace_id.lower() in wanted for trace_id in _TRACE_ID_IN_TEXT.findall(line)
                    ):
                        continue
                    found.extend(s for s in self._line(file, index) if s.trace_id in wanted)
            else:
                found.extend(s for s in file if s.trace_id in wanted)
        return found

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


def _is_json_lines(text: str) -> bool:
    """Whether the file's first line is a whole JSON object (JSON Lines), not the start of a
    pretty-printed one."""
    first = text.lstrip().split("\n", 1)[0].strip()
    if not first.startswith("{"):
        return False
    try:
        return isinstance(json.loads(first), dict)
    except ValueError:
        return False
