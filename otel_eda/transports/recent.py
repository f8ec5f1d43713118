"""A bounded window of recently seen keys, shared by the broker instrumentations (Kafka's
duplicate deliveries, RabbitMQ's dead-lettered messages).

Consumers on several threads (confluent-kafka workers, pika channels) may use one window at
once: every step is one ``OrderedDict`` operation, each atomic in CPython, and a step that
loses a race (the key evicted meanwhile, the window emptied) is taken as "not seen", never
as an error. No lock, so nothing to renew after a fork.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["RecentKeys"]


class RecentKeys:
    """The last ``window`` keys seen; :meth:`seen_before` answers and remembers.

    >>> recent = RecentKeys(2)
    >>> [recent.seen_before(k) for k in ("a", "b", "a", "c", "b")]
    [False, False, True, False, False]
    """

    __slots__ = ("_keys", "_window")

    def __init__(self, window: int) -> None:
        self._window = window
        self._keys: OrderedDict[Hashable, None] = OrderedDict()

    def seen_before(self, key: Hashable) -> bool:
        """Whether ``key`` is among the last ``window`` keys; it is the newest one afterwards."""
        keys = self._keys
        try:
            keys.move_to_end(key)
        except KeyError:
            pass
        else:
            return True
        keys[key] = None
        if len(keys) > self._window:
            with contextlib.suppress(KeyError):  # another thread emptied it meanwhile
                keys.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._keys)
