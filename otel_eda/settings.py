"""otel-eda's own settings, read once from ``OTEL_EDA_*`` environment variables.

============================== ========= ==============================================
variable                        default   meaning
============================== ========= ==============================================
``OTEL_EDA_TRACE_MODE``         parent    ``parent`` or ``link``: how consumer spans
                                          relate to producer spans (see ``TraceMode``)
``OTEL_EDA_STORE_MAX_EVENTS``   10000     events the in-process store keeps
``OTEL_EDA_ANOMALY_INTERVAL``   5         seconds between anomaly evaluations
``OTEL_EDA_RULES_FILE``         (none)    YAML or JSON alert rules (default rule set)
``OTEL_EDA_MAX_SERIES``         10000     series the anomaly engine tracks at most
``OTEL_EDA_ALERTMANAGER_URL``   (none)    Alertmanager base URL, e.g. http://127.0.0.1:9093
============================== ========= ==============================================

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

__all__ = [
    "OTEL_EDA_ALERTMANAGER_URL",
    "OTEL_EDA_ANOMALY_INTERVAL",
    "OTEL_EDA_MAX_SERIES",
    "OTEL_EDA_RULES_FILE",
    "OTEL_EDA_STORE_MAX_EVENTS",
    "OTEL_EDA_TRACE_MODE",
    "Settings",
]

OTEL_EDA_TRACE_MODE = "OTEL_EDA_TRACE_MODE"
OTEL_EDA_STORE_MAX_EVENTS = "OTEL_EDA_STORE_MAX_EVENTS"
OTEL_EDA_ANOMALY_INTERVAL = "OTEL_EDA_ANOMALY_INTERVAL"
OTEL_EDA_RULES_FILE = "OTEL_EDA_RULES_FILE"
OTEL_EDA_MAX_SERIES = "OTEL_EDA_MAX_SERIES"
OTEL_EDA_ALERTMANAGER_URL = "OTEL_EDA_ALERTMANAGER_URL"

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Settings:
    trace_mode: TraceMode = TraceMode.PARENT
    store_max_events: int = DEFAULT_MAX_EVENTS
    anomaly_interval_s: float = 5.0
    rules_file: str | None = None
    max_series: int = 10_000
    alertmanager_url: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        d = cls()
        mode = d.trace_mode
        raw = env.get(OTEL_EDA_TRACE_MODE)
        if raw:
            try:
                mode = TraceMode(raw.strip().lower())
            except ValueError:
                _invalid(OTEL_EDA_TRACE_MODE, raw, "parent, link", mode.value)
        return cls(
            trace_mode=mode,
            store_max_events=int(_positive(env, OTEL_EDA_STORE_MAX_EVENTS, d.store_max_events, integer=True)),
            anomaly_interval_s=_positive(env, OTEL_EDA_ANOMALY_INTERVAL, d.anomaly_interval_s, integer=False),
            rules_file=env.get(OTEL_EDA_RULES_FILE) or None,
            max_series=int(_positive(env, OTEL_EDA_MAX_SERIES, d.max_series, integer=True)),
            alertmanager_url=(env.get(OTEL_EDA_ALERTMANAGER_URL) or "").rstrip("/") or None,
        )


def _positive(env: Mapping[str, str], name: str, default: float, *, integer: bool) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
        if not value > 0:
            raise ValueError
        return value
    except ValueError:
        _invalid(name, raw, "a positive integer" if integer else "a positive number of seconds", str(default))
        return default


def _invalid(name: str, value: str, accepted: str, default: str) -> None:
    shown = value if len(value) <= 64 and value.isprintable() else f"<{len(value)} characters>"
    _log.error("invalid %s=%r: accepted values are %s; using the default %s", name, shown, accepted, default)
