"""The four services of the order-flow demo: the code an application using otel-eda writes.

::

    order ──order_placed──▶ payment ──payment_authorized──▶ inventory ──stock_reserved──▶ order
                               │                                                  └────▶ notification
                               └─────payment_declined──▶ order, notification

Each ``*_service`` function declares one service's handlers on an :class:`otel_eda.Service`.
Nothing here knows about processes, queues or exporters: ``order_flow.py`` runs each
service in its own interpreter and wires their buses together.

Three orders of the story take the unhappy paths (see :data:`SCENARIOS`):

* ``order-1002``: the warehouse times out on the first attempt; the bus retries and the
  second attempt succeeds (a *retried* delivery);
* ``order-1003``: the card is declined; payment emits ``payment_declined`` and raises
  :class:`PaymentDeclined`, a :class:`otel_eda.Rejected`: a final failure, not retried;
  notification tells the customer;
* ``order-1004``: the customer's mail server refuses every message; after its last
  attempt the notification is *dead-lettered*.

After the story, the order service keeps placing ordinary *background* orders
(:data:`TRAFFIC_RATE` per second, :func:`place_traffic`) while two incidents happen, each
in a time window counted from a start time shared by every service (see
:data:`INCIDENTS` and :class:`Incidents`):

* a *latency spike*: for a few seconds the warehouse answers slowly and each reservation
  takes :data:`SLOW_WORK_S` instead of :data:`WORK_S`;
* an *error burst*: the card gateway times out, first on one charge in three, then on
  most attempts; the bus retries, and the third attempt always gets through.

otel-eda's anomaly engine, with its default rule set, is expected to notice both (and
the dead letter of ``order-1004``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.context import attach, detach

from otel_eda import Delivery, EventBus, Rejected, RetryPolicy, Service, with_event

__all__ = [
    "INCIDENTS",
    "PUBLISHES",
    "RETRY",
    "SCENARIOS",
    "SERVICES",
    "SUBSCRIPTIONS",
    "TRAFFIC_RATE",
    "GatewayTimeout",
    "Incident",
    "Incidents",
    "MailboxUnavailable",
    "PaymentDeclined",
    "WarehouseTimeout",
    "make_orders",
    "make_traffic",
    "place_orders",
    "place_traffic",
]

log = logging.getLogger("order_flow")
# A plain OpenTelemetry tracer: spans started with it inside a handler belong to the
# event's flow, and otel-eda's span processor stamps them with eda.correlation_id.
tracer = trace.get_tracer("order_flow")

#: Simulated work per handler, in seconds (keeps processing times visible, the demo fast).
WORK_S: Final = 0.01
#: How long a reservation takes while the warehouse is slow (the latency spike).
SLOW_WORK_S: Final = 0.3
#: Background orders placed per second after the story orders.
TRAFFIC_RATE: Final = 20.0
#: How the bus retries a failing handler: 3 attempts, 50 ms then 100 ms apart.
RETRY: Final = RetryPolicy(max_attempts=3, initial_backoff_s=0.05)

DECLINED_CARD: Final = "4000-0000-0000-0002"
FLAKY_SKU: Final = "sku-lamp"  # the warehouse times out once for this one
BOUNCING_DOMAIN: Final = "@bounce.example"  # this mail server refuses every message

#: The story orders that do not take the happy path, and what happens to them. What goes
#: wrong while the background orders flow is in :data:`INCIDENTS`.
SCENARIOS: Final = {
    "order-1002": "the warehouse times out once: inventory is retried, then succeeds",
    "order-1003": "the card is declined: payment rejects the order, the customer is told",
    "order-1004": "the customer's mailbox bounces: the notification is dead-lettered",
}


@dataclasses.dataclass(frozen=True)
class Incident:
    """Something that goes wrong in ``service`` from ``start_s`` to ``end_s`` after the start."""

    service: str
    start_s: float
    end_s: float
    what: str


#: The incidents injected into the background traffic, in seconds after the shared start
#: time (when the first order is placed). The latency detector learns what is normal
#: from its first 30 evaluations (15 s at the demo's 0.5 s interval): the spike comes later.
INCIDENTS: Final = {
    "latency spike": Incident(
        "inventory", 19.0, 22.0, f"the warehouse is slow: each reservation takes {SLOW_WORK_S:g} s, not {WORK_S:g} s"
    ),
    "gateway degraded": Incident(
        "payment", 24.0, 26.0, "the card gateway times out on the first attempt of one charge in three"
    ),
    "gateway down": Incident(
        "payment", 26.0, 28.0, "the card gateway times out twice on every charge; the third attempt gets through"
    ),
}


class Incidents:
    """Tells a handler which incidents are on now. ``start`` is the shared start time
    (epoch seconds); without one, nothing ever goes wrong."""

    def __init__(self, start: float | None = None) -> None:
        self.start = start

    def active(self, name: str) -> bool:
        if self.start is None:
            return False
        incident = INCIDENTS[name]
        return incident.start_s <= time.time() - self.start < incident.end_s


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


class GatewayTimeout(Exception):
    """The card gateway did not answer in time. Transient: worth a retry."""


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


def make_traffic(count: int, first: int) -> list[dict[str, Any]]:
    """``count`` ordinary background orders, numbered from ``first``, marked ``traffic``."""
    return [
        {
            "order_id": f"order-{number}",
            "sku": "sku-mug",
            "quantity": 1 + number % 3,
            "amount_cents": 1250 + 100 * (number % 7),
            "card": "4242-4242-4242-4242",
            "email": f"customer{number}@example.com",
            "traffic": True,
        }
        for number in range(first, first + count)
    ]


def narrate(order: dict[str, Any], message: str, *args: object) -> None:
    """Log a step of an order's story; background orders stay quiet (DEBUG)."""
    log.log(logging.DEBUG if order.get("traffic") else logging.INFO, message, *args)


