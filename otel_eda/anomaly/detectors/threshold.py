"""Fixed limits: value above/below a limit or outside a band."""

from __future__ import annotations

import math

from otel_eda.anomaly.detectors.base import _Base, _real

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
