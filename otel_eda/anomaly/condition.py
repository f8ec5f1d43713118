"""``ConditionDetector``: a plain Python condition as a detector.

For simple rules, a callable ``condition(value) -> bool`` says whether a value is
anomalous; no state, no warm-up. It is the detector of :func:`otel_eda.anomaly.rules.
condition_rule` (``add_alert_rule(name, condition, severity, description)``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Self

__all__ = ["ConditionDetector"]


class ConditionDetector:
    """Anomalous when ``condition(value)`` is true: score 1.0, else 0.0.

    ``update`` skips (and counts in ``skipped``) values that are not finite real numbers,
    as every detector does. An exception raised by ``condition`` propagates: the
    registry wraps every detector that is not otel-eda's own in a guard that logs and
    counts it (:class:`otel_eda.anomaly.registry.GuardedDetector`).

    >>> d = ConditionDetector(lambda v: v > 100)
    >>> d.update(0.0, 50).is_anomaly, d.update(1.0, 150).is_anomaly, d.score
    (False, True, 1.0)
    """

    def __init__(self, condition: Callable[[float], object], *, threshold: float = 1.0) -> None:
        if not callable(condition):
            raise ValueError(f"condition must be callable, got {type(condition).__name__}")
        self.condition = condition
        self.threshold = float(threshold)
        self._score = 0.0
        self._value: float | None = None
        self._skipped = 0

    def update(self, t: float, x: float) -> Self:
        if (
            isinstance(x, bool)
            or not isinstance(x, numbers.Real)
            or not math.isfinite(x)
            or isinstance(t, bool)
            or not isinstance(t, numbers.Real)
            or not math.isfinite(t)
        ):
            self._skipped += 1
            return self
        value = float(x)
        self._value = value
        self._score = 1.0 if self.condition(value) else 0.0
        return self

    @property
    def score(self) -> float:
        return self._score

    @property
    def is_anomaly(self) -> bool:
        return self._score >= self.threshold

    @property
    def value(self) -> float | None:
        return self._value

    @property
    def skipped(self) -> int:
        return self._skipped

    def __repr__(self) -> str:
        return f"ConditionDetector({self.condition!r})"
