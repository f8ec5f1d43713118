"""Streaming anomaly detectors with one interface.

Every detector has the shape of river's ``stats`` classes: a small object updated one
point at a time, ``update(t, x)`` returning the detector itself, then read through
properties. ``t`` is the point's time in epoch seconds, ``x`` its value.

- ``score``: a float in ``[0, 1]`` for the last accepted point, probability-like (higher
  is more anomalous); ``0.0`` while the detector is warming up.
- ``is_anomaly``: ``score >= threshold``. Each detector has a default ``threshold``
  (what users get without tuning); pass ``threshold=`` to change it.
- ``value``: the last accepted ``x`` (``None`` before the first one).
- ``skipped``: how many updates were ignored without changing any state: ``x`` or ``t``
  NaN, ``±inf``, or not a real number (``bool`` included, since ``True`` is not a
  measurement).
- ``count``: how many points were accepted.

``update`` never raises on any input. Memory per detector is bounded: windows are capped
at :data:`MAX_WINDOW` points. Use :func:`make_detector` to build one from a rule's
description, for example ``make_detector("zscore", window=300)``.

==========================  ==========================================  =================
kind                        what it detects                             cost per update
==========================  ==========================================  =================
``threshold``               value above/below a limit or outside a band O(1)
``zscore``                  value far from the sliding-window mean      O(1) amortised
``ewma``                    value far from the exponentially weighted   O(1)
                            mean
``trend``                   significant least-squares slope in a window O(1) amortised
``robust``                  value far from the window median (MAD)      O(log w) search,
                                                                        O(w) memmove
``likelihood``              unusual *runs* of surprise (NAB-tuned)      O(1) amortised
``context``                 ``likelihood`` plus a CAD-style sequence    O(max_contexts)
                            memory: values in an unseen order           worst case
==========================  ==========================================  =================

"O(1) amortised": the sliding-window moments are updated incrementally (Welford-style add
and remove) and recomputed exactly from the buffer once every ``window`` updates, so
rounding drift cannot accumulate; that recomputation costs O(w) once per w updates.
"""

from __future__ import annotations

import bisect
import logging
import math
import numbers
from collections import deque
from typing import Any, Protocol, Self, runtime_checkable

from otel_eda.anomaly._context import ContextModel

__all__ = [
    "MAX_WINDOW",
    "ContextDetector",
    "Detector",
    "EwmaDetector",
    "LikelihoodDetector",
    "RobustDetector",
    "ThresholdDetector",
    "TrendDetector",
    "ZScoreDetector",
    "make_detector",
    "z_to_score",
]

_log = logging.getLogger(__name__)

MAX_WINDOW = 100_000
"""Largest window any detector accepts (bounded memory per series)."""

_SQRT2 = math.sqrt(2.0)


@runtime_checkable
class Detector(Protocol):
    """The interface every detector implements (see the module docstring)."""

    threshold: float

    def update(self, t: float, x: float) -> Self:
        """Feed one point; return the detector."""
        ...

    @property
    def score(self) -> float:
        """Anomaly score of the last accepted point, in [0, 1]."""
        ...

    @property
    def is_anomaly(self) -> bool:
        """``score >= threshold``."""
        ...

    @property
    def value(self) -> float | None:
        """The last accepted value."""
        ...

    @property
    def skipped(self) -> int:
        """Updates ignored because ``t`` or ``x`` was not a finite real number."""
        ...


def z_to_score(z: float) -> float:
    """Map a z statistic to ``P(|Z| < |z|)`` for a standard normal Z, i.e. ``erf(|z|/√2)``.

    One minus the two-sided normal tail probability: 0 at z = 0, 0.9973 at 3, 0.9999994
    at 5, 1.0 for infinite z, 0.0 for NaN.

    >>> round(z_to_score(3.0), 4), round(z_to_score(-3.0), 4), z_to_score(math.inf)
    (0.9973, 0.9973, 1.0)
    """
    if math.isnan(z):
        return 0.0
    return math.erf(abs(z) / _SQRT2)


