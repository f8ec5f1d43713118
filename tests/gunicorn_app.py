"""A small WSGI app that publishes events, for the pre-fork server test (test_fork_safety).

``configure()`` runs in gunicorn's master: started with ``--preload``, gunicorn imports this
module once, before it forks the workers (the pattern the README documents). Each request
publishes an ``order_placed`` event on an embedded bus, handled by one subscriber, inside a
span that names the worker's pid; the reply is that pid.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import trace

import otel_eda
from otel_eda import Delivery, EventBus

otel_eda.configure()
_tracer = trace.get_tracer("gunicorn-app")


async def _publish() -> None:
    async with EventBus() as bus:

        async def handle(delivery: Delivery) -> None:
            await asyncio.sleep(0)

        bus.subscribe("order_placed", handle, subscriber="billing")
        await bus.publish("order_placed", {"at": time.time()}, business_key=f"order-{os.getpid()}")
        await bus.join()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    with _tracer.start_as_current_span("request", attributes={"test.worker_pid": os.getpid()}):
        asyncio.run(_publish())
        time.sleep(0.2)  # concurrent requests then reach different workers
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
