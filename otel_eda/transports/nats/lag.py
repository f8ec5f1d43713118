"""``eda.consumer.lag`` and ``eda.consumer.ack_pending`` of JetStream consumers.

For each JetStream consumer this process subscribed to (push or pull), a refresh task on the
subscription's own event loop asks the server for the consumer's info
(``subscription.consumer_info()``, one ``$JS.API.CONSUMER.INFO`` request) every
:data:`REFRESH_S` seconds and keeps the last snapshot: ``num_pending`` (messages of the
stream the consumer has not delivered yet) becomes ``eda.consumer.lag`` and
``num_ack_pending`` (delivered, waiting for an ack) ``eda.consumer.ack_pending``; the
consumer's ``max_deliver`` tells the instrumentation when a failed attempt was the last
one (dead-lettered). The observable gauges' callbacks only read the snapshot: the SDK's
collection never makes a network call and never touches the event loop.

The gauges (unit ``{message}``) carry ``messaging.system=nats``,
``messaging.destination.name`` (the stream) and ``messaging.consumer.group.name`` (the
consumer). The conventions have no lag metric yet (semconv #792). A consumer's series
appear after its first refresh and go when its last subscription is unsubscribed or its
connection closed (or the instrumentation is removed). A refresh that fails (the server is away) keeps the last
snapshot and tries again at the next period; at most :data:`MAX_CONSUMERS` consumers are
tracked per process, more are left out and counted in ``eda.internal.errors`` (component
``consumer_pending``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from otel_eda import semconv
from otel_eda._selfmetrics import count_internal_error
from otel_eda.transports.refresh_task import cancel_from_anywhere

__all__ = ["MAX_CONSUMERS", "REFRESH_S", "ConsumerPending", "Snapshot"]

_log = logging.getLogger(__name__)

#: Seconds between two consumer-info requests of one consumer.
REFRESH_S: Final = 1.0
#: Consumers whose gauges are reported at most (over the process).
MAX_CONSUMERS: Final = 1_000
#: How long one consumer-info request may take.
_INFO_WAIT_S: Final = 2.0


class Snapshot:
    """The last consumer info of one consumer: what the gauges and the instrumentation read."""

    __slots__ = ("ack_pending", "attributes", "max_deliver", "pending", "subscriptions", "task")

    def __init__(self, stream: str, consumer: str) -> None:
        self.pending: int | None = None
        self.ack_pending: int | None = None
        #: the consumer's MaxDeliver (``None`` until known, ``-1``: unlimited)
        self.max_deliver: int | None = None
        self.attributes = {
            semconv.MESSAGING_SYSTEM: semconv.MESSAGING_SYSTEM_NATS,
            semconv.MESSAGING_DESTINATION_NAME: stream,
            semconv.MESSAGING_CONSUMER_GROUP_NAME: consumer,
        }
        #: held strongly: an application often drops the subscription object ``js.subscribe``
        #: returns while its callback goes on; a subscription goes when it is unsubscribed or
        #: its connection is closed
        self.subscriptions: list[Any] = []
        self.task: asyncio.Task[None] | None = None


def _connection_closed(subscription: Any) -> bool:
    """Whether the connection of a JetStream push or pull subscription is closed."""
    connection = getattr(subscription, "_conn", None) or getattr(subscription, "_nc", None)  # not OpenTelemetry
    return connection is None or bool(getattr(connection, "is_closed", True))


class ConsumerPending:
    """The pending gauges of the JetStream subscriptions handed to :meth:`track`."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None, *, refresh_s: float = REFRESH_S) -> None:
        self._refresh_s = refresh_s
        self._consumers: dict[tuple[str, str], Snapshot] = {}
        self._over_limit = False
        self._closed = False
        meter = metrics.get_meter("otel_eda.transports.nats", meter_provider=meter_provider)
        meter.create_observable_gauge(
            semconv.METRIC_CONSUMER_LAG,
            callbacks=[self._observe_pending],
            unit="{message}",
            description="Messages of the stream the JetStream consumer has not delivered yet (num_pending)",
        )
        meter.create_observable_gauge(
            semconv.METRIC_CONSUMER_ACK_PENDING,
            callbacks=[self._observe_ack_pending],
            unit="{message}",
            description="Messages the JetStream consumer delivered that wait for an ack (num_ack_pending)",
        )

    def snapshot(self, stream: str, consumer: str) -> Snapshot | None:
        return self._consumers.get((stream, consumer))

    def track(self, subscription: Any, stream: str, consumer: str, max_deliver: int | None = None) -> None:
        """Refresh the info of ``subscription``'s consumer in the background; call from its event loop."""
        if self._closed:
            return
        key = (stream, consumer)
        snapshot = self._consumers.get(key)
        if snapshot is None:
            if len(self._consumers) >= MAX_CONSUMERS:
                if not self._over_limit:
                    self._over_limit = True
                    _log.warning("otel-eda: more than %d JetStream consumers: some are not reported", MAX_CONSUMERS)
                count_internal_error("consumer_pending")
                return
            snapshot = self._consumers[key] = Snapshot(stream, consumer)
        if max_deliver is not None:
            snapshot.max_deliver = max_deliver
        if not any(s is subscription for s in snapshot.subscriptions):
            snapshot.subscriptions.append(subscription)
        if snapshot.task is None or snapshot.task.done():
            snapshot.task = asyncio.get_running_loop().create_task(
                self._refresh(key, snapshot), name="otel-eda JetStream consumer info"
            )

    def untrack(self, subscription: Any) -> None:
        """``subscription`` was unsubscribed: a consumer with no subscription left is dropped."""
        for key, snapshot in list(self._consumers.items()):
            snapshot.subscriptions = [s for s in snapshot.subscriptions if s is not subscription]
            if not snapshot.subscriptions:
                self._drop(key)

    def close(self) -> None:
        """Stop every refresh (uninstrument); the gauges report nothing afterwards."""
        self._closed = True
        for key in list(self._consumers):
            self._drop(key)

    def _drop(self, key: tuple[str, str]) -> None:
        snapshot = self._consumers.pop(key, None)
        if snapshot is not None:
            cancel_from_anywhere(snapshot.task)

    async def _refresh(self, key: tuple[str, str], snapshot: Snapshot) -> None:
        failures = 0
        while self._consumers.get(key) is snapshot:
            snapshot.subscriptions = [s for s in snapshot.subscriptions if not _connection_closed(s)]
            if not snapshot.subscriptions:
                self._drop(key)
                return
            subscription = snapshot.subscriptions[0]
            try:
                info = await asyncio.wait_for(subscription.consumer_info(), _INFO_WAIT_S)
            except asyncio.CancelledError:
                raise
            except Exception:  # the server is away or the consumer was deleted: keep the last snapshot
                failures += 1
                if failures == 1:
                    _log.debug("otel-eda: no consumer info for %s", key, exc_info=True)
            else:
                failures = 0
                snapshot.pending = info.num_pending
                snapshot.ack_pending = info.num_ack_pending
                max_deliver = getattr(info.config, "max_deliver", None)
                if isinstance(max_deliver, int):
                    snapshot.max_deliver = max_deliver
            await asyncio.sleep(self._refresh_s)

    def _observe_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.pending, s.attributes) for s in list(self._consumers.values()) if s.pending is not None]

    def _observe_ack_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(s.ack_pending, s.attributes)
            for s in list(self._consumers.values())
            if s.ack_pending is not None
        ]