def _real(v: object) -> float | None:
    """``v`` as a finite float, or None (NaN, infinities, bools, non-numbers)."""
    if type(v) is float:
        return v if math.isfinite(v) else None
    if isinstance(v, bool) or not isinstance(v, numbers.Number):
        return None
    try:
        f = float(v)  # type: ignore[arg-type]  # Number has no __float__ in typeshed; complex raises
    except (OverflowError, ValueError, TypeError, ArithmeticError):
        return None
    return f if math.isfinite(f) else None


def _check_window(window: object, name: str = "window", minimum: int = 2) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or not minimum <= window <= MAX_WINDOW:
        raise ValueError(f"{name} must be an integer in [{minimum}, {MAX_WINDOW}], got {window!r}")
    return window


def _check_threshold(threshold: object) -> float:
    t = _real(threshold)
    if t is None or not 0.0 <= t <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    return t


class _Base:
    """Shared bookkeeping: input validation, skipped count, score clamping."""

    threshold: float

    def __init__(self, threshold: float) -> None:
        self.threshold = _check_threshold(threshold)
        self._score = 0.0
        self._value: float | None = None
        self._skipped = 0
        self._count = 0

    def update(self, t: float, x: float) -> Self:
        """Feed the point ``(t, x)``; invalid points are counted in ``skipped`` and ignored."""
        xf = _real(x)
        tf = _real(t)
        if xf is None or tf is None:
            self._skipped += 1
            return self
        self._value = xf
        self._count += 1
        try:
            s = self._step(tf, xf)
        except (ArithmeticError, ValueError):  # pragma: no cover - defensive, e.g. overflow on 1e308
            _log.debug("%s: arithmetic error on x=%r, state reset", type(self).__name__, xf, exc_info=True)
            self._reset()
            s = 0.0
        self._score = s if 0.0 <= s <= 1.0 else (1.0 if s > 1.0 else 0.0)  # also maps NaN to 0.0
        return self

    def _step(self, t: float, x: float) -> float:
        raise NotImplementedError

    def _reset(self) -> None:
        """Forget the learned state (after an arithmetic overflow)."""

    @property
    def score(self) -> float:
        """Anomaly score of the last accepted point, in [0, 1] (0.0 while warming up)."""
        return self._score

    @property
    def is_anomaly(self) -> bool:
        """Whether ``score >= threshold``."""
        return self._score >= self.threshold

    @property
    def value(self) -> float | None:
        """The last accepted value (None before the first)."""
        return self._value

    @property
    def skipped(self) -> int:
        """Updates ignored because ``t`` or ``x`` was NaN, infinite or not a real number."""
        return self._skipped

    @property
    def count(self) -> int:
        """Points accepted so far."""
        return self._count

    def __repr__(self) -> str:
        return f"{type(self).__name__}(score={self._score:.6g}, threshold={self.threshold}, count={self._count})"


# --------------------------------------------------------------------------------------
# threshold


_OPS = ("gt", "ge", "lt", "le")


class ThresholdDetector(_Base):
    """A fixed limit: ``op`` against ``value``, or a band ``[min, max]``.

    The score is 1.0 when the limit is violated and 0.0 otherwise (not graded, so the
    default ``threshold`` of 1.0 means "violated"). ``threshold_value`` is the limit the
    last value was compared with (the violated bound in band form), for rules that
    escalate when the value passes 1.5x the limit.

    Reference: a static threshold alert, as in Prometheus alerting rules.

    >>> d = ThresholdDetector(op="gt", value=0.5)
    >>> d.update(0.0, 0.4).is_anomaly, d.update(1.0, 0.9).is_anomaly, d.threshold_value
    (False, True, 0.5)
    >>> band = ThresholdDetector(min=10, max=20)
    >>> band.update(0.0, 15).score, band.update(1.0, 25).score, band.threshold_value
    (0.0, 1.0, 20.0)
    """

    def __init__(
        self,
        op: str | None = None,
        value: float | None = None,
        *,
        min: float | None = None,
        max: float | None = None,
        threshold: float = 1.0,
    ) -> None:
        super().__init__(threshold)
        self._op: str | None = None
        self._limit = math.nan
        self._lo: float | None = None
        self._hi: float | None = None
        if op is not None or value is not None:
            if min is not None or max is not None:
                raise ValueError("give either op and value, or min and/or max, not both")
            if op not in _OPS:
                raise ValueError(f"op must be one of {', '.join(_OPS)}, got {op!r}")
            limit = _real(value)
            if limit is None:
                raise ValueError(f"value must be a finite number, got {value!r}")
            self._op, self._limit = op, limit
        else:
            if min is None and max is None:
                raise ValueError("give op and value, or min and/or max")
            for name, bound in (("min", min), ("max", max)):
                if bound is not None and _real(bound) is None:
                    raise ValueError(f"{name} must be a finite number, got {bound!r}")
            self._lo = None if min is None else float(min)
            self._hi = None if max is None else float(max)
            if self._lo is not None and self._hi is not None and self._lo > self._hi:
                raise ValueError(f"min ({min}) must not exceed max ({max})")
            self._limit = self._hi if self._hi is not None else self._lo  # type: ignore[assignment]

    @property
    def threshold_value(self) -> float:
        """The limit (for a band: the bound the last value violated, else the upper one)."""
        return self._limit

    def _step(self, t: float, x: float) -> float:
        op = self._op
        if op is not None:
            lim = self._limit
            hit = x > lim if op == "gt" else x >= lim if op == "ge" else x < lim if op == "lt" else x <= lim
            return 1.0 if hit else 0.0
        if self._lo is not None and x < self._lo:
            self._limit = self._lo
            return 1.0
        if self._hi is not None and x > self._hi:
            self._limit = self._hi
            return 1.0
        return 0.0


