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
import pickle
import queue
from typing import Any, Protocol

from otel_eda._selfmetrics import internal_error
from otel_eda.flows.records import LifecycleRecord
from otel_eda.transports.bus import BusFull, EventBus, Unsendable, WireMessage

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
        """Put ``message`` in the inbox; False when it stayed full for ``timeout_s``.

        The message is pickled here, in the publisher's call: a payload that cannot be
        pickled raises :class:`~otel_eda.transports.bus.Unsendable` out of ``publish``
        (a ``multiprocessing`` queue would pickle it later, in its feeder thread, and drop
        it with a traceback on stderr while ``send`` had already said it was sent).
        """
        try:
            data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # PicklingError, TypeError, AttributeError, RecursionError...
            raise Unsendable(
                f"the payload of a {message.destination} message cannot be pickled for {self.name}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        try:
            await asyncio.to_thread(self._inbox.put, data, True, self._timeout_s)
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
        if isinstance(item, bytes):  # what QueueOutlet sends
            try:
                item = pickle.loads(item)
            except Exception:
                internal_error("pump", "unpickling a message")
                continue
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
