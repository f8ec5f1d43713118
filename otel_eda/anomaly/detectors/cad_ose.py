"""CAD OSE (``cad_ose``): NAB's Contextual Anomaly Detector, reproduced, with a range learnt online."""

from __future__ import annotations

import math

from otel_eda.anomaly._cad_ose import CadOseModel
from otel_eda.anomaly.detectors.base import _Base, _check_window, _real

__all__ = ["CadOseDetector"]


class CadOseDetector(_Base):
    """The Contextual Anomaly Detector, Open Source Edition (M. Smirnov, 2016), as NAB ran it.

    Each value is quantised into 8 levels over a range; the level's binary digits are
    facts, and a sequence memory of *contexts* (the previous step's facts plus the contexts
    active then, paired with the facts that followed) learns which transitions happen. The
    score of a point is ``(1 - active / selected + new / candidates) / 2``: the share of the
    contexts whose prediction did not come true, plus the share of never-seen contexts the
    step produced. After a score of at least ``base_threshold`` (0.75) it returns 0 for
    ``rest_period`` points. See :mod:`otel_eda.anomaly._cad_ose` for the model and for the
    Python 2 details it reproduces.

    The range: with ``min_value`` and ``max_value`` (what NAB hands the detector: the whole
    file's extremes, known in advance) the model is NAB's ``contextOSE`` row for row. Without
    them, the shipped mode, the range is learnt online, since a deployed series has no known
    extremes: for the first ``learn`` points (600) the model quantises over the running
    minimum and maximum; at the ``learn``-th point the range is frozen to the extremes of
    those points and a fresh model relearns them (the buffered ``learn`` values, replayed
    once: what the reference would have learnt given that range), then carries on. Later
    values beyond the range get levels beyond the eight (more binary digits, or a sign), as
    in the reference's own encoding: new facts, so a new extreme is a novelty. (Scoring
    them as the nearest limit instead was tried: it barely changed a noisy series' alert
    count and hid spikes, so it was dropped.) ``learn=0`` follows the running extremes for
    ever instead (re-quantising as they widen). A rule can also give one limit (for
    example ``min_value=0`` for a latency).

    ``is_anomaly`` stays true for ``hold`` points from a point scoring ``>= threshold``
    (default: the rest period, CAD OSE's own length of one anomaly episode), because its
    score is 0 on the points right after an anomaly, and an alert rule's ``for`` counts
    consecutive anomalous evaluations; ``score`` is the reference's.

    Memory: at most ``max_contexts`` contexts (default 5000; ``None`` in NAB's own runs
    means unbounded, as the reference); once full, the memory stops growing and still
    scores unseen transitions as new. Cost per point is proportional to the stored
    contexts that share a fact with the previous step (all of them, in the worst case).
    Defaults: the reference's hyperparameters (3 bits, 15 active neurons, left
    semi-contexts of at most 7 facts, base threshold 0.75), ``rest_period=150`` (NAB's
    probationary period / 5 for series of 5000 points or more), ``threshold=0.75`` (the
    reference's own level for an anomaly, which starts its rest period). None of these was
    chosen by scoring.

    Reference: M. Smirnov, "CAD: Contextual Anomaly Detector", github.com/smirmik/CAD;
    NAB's ``nab/detectors/context_ose`` (Numenta Anomaly Benchmark, contextOSE, 69.9
    standard score on the full corpus).

    >>> d = CadOseDetector()
    >>> high, anomalous = [], []
    >>> for i in range(3000):
    ...     x = float(i % 10) + (5.0 if 2700 <= i < 2703 else 0.0)  # a sawtooth, then a jump
    ...     _ = d.update(3600.0 * i, x)
    ...     if d.score >= d.threshold:
    ...         high.append(i)
    ...     anomalous.append(d.is_anomaly)
    >>> high, anomalous.index(True), sum(anomalous)
    ([2700], 2700, 150)
    """

    def __init__(
        self,
        *,
        min_value: float | None = None,
        max_value: float | None = None,
        rest_period: int = 150,
        threshold: float = 0.75,
        base_threshold: float = 0.75,
        max_contexts: int | None = 5000,
        hold: int | None = None,
        learn: int = 600,
    ) -> None:
        super().__init__(threshold)
        lo = None if min_value is None else _real(min_value)
        hi = None if max_value is None else _real(max_value)
        if (min_value is not None and lo is None) or (max_value is not None and hi is None):
            raise ValueError(f"min_value and max_value must be finite numbers, got {min_value!r}, {max_value!r}")
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_value {lo} is above max_value {hi}")
        self.min_value = lo
        self.max_value = hi
        self.rest_period = _check_window(rest_period, "rest_period", 0)
        bt = _real(base_threshold)
        if bt is None or not 0.0 < bt <= 1.0:
            raise ValueError(f"base_threshold must be a number in (0, 1], got {base_threshold!r}")
        self.base_threshold = bt
        self.max_contexts = None if max_contexts is None else _check_window(max_contexts, "max_contexts", 10)
        self.hold = max(1, self.rest_period) if hold is None else _check_window(hold, "hold", 1)
        self.learn = _check_window(learn, "learn", 0)
        self._held = 0
        self._reset()

    def _reset(self) -> None:
        lo = self.min_value if self.min_value is not None else math.inf
        hi = self.max_value if self.max_value is not None else -math.inf
        self._lo = lo
        self._hi = hi
        fixed = self.min_value is not None and self.max_value is not None
        self._learning: list[float] | None = None if fixed else []
        self._model = CadOseModel(
            lo if math.isfinite(lo) else 0.0,
            hi if math.isfinite(hi) else 0.0,
            rest_period=self.rest_period,
            base_threshold=self.base_threshold,
            max_contexts=self.max_contexts,
        )

    @property
    def is_anomaly(self) -> bool:
        """True from a point scoring ``>= threshold`` for ``hold`` points (the score itself rests at 0)."""
        return self._held > 0

    @property
    def contexts(self) -> int:
        """Contexts held by the sequence memory (at most ``max_contexts``)."""
        return len(self._model.contexts)

    @property
    def count(self) -> int:
        """Points accepted so far."""
        return self._count

    @property
    def learning(self) -> bool:
        """Whether the range is still being learnt (the running extremes so far are used)."""
        return self._learning is not None

    def _new_model(self) -> CadOseModel:
        lo, hi = self._lo, self._hi
        return CadOseModel(
            lo if math.isfinite(lo) else hi,
            hi if math.isfinite(hi) else lo,
            rest_period=self.rest_period,
            base_threshold=self.base_threshold,
            max_contexts=self.max_contexts,
        )

    def _step(self, t: float, x: float) -> float:
        learning = self._learning
        if learning is None:
            score = self._model.score(x)
        else:
            lo, hi = self._lo, self._hi
            if x < lo or x > hi:  # the running extremes (a limit given is kept)
                self._lo = x if x < lo and self.min_value is None else lo
                self._hi = x if x > hi and self.max_value is None else hi
                lo, hi = self._lo, self._hi
                self._model.set_range(lo if math.isfinite(lo) else hi, hi if math.isfinite(hi) else lo)
            if self.learn and len(learning) + 1 >= self.learn:
                # Range learnt: a fresh model over it relearns the buffered points (as the
                # reference would have, given this range), then carries on with it.
                learning.append(x)
                self._learning = None
                self._model = model = self._new_model()
                for v in learning:
                    score = model.score(v)
            else:
                if self.learn:
                    learning.append(x)
                score = self._model.score(x)
        if score >= self.threshold:
            self._held = self.hold
        elif self._held:
            self._held -= 1
        return score
