"""The process-wide recorders: every transport passes its lifecycle records to them too.

``configure()`` installs otel-eda's lifecycle logger here (:mod:`otel_eda.logs.lifecycle`),
so that buses and transports made before or after it all log their events' lifecycle
without being handed a recorder. A transport reads :func:`installed` when it records (one
tuple read), so an installation takes effect at once.

>>> from otel_eda.flows.records import LifecycleRecord
>>> class Counting:
...     n = 0
...     def record(self, record: LifecycleRecord) -> None:
...         self.n += 1
>>> counting = Counting()
>>> install(counting); install(counting); len([r for r in installed() if r is counting])
1
>>> uninstall(counting); counting in installed()
False
"""

from __future__ import annotations

import threading

from otel_eda.flows.records import Recorder

__all__ = ["install", "installed", "uninstall"]

_lock = threading.Lock()
_recorders: tuple[Recorder, ...] = ()


def installed() -> tuple[Recorder, ...]:
    """The recorders installed for every transport of this process."""
    return _recorders


def install(recorder: Recorder) -> None:
    """Pass every lifecycle record of this process to ``recorder`` too (once per recorder)."""
    global _recorders
    with _lock:
        if not any(r is recorder for r in _recorders):
            _recorders = (*_recorders, recorder)


def uninstall(recorder: Recorder) -> None:
    """Stop passing lifecycle records to ``recorder``."""
    global _recorders
    with _lock:
        _recorders = tuple(r for r in _recorders if r is not recorder)
