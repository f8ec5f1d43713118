"""MkDocs hooks of the API reference (loaded by mkdocs.yml ``hooks:``).

Docstrings here are written for both pytest's doctest runner and readers: their ``>>>``
examples are plain text, which Markdown would parse (``x["a"]["b"]`` reads as a reference
link). This hook gives Markdown, before mkdocstrings takes its configuration, an extension
that fences every run of ``>>>`` lines and their output as a ``pycon`` code block.
"""

from __future__ import annotations

import re
from typing import Any

from markdown import Markdown
from markdown.extensions import Extension
from markdown.preprocessors import Preprocessor
from mkdocs.plugins import event_priority

_PROMPT = re.compile(r"^(\s*)>>> ")


class _DoctestFences(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(lines):
            match = _PROMPT.match(lines[i])
            if not match:
                out.append(lines[i])
                i += 1
                continue
            indent = match.group(1)
            block = []
            while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
                block.append(lines[i][len(indent) :])
                i += 1
            out += ["", f"{indent}```pycon", *(indent + line for line in block), f"{indent}```", ""]
        return out


class DoctestFences(Extension):
    def extendMarkdown(self, md: Markdown) -> None:
        md.preprocessors.register(_DoctestFences(md), "doctest_fences", 40)


@event_priority(100)  # before mkdocstrings reads the Markdown extensions
def on_config(config: Any) -> Any:
    config.markdown_extensions.append(DoctestFences())
    return config
