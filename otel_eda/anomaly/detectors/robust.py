"""Distance from the sliding-window median in MADs."""

from __future__ import annotations

import bisect
import math
from collections import deque

from otel_eda.anomaly.detectors.base import _Base, _check_window, z_to_score
from otel_eda.anomaly.detectors.moments import _z


class RobustDetector(_Base):
    """Robust z: distance from the window median in units of the scaled median absolute deviation.

    ``z = (x - median) / (1.4826 MAD)`` over the previous ``window`` values; insensitive
    to the outliers themselves (a burst of spikes does not inflate the scale as it does
    a standard deviation). The window is kept as a sorted list: finding positions is
    O(log w) (bisect), and the MAD is selected in O(log w) as the k-th smallest of two
    sorted sequences (distances below and above the median); but inserting into and
    deleting from a Python list moves O(w) pointers (a fast ``memmove``), so an update
    is **O(w)** in the worst case with a small constant, not O(log w). Memory: 2 w floats.
    Zero MAD (more than half the window identical) scores any different value 1.0.
    Default threshold |z| >= 5; 0.0 until ``warmup`` values (default ``min(window, 30)``).

    Reference: F. R. Hampel, "The influence curve and its role in robust estimation",
    JASA 69, 1974 (MAD); P. J. Rousseeuw, C. Croux, "Alternatives to the median absolute
    deviation", JASA 88, 1993.

    >>> d = RobustDetector(window=50)
    >>> for i in range(50):
    ...     _ = d.update(float(i), [1.0, 2.0, 3.0][i % 3])
    >>> d.median, d.mad
    (2.0, 1.0)
    >>> d.update(50.0, 2.5).is_anomaly, d.update(51.0, 40.0).is_anomaly
    (False, True)
    """

    def __init__(self, window: int = 1000, *, warmup: int | None = None, threshold: float | None = None) -> None:
        super().__init__(z_to_score(5.0) if threshold is None else threshold)
        self.window = _check_window(window, minimum=3)
        self.warmup = min(self.window, 30) if warmup is None else _check_window(warmup, "warmup", 1)
        self._reset()

    def _reset(self) -> None:
        self._fifo: deque[float] = deque()
        self._sorted: list[float] = []
        self.z = 0.0

    @property
    def median(self) -> float:
        """Median of the window (NaN when empty)."""
        s = self._sorted
        n = len(s)
        if n == 0:
            return math.nan
        h = n // 2
        return s[h] if n % 2 else (s[h - 1] + s[h]) / 2.0

    def _kth_distance(self, m: float, k: int) -> float:
        """k-th smallest (0-based) of |v - m| over the sorted window, in O(log w)."""
        s = self._sorted
        split = bisect.bisect_left(s, m)
        n_a, n_b = split, len(s) - split  # a: m - s[split-1-i] ascending; b: s[split+j] - m ascending

        def a(i: int) -> float:
            return m - s[split - 1 - i]

        def b(j: int) -> float:
            return s[split + j] - m

        lo, hi = max(0, k + 1 - n_b), min(k + 1, n_a)
        while True:
            i = (lo + hi) // 2
            j = k + 1 - i
            if i < hi and j > 0 and b(j - 1) > a(i):
                lo = i + 1
            elif i > lo and j < n_b and a(i - 1) > b(j):
                hi = i - 1
            else:
                left = a(i - 1) if i > 0 else -math.inf
                right = b(j - 1) if j > 0 else -math.inf
                return left if left > right else right

    @property
    def mad(self) -> float:
        """Median absolute deviation from the median of the window (NaN when empty)."""
        n = len(self._sorted)
        if n == 0:
            return math.nan
        m = self.median
        h = n // 2
        if n % 2:
            return self._kth_distance(m, h)
        return (self._kth_distance(m, h - 1) + self._kth_distance(m, h)) / 2.0

    def _step(self, t: float, x: float) -> float:
        s = 0.0
        self.z = 0.0
        if len(self._fifo) >= self.warmup:
            self.z = _z(x, self.median, 1.4826 * self.mad)
            s = z_to_score(self.z)
        fifo, srt = self._fifo, self._sorted
        if len(fifo) >= self.window:
            old = fifo.popleft()
            del srt[bisect.bisect_left(srt, old)]
        fifo.append(x)
        bisect.insort(srt, x)
        return s
