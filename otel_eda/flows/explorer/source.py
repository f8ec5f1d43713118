"""Where spans come from: the :class:`SpanSource` protocol, its error, and the HTTP and
JSON-stream helpers the sources share (standard library only)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any, Final, Protocol

from otel_eda.flows.explorer.spans import SpanData
from otel_eda.version import VERSION

__all__ = ["SourceError", "SpanSource", "get_json", "json_stream"]

#: Seconds one HTTP request to a backend may take.
HTTP_TIMEOUT_S: Final = 30.0
_WHITESPACE: Final = re.compile(r"\s*")


class SourceError(Exception):
    """The source cannot be read: unreachable, refusing, answering garbage, or missing."""


class SpanSource(Protocol):
    """Anything that finds spans: a tracing backend's query API, or files."""

    #: e.g. ``Zipkin at http://127.0.0.1:9411``, for messages
    description: str

    def traces_with(self, attribute: str, value: str) -> list[SpanData]:
        """Every span of every trace in which some span has ``attribute`` equal to ``value``.

        Raises :class:`SourceError` when the source cannot answer.
        """
        ...

    @property
    def skipped(self) -> int:
        """Spans read but not understood (malformed), so far."""
        ...


def get_json(url: str, what: str, query: Mapping[str, object] | None = None) -> Any:
    """GET ``url`` (with ``query``) and decode its JSON body; :class:`SourceError` otherwise."""
    if query:
        url = f"{url}?{urllib.parse.urlencode(query)}"
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": f"otel-eda-flow/{VERSION}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
        path = urllib.parse.urlsplit(url).path
        raise SourceError(f"{what} answered HTTP {exc.code} to GET {path}: {detail or exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(f"cannot reach {what}: {reason}") from None
    try:
        documents = list(json_stream(body.decode("utf-8")))
    except (UnicodeDecodeError, ValueError) as exc:
        path = urllib.parse.urlsplit(url).path
        raise SourceError(f"{what} answered something that is not JSON to GET {path}: {exc}") from None
    if len(documents) != 1:
        path = urllib.parse.urlsplit(url).path
        raise SourceError(f"{what} answered {len(documents)} JSON documents to GET {path}, expected one")
    return documents[0]


def json_stream(text: str, start: int = 0) -> Iterator[Any]:
    """The JSON values of ``text`` one after the other: JSON Lines, or pretty-printed
    objects written back to back (what the console exporters print). Raises ``ValueError``
    (a ``json.JSONDecodeError``) where the text stops being JSON."""
    decode = json.JSONDecoder().raw_decode
    skip = _WHITESPACE.match
    end = len(text)
    pos = skip(text, start).end()  # type: ignore[union-attr]
    while pos < end:
        value, pos = decode(text, pos)
        yield value
        pos = skip(text, pos).end()  # type: ignore[union-attr]
