"""UUIDv7 event ids (RFC 9562 §5.7), monotonic within a process and safe across ``fork``.

Python 3.11 has no ``uuid.uuid7``. Layout used here (RFC 9562 §6.2, method 1, with a
42-bit counter): 48 bits of Unix milliseconds, version 7, a 42-bit counter spread over
``rand_a`` (12 bits) and the top 30 bits of ``rand_b``, the variant, then 32 random bits.
The counter starts at a random value below 2**41 each new millisecond and is incremented
within one, so ids sort in creation order; if it ever overflows, the timestamp borrows
the next millisecond. Random bits come from a ``random.Random`` seeded by the OS and
reseeded in a forked child (one OS call per process, not per id), so parent and child
never produce the same sequence.

>>> a, b = new_event_id(), new_event_id()
>>> a < b and len(a) == 36 and a[14] == "7"
True
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Final

from otel_eda.process_hooks import ForkHook, register_fork_hook

__all__ = ["new_event_id", "timestamp_ms"]

_COUNTER_BITS = 42
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1


class _Generator:
    __slots__ = ("_counter", "_head", "_last_ms", "_lock", "_prefix", "_random")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reseed_after_fork()

    def reseed_after_fork(self) -> None:
        # The child's copy of the lock may be held by a thread that no longer exists.
        self._lock = threading.Lock()
        self._random = random.Random(os.urandom(16))
        self._last_ms = 0
        self._counter = 0
        self._prefix = ""
        # the id up to the counter's last 16 bits (its upper 26 bits change once per 65,536
        # ids within a millisecond): only the last 48 bits of an id are formatted per id
        self._head = ""

    def next(self) -> str:
        with self._lock:
            now_ms = time.time_ns() // 1_000_000
            if now_ms <= self._last_ms:  # same millisecond, or the wall clock stepped back: count
                counter = self._counter + 1
                if counter & 0xFFFF and counter <= _COUNTER_MAX:  # the common case: same head
                    self._counter = counter
                    return self._head + "%012x" % ((counter & 0xFFFF) << 32 | self._random.getrandbits(32))
            return self._next_head(now_ms)

    def _next_head(self, now_ms: int) -> str:
        """``next()`` when the millisecond or the counter's upper bits change (lock held)."""
        if now_ms > self._last_ms:
            self._last_ms = now_ms
            counter = self._counter = self._random.getrandbits(_COUNTER_BITS - 1)
            self._prefix = _prefix(now_ms)
        else:
            counter = self._counter = self._counter + 1
            if counter > _COUNTER_MAX:  # the timestamp borrows the next millisecond
                self._last_ms += 1
                counter = self._counter = self._random.getrandbits(_COUNTER_BITS - 1)
                self._prefix = _prefix(self._last_ms)
        high = counter >> 16
        # the groups after the millisecond: version 7 and the counter's top 12 bits; the
        # variant and the counter's next 14 bits (they change once per 65,536 ids)
        self._head = "%s7%03x-%04x-" % (self._prefix, counter >> 30, 0x8000 | high & 0x3FFF)  # noqa: UP031
        # the last group: the counter's last 16 bits and 32 random bits
        return self._head + "%012x" % ((counter & 0xFFFF) << 32 | self._random.getrandbits(32))


def _prefix(ms: int) -> str:
    """The first two groups of a UUIDv7 string: the 48-bit Unix millisecond timestamp."""
    ms &= 0xFFFF_FFFF_FFFF
    return "%08x-%04x-" % (ms >> 16, ms & 0xFFFF)  # noqa: UP031


_generator = _Generator()
register_fork_hook(ForkHook("event ids", after_in_child=_generator.reseed_after_fork))


def new_event_id() -> str:
    """Return a new UUIDv7 as a lower-case, hyphenated string."""
    return _generator.next()


#: :func:`new_event_id` without a frame of its own (the hot path's; the generator is the same
#: object after a fork, reseeded)
next_event_id: Final = _generator.next


def timestamp_ms(event_id: str) -> int:
    """Return the Unix millisecond timestamp embedded in a UUIDv7 string.

    >>> timestamp_ms("01890a5d-ac96-774b-bcce-b302099a8057")
    1688096058518
    """
    return int(event_id[:8] + event_id[9:13], 16)
