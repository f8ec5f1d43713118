"""The flow page: one self-contained HTML file that draws a flow (a causation graph, a
timeline of the handlings per service, the service graph, an event's details on click).

The page is a template (``page.html``) with its style (``page.css``), its script
(``page.js``) and the graph library it draws with (d3, ISC licence, fetched from the npm
registry by ``scripts/vendor-d3`` into ``vendor/``) inlined: it works offline, from a
file or from ``otel-eda serve``. Its data is the document ``otel-eda flow --json``
prints, embedded as JSON (``<`` escaped, so no text of a span can end the script).

>>> page = render_page({"query": "business key k", "source": "file(s) x", "skipped_spans": 0, "flows": []})
>>> page.startswith("<!DOCTYPE html>") and '"flows":[]' in page and "<script src" not in page
True
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Final

from otel_eda.version import VERSION

__all__ = ["render_page", "write_page"]

_PLACEHOLDER: Final = re.compile(r"\{\{([A-Z0-9_]+)\}\}")


@functools.cache
def _asset(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def _escape_html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _script_json(document: Mapping[str, Any] | None) -> str:
    """JSON that is safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` as ``\\u`` escapes."""
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(document: Mapping[str, Any] | None, *, title: str | None = None, search: bool = False) -> str:
    """The page for ``document`` (the shape of ``otel-eda flow --json``: ``query``,
    ``source``, ``skipped_spans``, ``flows``); with ``search``, the page of ``otel-eda
    serve`` (a search box that asks the server's ``api/flows``; ``document`` may be ``None``)."""
    if title is None:
        title = f"otel-eda flow: {document['query']}" if document else "otel-eda flow"
    parts = {
        "TITLE": _escape_html(title),
        "MODE": "serve" if search else "file",
        "VERSION": _escape_html(VERSION),
        "STYLE": _asset("page.css"),
        "D3": _asset("vendor/d3.min.js"),
        "D3_VERSION": _asset("vendor/d3.VERSION").strip(),
        "D3_LICENSE": _asset("vendor/d3.LICENSE").replace("*/", "* /"),
        "APP": _asset("page.js"),
        "DATA": _script_json(document),
    }
    # one pass: text put in (a span's attributes, the library) is never searched for placeholders
    return _PLACEHOLDER.sub(lambda match: parts[match[1]], _asset("page.html"))


def write_page(path: Path, document: Mapping[str, Any]) -> None:
    """Write the page for ``document`` to ``path`` (UTF-8)."""
    path.write_text(render_page(document), encoding="utf-8")
