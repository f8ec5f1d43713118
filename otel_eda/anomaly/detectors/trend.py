"""Least-squares slope significance over a sliding window."""

from __future__ import annotations

import math
from collections import deque

from otel_eda.anomaly.detectors.base import _SQRT2, _Base, _check_window


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b) (Numerical Recipes, 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    bt = math.exp(lbt)
    if x < (a + 1.0) / (a + b + 2.0):
        return bt * _betacf(a, b, x) / a
    return 1.0 - bt * _betacf(b, a, 1.0 - x) / b


def student_t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value of a Student t statistic: ``I_{df/(df+t²)}(df/2, 1/2)``.

    The regularised incomplete beta function by its continued fraction for df <= 100
    (O(sqrt(df)) terms), a normal approximation above (so the cost stays O(1)).

    >>> round(student_t_two_sided_p(2.0, 10), 4), student_t_two_sided_p(0.0, 5)
    (0.0734, 1.0)
    """
    if math.isnan(t) or df <= 0:
        return 1.0
    if math.isinf(t):
        return 0.0
    if df > 100:
        # The continued fraction needs O(sqrt(df)) terms; for large df use the normal
        # approximation of t (Abramowitz & Stegun 26.7.8); relative error of p < 5% for |t| <= 5.
        z = t * (1.0 - 1.0 / (4.0 * df)) / math.sqrt(1.0 + t * t / (2.0 * df))
        return math.erfc(abs(z) / _SQRT2)
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


class TrendDetector(_Base):
    """Least-squares slope of ``x`` against ``t`` over the last ``window`` points, and its significance.

    The co-moments of (t, x) over the window are kept with Welford-style add/remove
    updates on centred values (t is taken relative to the first point's time, then
    centred by the running mean), so epoch-second timestamps and large values do not
    cancel; they are recomputed exactly every ``window`` updates (O(1) amortised).
    The slope ``b = Ctx / Ctt`` is tested against its standard error
    ``sqrt(SSE / (n - 2) / Ctt)``; ``score = 1 - p`` with p the two-sided Student-t
    p-value on n - 2 degrees of freedom, so independent noise scores low and a sustained
    ramp scores near 1. Scored once ``warmup`` points are in the window (default
    ``min(window, 30)``); default threshold p <= 1e-4. A perfectly straight non-constant
    window scores 1.0 (``slope`` tells the direction).

    Reference: ordinary least squares slope t-test, e.g. D. C. Montgomery, E. A. Peck,
    G. G. Vining, "Introduction to Linear Regression Analysis", section 2.3.

    >>> d = TrendDetector(window=30)
    >>> for i in range(30):
    ...     _ = d.update(60.0 * i, 5.0 + (1.0 if i % 2 else -1.0))
    >>> d.is_anomaly
    False
    >>> for i in range(30, 60):
    ...     _ = d.update(60.0 * i, 5.0 + 0.5 * (i - 30) + (1.0 if i % 2 else -1.0))
    >>> d.is_anomaly, d.slope > 0
    (True, True)
    """

    def __init__(self, window: int = 60, *, warmup: int | None = None, threshold: float = 0.9999) -> None:
        super().__init__(threshold)
        self.window = _check_window(window, minimum=3)
        self.warmup = min(self.window, 30) if warmup is None else _check_window(warmup, "warmup", 3)
        if self.warmup > self.window:
            raise ValueError(f"warmup ({warmup}) must not exceed window ({window})")
        self._reset()

    def _reset(self) -> None:
        self._buf: deque[tuple[float, float]] = deque()
        self._t0: float | None = None
        self._mt = self._mx = self._ctt = self._ctx = self._cxx = 0.0
        self._since = 0
        self.slope = 0.0
        self.t_stat = 0.0

    def _add(self, t: float, x: float) -> None:
        n = len(self._buf)
        dt = t - self._mt
        dx = x - self._mx
        self._mt += dt / n
        self._mx += dx / n
        ex = x - self._mx
        self._ctt += dt * (t - self._mt)
        self._ctx += dt * ex
        self._cxx += dx * ex

    def _remove(self, t: float, x: float) -> None:
        n = len(self._buf)  # after the removal
        if n == 0:
            self._mt = self._mx = self._ctt = self._ctx = self._cxx = 0.0
            return
        dt = t - self._mt
        dx = x - self._mx
        self._mt -= dt / n
        self._mx -= dx / n
        ex = x - self._mx
        self._ctt -= dt * (t - self._mt)
        self._ctx -= dt * ex
        self._cxx -= dx * ex

    def _recompute(self) -> None:
        self._since = 0
        n = len(self._buf)
        mt = math.fsum(p[0] for p in self._buf) / n
        mx = math.fsum(p[1] for p in self._buf) / n
        self._mt, self._mx = mt, mx
        self._ctt = math.fsum((p[0] - mt) * (p[0] - mt) for p in self._buf)
        self._ctx = math.fsum((p[0] - mt) * (p[1] - mx) for p in self._buf)
        self._cxx = math.fsum((p[1] - mx) * (p[1] - mx) for p in self._buf)

    def _step(self, t: float, x: float) -> float:
        if self._t0 is None:
            self._t0 = t
        tc = t - self._t0
        buf = self._buf
        if len(buf) >= self.window:
            ot, ox = buf.popleft()
            self._remove(ot, ox)
            self._since += 1
        buf.append((tc, x))
        self._add(tc, x)
        if self._since >= self.window or not math.isfinite(self._cxx + self._ctt + self._ctx):
            self._recompute()
        n = len(buf)
        if n < self.warmup or self._ctt <= 0.0:
            self.slope = self.t_stat = 0.0
            return 0.0
        b = self._ctx / self._ctt
        sse = max(self._cxx - b * self._ctx, 0.0)
        self.slope = b
        if sse <= 1e-24 * max(self._cxx, 1e-300):
            self.t_stat = 0.0 if b == 0.0 else math.copysign(math.inf, b)
        else:
            self.t_stat = b / math.sqrt(sse / (n - 2) / self._ctt)
        return 1.0 - student_t_two_sided_p(self.t_stat, n - 2)
