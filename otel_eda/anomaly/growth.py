"""``GrowthDetector``: a gauge that keeps rising (consumer lag, a broker's queue depth).

A lag or a queue depth has no natural threshold (10,000 messages is nothing for one
consumer and an outage for another), but a lag that rises collection after collection
means the consumer falls behind. This detector reports that: a significant *upward*
least-squares slope over the last ``window`` points (the two-sided test of
:class:`~otel_eda.anomaly.detectors.TrendDetector`, kept only when the slope is
positive) and a rise of at least ``min_increase`` from the window's first value to the
last one (so that a lag wandering between 0 and 3 does not count as growing).

A lag wanders: it rises for a minute whenever a burst arrives and drains after it. Twelve
points of such a wander pass the trend test, which assumes independent noise (on a lag
with autocorrelated noise, AR(1) with coefficient 0.9, the default lag rule alerted 320-334
times a simulated day at one point every 5 s; with the baseline below, 3-11). With
``baseline_span`` the last value must also stand above the series' usual level: an
exponentially weighted mean plus ``baseline_sigmas`` standard deviations of the values
*before* the window (span ``baseline_span`` points; values above that level are held out of
it, for at most ``baseline_span`` points in a row, so that a consumer falling behind does
not teach it that falling behind is usual; after that many, values are learnt again while
the window shows no significant rise: the level itself has moved). Until ``10 x window``
values have left the window the trend test decides alone.
"""

from __future__ import annotations

import math
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

    With a baseline, a rise that stays within the series' usual range is not growth:

    >>> d = GrowthDetector(window=10, min_increase=5, baseline_span=100)
    >>> _ = [d.update(float(i), 100.0 + 40.0 * (i % 20 >= 10)) for i in range(200)]  # usual: 100-140
    >>> [d.update(float(i), 100.0 + 3 * (i - 200)).is_anomaly for i in range(200, 210)][-1]  # to 127
    False
    >>> [d.update(float(i), 100.0 + 3 * (i - 200)).is_anomaly for i in range(210, 230)][-1]  # to 187
    True
    """

    def __init__(
        self,
        window: int = 12,
        *,
        min_increase: float = 1.0,
        threshold: float = 0.999,
        baseline_span: int | None = None,
        baseline_sigmas: float = 3.0,
    ) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or not 3 <= window <= 10_000:
            raise ValueError(f"window must be an integer in [3, 10000], got {window!r}")
        if isinstance(min_increase, bool) or not isinstance(min_increase, int | float) or not min_increase >= 0:
            raise ValueError(f"min_increase must be a number >= 0, got {min_increase!r}")
        if baseline_span is not None and (
            isinstance(baseline_span, bool) or not isinstance(baseline_span, int) or not 2 <= baseline_span <= 1_000_000
        ):
            raise ValueError(f"baseline_span must be an integer in [2, 1000000] or None, got {baseline_span!r}")
        if (
            isinstance(baseline_sigmas, bool)
            or not isinstance(baseline_sigmas, int | float)
            or not baseline_sigmas >= 0
        ):
            raise ValueError(f"baseline_sigmas must be a number >= 0, got {baseline_sigmas!r}")
        self.window = window
        self.min_increase = float(min_increase)
        self._trend = TrendDetector(window, warmup=window, threshold=threshold)
        self.threshold = self._trend.threshold
        self._values: deque[float] = deque(maxlen=window)
        self._score = 0.0
        self.baseline_span = baseline_span
        self.baseline_sigmas = float(baseline_sigmas)
        self._alpha = 2.0 / (baseline_span + 1) if baseline_span is not None else 0.0
        self._mean = 0.0
        self._var = 0.0
        self._learned = 0  # values in the baseline
        self._held = 0  # values held out of it in a row

    def update(self, t: float, x: float) -> Self:
        trend = self._trend
        before = trend.skipped
        trend.update(t, x)
        if trend.skipped != before:
            return self
        values = self._values
        if self.baseline_span is not None and len(values) == self.window:
            self._learn(values[0])  # the value leaving the window
        values.append(float(x))
        rise = values[-1] - values[0]
        if (
            len(values) == self.window
            and trend.slope > 0
            and rise >= self.min_increase
            and (self.baseline_span is None or self._above_usual(values[-1]))
        ):
            self._score = trend.score
        else:
            self._score = 0.0
        return self

    def _learn(self, value: float) -> None:
        if self._learned == 0:
            self._mean, self._learned = value, 1
            return
        span = self.baseline_span
        assert span is not None
        if self._learned >= 10 * self.window and self._above_usual(value):
            trend = self._trend
            if self._held < span or (trend.slope > 0 and trend.score >= self.threshold):
                # held out: an excursion, or a rise still going on (a consumer falling behind
                # for hours must not become usual while it falls)
                self._held += 1
                return
            # held out for span values and no longer rising: the level itself has moved; learn
            # it (the values above the usual level, as long as the window stays flat)
        else:
            self._held = 0
        alpha = self._alpha
        delta = value - self._mean
        self._mean += alpha * delta
        self._var = (1.0 - alpha) * (self._var + alpha * delta * delta)
        self._learned += 1

    def _above_usual(self, value: float) -> bool:
        if self._learned < 10 * self.window:
            return True  # not known yet: the trend test decides
        return value > self._mean + self.baseline_sigmas * math.sqrt(self._var)

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
        baseline = f", baseline_span={self.baseline_span}" if self.baseline_span is not None else ""
        return (
            f"GrowthDetector(window={self.window}, min_increase={self.min_increase}{baseline}, score={self._score:.6g})"
        )
