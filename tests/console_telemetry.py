"""Reading what the OpenTelemetry console exporters wrote (importable by the test modules)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json_stream(path: Path) -> list[dict[str, Any]]:
    """The console exporters write a stream of pretty-printed JSON objects."""
    text = path.read_text()
    decoder = json.JSONDecoder()
    objects: list[dict[str, Any]] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return objects
        obj, pos = decoder.raw_decode(text, pos)
        objects.append(obj)
