"""otel-eda's version, read once from the installed package's metadata (written only in
``pyproject.toml``). It is also the version of otel-eda's instrumentation scopes."""

from __future__ import annotations

from importlib import metadata
from typing import Final

__all__ = ["VERSION"]


def _installed_version() -> str:
    try:
        return metadata.version("otel-eda")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


VERSION: Final = _installed_version()
