"""Pull consumption: the application's own loop asks for messages, otel-eda follows it.

A pull loop has no handler call to wrap, so a message's process span cannot end when
"the handler returns". Two ways, both from sync code, threads and asyncio:

* exact bounds (recommended)::

      for record in consumer:
          with messaging.process(record.headers, destination=record.topic, getter=...):
              handle(record)

* the loop unchanged, wrapped by :class:`PullTracker`: each message's process span starts
  when the message is handed over, with its event, span and baggage current in the loop
  body, and ends at the earliest of: the next message requested, :meth:`PullTracker.end_current`
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

import heapq
import itertools
import os
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from opentelemetry.propagators.textmap import Getter

from otel_eda import semconv
from otel_eda._selfmetrics import internal_error
from otel_eda.messaging.carriers import TEXT_GETTER
from otel_eda.messaging.core import Messaging, Outcome, Processing
from otel_eda.process_hooks import ForkHook, register_fork_hook

__all__ = ["PullTracker"]

M = TypeVar("M")


class PullTracker(Generic[M]):
    """Follows one pull consumer: at most one open process span at a time.

    ``carrier(message)`` returns the message's headers, read with ``getter``;
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
        getter: Getter[Any] = TEXT_GETTER,
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
        _reaper.watch(processing, self.max_s)
        return processing

    def end_current(self) -> None:
        """End the open attempt (completed unless already settled) and restore the context.

        Call it from the thread or task that iterates (commit, seek and close do)."""
        processing, self.current = self.current, None
        if processing is not None:
            processing.detach()
            processing.settle(Outcome.COMPLETED)

    def wrap(self, messages: Iterable[M]) -> Iterator[M]:
        """Yield ``messages`` with each one's process span current in the loop body."""
        try:
            for message in messages:
                try:
                    self.start(message)
                except Exception:
                    internal_error("pull", "starting a process span")
                yield message
        finally:
            self.end_current()

    async def awrap(self, messages: AsyncIterable[M]) -> AsyncIterator[M]:
        """:meth:`wrap` for an async iterator (``async for``)."""
        try:
            async for message in messages:
                try:
                    self.start(message)
                except Exception:
                    internal_error("pull", "starting a process span")
                yield message
        finally:
            self.end_current()


class _Reaper:
    """One daemon thread ending process spans left open past their maximum."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Processing]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def watch(self, processing: Processing, max_s: float) -> None:
        deadline = time.monotonic() + max_s
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), processing))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="otel-eda-process-span-reaper", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is processing:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2].settled:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait(60.0)
                    if not self._heap:
                        self._thread = None
                        return
                    continue
                deadline, _, processing = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            self._expire(processing, deadline)

    @staticmethod
    def _expire(processing: Processing, deadline: float) -> None:
        if processing.settled:
            return
        try:
            overdue_ns = int((time.monotonic() - deadline) * 1e9)
            processing.span.set_attribute(semconv.EDA_PROCESS_TRUNCATED, True)
            processing.settle(Outcome.COMPLETED, end_ns=time.time_ns() - max(0, overdue_ns))
        except Exception:
            internal_error("pull", "ending an overdue process span")

    def after_fork_in_child(self) -> None:
        self._heap = []
        self._cond = threading.Condition()
        self._thread = None


_reaper = _Reaper()
register_fork_hook(ForkHook("process span reaper", after_in_child=_reaper.after_fork_in_child))
