"""From OpenTelemetry metric data points to the series the anomaly engine watches.

One series per (metric, signal, attribute set). With DELTA temporality (what
:class:`~otel_eda.anomaly.reader.AnomalyMetricReader` asks for):

=================================  ==========================================================
instrument                          signals
=================================  ==========================================================
counter (monotonic sum)            ``rate`` — per second over the collection interval
up-down counter, gauge             ``value``
histogram (explicit or exponential) ``count`` (per second), ``mean``, ``p95``, ``p99``
``messaging.*`` histogram/counter  ``error_ratio`` — share of the interval's measurements that
                                    carry an ``error.type``, per attribute set without it
                                    (0 when none failed, so an error alert can resolve)
=================================  ==========================================================

Exemplars (trace and span ids of sampled measurements) travel with each point so an alert
can point at example traces.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from opentelemetry.sdk.metrics.export import (
    ExponentialHistogramDataPoint,
    Gauge,
    HistogramDataPoint,
    MetricsData,
    NumberDataPoint,
    Sum,
)

from otel_eda.anomaly.alerts import Exemplar

__all__ = ["Attributes", "SeriesPoint", "percentile_explicit", "percentile_exponential", "to_series"]

Attributes = tuple[tuple[str, str], ...]
_ERROR_TYPE = "error.type"
# error ratios are derived for these metrics only (otel-eda's retry and dead-letter
# counters always carry error.type: their ratio would be a constant 1)
_ERROR_RATIO_PREFIX = "messaging."
MAX_EXEMPLARS = 3


class SeriesPoint(NamedTuple):
    metric: str
    signal: str
    attributes: Attributes  # sorted (key, str(value)) pairs
    t: float  # epoch seconds at the end of the interval
    value: float
    exemplars: tuple[Exemplar, ...] = ()


def _attrs(raw: Mapping[str, Any] | None) -> Attributes:
    if not raw:
        return ()
    items = sorted(raw.items())
    for _, v in items:
        if type(v) is not str:
            return tuple((k, v if isinstance(v, str) else str(v)) for k, v in items)
    return tuple(items)


def _exemplars(point: Any) -> tuple[Exemplar, ...]:
    found = []
    for ex in getattr(point, "exemplars", ())[-MAX_EXEMPLARS:]:
        if ex.trace_id and ex.span_id:
            found.append(Exemplar(f"{ex.trace_id:032x}", f"{ex.span_id:016x}"))
    return tuple(found)


def _interval_s(point: Any) -> float:
    seconds = (point.time_unix_nano - point.start_time_unix_nano) / 1e9
    return seconds if seconds > 0 else math.nan


def percentile_explicit(bounds: Iterable[float], counts: Iterable[int], q: float, lo: float, hi: float) -> float:
    """The q-quantile of an explicit-bucket histogram, interpolated within its bucket.

    >>> percentile_explicit([1.0, 2.0], [0, 10, 0], 0.5, 1.0, 2.0)
    1.5
    """
    counts = list(counts)
    edges = [lo, *bounds, hi]
    total = sum(counts)
    if total == 0:
        return math.nan
    rank = q * total
    seen = 0
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            left = max(edges[i], lo)
            right = min(edges[i + 1], hi)
            return left + (right - left) * ((rank - seen) / c)
        seen += c
    return hi


def percentile_exponential(point: ExponentialHistogramDataPoint, q: float) -> float:
    """The q-quantile of a (positive-valued) exponential histogram, interpolated."""
    total = point.count
    if total == 0:
        return math.nan
    rank = q * total
    seen = point.zero_count
    if seen >= rank:
        return 0.0
    base = 2.0 ** (2.0**-point.scale)
    for i, c in enumerate(point.positive.bucket_counts):
        if c and seen + c >= rank:
            index = point.positive.offset + i
            left, right = base**index, base ** (index + 1)
            value = left + (right - left) * ((rank - seen) / c)
            return float(min(max(value, point.min), point.max))
        seen += c
    return float(point.max)


def _histogram_points(
    name: str, point: Any, attrs: Attributes, t: float, exemplars: tuple[Exemplar, ...]
) -> Iterator[SeriesPoint]:
    yield SeriesPoint(name, "count", attrs, t, point.count / _interval_s(point), exemplars)
    if point.count == 0:
        return
    yield SeriesPoint(name, "mean", attrs, t, point.sum / point.count, exemplars)
    for label, q in (("p95", 0.95), ("p99", 0.99)):
        if isinstance(point, HistogramDataPoint):
            value = percentile_explicit(point.explicit_bounds, point.bucket_counts, q, point.min, point.max)
        else:
            value = percentile_exponential(point, q)
        yield SeriesPoint(name, label, attrs, t, value, exemplars)


def to_series(data: MetricsData) -> list[SeriesPoint]:
    """Every series point in one collection (delta temporality assumed for sums/histograms)."""
    out: list[SeriesPoint] = []
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                _convert(metric.name, metric.data, out)
    return out


def _convert(name: str, data: Any, out: list[SeriesPoint]) -> None:
    # measurement counts per attribute set without error.type: (all, with error)
    totals: dict[Attributes, list[float]] = {}
    any_error = False
    for point in data.data_points:
        t = point.time_unix_nano / 1e9
        exemplars = _exemplars(point) if point.exemplars else ()
        raw = point.attributes or {}
        attrs = _attrs(raw)
        if isinstance(data, Sum) and data.is_monotonic:
            out.append(SeriesPoint(name, "rate", attrs, t, point.value / _interval_s(point), exemplars))
            weight = float(point.value)
        elif isinstance(data, Sum | Gauge) and isinstance(point, NumberDataPoint):
            out.append(SeriesPoint(name, "value", attrs, t, float(point.value), exemplars))
            continue
        elif isinstance(point, HistogramDataPoint | ExponentialHistogramDataPoint):
            out.extend(_histogram_points(name, point, attrs, t, exemplars))
            weight = float(point.count)
        else:
            continue
        has_error = _ERROR_TYPE in raw
        if has_error and not name.startswith(_ERROR_RATIO_PREFIX):
            continue
        base = _attrs({k: v for k, v in raw.items() if k != _ERROR_TYPE}) if has_error else attrs
        entry = totals.get(base)
        if entry is None:
            entry = totals[base] = [0.0, 0.0, t]
        entry[0] += weight
        if has_error:
            entry[1] += weight
            any_error = True
    if any_error or name.startswith(_ERROR_RATIO_PREFIX):
        for attrs, (total, errors, t) in totals.items():
            if total > 0:
                out.append(SeriesPoint(name, "error_ratio", attrs, t, errors / total))


class ZeroFill:
    """Adds ``0`` points for rate and count series that a collection did not report.

    With DELTA temporality the SDK reports nothing for an attribute set that saw no new
    measurement, but for a detector "no events this interval" is a rate of 0 — the very
    thing a throughput-collapse rule must see. Series silent for ``idle_timeout_s`` are
    forgotten; at most ``max_series`` are remembered.
    """

    _SIGNALS = frozenset({"rate", "count"})

    def __init__(self, max_series: int = 10_000, idle_timeout_s: float = 3600.0) -> None:
        self.max_series = max_series
        self.idle_timeout_s = idle_timeout_s
        self._last: dict[tuple[str, str, Attributes], float] = {}

    def __call__(self, points: list[SeriesPoint], now: float) -> list[SeriesPoint]:
        seen = set()
        for p in points:
            if p.signal in self._SIGNALS:
                key = (p.metric, p.signal, p.attributes)
                seen.add(key)
                if key in self._last or len(self._last) < self.max_series:
                    self._last[key] = now
        horizon = now - self.idle_timeout_s
        filled = list(points)
        for key, last in list(self._last.items()):
            if key in seen:
                continue
            if last < horizon:
                del self._last[key]
            else:
                filled.append(SeriesPoint(key[0], key[1], key[2], now, 0.0))
        return filled
