"""otel-eda's own settings, read once from ``OTEL_EDA_*`` environment variables.

======================== ========= ===================================================
variable                  default   meaning
======================== ========= ===================================================
``OTEL_EDA_TRACE_MODE``   parent    ``parent`` or ``link``: how consumer spans relate
                                    to producer spans (see ``TraceMode``)
``OTEL_EDA_STORE_MAX_EVENTS`` 10000 events the in-process store keeps before evicting
======================== ========= ===================================================

An invalid value is reported as one ERROR naming the variable, the value and what is
accepted; the default is used instead.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping

from otel_eda.store import DEFAULT_MAX_EVENTS
from otel_eda.telemetry import TraceMode

__all__ = ["OTEL_EDA_STORE_MAX_EVENTS", "OTEL_EDA_TRACE_MODE", "Settings"]

OTEL_EDA_TRACE_MODE = "OTEL_EDA_TRACE_MODE"
OTEL_EDA_STORE_MAX_EVENTS = "OTEL_EDA_STORE_MAX_EVENTS"

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Settings:
    trace_mode: TraceMode = TraceMode.PARENT
    store_max_events: int = DEFAULT_MAX_EVENTS

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        defaults = cls()
        mode = defaults.trace_mode
        raw = env.get(OTEL_EDA_TRACE_MODE)
        if raw:
            try:
                mode = TraceMode(raw.strip().lower())
            except ValueError:
                _invalid(OTEL_EDA_TRACE_MODE, raw, "parent, link", mode.value)
        max_events = defaults.store_max_events
        raw = env.get(OTEL_EDA_STORE_MAX_EVENTS)
        if raw:
            try:
                max_events = int(raw)
                if max_events < 1:
                    raise ValueError
            except ValueError:
                max_events = defaults.store_max_events
                _invalid(OTEL_EDA_STORE_MAX_EVENTS, raw, "a positive integer", str(max_events))
        return cls(mode, max_events)


def _invalid(name: str, value: str, accepted: str, default: str) -> None:
    shown = value if len(value) <= 64 and value.isprintable() else f"<{len(value)} characters>"
    _log.error("invalid %s=%r: accepted values are %s; using the default %s", name, shown, accepted, default)