async def place_orders(bus: EventBus, orders: list[dict[str, Any]]) -> None:
    """The order service's entry point: each order starts a flow keyed by its order id."""
    for order in orders:
        event = await bus.publish("order_placed", order, business_key=order["order_id"])
        token = attach(with_event(event))  # the line belongs to the order's flow: its log record says so
        try:
            narrate(order, "[order] placed %s", order["order_id"])
        finally:
            detach(token)


async def place_traffic(bus: EventBus, orders: list[dict[str, Any]], rate: float, start: float) -> None:
    """Place ``orders`` at a steady ``rate`` per second, from ``start`` (epoch seconds) on."""
    for index, order in enumerate(orders):
        delay = start + index / rate - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await place_orders(bus, [order])


# -- the services ------------------------------------------------------------------------


def order_service(svc: Service, incidents: Incidents) -> None:
    @svc.handles("stock_reserved")
    async def confirm(delivery: Delivery) -> None:
        narrate(delivery.payload, "[order] %s confirmed", delivery.event.business_key)

    @svc.handles("payment_declined")
    async def cancel(delivery: Delivery) -> None:
        log.info("[order] %s cancelled: payment declined", delivery.event.business_key)


def payment_service(svc: Service, incidents: Incidents) -> None:
    def gateway_times_out(order: dict[str, Any], attempt: int) -> bool:
        if incidents.active("gateway down"):
            return attempt < RETRY.max_attempts
        number = int(order["order_id"].rsplit("-", 1)[1])
        return incidents.active("gateway degraded") and attempt == 1 and number % 3 == 0

    @svc.handles("order_placed")
    async def charge(delivery: Delivery) -> None:
        order = delivery.payload
        with tracer.start_as_current_span("charge card") as span:
            span.set_attribute("payment.amount_cents", order["amount_cents"])
            await asyncio.sleep(WORK_S)
            if gateway_times_out(order, delivery.attempt):
                raise GatewayTimeout(f"the card gateway did not answer for {order['order_id']}")
            approved = order["card"] != DECLINED_CARD
        if not approved:
            await delivery.emit("payment_declined", {"email": order["email"], "reason": "card declined"})
            raise PaymentDeclined(f"card declined for {order['order_id']}")
        await delivery.emit("payment_authorized", order)
        narrate(order, "[payment] %s charged %d cents", order["order_id"], order["amount_cents"])


def inventory_service(svc: Service, incidents: Incidents) -> None:
    @svc.handles("payment_authorized")
    async def reserve(delivery: Delivery) -> None:
        order = delivery.payload
        with tracer.start_as_current_span("reserve stock") as span:
            span.set_attribute("inventory.sku", order["sku"])
            await asyncio.sleep(SLOW_WORK_S if incidents.active("latency spike") else WORK_S)
            if order["sku"] == FLAKY_SKU and delivery.attempt == 1:
                raise WarehouseTimeout(f"warehouse did not answer for {order['sku']}")
        await delivery.emit("stock_reserved", order)
        narrate(order, "[inventory] %s reserved (attempt %d)", order["order_id"], delivery.attempt)


def notification_service(svc: Service, incidents: Incidents) -> None:
    async def send_mail(order: dict[str, Any], text: str) -> None:
        with tracer.start_as_current_span("send email"):
            await asyncio.sleep(WORK_S)
            if order["email"].endswith(BOUNCING_DOMAIN):
                raise MailboxUnavailable("the mail server refused the message")
        narrate(order, "[notification] mail to %s: %s", order["email"], text)

    @svc.handles("stock_reserved")
    async def shipped(delivery: Delivery) -> None:
        await send_mail(delivery.payload, f"{delivery.event.business_key} is on its way")

    @svc.handles("payment_declined")
    async def declined(delivery: Delivery) -> None:
        await send_mail(delivery.payload, f"{delivery.event.business_key}: your payment was declined")


#: Service name -> the function that declares its handlers (given the incidents to suffer).
SERVICES: Final[dict[str, Callable[[Service, Incidents], None]]] = {
    "order": order_service,
    "payment": payment_service,
    "inventory": inventory_service,
    "notification": notification_service,
}
