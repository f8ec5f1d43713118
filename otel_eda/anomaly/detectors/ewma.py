"""Distance from an exponentially weighted mean."""

from __future__ import annotations

import math

from otel_eda.anomaly.detectors.base import _Base, _check_window, _real, z_to_score
from otel_eda.anomaly.detectors.moments import _z


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
