"""The detector interface, input validation and the bookkeeping every detector shares."""

from __future__ import annotations

import logging
import math
import numbers
from typing import Protocol, Self, runtime_checkable

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
