"""Unusual runs of surprise: the anomaly likelihood of several features."""

from __future__ import annotations

import math
from collections import deque

from otel_eda.anomaly.detectors.base import _SQRT2, MAX_WINDOW, _Base, _check_window
from otel_eda.anomaly.detectors.moments import _WindowMoments, _z


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