# --------------------------------------------------------------------------------------
# sliding-window moments


class _WindowMoments:
    """Mean and sum of squared deviations of the last ``window`` values.

    Welford's update to add a value, its inverse to drop one, and the single-step
    replace (both at once) when the window is full; an exact two-pass recomputation
    every ``window`` replacements removes accumulated rounding drift.
    """

    __slots__ = ("buf", "m2", "mean", "since", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.buf: deque[float] = deque()
        self.mean = 0.0
        self.m2 = 0.0
        self.since = 0

    def push(self, x: float) -> None:
        buf = self.buf
        if len(buf) < self.window:
            buf.append(x)
            n = len(buf)
            d = x - self.mean
            self.mean += d / n
            self.m2 += d * (x - self.mean)
            return
        old = buf.popleft()
        buf.append(x)
        n = self.window
        old_mean = self.mean
        self.mean = old_mean + (x - old) / n
        self.m2 += (x - old) * ((x - self.mean) + (old - old_mean))
        self.since += 1
        if self.since >= n or not math.isfinite(self.m2):
            self.recompute()
        elif self.m2 < 0.0:
            self.m2 = 0.0

    def recompute(self) -> None:
        self.since = 0
        n = len(self.buf)
        if n == 0:
            self.mean = self.m2 = 0.0
            return
        mean = math.fsum(self.buf) / n
        self.mean = mean
        self.m2 = math.fsum((v - mean) * (v - mean) for v in self.buf)

    @property
    def std(self) -> float:
        n = len(self.buf)
        return math.sqrt(self.m2 / n) if n else 0.0


_DIRECTIONS = ("both", "up", "down")


def _check_direction(direction: object) -> str:
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(_DIRECTIONS)}, got {direction!r}")
    return str(direction)


def _directed(z: float, direction: str) -> float:
    """``z`` when it deviates in the watched direction, else 0 (``up``: only rises count)."""
    if direction == "up":
        return z if z > 0 else 0.0
    if direction == "down":
        return z if z < 0 else 0.0
    return z


def _z(x: float, mean: float, std: float) -> float:
    d = x - mean
    if std > 0.0:
        return d / std
    return 0.0 if d == 0.0 else math.inf


