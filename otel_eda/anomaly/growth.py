"""``GrowthDetector``: a gauge that keeps rising (consumer lag, a broker's queue depth).

A lag or a queue depth has no natural threshold (10,000 messages is nothing for one
consumer and an outage for another), but a lag that rises collection after collection
means the consumer falls behind. This detector reports that: a significant *upward*
least-squares slope over the last ``window`` points (the two-sided test of
:class:`~otel_eda.anomaly.detectors.TrendDetector`, kept only when the slope is
positive) and a rise of at least ``min_increase`` from the window's first value to the
last one (so that a lag wandering between 0 and 3 does not count as growing).
"""

from __future__ import annotations

from collections import deque
from typing import Self

from otel_eda.anomaly.detectors import TrendDetector

__all__ = ["GrowthDetector"]


class GrowthDetector:
    """Anomalous while the value rises significantly over the last ``window`` points.

    ``score`` is the trend test's ``1 - p`` when the slope is positive and the window
    rose by ``min_increase`` or more, else 0.0 (0.0 too until ``window`` points were
    seen). Default ``threshold`` 0.999 (p <= 0.001). O(1) amortised per update,
    ``2 x window`` floats of memory.

    >>> d = GrowthDetector(window=10, min_increase=5)
    >>> [d.update(float(i), 100.0).is_anomaly for i in range(10)][-1]  # flat: not growing
    False
    >>> [d.update(float(i), 100.0 + 3 * (i - 10)).is_anomaly for i in range(10, 20)][-1]
    True
    """

    def __init__(self, window: int = 12, *, min_increase: float = 1.0, threshold: float = 0.999) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or not 3 <= window <= 10_000:
            raise ValueError(f"window must be an integer in [3, 10000], got {window!r}")
        if isinstance(min_increase, bool) or not isinstance(min_increase, int | float) or not min_increase >= 0:
            raise ValueError(f"min_increase must be a number >= 0, got {min_increase!r}")
        self.window = window
        self.min_increase = float(min_increase)
        self._trend = TrendDetector(window, warmup=window, threshold=threshold)
        self.threshold = self._trend.threshold
        self._values: deque[float] = deque(maxlen=window)
        self._score = 0.0

    def update(self, t: float, x: float) -> Self:
        trend = self._trend
        before = trend.skipped
        trend.update(t, x)
        if trend.skipped != before:
            return self
        values = self._values
        values.append(float(x))
        rise = values[-1] - values[0]
        if len(values) == self.window and trend.slope > 0 and rise >= self.min_increase:
            self._score = trend.score
        else:
            self._score = 0.0
        return self

    @property
    def slope(self) -> float:
        """Units per second over the window (negative: falling)."""
        return self._trend.slope

    @property
    def score(self) -> float:
        return self._score

    @property
    def is_anomaly(self) -> bool:
        return self._score >= self.threshold

    @property
    def value(self) -> float | None:
        return self._trend.value

    @property
    def skipped(self) -> int:
        return self._trend.skipped

    def __repr__(self) -> str:
        return f"GrowthDetector(window={self.window}, min_increase={self.min_increase}, score={self._score:.6g})"
