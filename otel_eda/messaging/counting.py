"""Per-message counters kept in process and reported at collection time.

``messaging.client.sent.messages`` and ``messaging.client.consumed.messages`` are counted on
every message. Through a synchronous ``Counter``, each count is a full SDK measurement (its
attributes cleaned, hashed and aggregated once per metric reader: several microseconds,
the largest share of otel-eda's metric cost per message). Here a count is one addition to
an integer kept per attribute set, and an ``ObservableCounter`` of the same name, unit and
description reports the totals when a reader collects. Exporters and readers see the same
data as from a ``Counter`` (a monotonic sum per attribute set, cumulative or delta as the
reader prefers); these counters carry no exemplars (none is wanted: see the README).

One :class:`Tally` exists per metric name, instrumentation scope and meter provider (the
API keeps the first callback of an instrument name and drops later ones, so every
``Messaging`` of a scope on one provider shares it). At most :data:`MAX_ATTRIBUTE_SETS`
attribute sets are kept per tally; counts of further sets go to one set
``{"otel.metric.overflow": true}``, as the SDK's own cardinality limit does.

>>> from opentelemetry.sdk.metrics import MeterProvider
>>> from opentelemetry.sdk.metrics.export import InMemoryMetricReader
>>> reader = InMemoryMetricReader()
>>> provider = MeterProvider(metric_readers=[reader])
>>> sent = tally(provider, "demo", "sent", "{message}", "Messages sent")
>>> cell = sent.cell({"messaging.destination.name": "orders"})
>>> sent.add(cell, 1); sent.add(cell, 2)
>>> metric = reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics[0]
>>> [p.value for p in metric.data.data_points]
[3]
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from otel_eda.process_hooks import ForkHook, register_fork_hook
from otel_eda.version import VERSION

__all__ = ["MAX_ATTRIBUTE_SETS", "Tally", "tally"]

#: Attribute sets kept per tally (the SDK's default cardinality limit per metric).
MAX_ATTRIBUTE_SETS: Final = 2000
OVERFLOW: Final[Mapping[str, Any]] = {"otel.metric.overflow": True}
_OVERFLOW_KEY: Final = frozenset(OVERFLOW.items())


class Tally:
    """Counts per attribute set; observed by one ``ObservableCounter``."""

    __slots__ = ("__weakref__", "_cells", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._cells: dict[frozenset[tuple[str, Any]], list[Any]] = {}

    def cell(self, attributes: Mapping[str, Any]) -> list[Any]:
        """The cell ``[count, attributes]`` of one attribute set (made on first use): keep it
        and pass it to :meth:`add`."""
        key = frozenset(attributes.items())
        with self.lock:
            found = self._cells.get(key)
            if found is None:
                if len(self._cells) >= MAX_ATTRIBUTE_SETS:
                    key = _OVERFLOW_KEY
                    found = self._cells.get(key)
                if found is None:
                    found = self._cells[key] = [0, OVERFLOW if key == _OVERFLOW_KEY else dict(attributes)]
        return found

    def add(self, cell: list[Any], amount: int = 1) -> None:
        with self.lock:
            cell[0] += amount

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self.lock:
            return [Observation(count, attributes) for count, attributes in self._cells.values()]

    def fresh_lock(self) -> None:
        self.lock = threading.Lock()


# by meter provider (weakly), then (scope, name); the global provider's under None
_by_provider: weakref.WeakKeyDictionary[metrics.MeterProvider, dict[tuple[str, str], Tally]] = (
    weakref.WeakKeyDictionary()
)
_global: dict[tuple[str, str], Tally] = {}
_all: weakref.WeakSet[Tally] = weakref.WeakSet()
_lock = threading.Lock()


def tally(meter_provider: metrics.MeterProvider | None, scope: str, name: str, unit: str, description: str) -> Tally:
    """The tally of counter ``name`` in ``scope`` on ``meter_provider`` (``None``: the global
    one, followed through the API's proxy when it is installed later)."""
    with _lock:
        tallies = _global if meter_provider is None else _by_provider.setdefault(meter_provider, {})
        found = tallies.get((scope, name))
        if found is not None:
            return found
        found = tallies[(scope, name)] = Tally()
        _all.add(found)
    meter = metrics.get_meter(scope, VERSION, meter_provider)
    meter.create_observable_counter(name, callbacks=[found.observe], unit=unit, description=description)
    return found


def _fresh_locks_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    for t in list(_all):
        t.fresh_lock()


register_fork_hook(ForkHook("message counters", after_in_child=_fresh_locks_in_child))
