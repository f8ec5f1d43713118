"""The four services of the order-flow demo: the code an application using otel-eda writes.

::

    order ──order_placed──▶ payment ──payment_authorized──▶ inventory ──stock_reserved──▶ order
                               │                                                  └────▶ notification
                               └─────payment_declined──▶ order, notification

Each ``*_service`` function declares one service's handlers on an :class:`otel_eda.Service`.
Nothing here knows about processes, queues or exporters: ``order_flow.py`` runs each
service in its own interpreter and wires their buses together.

Three orders take the unhappy paths (see :data:`SCENARIOS`):

* ``order-1002``: the warehouse times out on the first attempt; the bus retries and the
  second attempt succeeds (a *retried* delivery);
* ``order-1003``: the card is declined; payment emits ``payment_declined`` and raises
  :class:`PaymentDeclined`, a :class:`otel_eda.Rejected`: a final failure, not retried;
  notification tells the customer;
* ``order-1004``: the customer's mail server refuses every message; after its last
  attempt the notification is *dead-lettered*.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import trace

from otel_eda import Delivery, EventBus, Rejected, RetryPolicy, Service

__all__ = [
    "PUBLISHES",
    "RETRY",
    "SCENARIOS",
    "SERVICES",
    "SUBSCRIPTIONS",
    "MailboxUnavailable",
    "PaymentDeclined",
    "WarehouseTimeout",
    "make_orders",
    "place_orders",
]

log = logging.getLogger("order_flow")
# A plain OpenTelemetry tracer: spans started with it inside a handler belong to the
# event's flow, and otel-eda's span processor stamps them with eda.correlation_id.
tracer = trace.get_tracer("order_flow")

#: Simulated work per handler, in seconds (keeps processing times visible, the demo fast).
WORK_S: Final = 0.01
#: How the bus retries a failing handler: 3 attempts, 50 ms then 100 ms apart.
RETRY: Final = RetryPolicy(max_attempts=3, initial_backoff_s=0.05)

DECLINED_CARD: Final = "4000-0000-0000-0002"
FLAKY_SKU: Final = "sku-lamp"  # the warehouse times out once for this one
BOUNCING_DOMAIN: Final = "@bounce.example"  # this mail server refuses every message

#: The orders that do not take the happy path, and what happens to them.
SCENARIOS: Final = {
    "order-1002": "the warehouse times out once: inventory is retried, then succeeds",
    "order-1003": "the card is declined: payment rejects the order, the customer is told",
    "order-1004": "the customer's mailbox bounces: the notification is dead-lettered",
}

#: The event types each service handles. The launcher builds its routing table from it.
SUBSCRIPTIONS: Final[dict[str, tuple[str, ...]]] = {
    "order": ("stock_reserved", "payment_declined"),
    "payment": ("order_placed",),
    "inventory": ("payment_authorized",),
    "notification": ("stock_reserved", "payment_declined"),
}
#: The event types each service publishes.
PUBLISHES: Final[dict[str, tuple[str, ...]]] = {
    "order": ("order_placed",),
    "payment": ("payment_authorized", "payment_declined"),
    "inventory": ("stock_reserved",),
    "notification": (),
}


class PaymentDeclined(Rejected):
    """The card was declined. A final answer: retrying would not change it."""


class WarehouseTimeout(Exception):
    """The warehouse did not answer in time. Transient: worth a retry."""


class MailboxUnavailable(Exception):
    """The customer's mail server refuses the message. Every retry fails the same way."""


def make_orders(count: int) -> list[dict[str, Any]]:
    """``count`` orders, ``order-1001`` onwards; 1002-1004 take the paths in SCENARIOS."""
    orders = []
    for number in range(1001, 1001 + count):
        key = f"order-{number}"
        orders.append(
            {
                "order_id": key,
                "sku": FLAKY_SKU if key == "order-1002" else "sku-mug",
                "quantity": 1 + number % 3,
                "amount_cents": 1250 + 100 * (number % 7),
                "card": DECLINED_CARD if key == "order-1003" else "4242-4242-4242-4242",
                "email": f"customer{number}{BOUNCING_DOMAIN if key == 'order-1004' else '@example.com'}",
            }
        )
    return orders


async def place_orders(bus: EventBus, orders: list[dict[str, Any]]) -> None:
    """The order service's entry point: each order starts a flow keyed by its order id."""
    for order in orders:
        await bus.publish("order_placed", order, business_key=order["order_id"])
        log.info("[order] placed %s", order["order_id"])


# -- the services ------------------------------------------------------------------------


def order_service(svc: Service) -> None:
    @svc.handles("stock_reserved")
    async def confirm(delivery: Delivery) -> None:
        log.info("[order] %s confirmed", delivery.event.business_key)

    @svc.handles("payment_declined")
    async def cancel(delivery: Delivery) -> None:
        log.info("[order] %s cancelled: payment declined", delivery.event.business_key)


def payment_service(svc: Service) -> None:
    @svc.handles("order_placed")
    async def charge(delivery: Delivery) -> None:
        order = delivery.payload
        with tracer.start_as_current_span("charge card") as span:
            span.set_attribute("payment.amount_cents", order["amount_cents"])
            await asyncio.sleep(WORK_S)
            approved = order["card"] != DECLINED_CARD
        if not approved:
            await delivery.emit("payment_declined", {"email": order["email"], "reason": "card declined"})
            raise PaymentDeclined(f"card declined for {order['order_id']}")
        await delivery.emit("payment_authorized", order)
        log.info("[payment] %s charged %d cents", order["order_id"], order["amount_cents"])


def inventory_service(svc: Service) -> None:
    @svc.handles("payment_authorized")
    async def reserve(delivery: Delivery) -> None:
        order = delivery.payload
        with tracer.start_as_current_span("reserve stock") as span:
            span.set_attribute("inventory.sku", order["sku"])
            await asyncio.sleep(WORK_S)
            if order["sku"] == FLAKY_SKU and delivery.attempt == 1:
                raise WarehouseTimeout(f"warehouse did not answer for {order['sku']}")
        await delivery.emit("stock_reserved", order)
        log.info("[inventory] %s reserved (attempt %d)", order["order_id"], delivery.attempt)


def notification_service(svc: Service) -> None:
    async def send_mail(address: str, text: str) -> None:
        with tracer.start_as_current_span("send email"):
            await asyncio.sleep(WORK_S)
            if address.endswith(BOUNCING_DOMAIN):
                raise MailboxUnavailable("the mail server refused the message")
        log.info("[notification] mail to %s: %s", address, text)

    @svc.handles("stock_reserved")
    async def shipped(delivery: Delivery) -> None:
        await send_mail(delivery.payload["email"], f"{delivery.event.business_key} is on its way")

    @svc.handles("payment_declined")
    async def declined(delivery: Delivery) -> None:
        await send_mail(delivery.payload["email"], f"{delivery.event.business_key}: your payment was declined")


#: Service name -> the function that declares its handlers.
SERVICES: Final[dict[str, Callable[[Service], None]]] = {
    "order": order_service,
    "payment": payment_service,
    "inventory": inventory_service,
    "notification": notification_service,
}
