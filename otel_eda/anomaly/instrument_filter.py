"""Aggregate for the anomaly reader only the instruments its engine reads.

The OpenTelemetry SDK aggregates every measurement once per ``MetricReader`` of a
``MeterProvider``: with the application's exporting reader and the anomaly reader side by
side, each ``Counter.add`` and ``Histogram.record`` is attributed, hashed and aggregated
twice. The SDK (1.4x) has no views per reader (views belong to the provider and would
change what the exporter sees), so this module narrows the anomaly reader's own storage:
an instrument whose metric no rule of the engine reads gets no aggregation there (the
exporting reader still aggregates it as before); the others are aggregated as the SDK
would. The decision is made again when the engine's rules change.

This reaches into SDK internals (the reader's ``MetricReaderStorage``, through
:mod:`otel_eda.otel_internals`). Where they are not
what this module expects (another SDK version, a provider with renaming views), nothing is
narrowed: the reader then aggregates everything, exactly as without this module, and one
DEBUG line says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from otel_eda import otel_internals

__all__ = ["narrow_storage"]

_log = logging.getLogger(__name__)
_NO_MATCHES: Final[tuple[()]] = ()


def narrow_storage(
    collect_callback: object,
    reader: object,
    reads: Callable[[str], bool],
    fed: Callable[[Any], bool] = lambda instrument: False,
) -> bool:
    """Make ``reader``'s storage skip instruments for which ``reads(name)`` is false, and
    those ``fed(instrument)`` says reach the reader another way (:mod:`otel_eda.anomaly.feed`).

    ``collect_callback`` is what the provider passed to the reader's
    ``_set_collect_callback`` (its measurement consumer's ``collect``). Returns whether the
    storage was narrowed.
    """
    storage = otel_internals.reader_storage(collect_callback, reader)
    resolve = otel_internals.storage_view_resolver(storage)
    views = otel_internals.storage_views(storage)
    if storage is None or resolve is None or views is None:
        _log.debug("anomaly reader: SDK internals not as expected; it aggregates every instrument")
        return False
    if any(otel_internals.view_renames(view) for view in views):
        _log.debug("anomaly reader: a view renames instruments; it aggregates every instrument")
        return False

    def view_matches(instrument: Any) -> Any:
        try:
            if not reads(instrument.name) or fed(instrument):
                return _NO_MATCHES
        except Exception:  # never into the application's Counter.add: aggregate it instead
            _log.debug("anomaly reader: deciding whether to aggregate %r failed", instrument, exc_info=True)
        return resolve(instrument)

    # An instance attribute shadows the method for this one storage: consume_measurement
    # then finds no view match for an instrument no rule reads, and collect never sees it.
    otel_internals.set_storage_view_resolver(storage, view_matches)
    return True
