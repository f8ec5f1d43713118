"""The one registry of otel-eda's fork and exit hooks.

Every module that owns a lock, a thread or a random generator registers here instead of
calling ``os.register_at_fork`` or ``atexit.register`` itself, so the order is known (hooks
run in registration order; ``before`` hooks in reverse, like the interpreter's), each hook
is guarded (one that raises is logged and the others still run: an exception must never
escape into ``os.fork()`` or interpreter exit), and tests can list what is registered.

>>> calls = []
>>> hook = ForkHook("doc", after_in_child=lambda: calls.append("child"))
>>> register_fork_hook(hook) is hook
True
>>> run_after_in_child_hooks()  # what os.fork() runs in the child
>>> calls
['child']
>>> unregister_fork_hook(hook)
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import threading
from collections.abc import Callable

__all__ = [
    "ExitHook",
    "ForkHook",
    "fork_hooks",
    "register_exit_hook",
    "register_fork_hook",
    "run_after_in_child_hooks",
    "unregister_fork_hook",
]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class ForkHook:
    """What one component does around ``os.fork()``; ``name`` identifies it in logs."""

    name: str
    before: Callable[[], None] | None = None
    after_in_child: Callable[[], None] | None = None
    after_in_parent: Callable[[], None] | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class ExitHook:
    """What one component does at interpreter exit (``atexit``)."""

    name: str
    run: Callable[[], None]


_fork_hooks: list[ForkHook] = []
_exit_hooks: list[ExitHook] = []
_lock = threading.Lock()


def register_fork_hook(hook: ForkHook) -> ForkHook:
    """Run ``hook`` around every later ``os.fork()``; returns it."""
    with _lock:
        _fork_hooks.append(hook)
    return hook


def unregister_fork_hook(hook: ForkHook) -> None:
    with _lock:
        if hook in _fork_hooks:
            _fork_hooks.remove(hook)


def register_exit_hook(hook: ExitHook) -> ExitHook:
    """Run ``hook`` at interpreter exit, before the hooks registered before it (last
    registered, first run, as ``atexit`` does); returns it."""
    with _lock:
        _exit_hooks.append(hook)
    return hook


def fork_hooks() -> tuple[ForkHook, ...]:
    """The registered fork hooks, in registration order."""
    return tuple(_fork_hooks)


def _run(name: str, stage: str, fn: Callable[[], None] | None) -> None:
    if fn is None:
        return
    try:
        fn()
    except Exception:
        _log.exception("otel-eda's %s hook of %s failed", stage, name)


def _before_fork() -> None:
    # Not under _lock: a hook may take its own locks, and the child must find _lock free.
    for hook in reversed(tuple(_fork_hooks)):
        _run(hook.name, "before-fork", hook.before)


def run_after_in_child_hooks() -> None:
    """What ``os.fork()`` runs in the child (public for tests of a component's hook)."""
    global _lock
    _lock = threading.Lock()  # a thread of the parent may have held it at fork time
    for hook in tuple(_fork_hooks):
        _run(hook.name, "after-fork (child)", hook.after_in_child)


def _after_in_parent() -> None:
    for hook in tuple(_fork_hooks):
        _run(hook.name, "after-fork (parent)", hook.after_in_parent)


def _at_exit() -> None:
    for hook in reversed(tuple(_exit_hooks)):
        _run(hook.name, "exit", hook.run)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=run_after_in_child_hooks, after_in_parent=_after_in_parent)
atexit.register(_at_exit)
