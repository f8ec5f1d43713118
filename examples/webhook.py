"""A transport of your own in about 60 lines: events as webhooks (JSON over HTTP POST).

``WebhookSender.publish`` POSTs an event to ``{url}/{event_type}``; ``WebhookReceiver``
serves those POSTs and calls the handler for the event type. ``otel_eda.messaging`` does
the rest: the PRODUCER and CONSUMER spans, the link, the ids in headers and baggage,
metadata, metrics, lifecycle records, CloudEvents (HTTP binding: a POST with only ``ce-*``
headers and a ``traceparent`` is handled with the CloudEvent's id and type). Run it with
``.venv/bin/python examples/webhook.py``; ``tests/test_transport_contract.py`` runs the
transport contract suite on it.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from otel_eda.identity import EventContext
from otel_eda.messaging import TEXT_SETTER, Binding, Messaging

Handler = Callable[[EventContext, Any], None]


class WebhookSender:
    def __init__(self, url: str, messaging: Messaging | None = None) -> None:
        self.url = url.rstrip("/")
        self.messaging = messaging or Messaging("webhook", binding=Binding.HTTP)

    def publish(self, event_type: str, payload: Any, *, metadata: Mapping[str, str] | None = None) -> EventContext:
        headers = {"content-type": "application/json"}
        with self.messaging.publish(event_type, headers, setter=TEXT_SETTER, metadata=metadata) as sent:
            body = json.dumps(payload).encode()
            request = urllib.request.Request(f"{self.url}/{event_type}", body, headers, method="POST")
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()  # a 4xx/5xx raises: recorded on the producer span, then re-raised
        return sent.event


class WebhookReceiver:
    def __init__(self, messaging: Messaging | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.messaging = messaging or Messaging("webhook", binding=Binding.HTTP)
        self.handlers: dict[str, Handler] = {}
        receiver = self

        class _Request(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(receiver.dispatch(self.path.strip("/"), dict(self.headers.items()), body))
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
                pass

        self.server = ThreadingHTTPServer((host, port), _Request)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def dispatch(self, event_type: str, headers: Mapping[str, Any], body: bytes) -> int:
        """Handle one POST: the HTTP status to answer."""
        handler = self.handlers.get(event_type)
        if handler is None:
            return 404
        headers = {name.lower(): value for name, value in headers.items()}  # HTTP names are case-insensitive
        try:
            with self.messaging.process(headers, destination=event_type) as handling:
                handler(handling.event, json.loads(body or b"null"))
        except Exception:
            return 500  # recorded as failed on the process span
        return 204

    def subscribe(self, event_type: str, handler: Handler) -> None:
        self.handlers[event_type] = handler

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    import otel_eda

    otel_eda.configure()
    with WebhookReceiver() as receiver:
        sender = WebhookSender(receiver.url)
        receiver.subscribe("order_placed", lambda event, payload: print("handled", event.event_type, payload))
        sender.publish("order_placed", {"order": 123}, metadata={"tenant": "acme"})
