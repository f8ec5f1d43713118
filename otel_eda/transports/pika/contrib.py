"""otel-eda's pika instrumentation replaces the contrib one when both are installed.

The distro adds ``pika`` to ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` before the instrumentors
load; otel-eda's instrumentor and its post-instrument hook undo a contrib instrumentation
already applied. See :mod:`otel_eda.transports.contrib_replacement`; nothing happens when
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` names ``otel_eda_pika`` (the contrib one then runs).
The contrib instrumentation wraps each channel as it is created: channels an application
opened while it was applied keep its wrappers.
"""

from __future__ import annotations

from typing import Final

from otel_eda.transports.contrib_replacement import ContribReplacement

__all__ = [
    "CONTRIB_ENTRY_POINT",
    "ENTRY_POINT",
    "REPLACEMENT",
    "after_instrumentors",
    "disable_contrib_before_load",
    "uninstrument_contrib",
]

#: otel-eda's and the contrib's names in the ``opentelemetry_instrumentor`` entry-point group.
ENTRY_POINT: Final = "otel_eda_pika"
CONTRIB_ENTRY_POINT: Final = "pika"

REPLACEMENT: Final = ContribReplacement(
    client="pika",
    entry_point=ENTRY_POINT,
    contrib_entry_point=CONTRIB_ENTRY_POINT,
    contrib_instrumentor="opentelemetry.instrumentation.pika:PikaInstrumentor",
    instrumentor="otel_eda.transports.pika.instrumentor:PikaInstrumentor",
    logger_name=__name__,
)
disable_contrib_before_load = REPLACEMENT.disable_contrib_before_load
uninstrument_contrib = REPLACEMENT.uninstrument_contrib
after_instrumentors = REPLACEMENT.after_instrumentors
