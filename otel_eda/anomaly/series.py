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

from otel_eda import semconv
from otel_eda.anomaly.alerts import Exemplar

__all__ = [
    "Attributes",
    "SeriesConverter",
    "SeriesPoint",
    "ZeroFill",
    "percentile_explicit",
    "percentile_exponential",
    "to_series",
]

Attributes = tuple[tuple[str, str], ...]
_ERROR_TYPE = semconv.ERROR_TYPE
# error ratios are derived for these metrics only (otel-eda's retry and dead-letter
# counters always carry error.type: their ratio would be a constant 1)
_ERROR_RATIO_PREFIX = semconv.MESSAGING_PREFIX
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
    """Every series point in one collection (delta temporality assumed for sums/histograms).

    A one-off conversion; :class:`SeriesConverter` does the same, faster when called
    once per collection on the same MeterProvider.
    """
    return SeriesConverter()(data)


# the entry of one attribute mapping in a SeriesConverter's memory: the mapping itself
# (so that its id cannot be reused while the entry exists) and its Attributes
_Entry = tuple[Any, Attributes]
_new = tuple.__new__


class SeriesConverter:
    """:func:`to_series` for a reader that converts one collection after another.

    The OpenTelemetry SDK hands out the same attribute mapping object for an attribute
    set in every collection (the one its aggregation keeps), so the sorted
    :data:`Attributes` tuple of a mapping is computed once and found again by the
    mapping's identity: one dict look-up per point, and the same tuple object every
    time (later dict look-ups by it compare by identity). Each remembered mapping is
    held (so that its ``id`` cannot be reused while it is remembered). Bounded: when
    the memory holds more than twice the points of a collection (plus 1,000), most
    of it is stale — attribute sets the SDK no longer reports — and it is forgotten
    as a whole (the next collection computes its tuples again). It assumes, as the
    SDK does, that a point's attribute mapping is not modified once the point is made.
    Not thread-safe: one converter per reader.
    """

    __slots__ = ("_memory",)

    def __init__(self) -> None:
        self._memory: dict[int, _Entry] = {}

    def __call__(self, data: MetricsData) -> list[SeriesPoint]:
        out: list[SeriesPoint] = []
        seen = 0
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    seen += len(metric.data.data_points)
                    self.convert(metric.name, metric.data, out)
        if len(self._memory) > 2 * seen + 1_000:
            self._memory = {}
        return out

    def _attrs(self, raw: Mapping[str, Any] | None) -> Attributes:
        key = id(raw)
        entry = self._memory.get(key)
        if entry is None:
            entry = self._memory[key] = (raw, _attrs(raw or {}))
        return entry[1]

    def convert(self, name: str, data: Any, out: list[SeriesPoint]) -> None:
        """Append the series points of one metric's ``data`` (a metric's ``data`` field) to ``out``."""
        if name.startswith(_ERROR_RATIO_PREFIX):
            self._convert_with_errors(name, data, out)
        elif isinstance(data, Sum) and data.is_monotonic:
            self._rates(name, data.data_points, out)
        elif isinstance(data, Sum | Gauge):
            self._values(name, data.data_points, out)
        else:
            # histograms, and anything else (skipped point by point, as before)
            for point in data.data_points:
                if isinstance(point, HistogramDataPoint | ExponentialHistogramDataPoint):
                    t = point.time_unix_nano / 1e9
                    exemplars = _exemplars(point) if point.exemplars else ()
                    out.extend(_histogram_points(name, point, self._attrs(point.attributes), t, exemplars))

    def _rates(self, name: str, points: Iterable[Any], out: list[SeriesPoint]) -> None:
        """A monotonic sum's points as rates per second (the hot loop: many series)."""
        memory = self._memory
        get = memory.get
        append = out.append
        last_end = last_start = -1
        t = seconds = math.nan
        for point in points:
            raw = point.attributes
            entry = get(id(raw))
            if entry is None:
                entry = memory[id(raw)] = (raw, _attrs(raw or {}))
            end = point.time_unix_nano
            start = point.start_time_unix_nano
            if end != last_end or start != last_start:  # the same for every point of a collection
                last_end, last_start = end, start
                t = end / 1e9
                seconds = (end - start) / 1e9
                if not seconds > 0:
                    seconds = math.nan
            exemplars = _exemplars(point) if point.exemplars else ()
            append(_new(SeriesPoint, (name, "rate", entry[1], t, point.value / seconds, exemplars)))

    def _values(self, name: str, points: Iterable[Any], out: list[SeriesPoint]) -> None:
        """A gauge's or non-monotonic sum's points as values."""
        attrs_of = self._attrs
        append = out.append
        for point in points:
            if isinstance(point, NumberDataPoint):
                exemplars = _exemplars(point) if point.exemplars else ()
                t = point.time_unix_nano / 1e9
                append(_new(SeriesPoint, (name, "value", attrs_of(point.attributes), t, float(point.value), exemplars)))
            elif isinstance(point, HistogramDataPoint | ExponentialHistogramDataPoint):  # (not from the SDK)
                exemplars = _exemplars(point) if point.exemplars else ()
                t = point.time_unix_nano / 1e9
                out.extend(_histogram_points(name, point, attrs_of(point.attributes), t, exemplars))

    def _convert_with_errors(self, name: str, data: Any, out: list[SeriesPoint]) -> None:
        """A ``messaging.*`` metric: its points, then the error ratio of each attribute set."""
        # measurement counts per attribute set without error.type: (all, with error)
        totals: dict[Attributes, list[float]] = {}
        for point in data.data_points:
            t = point.time_unix_nano / 1e9
            exemplars = _exemplars(point) if point.exemplars else ()
            raw = point.attributes or {}
            attrs = self._attrs(point.attributes)
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
            base = _attrs({k: v for k, v in raw.items() if k != _ERROR_TYPE}) if has_error else attrs
            entry = totals.get(base)
            if entry is None:
                entry = totals[base] = [0.0, 0.0, t]
            entry[0] += weight
            if has_error:
                entry[1] += weight
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
        self._now = -math.inf  # the last call's ``now``

    def __call__(self, points: list[SeriesPoint], now: float) -> list[SeriesPoint]:
        if not now > self._now:
            # ``now`` did not advance: "seen in this call" cannot be told from the stamp
            return self._fill_exact(points, now)
        self._now = now
        last = self._last
        signals = self._SIGNALS
        cap = self.max_series
        for p in points:
            if p[1] in signals:
                key = p[:3]  # (metric, signal, attributes)
                if len(last) < cap or key in last:
                    last[key] = now
        # every remembered series stamped ``now`` was seen in this call (earlier calls' stamps are older)
        horizon = now - self.idle_timeout_s
        filled = list(points)
        append = filled.append
        idle = []
        for key, seen in last.items():
            if seen == now:
                continue
            if seen < horizon:
                idle.append(key)
            else:
                metric, signal, attrs = key
                append(_new(SeriesPoint, (metric, signal, attrs, now, 0.0, ())))
        for key in idle:
            del last[key]
        return filled

    def _fill_exact(self, points: list[SeriesPoint], now: float) -> list[SeriesPoint]:
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
