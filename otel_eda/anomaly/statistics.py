"""Recent values of chosen metrics, and their statistics over a window, in process.

For dashboards and tests: "what was the p95 processing time of ``order_placed`` over the
last five minutes?" The anomaly engine keeps a :class:`SeriesHistory` of the metrics it
was asked to track (:meth:`AnomalyEngine.track`, or a first
:meth:`AnomalyEngine.statistics` call); other metrics cost nothing. Bounded: at most
``max_series`` series and ``max_points`` points each (defaults 200 and 720, one hour at
the reader's 5 s; about 112 bytes per point, so 16 MB if every place is taken); a
series beyond the cap is not kept (counted in ``untracked``), and a series silent for
``max_age_s`` frees its place.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Final

from otel_eda.anomaly.series import Attributes, SeriesPoint

__all__ = ["SeriesHistory", "SeriesStatistics"]

_NAN: Final = math.nan


@dataclasses.dataclass(frozen=True, slots=True)
class SeriesStatistics:
    """Count, mean and percentiles of the values of matching series in a window.

    Percentiles interpolate linearly between the two nearest ranks (numpy's default);
    with no value, ``count`` is 0 and the others are NaN.
    """

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    #: how many series contributed
    series: int = 0


def _percentile(ordered: list[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def statistics_of(values: list[float], series: int = 0) -> SeriesStatistics:
    """The statistics of ``values`` (``series``: how many series they came from).

    >>> statistics_of([1.0, 2.0, 3.0, 4.0]).p50
    2.5
    """
    if not values:
        return SeriesStatistics(0, _NAN, _NAN, _NAN, _NAN, series)
    ordered = sorted(values)
    return SeriesStatistics(
        count=len(ordered),
        mean=math.fsum(ordered) / len(ordered),
        p50=_percentile(ordered, 0.50),
        p95=_percentile(ordered, 0.95),
        p99=_percentile(ordered, 0.99),
        series=series,
    )


class SeriesHistory:
    """The last ``max_points`` (time, value) points of each series of the tracked metrics.

    Not thread-safe: the engine calls it under its lock.
    """

    def __init__(self, max_series: int = 200, max_points: int = 720, max_age_s: float = 3600.0) -> None:
        if max_series < 1 or max_points < 1:
            raise ValueError("max_series and max_points must be at least 1")
        self.max_series = max_series
        self.max_points = max_points
        self.max_age_s = max_age_s
        self.untracked = 0
        self._metrics: set[str] = set()
        #: metric -> (signal, attributes) -> points
        self._series: dict[str, dict[tuple[str, Attributes], deque[tuple[float, float]]]] = {}
        self._count = 0

    @property
    def tracking(self) -> bool:
        return bool(self._metrics)

    def track(self, metric: str) -> None:
        if metric not in self._metrics:
            self._metrics.add(metric)
            self._series[metric] = {}

    def untrack(self, metric: str) -> None:
        self._metrics.discard(metric)
        self._count -= len(self._series.pop(metric, {}))

    def record(self, points: Iterable[SeriesPoint], now: float) -> None:
        tracked = self._metrics
        metric = None
        series: dict[tuple[str, Attributes], deque[tuple[float, float]]] | None = None
        for point in points:
            m = point[0]
            if m is not metric:
                metric = m
                series = self._series.get(m) if m in tracked else None
            if series is None:
                continue
            key = (point[1], point[2])
            buffer = series.get(key)
            if buffer is None:
                if self._count >= self.max_series and not self._free(now):
                    self.untracked += 1
                    continue
                buffer = series[key] = deque(maxlen=self.max_points)
                self._count += 1
            value = point[4]
            if math.isfinite(value):
                buffer.append((point[3], value))

    def _free(self, now: float) -> bool:
        """Drop the series silent for ``max_age_s``; whether a place is free."""
        horizon = now - self.max_age_s
        for series in self._series.values():
            stale = [key for key, buffer in series.items() if not buffer or buffer[-1][0] < horizon]
            for key in stale:
                del series[key]
            self._count -= len(stale)
        return self._count < self.max_series

    def statistics(
        self, metric: str, labels: Mapping[str, str] | None, signal: str, window_s: float, now: float
    ) -> SeriesStatistics:
        wanted = tuple((str(k), str(v)) for k, v in (labels or {}).items())
        since = now - window_s
        values: list[float] = []
        contributing = 0
        for (sg, attributes), buffer in self._series.get(metric, {}).items():
            if sg != signal:
                continue
            if wanted:
                present = dict(attributes)
                if any(present.get(k) != v for k, v in wanted):
                    continue
            before = len(values)
            values.extend(v for t, v in buffer if t >= since)
            contributing += len(values) > before
        return statistics_of(values, contributing)
