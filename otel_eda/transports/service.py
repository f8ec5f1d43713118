"""A small service API: declare a service's handlers with a decorator.

>>> import asyncio
>>> from otel_eda import EventBus, Service, Delivery
>>> async def main() -> list[str]:
...     async with EventBus(service="shop") as bus:
...         payment = Service("payment", bus)
...
...         @payment.handles("order_placed")
...         async def charge(delivery: Delivery) -> None:
...             await delivery.emit("payment_authorized")
...
...         order = await bus.publish("order_placed")
...         await bus.join()
...         return [e.event_type for e in bus.store.flow(order.correlation_id)]
>>> asyncio.run(main())
['order_placed', 'payment_authorized']
"""

from __future__ import annotations

from collections.abc import Callable

from otel_eda.transports.bus import EventBus, Handler, RetryPolicy

__all__ = ["Service"]


class Service:
    """A named group of handlers on a bus; its name is their subscriber (consumer group).

    Within a handler, ``delivery.emit(...)`` publishes a child event of the one handled.
    """

    def __init__(self, name: str, bus: EventBus, *, retry: RetryPolicy | None = None) -> None:
        self.name = name
        self.bus = bus
        self.retry = retry

    def handles(self, event_type: str, *, retry: RetryPolicy | None = None) -> Callable[[Handler], Handler]:
        """Decorator: subscribe the function to ``event_type`` under this service's name."""

        def register(handler: Handler) -> Handler:
            self.bus.subscribe(event_type, handler, subscriber=self.name, retry=retry or self.retry)
            return handler

        return register