class ZScoreDetector(_Base):
    """How many standard deviations the value lies from the mean of the previous ``window`` values.

    The value is compared with the window *before* it enters it (so a spike does not
    dilute its own z). Mean and variance are kept incrementally with Welford's algorithm
    and its inverse for the value leaving the window (numerically stable, also for large
    values like 1e9 with small noise), recomputed exactly every ``window`` updates:
    O(1) amortised per update, ``window`` floats of memory.

    ``score = erf(|z| / √2)`` (see :func:`z_to_score`); 0.0 until ``warmup`` values are
    seen (default ``min(window, 30)``). A zero-variance window scores 1.0 for any
    different value. Default threshold: |z| >= 5. ``direction="up"`` (or ``"down"``)
    scores only deviations above (below) the mean: a latency rule should not fire when
    latency drops. ``hold=n`` keeps up to ``n`` consecutive anomalous values out of the
    window, so a sustained spike stays anomalous instead of becoming its own baseline; a
    new level that lasts longer than ``n`` points is then learnt.

    Reference: B. P. Welford, "Note on a method for calculating corrected sums of squares
    and products", Technometrics 4(3), 1962; removal as in T. Finch, "Incremental
    calculation of weighted mean and variance", 2009.

    >>> d = ZScoreDetector(window=100)
    >>> for i in range(100):
    ...     _ = d.update(float(i), 10.0 + (i % 2))
    >>> d.update(100.0, 10.5).is_anomaly, d.update(101.0, 30.0).is_anomaly
    (False, True)
    """

    def __init__(
        self,
        window: int = 1000,
        *,
        warmup: int | None = None,
        threshold: float | None = None,
        direction: str = "both",
        hold: int = 0,
    ) -> None:
        super().__init__(z_to_score(5.0) if threshold is None else threshold)
        self.window = _check_window(window)
        self.direction = _check_direction(direction)
        if isinstance(hold, bool) or not isinstance(hold, int) or not 0 <= hold <= MAX_WINDOW:
            raise ValueError(f"hold must be an integer in [0, {MAX_WINDOW}], got {hold!r}")
        self.hold = hold
        self._held = 0
        self.warmup = min(window, 30) if warmup is None else _check_window(warmup, "warmup", 1)
        self._m = _WindowMoments(self.window)
        self.z = 0.0

    def _reset(self) -> None:
        self._m = _WindowMoments(self.window)

    @property
    def mean(self) -> float:
        """Mean of the window (after the last update)."""
        return self._m.mean

    @property
    def std(self) -> float:
        """Population standard deviation of the window (after the last update)."""
        return self._m.std

    def _step(self, t: float, x: float) -> float:
        m = self._m
        if len(m.buf) >= self.warmup:
            self.z = _z(x, m.mean, m.std)
            s = z_to_score(_directed(self.z, self.direction))
        else:
            self.z, s = 0.0, 0.0
        if s >= self.threshold and self._held < self.hold:
            self._held += 1  # keep the anomaly out of the baseline, for up to ``hold`` points
            return s
        if s < self.threshold:
            self._held = 0
        m.push(x)
        return s


class EwmaDetector(_Base):
    """Distance of the value from an exponentially weighted mean, in EW standard deviations.

    Mean and variance follow West's incremental form (``d = x - mean``,
    ``mean += alpha d``, ``var = (1 - alpha) (var + alpha d²)``), which never subtracts
    E[x]² from E[x²] and so stays accurate for large values. O(1) time and memory. The
    value is scored against the state *before* it is absorbed; 0.0 during the first
    ``warmup`` points (default ``ceil(1 / alpha)``, at most 10,000). Default threshold:
    |z| >= 5.

    Reference: D. H. D. West, "Updating mean and variance estimates: an improved
    method", CACM 22(9), 1979; T. Finch, "Incremental calculation of weighted mean and
    variance", 2009, section 9.

    >>> d = EwmaDetector(alpha=0.1)
    >>> for i in range(50):
    ...     _ = d.update(float(i), 100.0 + (i % 3))
    >>> d.update(50.0, 101.0).is_anomaly, d.update(51.0, 150.0).is_anomaly
    (False, True)
    """

    def __init__(self, alpha: float = 0.01, *, warmup: int | None = None, threshold: float | None = None) -> None:
        super().__init__(z_to_score(5.0) if threshold is None else threshold)
        a = _real(alpha)
        if a is None or not 0.0 < a < 1.0:
            raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
        self.alpha = a
        self.warmup = min(math.ceil(1.0 / a), 10_000) if warmup is None else _check_window(warmup, "warmup", 1)
        self.mean = 0.0
        self.var = 0.0
        self.z = 0.0

    def _reset(self) -> None:
        self.mean = self.var = 0.0
        self._count = 1

    def _step(self, t: float, x: float) -> float:
        if self._count == 1:
            self.mean, self.var, self.z = x, 0.0, 0.0
            return 0.0
        d = x - self.mean
        self.z = _z(x, self.mean, math.sqrt(self.var))
        s = z_to_score(self.z) if self._count > self.warmup else 0.0
        incr = self.alpha * d
        self.mean += incr
        self.var = (1.0 - self.alpha) * (self.var + d * incr)
        if not (math.isfinite(self.mean) and math.isfinite(self.var)):
            self.mean, self.var = x, 0.0
        return s


