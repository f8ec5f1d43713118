"""A small inter-process transport behind the bus interface, on ``multiprocessing`` queues.

Not a broker: each process owns an inbox queue; an :class:`QueueOutlet` forwards the
messages of chosen event types to another process's inbox, and :func:`pump` hands what
arrives in an inbox to the local bus. Headers travel as a plain ``dict[str, str]``, so the
producer's trace context and the event identity cross the process boundary exactly as
they would cross a broker. :class:`RecordForwarder` sends lifecycle records to a
collecting process (the demo's launcher).
"""

from __future__ import annotations

import asyncio
import logging
import queue
from typing import Any, Protocol

from otel_eda._selfmetrics import internal_error
from otel_eda.flows.records import LifecycleRecord
from otel_eda.transports.bus import BusFull, EventBus, WireMessage

__all__ = ["QueueOutlet", "RecordForwarder", "pump"]

_log = logging.getLogger(__name__)


class _Queue(Protocol):
    def put(self, obj: Any, block: bool = ..., timeout: float | None = ...) -> None: ...
    def put_nowait(self, obj: Any) -> None: ...
    def get(self, block: bool = ..., timeout: float | None = ...) -> Any: ...


class QueueOutlet:
    """Forwards messages to another process's inbox; waits up to ``timeout_s`` for room."""

    def __init__(self, inbox: _Queue, name: str, timeout_s: float = 1.0) -> None:
        self._inbox = inbox
        self.name = name
        self._timeout_s = timeout_s

    async def send(self, message: WireMessage) -> bool:
        try:
            await asyncio.to_thread(self._inbox.put, message, True, self._timeout_s)
        except queue.Full:
            return False
        return True


async def pump(inbox: _Queue, bus: EventBus, poll_s: float = 0.05) -> None:
    """Deliver what arrives in ``inbox`` to ``bus`` until a ``None`` arrives."""
    while True:
        try:
            item = await asyncio.to_thread(inbox.get, True, poll_s)
        except queue.Empty:
            continue
        if item is None:
            return
        if not isinstance(item, WireMessage):
            _log.warning("inbox item of type %s ignored", type(item).__name__)
            continue
        try:
            await bus.deliver(item)
        except BusFull:
            _log.warning("a delivered %s message was dropped: queue full", item.destination)
        except Exception:
            internal_error("pump", "delivering a message")


class RecordForwarder:
    """A ``Recorder`` that puts lifecycle records on a queue for another process."""

    def __init__(self, sink: _Queue) -> None:
        self._sink = sink
        self.lost = 0
        self._losing = False

    def record(self, record: LifecycleRecord) -> None:
        try:
            self._sink.put_nowait(record)
        except queue.Full:
            self.lost += 1
            if not self._losing:  # one line per burst, not one per record
                self._losing = True
                _log.warning("lifecycle records are being lost: the collecting queue is full (%d lost)", self.lost)
        else:
            if self._losing:
                self._losing = False
                _log.warning("lifecycle records flow again (%d lost in all)", self.lost)
