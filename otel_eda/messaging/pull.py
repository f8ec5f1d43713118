"""Pull consumption: the application's own loop asks for messages, otel-eda follows it.

A pull loop has no handler call to wrap, so a message's process span cannot end when
"the handler returns". Two ways, both from sync code, threads and asyncio:

* exact bounds (recommended)::

      for record in consumer:
          with messaging.process(record.headers, destination=record.topic, getter=...):
              handle(record)

* the loop unchanged, wrapped by :class:`PullTracker`: each message's process span starts
  when the message is handed over, with its event, span and baggage current in the loop
  body, and ends at the earliest of: the next message requested (before the fetch), :meth:`PullTracker.end_current`
  (an instrumentation calls it on commit, seek or close), the loop ending, or
  ``OTEL_EDA_PROCESS_SPAN_MAX_S`` seconds (default 30) — then the span ends at exactly
  that time and carries ``eda.process.truncated=true``. An exception leaving the loop body
  cannot be seen by an iterator: the attempt is recorded as completed unless the code
  calls ``current_processing().fail(exc)``; use ``process()`` for exact outcomes.

>>> from otel_eda.messaging import Messaging
>>> from otel_eda.identity import current_event
>>> messaging = Messaging("doc")
>>> inbox = [{"eda-event-id": "0190f0c2-7a3e-7d51-9b1c-2f0e8a6d4c11", "eda-event-type": "order_placed"}]
>>> tracker = PullTracker(messaging, destination="orders", carrier=lambda headers: headers)
>>> [current_event().event_type for _ in tracker.wrap(inbox)]
['order_placed']
>>> current_event() is None  # the loop ended: the last span is ended, the context restored
True
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from opentelemetry.propagators.textmap import Getter

from otel_eda._selfmetrics import internal_error
from otel_eda.messaging.core import Messaging, Outcome, Processing
from otel_eda.process_hooks import ForkHook, register_fork_hook

__all__ = ["PullTracker"]

M = TypeVar("M")


class PullTracker(Generic[M]):
    """Follows one pull consumer: at most one open process span at a time.

    ``carrier(message)`` returns the message's headers, read with ``getter`` (default: the
    messaging's own), or the :class:`~otel_eda.messaging.Incoming` that
    :meth:`Messaging.received` already counted for it (then it is not counted twice);
    ``destination`` is a name or a function of the message; ``attributes(message)`` adds
    span attributes (partition, offset, ...); ``attempt(message)`` gives the transport's
    delivery count, when it has one.
    """

    def __init__(
        self,
        messaging: Messaging,
        *,
        destination: str | Callable[[M], str],
        carrier: Callable[[M], Any],
        getter: Getter[Any] | None = None,
        consumer_group: str | None = None,
        attributes: Callable[[M], dict[str, Any]] | None = None,
        attempt: Callable[[M], int] | None = None,
        max_s: float | None = None,
    ) -> None:
        self.messaging = messaging
        self._destination = destination
        self._carrier = carrier
        self._getter = getter
        self._group = consumer_group
        self._attributes = attributes
        self._attempt = attempt
        self.max_s = max_s if max_s is not None else messaging.settings.process_span_max_s
        self.current: Processing | None = None
        #: ``(deadline, attempt)`` of the open attempt, for the reaper (one attribute write per
        #: message: the reaper reads the pair whole, without a lock)
        self._watch: tuple[float, Processing] | None = None

    def start(self, message: M) -> Processing:
        """End the open attempt, then start (and make current) the one of ``message``."""
        self.end_current()
        destination = self._destination if isinstance(self._destination, str) else self._destination(message)
        processing = self.messaging.process(
            self._carrier(message),
            destination=destination,
            getter=self._getter,
            consumer_group=self._group,
            attempt=self._attempt(message) if self._attempt is not None else 1,
            attributes=self._attributes(message) if self._attributes is not None else None,
        )
        processing.attach()
        self.current = processing
        _reaper.watch(self, processing, self.max_s)
        return processing

    def adopt(self, processing: Processing) -> None:
        """Follow an attempt started elsewhere (a consumer callback that returned before its
        message was settled, say): it ends at :meth:`end_current`, when settled, or ``max_s``
        seconds from now (truncated). Its context is not made current."""
        self.end_current()
        self.current = processing
        _reaper.watch(self, processing, self.max_s)

    def end_current(self) -> None:
        """End the open attempt (completed unless already settled) and restore the context.

        Call it from the thread or task that iterates (commit, seek and close do)."""
        processing, self.current = self.current, None
        if processing is not None:
            processing.detach()
            processing.settle(Outcome.COMPLETED)

    def wrap(self, messages: Iterable[M]) -> Iterator[M]:
        """Yield ``messages`` with each one's process span current in the loop body; a
        message's span ends *before* the next one is fetched (the fetch is not its work)."""
        iterator = iter(messages)
        try:
            while True:
                self.end_current()
                try:
                    message = next(iterator)
                except StopIteration:
                    return
                self._start_guarded(message)
                yield message
        finally:
            self.end_current()

    async def awrap(self, messages: AsyncIterable[M]) -> AsyncIterator[M]:
        """:meth:`wrap` for an async iterator (``async for``). If the loop may ``break`` or
        raise, close it in the same task so the context is restored there:
        ``async with contextlib.aclosing(tracker.awrap(consumer)) as records: ...``
        (an async generator left open is closed later by the event loop, in another task)."""
        iterator = aiter(messages)
        try:
            while True:
                self.end_current()
                try:
                    message = await anext(iterator)
                except StopAsyncIteration:
                    return
                self._start_guarded(message)
                yield message
        finally:
            self.end_current()

    def _start_guarded(self, message: M) -> None:
        try:
            self.start(message)
        except Exception:
            internal_error("pull", "starting a process span")


