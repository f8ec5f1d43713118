"""Distance from the sliding-window mean in standard deviations."""

from __future__ import annotations

from otel_eda.anomaly.detectors.base import MAX_WINDOW, _Base, _check_window, z_to_score
from otel_eda.anomaly.detectors.moments import _check_direction, _directed, _WindowMoments, _z


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
