"""A detector that answers with a cheap one until a slower-learning one has warmed up (``fallback``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from otel_eda.anomaly.detectors.base import Detector, _Base, _check_window

__all__ = ["FallbackDetector"]

_DEFAULT_FALLBACK: Mapping[str, Any] = {"kind": "zscore"}


def _spec(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not isinstance(value.get("kind"), str):
        raise ValueError(f"{name} must be a mapping with a 'kind', got {value!r}")
    if value["kind"] == "fallback":
        raise ValueError(f"{name} cannot itself be a fallback detector")
    return dict(value)


class FallbackDetector(_Base):
    """``detector`` once it has seen ``warmup`` points; ``fallback`` (z-score) before that.

    Both are built with :func:`~otel_eda.anomaly.detectors.make_detector` from their
    mappings (as a rules file writes them) and fed every point until the warm-up ends;
    after it, only ``detector`` is fed. ``score``, ``is_anomaly`` and ``active`` are those
    of the detector in charge, so an alert rule is live from its first points with the
    fallback's own threshold, then switches to the slower detector. ``threshold`` is
    ``detector``'s. Memory and cost: the two detectors' (the fallback's only during the
    warm-up).

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
        fallback: Mapping[str, Any] = _DEFAULT_FALLBACK,
        warmup: int = 600,
    ) -> None:
        from otel_eda.anomaly.detectors.factory import make_detector

        primary = make_detector(**_spec(detector, "detector"))
        super().__init__(primary.threshold)
        self.warmup = _check_window(warmup, "warmup", 0)
        self.detector: Detector = primary
        self.fallback: Detector = make_detector(**_spec(fallback, "fallback"))
        self._seen = 0

    @property
    def active(self) -> Detector:
        """The detector whose score counts now."""
        return self.detector if self._seen >= self.warmup else self.fallback

    @property
    def is_anomaly(self) -> bool:
        """The active detector's verdict (each keeps its own threshold)."""
        return self.active.is_anomaly

    def _step(self, t: float, x: float) -> float:
        self._seen += 1
        self.detector.update(t, x)
        if self._seen <= self.warmup:
            self.fallback.update(t, x)
        return self.active.score
