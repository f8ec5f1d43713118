"""A detector that answers with a cheap one until a slower-learning one has warmed up (``fallback``)."""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from otel_eda.anomaly.detectors.base import Detector, _Base, _check_window
from otel_eda.process_hooks import fresh_lock_in_child

__all__ = ["FallbackDetector"]

_log = logging.getLogger(__name__)

_DEFAULT_FALLBACK: Mapping[str, Any] = {"kind": "zscore"}

# Live FallbackDetectors carrying their primary detector, per primary kind (process-wide).
_carrying: dict[str, int] = {}
_carrying_lock = threading.Lock()
fresh_lock_in_child(__name__, "_carrying_lock")
_warned: set[str] = set()
_refused: dict[str, int] = {}  # fallback detectors created over the budget, per primary kind
_started = itertools.count()  # fallback detectors created with a stagger (their offsets, in turn)


def _spec(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not isinstance(value.get("kind"), str):
        raise ValueError(f"{name} must be a mapping with a 'kind', got {value!r}")
    if value["kind"] == "fallback":
        raise ValueError(f"{name} cannot itself be a fallback detector")
    return dict(value)


def _release(kind: str) -> None:
    with _carrying_lock:
        _carrying[kind] -= 1


def carrying(kind: str) -> int:
    """How many live fallback detectors in this process carry a ``kind`` primary detector."""
    with _carrying_lock:
        return _carrying.get(kind, 0)


def over_budget(kind: str) -> int:
    """How many fallback detectors in this process were created past the budget for ``kind`` (kept the fallback)."""
    with _carrying_lock:
        return _refused.get(kind, 0)


class _Silent(_Base):
    """No verdict: scores 0 (the fallback ``None``: a rule stays quiet until the slow detector is warm)."""

    def __init__(self) -> None:
        super().__init__(1.0)

    def _step(self, t: float, x: float) -> float:
        return 0.0


class FallbackDetector(_Base):
    """``detector`` once it has seen ``warmup`` points; ``fallback`` (z-score) before that.

    Both are built with :func:`~otel_eda.anomaly.detectors.make_detector` from their
    mappings (as a rules file writes them) and fed every point until the warm-up ends;
    after it, only ``detector`` is fed. ``score``, ``is_anomaly``, ``threshold_value`` and
    ``active`` are those of the detector in charge, so an alert rule is live from its
    first points with the fallback's own threshold, then switches to the slower detector.
    ``threshold`` is ``detector``'s.

    ``budget`` bounds the cost: at most that many fallback detectors in the process (per
    primary kind) carry their primary detector at once; a series created beyond it keeps
    the fallback for good (logged once per kind), and a slot frees when its detector is
    dropped (series evicted). The default, 200, is what fits the 0.5 s budget of one
    collection next to 100,000 z-score series with ``cad_ose`` at its measured mean of
    about 1 ms per point (``benchmarks/anomaly_speed.py``). Memory and cost: the two
    detectors' (the fallback's only during the warm-up).

    ``fallback=None`` gives no verdict before the warm-up ends (for a rule that another rule
    covers meanwhile).

    ``stagger`` (default 0) spreads the slow detector's start: the k-th fallback detector
    created with a stagger feeds its slow detector from its ``k mod (stagger + 1)``-th point
    on (and hands over ``warmup`` points later). Series created together (a service's
    first collection) would otherwise do their periodic heavy work at the same collection:
    ARTime's warm-up ends in one batch of milliseconds, and its downsampling steps fall on
    every 7th value.

    >>> d = FallbackDetector(detector={"kind": "cad_ose"}, fallback={"kind": "zscore", "window": 60}, warmup=300)
    >>> [type(d.update(60.0 * i, float(i % 7)).active).__name__ for i in (0, 1)]
    ['ZScoreDetector', 'ZScoreDetector']
    >>> for i in range(2, 300):
    ...     _ = d.update(60.0 * i, float(i % 7))
    >>> type(d.active).__name__
    'CadOseDetector'
    """

    def __init__(
        self,
        *,
        detector: Mapping[str, Any],
        fallback: Mapping[str, Any] | None = _DEFAULT_FALLBACK,
        warmup: int = 600,
        budget: int = 200,
        stagger: int = 0,
    ) -> None:
        from otel_eda.anomaly.detectors.factory import make_detector

        spec = _spec(detector, "detector")
        self.warmup = _check_window(warmup, "warmup", 0)
        self.budget = _check_window(budget, "budget", 0)
        self.stagger = _check_window(stagger, "stagger", 0)
        self.offset = next(_started) % (self.stagger + 1) if self.stagger else 0
        self.fallback: Detector = _Silent() if fallback is None else make_detector(**_spec(fallback, "fallback"))
        kind = spec["kind"]
        primary = make_detector(**spec)  # also validates the spec when over budget
        with _carrying_lock:
            over = _carrying.get(kind, 0) >= self.budget
            if not over:
                _carrying[kind] = _carrying.get(kind, 0) + 1
            else:
                _refused[kind] = _refused.get(kind, 0) + 1
        if over:
            if kind not in _warned:
                _warned.add(kind)
                _log.warning(
                    "fallback detector: %d series already carry a %r detector (budget); new series keep %r",
                    self.budget,
                    kind,
                    self.fallback.__class__.__name__,
                )
            self.detector: Detector | None = None
        else:
            self.detector = primary
            weakref.finalize(self, _release, kind)
        super().__init__(primary.threshold)
        self._seen = 0

    @property
    def active(self) -> Detector:
        """The detector whose score counts now."""
        if self.detector is not None and self._seen >= self.warmup + self.offset:
            return self.detector
        return self.fallback

    @property
    def is_anomaly(self) -> bool:
        """The active detector's verdict (each keeps its own threshold)."""
        return self.active.is_anomaly

    @property
    def threshold_value(self) -> float | None:
        """The active detector's fixed limit, if it has one (the engine's escalation reads it)."""
        value = getattr(self.active, "threshold_value", None)
        return float(value) if isinstance(value, int | float) else None

    def _step(self, t: float, x: float) -> float:
        self._seen += 1
        if self.detector is not None and self._seen > self.offset:
            self.detector.update(t, x)
        if self._seen <= self.warmup + self.offset or self.detector is None:
            self.fallback.update(t, x)
        return self.active.score
