"""An asyncio event loop with a virtual clock, for tests about timeouts on a busy machine.

The loop's clock moves only when the loop would otherwise sleep until its next timer: it
then jumps to that timer at once. ``loop.time()`` differences are exactly the timeouts the
code waited, however loaded the machine is; I/O and wake-ups from other threads work as
usual (a wait with no timer pending blocks for real).
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any


class _VirtualSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if timeout is None:
            return list(super().select(None))
        events = list(super().select(0))
        if not events and timeout > 0:
            self.now += timeout  # nothing to do until the next timer: skip to it
        return events


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now