# --------------------------------------------------------------------------------------
# trend


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


# --------------------------------------------------------------------------------------
# robust


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


# --------------------------------------------------------------------------------------
# likelihood


def _surprise(z: float) -> float:
    """``-log10`` of the two-sided normal tail probability of ``z``, capped at 30."""
    p = math.erfc(abs(z) / _SQRT2) if not math.isnan(z) else 1.0
    return -math.log10(p) if p > 1e-30 else 30.0


class LikelihoodDetector(_Base):
    """Anomaly likelihood of recent surprise, multi-feature, with a quiet period after firing.

    Two stages, both streaming:

    1. A raw *surprise* per point, ``-log10`` of a two-sided normal tail probability,
       taking the largest over four features, each compared with its own sliding window
       of ``window`` past values: the value itself, its first difference (jumps), and the
       mean and log standard deviation of the last ``k`` values (level shifts, and a
       signal going flat or noisy).
    2. Numenta's *anomaly likelihood*: the raw surprises' mean and standard deviation over
       the last ``history`` points give a Gaussian; the tail probability Q of the mean of
       the last ``short`` surprises under it says how unusual the recent run is, relative
       to how surprising this series usually is (a noisy series learns to be calm about
       its noise). The score is ``log(Q) / log(1e-10)`` clipped to [0, 1], as NuPIC's
       log-likelihood: 0.5 means Q = 1e-5.

    After the score crosses ``threshold`` the detector stays quiet (score 0.0) for
    ``quiet`` points: one alarm per incident, as an alert rule's cooldown does (NAB
    rewards the earliest detection of an anomaly window and charges every later one
    outside it). O(1) amortised per update; memory about ``4 window + history + k +
    short`` floats. Default threshold 0.5. Hyperparameters were chosen on the 18-file
    NAB subset (see ``benchmarks/nab_score.py``), never per series.

    Reference: S. Ahmad, A. Lavin, S. Purdy, Z. Agha, "Unsupervised real-time anomaly
    detection for streaming data", Neurocomputing 262, 2017 (anomaly likelihood);
    R. A. Fisher's log-p combination idea for surprise; A. Lavin, S. Ahmad, "Evaluating
    real-time anomaly detection algorithms - the Numenta Anomaly Benchmark", ICMLA 2015.

    >>> d = LikelihoodDetector()
    >>> fired = []
    >>> for i in range(3000):
    ...     x = 10.0 + (i * 7919 % 13) / 13.0 + (25.0 if i >= 2500 else 0.0)
    ...     if d.update(60.0 * i, x).is_anomaly:
    ...         fired.append(i)
    >>> fired
    [2500]
    """

    def __init__(
        self,
        window: int = 1000,
        *,
        history: int = 8000,
        short: int = 5,
        k: int = 12,
        quiet: int = 400,
        warmup: int | None = None,
        threshold: float = 0.5,
    ) -> None:
        super().__init__(threshold)
        self.window = _check_window(window)
        self.history = _check_window(history)
        self.short = _check_window(short, "short", 1)
        self.k = _check_window(k, "k")
        if isinstance(quiet, bool) or not isinstance(quiet, int) or not 0 <= quiet <= MAX_WINDOW:
            raise ValueError(f"quiet must be an integer in [0, {MAX_WINDOW}], got {quiet!r}")
        self.quiet = quiet
        self.warmup = min(self.window, 30) if warmup is None else _check_window(warmup, "warmup", 1)
        self._reset()

    def _reset(self) -> None:
        self._values = _WindowMoments(self.window)
        self._diffs = _WindowMoments(self.window)
        self._last_k = _WindowMoments(self.k)
        self._means = _WindowMoments(self.window)
        self._logstds = _WindowMoments(self.window)
        self._raw = _WindowMoments(self.history)
        self._recent: deque[float] = deque()
        self._recent_sum = 0.0
        self._prev: float | None = None
        self._quiet_left = 0
        self.raw = 0.0

    def _feature(self, m: _WindowMoments, f: float, raw: float) -> float:
        if len(m.buf) >= self.warmup:
            s = _surprise(_z(f, m.mean, m.std))
            raw = s if s > raw else raw
        m.push(f)
        return raw

    def _features(self, x: float) -> float:
        """Stage 1: the largest feature surprise of ``x`` (each feature then enters its window)."""
        raw = self._feature(self._values, x, 0.0)
        if self._prev is not None:
            raw = self._feature(self._diffs, x - self._prev, raw)
        self._prev = x
        lk = self._last_k
        lk.push(x)
        if len(lk.buf) >= self.k:
            m = lk.mean
            raw = self._feature(self._means, m, raw)
            raw = self._feature(self._logstds, math.log(lk.std + 1e-9 * (abs(m) + 1e-9)), raw)
        return raw

    def _step(self, t: float, x: float) -> float:
        active = len(self._values.buf) >= self.warmup  # the features have learned enough to score
        raw = self._features(x)
        self.raw = raw
        if not active:
            return 0.0
        recent = self._recent
        recent.append(raw)
        self._recent_sum += raw
        if len(recent) > self.short:
            self._recent_sum -= recent.popleft()
        avg = self._recent_sum / len(recent)
        rm = self._raw
        score = 0.0
        if len(rm.buf) >= self.warmup:
            std = rm.std
            z = (avg - rm.mean) / (std if std > 1e-4 else 1e-4)
            tail = 0.5 * math.erfc(z / _SQRT2)
            score = math.log(tail) / math.log(1e-10) if tail > 1e-10 else 1.0
            score = score if score > 0.0 else 0.0
        rm.push(raw)
        if self._quiet_left > 0:
            self._quiet_left -= 1
            return 0.0
        if score >= self.threshold:
            self._quiet_left = self.quiet
        return score


