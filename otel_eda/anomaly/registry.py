"""The detector kinds a rule can name: built-in, registered from Python, or by entry point.

A rule's ``detector: {kind: ..., <parameters>}`` is built by :func:`make_detector` here,
which looks the kind up in this order:

1. otel-eda's built-in detectors (:func:`otel_eda.anomaly.detectors.make_detector`:
   ``threshold``, ``zscore``, ...) and the two kinds this package adds: ``growth``
   (:class:`~otel_eda.anomaly.growth.GrowthDetector`) and ``condition``
   (:class:`~otel_eda.anomaly.condition.ConditionDetector`, Python rules only);
2. kinds registered with :func:`register_detector` (a detector class, or any callable
   ``factory(**params) -> detector``);
3. entry points of the group ``otel_eda_detectors`` (:data:`ENTRY_POINT_GROUP`): the
   entry point's name is the kind, its object the factory. Installed packages are read
   through ``importlib.metadata`` when a rule first names a kind that 1. and 2. lack; a
   loaded entry point is remembered.

A built-in kind cannot be replaced (a rules file naming ``zscore`` always means otel-eda's).
Every detector that is not otel-eda's own is wrapped in :class:`GuardedDetector`: an
exception it raises is logged and counted (``eda.internal.errors``), the point counts as
normal, and the anomaly engine carries on. A factory must return an object with the
:class:`~otel_eda.anomaly.detectors.Detector` interface (``update(t, x)`` returning the
detector, ``score``, ``is_anomaly``, ``threshold``, ``value``, ``skipped``).

>>> class Above:
...     def __init__(self, limit: float) -> None:
...         self.limit, self.threshold, self.score, self.value, self.skipped = limit, 1.0, 0.0, None, 0
...     def update(self, t: float, x: float) -> "Above":
...         self.value, self.score = x, float(x > self.limit)
...         return self
...     @property
...     def is_anomaly(self) -> bool:
...         return self.score >= self.threshold
>>> register_detector("above", Above)
>>> make_detector("above", limit=3).update(0.0, 5.0).is_anomaly
True
>>> unregister_detector("above")
True
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from collections.abc import Callable
from typing import Any, Final, Self

from otel_eda._selfmetrics import count_internal_error, log_exception
from otel_eda.anomaly import detectors as _builtin
from otel_eda.anomaly.condition import ConditionDetector
from otel_eda.anomaly.detectors import Detector
from otel_eda.anomaly.growth import GrowthDetector
from otel_eda.process_hooks import ForkHook, register_fork_hook

__all__ = [
    "ENTRY_POINT_GROUP",
    "GuardedDetector",
    "detector_kinds",
    "generation",
    "make_detector",
    "register_detector",
    "unregister_detector",
]

_log = logging.getLogger(__name__)

#: The entry point group of third-party detectors: ``name = module:Factory``.
ENTRY_POINT_GROUP: Final = "otel_eda_detectors"

DetectorFactory = Callable[..., Any]

# otel-eda's own kinds beyond detectors.make_detector's (trusted: not guarded, except
# "condition", whose callable is the user's)
_OWN: Final[dict[str, DetectorFactory]] = {"growth": GrowthDetector, "condition": ConditionDetector}
_UNGUARDED: Final = frozenset({"growth"})

_lock = threading.Lock()


def _fresh_lock_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have been registering at fork time


register_fork_hook(ForkHook("detector registry", after_in_child=_fresh_lock_in_child))
_registered: dict[str, DetectorFactory] = {}
_from_entry_points: dict[str, DetectorFactory] = {}
_generation = 0  # changes with every registration: rules files checked before are checked again


def generation() -> int:
    """A number that changes whenever a kind is registered or unregistered."""
    return _generation


def _is_builtin(kind: str) -> bool:
    """Whether detectors.make_detector knows ``kind`` (its one error for an unknown kind)."""
    if kind in _OWN:
        return True
    try:
        _builtin.make_detector(kind)
    except ValueError as exc:
        return not str(exc).startswith("unknown detector kind")
    return True


def register_detector(kind: str, factory: DetectorFactory) -> None:
    """Make ``kind`` available to rules: ``factory(**params)`` builds one detector per series.

    Raises ValueError for a built-in kind, a kind already registered to another
    factory, or a factory that is not callable. Registering the same factory again is a
    no-op.
    """
    if not isinstance(kind, str) or not kind.strip():
        raise ValueError("a detector kind is a non-empty string")
    if not callable(factory):
        raise ValueError(f"detector {kind!r}: the factory must be callable, got {type(factory).__name__}")
    if _is_builtin(kind):
        raise ValueError(f"detector kind {kind!r} is built into otel-eda and cannot be replaced")
    with _lock:
        current = _registered.get(kind)
        if current is not None and current is not factory:
            raise ValueError(f"detector kind {kind!r} is already registered ({current!r}); unregister it first")
        if current is None:
            global _generation
            _registered[kind] = factory
            _generation += 1


def unregister_detector(kind: str) -> bool:
    """Forget a kind registered from Python; whether it was registered.

    Rules already built keep their detectors; new series and new rules can no longer
    name the kind (unless an entry point provides it).
    """
    global _generation
    with _lock:
        found = _registered.pop(kind, None) is not None
        _generation += found
        return found


def detector_kinds() -> dict[str, str]:
    """Registered and entry-point kinds, each with where it comes from (built-ins not listed)."""
    kinds = {kind: "entry point" for kind in _entry_point_names()}
    with _lock:
        kinds.update({kind: "registered" for kind in _registered})
    return kinds


def _entry_point_names() -> list[str]:
    try:
        return [ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]
    except Exception:  # a broken installed distribution must not break the rules
        _log.debug("could not list the %s entry points", ENTRY_POINT_GROUP, exc_info=True)
        return []


def _entry_point_factory(kind: str) -> DetectorFactory | None:
    """The object of the ``otel_eda_detectors`` entry point named ``kind`` (loaded once)."""
    with _lock:
        factory = _from_entry_points.get(kind)
    if factory is not None:
        return factory
    try:
        found = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == kind]
    except Exception as exc:
        raise ValueError(f"detector kind {kind!r}: could not read the installed entry points ({exc})") from None
    if not found:
        return None
    entry_point = found[0]
    try:
        loaded = entry_point.load()
    except Exception as exc:
        raise ValueError(
            f"detector kind {kind!r}: entry point {entry_point.value!r} of {ENTRY_POINT_GROUP} failed to load: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if not callable(loaded):
        raise ValueError(f"detector kind {kind!r}: entry point {entry_point.value!r} is not callable")
    with _lock:
        factory = _from_entry_points.setdefault(kind, loaded)
    return factory


def make_detector(kind: str, **params: Any) -> Detector:
    """Build one detector of ``kind`` with ``params`` (a rule's ``detector`` mapping).

    Raises ValueError for an unknown kind, bad parameters, or a factory that fails or
    returns something without the detector interface.
    """
    if not isinstance(kind, str):
        raise ValueError(f"a detector kind is a string, got {type(kind).__name__}")
    own = _OWN.get(kind)
    if own is not None:
        return _build(kind, own, params, guard=kind not in _UNGUARDED)
    with _lock:
        factory = _registered.get(kind)
    if factory is None:
        try:
            return _builtin.make_detector(kind, **params)
        except ValueError as exc:
            if not str(exc).startswith("unknown detector kind"):
                raise
            factory = _entry_point_factory(kind)
            if factory is None:
                extra = sorted({*_OWN, *detector_kinds()})
                raise ValueError(
                    f"{exc}, {', '.join(extra)} (or register one: register_detector(), "
                    f"entry point group {ENTRY_POINT_GROUP})"
                ) from None
    return _build(kind, factory, params, guard=True)


def _build(kind: str, factory: DetectorFactory, params: dict[str, Any], *, guard: bool) -> Detector:
    try:
        detector = factory(**params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{kind}: {exc}") from None
    except Exception as exc:
        raise ValueError(f"{kind}: the detector factory raised {type(exc).__name__}: {exc}") from None
    missing = [name for name in ("update", "score", "is_anomaly", "threshold") if not hasattr(detector, name)]
    if missing or not callable(getattr(detector, "update", None)):
        raise ValueError(
            f"{kind}: {factory!r} returned {type(detector).__name__}, which lacks the detector interface "
            f"({', '.join(missing) or 'update is not callable'})"
        )
    return GuardedDetector(kind, detector) if guard else detector


class GuardedDetector:
    """A detector that is not otel-eda's own, made safe for the engine's thread.

    ``update`` calls the inner detector and reads its ``score`` and ``is_anomaly`` once;
    an exception from any of them is logged (the first time per detector, with its
    traceback; later ones at DEBUG) and counted in ``failures`` and in
    ``eda.internal.errors`` (``eda.component=detector``), and the point counts as
    normal. Other attributes (``threshold_value``, ``slope``, ...) are read through.
    """

    __slots__ = ("failures", "inner", "is_anomaly", "kind", "score", "threshold")

    def __init__(self, kind: str, inner: Any) -> None:
        self.kind = kind
        self.inner = inner
        #: the inner detector's threshold when built (informative: ``is_anomaly`` is the inner one's)
        self.threshold = float(getattr(inner, "threshold", 1.0))
        self.score = 0.0
        self.is_anomaly = False
        self.failures = 0

    def update(self, t: float, x: float) -> Self:
        inner = self.inner
        try:
            inner.update(t, x)
            score = float(inner.score)
            anomalous = bool(inner.is_anomaly)
        except Exception:
            self.failures += 1
            self.score, self.is_anomaly = 0.0, False
            if self.failures == 1:
                log_exception(  # a detector may be the application's: under the redaction policy
                    _log,
                    logging.ERROR,
                    "detector %r (%r) raised on a point; the point counts as normal and the anomaly engine "
                    "continues (later failures of this detector are logged at DEBUG)",
                    self.kind,
                    inner,
                )
            else:
                log_exception(_log, logging.DEBUG, "detector %r raised again", self.kind)
            count_internal_error("detector")
            return self
        self.score = score if 0.0 <= score <= 1.0 else (1.0 if score > 1.0 else 0.0)
        self.is_anomaly = anomalous
        return self

    @property
    def value(self) -> float | None:
        return getattr(self.inner, "value", None)

    @property
    def skipped(self) -> int:
        return int(getattr(self.inner, "skipped", 0))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"GuardedDetector({self.kind!r}, {self.inner!r}, failures={self.failures})"
