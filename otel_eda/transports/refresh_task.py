"""Stopping the background refresh tasks of the broker instrumentations (consumer lag, queue
depth, pending entries) from wherever an application uninstruments.

``uninstrument()`` may run on another thread than the event loop the task lives on (an
``atexit`` hook, a signal handler's thread), or after that loop was closed (``loop.close()``
with tasks still pending). ``Task.cancel()`` from another thread is not thread-safe, and on a
closed loop it raises ``RuntimeError``: the cancellation goes through the task's own loop,
and a task whose loop is closed is left alone, since nothing can run it again.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["cancel_from_anywhere"]


def cancel_from_anywhere(task: asyncio.Task[None] | None) -> None:
    """Ask ``task`` to stop, from any thread, whether or not its loop still runs (never raises).

    >>> loop = asyncio.new_event_loop()
    >>> task = loop.create_task(asyncio.sleep(3600))
    >>> cancel_from_anywhere(task)
    >>> loop.run_until_complete(asyncio.wait([task])) and task.cancelled()
    True
    >>> loop.close()
    """
    if task is None or task.done():
        return
    loop = task.get_loop()
    if loop.is_closed():
        return
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
        loop.call_soon_threadsafe(task.cancel)