# --------------------------------------------------------------------------------------
# context


class ContextDetector(LikelihoodDetector):
    """Contextual (sequence) anomaly fused with the likelihood detector's features.

    The :class:`LikelihoodDetector` pipeline with one more feature in its first stage:

    1. A contextual sequence memory in the style of CAD OSE (Smirnov & Kotikov's
       Contextual Anomaly Detector; see :mod:`otel_eda.anomaly._context`): values are
       quantised into ``2**bits`` levels over the range of the first ``learn`` points
       (widened by ``margin`` of its width on each side), each step's transition between
       *contexts* (sets of facts: the previous level's binary digits plus the contexts
       that were active then) is learnt, and its raw anomaly is the share of the selected
       contexts' predictions that failed plus the share of never-seen candidate contexts.
       It sees patterns a value's distribution cannot: a daily jump that does not come, a
       rhythm that changes while every value stays in range.
    2. Its raw anomaly becomes one more surprise, ``-log10`` of the upper normal tail
       probability against its own sliding window of ``window`` values (only more
       anomalous than usual counts), next to the value, its first difference and the
       mean and log standard deviation of the last ``k`` values; the largest one is the
       point's surprise.
    3. The anomaly likelihood of the mean of the last ``short`` surprises against their
       last ``history`` values, as in :class:`LikelihoodDetector`; after the score
       crosses ``threshold`` the detector stays quiet for ``quiet`` points (CAD OSE's rest
       period).

    Memory is bounded: at most ``max_contexts`` contexts (the least recently confirmed
    tenth is forgotten when full; each holds a left side of at most ``bits + max_active``
    facts, or ``max_left`` for generalised ones), plus ``5 window + history + k + short``
    floats. Cost per update: O(1) amortised for the features; for the context memory,
    proportional to the stored left sides that share a fact with the previous state
    when the transition is new (up to ``max_contexts``: noise), far fewer on regular
    series (measured: 0.2-0.75 ms per update, 2.1-3.2 MB when full). Default
    threshold 0.5. Hyperparameters: CAD OSE's published ones (``bits=3``,
    ``max_active=15``, ``max_left=7``, ``quiet`` = its rest period of 150 points) and the
    likelihood detector's; ``learn``, ``margin`` and ``max_contexts`` are round first
    choices (600 points, 10%, 2000) kept after comparing a few alternatives on the 18-file
    NAB subset it is scored on (see the README), so that score is in-sample. One setting
    for every series, never per series.

    Reference: M. Smirnov, Y. Kotikov, "Contextual Anomaly Detector" (CAD OSE, 2016, in
    the Numenta Anomaly Benchmark); S. Ahmad, A. Lavin, S. Purdy, Z. Agha, "Unsupervised
    real-time anomaly detection for streaming data", Neurocomputing 262, 2017.

    >>> d = ContextDetector()
    >>> fired = []
    >>> for i in range(3000):
    ...     x = 10.0 + (i * 7919 % 13) / 13.0 + (25.0 if i >= 2500 else 0.0)
    ...     if d.update(60.0 * i, x).is_anomaly:
    ...         fired.append(i)
    >>> fired
    [2500]
    """

    def __init__(
        self,
        window: int = 1000,
        *,
        history: int = 8000,
        short: int = 5,
        k: int = 12,
        quiet: int = 150,
        warmup: int | None = None,
        threshold: float = 0.5,
        bits: int = 3,
        learn: int = 600,
        margin: float = 0.1,
        max_contexts: int = 2000,
        max_active: int = 15,
        max_left: int = 7,
    ) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ValueError(f"bits must be an integer in [1, 8], got {bits!r}")
        self.bits = bits
        self.learn = _check_window(learn, "learn", 1)
        m = _real(margin)
        if m is None or not 0.0 <= m <= 10.0:
            raise ValueError(f"margin must be a number in [0, 10], got {margin!r}")
        self.margin = m
        self.max_contexts = _check_window(max_contexts, "max_contexts", 10)
        self.max_active = _check_window(max_active, "max_active", 1)
        self.max_left = _check_window(max_left, "max_left", 1)
        super().__init__(window, history=history, short=short, k=k, quiet=quiet, warmup=warmup, threshold=threshold)

    def _reset(self) -> None:
        super()._reset()
        self._model = ContextModel(
            bits=self.bits,
            warmup=self.learn,
            margin=self.margin,
            max_active=self.max_active,
            max_left=self.max_left,
            max_contexts=self.max_contexts,
        )
        self._contextual = _WindowMoments(self.window)
        self.context_raw = 0.0

    @property
    def contexts(self) -> int:
        """Contexts held by the sequence memory (at most ``max_contexts``)."""
        return self._model.size

    def _features(self, x: float) -> float:
        raw = super()._features(x)
        model = self._model
        ready = model.ready
        c = model.learn(x)
        self.context_raw = c
        if not ready:  # still learning the range: nothing to compare
            return raw
        m = self._contextual
        if len(m.buf) >= self.warmup:
            s = _surprise(_directed(_z(c, m.mean, m.std), "up"))
            raw = s if s > raw else raw
        m.push(c)
        return raw


# --------------------------------------------------------------------------------------
# factory


_KINDS: dict[str, type[_Base]] = {
    "threshold": ThresholdDetector,
    "zscore": ZScoreDetector,
    "ewma": EwmaDetector,
    "trend": TrendDetector,
    "robust": RobustDetector,
    "likelihood": LikelihoodDetector,
    "context": ContextDetector,
}


def make_detector(kind: str, **params: Any) -> Detector:
    """Build a detector from its kind and parameters, as a rules file names it.

    Raises ValueError for an unknown kind or a bad parameter (unknown name or value).

    >>> make_detector("zscore", window=300).window
    300
    >>> make_detector("median")
    Traceback (most recent call last):
    ...
    ValueError: unknown detector kind 'median': use one of context, ewma, likelihood, robust, threshold, trend, zscore
    >>> make_detector("ewma", alpha=2)
    Traceback (most recent call last):
    ...
    ValueError: ewma: alpha must be a number in (0, 1), got 2
    """
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown detector kind {kind!r}: use one of {', '.join(sorted(_KINDS))}")
    try:
        det = cls(**params)
    except TypeError as exc:
        raise ValueError(f"{kind}: bad parameters {sorted(params)}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{kind}: {exc}") from None
    return det