class _Reaper:
    """One daemon thread ending process spans left open past their maximum.

    It watches trackers, not messages: each tracker has at most one open span, so what it
    holds is bounded by the number of live trackers (weakly referenced). A tracker's
    deadline and attempt are its ``_watch`` pair, replaced whole per message; the lock
    is taken only when a tracker starts being watched.
    """

    def __init__(self) -> None:
        self._watched: weakref.WeakSet[PullTracker[Any]] = weakref.WeakSet()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, tracker: PullTracker[Any], processing: Processing, max_s: float) -> None:
        known = tracker._watch is not None
        tracker._watch = (time.monotonic() + max_s, processing)
        if known and self._thread is not None:
            # a tracker's deadlines only move later: the thread needs no wake-up (it runs while
            # a tracker is watched, and clears _thread whenever it stops)
            return
        with self._cond:
            self._watched.add(tracker)
            if self._thread is None or not self._thread.is_alive():
                thread = threading.Thread(target=self._run, name="otel-eda-process-span-reaper", daemon=True)
                try:
                    thread.start()
                except Exception:  # no thread to be had (the process's limit): tried again next time
                    internal_error("pull", "starting the process span reaper")
                    return
                self._thread = thread  # only a started thread: the fast path above trusts it
            else:
                self._cond.notify()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _loop(self) -> None:
        while True:
            overdue: list[tuple[float, Processing]] = []
            cond = self._cond  # one condition per pass, even if a fork hook replaces it
            with cond:
                now = time.monotonic()
                earliest = None
                for tracker in list(self._watched):
                    entry = tracker._watch
                    if entry is None:
                        continue
                    deadline, processing = entry
                    if processing.settled:
                        continue
                    if deadline <= now:
                        overdue.append(entry)  # settled by _expire: skipped from then on
                    elif earliest is None or deadline < earliest:
                        earliest = deadline
                if not overdue:
                    if earliest is None and not self._watched:
                        cond.wait(60.0)
                        if not self._watched:
                            self._thread = None
                            return
                        continue
                    cond.wait(earliest - now if earliest is not None else 1.0)
                    continue
            for deadline, processing in overdue:
                self._expire(processing, deadline)

    @staticmethod
    def _expire(processing: Processing, deadline: float) -> None:
        try:
            overdue_ns = max(0, int((time.monotonic() - deadline) * 1e9))
            processing.settle(Outcome.COMPLETED, end_ns=time.time_ns() - overdue_ns, truncated=True)
        except Exception:
            internal_error("pull", "ending an overdue process span")

    def after_fork_in_child(self) -> None:
        self._watched = weakref.WeakSet()
        self._cond = threading.Condition()
        self._thread = None


_reaper = _Reaper()
register_fork_hook(ForkHook("process span reaper", after_in_child=_reaper.after_fork_in_child))
