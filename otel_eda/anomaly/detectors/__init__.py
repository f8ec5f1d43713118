"""Streaming anomaly detectors with one interface.

Every detector has the shape of river's ``stats`` classes: a small object updated one
point at a time, ``update(t, x)`` returning the detector itself, then read through
properties. ``t`` is the point's time in epoch seconds, ``x`` its value.

- ``score``: a float in ``[0, 1]`` for the last accepted point, probability-like (higher
  is more anomalous); ``0.0`` while the detector is warming up.
- ``is_anomaly``: ``score >= threshold``. Each detector has a default ``threshold``
  (what users get without tuning); pass ``threshold=`` to change it.
- ``value``: the last accepted ``x`` (``None`` before the first one).
- ``skipped``: how many updates were ignored without changing any state: ``x`` or ``t``
  NaN, ``±inf``, or not a real number (``bool`` included, since ``True`` is not a
  measurement).
- ``count``: how many points were accepted.

``update`` never raises on any input. Memory per detector is bounded: windows are capped
at :data:`MAX_WINDOW` points. Use :func:`make_detector` to build one from a rule's
description, for example ``make_detector("zscore", window=300)``.

==========================  ==========================================  =================
kind                        what it detects                             cost per update
==========================  ==========================================  =================
``threshold``               value above/below a limit or outside a band O(1)
``zscore``                  value far from the sliding-window mean      O(1) amortised
``ewma``                    value far from the exponentially weighted   O(1)
                            mean
``trend``                   significant least-squares slope in a window O(1) amortised
``robust``                  value far from the window median (MAD)      O(log w) search,
                                                                        O(w) memmove
``likelihood``              unusual *runs* of surprise (NAB-tuned)      O(1) amortised
``context``                 ``likelihood`` plus a CAD-style sequence    O(max_contexts)
                            memory: values in an unseen order           worst case
``cad_ose``                 NAB's CAD OSE, reproduced                   O(max_contexts)
                                                                        worst case
``artime``                  NAB's ARTime (adaptive resonance),          O(max_categories)
                            reproduced                                  per sstep values
==========================  ==========================================  =================

"O(1) amortised": the sliding-window moments are updated incrementally (Welford-style add
and remove) and recomputed exactly from the buffer once every ``window`` updates, so
rounding drift cannot accumulate; that recomputation costs O(w) once per w updates.
"""

from otel_eda.anomaly.detectors.artime import ArtimeDetector
from otel_eda.anomaly.detectors.base import MAX_WINDOW, Detector, z_to_score
from otel_eda.anomaly.detectors.cad_ose import CadOseDetector
from otel_eda.anomaly.detectors.context import ContextDetector
from otel_eda.anomaly.detectors.ewma import EwmaDetector
from otel_eda.anomaly.detectors.factory import make_detector
from otel_eda.anomaly.detectors.fallback import FallbackDetector
from otel_eda.anomaly.detectors.likelihood import LikelihoodDetector
from otel_eda.anomaly.detectors.robust import RobustDetector
from otel_eda.anomaly.detectors.threshold import ThresholdDetector
from otel_eda.anomaly.detectors.trend import TrendDetector, student_t_two_sided_p
from otel_eda.anomaly.detectors.zscore import ZScoreDetector

__all__ = [
    "MAX_WINDOW",
    "ArtimeDetector",
    "CadOseDetector",
    "ContextDetector",
    "Detector",
    "EwmaDetector",
    "FallbackDetector",
    "LikelihoodDetector",
    "RobustDetector",
    "ThresholdDetector",
    "TrendDetector",
    "ZScoreDetector",
    "make_detector",
    "student_t_two_sided_p",
    "z_to_score",
]
