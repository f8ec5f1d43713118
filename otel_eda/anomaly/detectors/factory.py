"""Build a detector from the kind and parameters a rule names."""

from __future__ import annotations

from typing import Any

from otel_eda.anomaly.detectors.artime import ArtimeDetector
from otel_eda.anomaly.detectors.base import Detector, _Base
from otel_eda.anomaly.detectors.cad_ose import CadOseDetector
from otel_eda.anomaly.detectors.context import ContextDetector
from otel_eda.anomaly.detectors.ewma import EwmaDetector
from otel_eda.anomaly.detectors.fallback import FallbackDetector
from otel_eda.anomaly.detectors.likelihood import LikelihoodDetector
from otel_eda.anomaly.detectors.robust import RobustDetector
from otel_eda.anomaly.detectors.threshold import ThresholdDetector
from otel_eda.anomaly.detectors.trend import TrendDetector
from otel_eda.anomaly.detectors.zscore import ZScoreDetector

_KINDS: dict[str, type[_Base]] = {
    "threshold": ThresholdDetector,
    "zscore": ZScoreDetector,
    "ewma": EwmaDetector,
    "trend": TrendDetector,
    "robust": RobustDetector,
    "likelihood": LikelihoodDetector,
    "context": ContextDetector,
    "cad_ose": CadOseDetector,
    "artime": ArtimeDetector,
    "fallback": FallbackDetector,
}


def make_detector(kind: str, **params: Any) -> Detector:
    """Build a detector from its kind and parameters, as a rules file names it.

    Raises ValueError for an unknown kind or a bad parameter (unknown name or value).

    >>> make_detector("zscore", window=300).window
    300
    >>> make_detector("median")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown detector kind 'median': use one of artime, cad_ose, context, ewma, fallback, ...
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
