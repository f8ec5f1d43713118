"""``zipkin_eda``: the Zipkin JSON v2 exporter, plus the remote service Zipkin's graph needs.

Zipkin draws a messaging edge of its dependency graph only for PRODUCER and CONSUMER spans
that name a remote service (``remoteEndpoint.serviceName``); OpenTelemetry's zipkin-json
exporter never writes one, so on that route Zipkin shows no graph at all. This exporter is
that exporter with one change: a PRODUCER, CONSUMER or CLIENT span gets a
``remoteEndpoint``: its ``peer.service`` when it has one (as the OpenTelemetry Collector's
Zipkin translator does), else, for a messaging span, its ``messaging.system`` (the bus or
broker; otel-eda does not set ``peer.service``, which names a remote *service*).

Select it with ``OTEL_TRACES_EXPORTER=zipkin_eda`` (it needs otel-eda[zipkin]); it reads
the same ``OTEL_EXPORTER_ZIPKIN_*`` variables.

>>> import json
>>> from opentelemetry.exporter.zipkin.node_endpoint import NodeEndpoint
>>> from opentelemetry.sdk.trace import TracerProvider
>>> from opentelemetry.trace import SpanKind
>>> span = TracerProvider().get_tracer("doc").start_span(
...     "send order_placed", kind=SpanKind.PRODUCER, attributes={"messaging.system": "otel_eda"})
>>> span.end()
>>> json.loads(RemoteEndpointJsonV2Encoder().serialize([span], NodeEndpoint()))[0]["remoteEndpoint"]
{'serviceName': 'otel_eda'}
"""

from __future__ import annotations

from typing import Any

from opentelemetry.exporter.zipkin.encoder import Protocol
from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.exporter.zipkin.json.v2 import JsonV2Encoder
from opentelemetry.trace import Span, SpanKind

from otel_eda import otel_internals, semconv

__all__ = ["RemoteEndpointJsonV2Encoder", "ZipkinRemoteEndpointExporter"]

_REMOTE_KINDS = frozenset((SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.CLIENT))


class RemoteEndpointJsonV2Encoder(JsonV2Encoder):
    """Zipkin JSON v2, with a remote endpoint for messaging and client spans
    (``peer.service``, else ``messaging.system``)."""

    # overrides the encoder's private per-span hook: see otel_internals.encode_zipkin_v2_span
    def _encode_span(self, span: Span, encoded_local_endpoint: Any) -> dict[str, Any]:
        encoded = otel_internals.encode_zipkin_v2_span(self, span, encoded_local_endpoint)
        if span.kind in _REMOTE_KINDS:  # type: ignore[attr-defined]
            attributes = span.attributes or {}  # type: ignore[attr-defined]
            peer = attributes.get(semconv.PEER_SERVICE) or attributes.get(semconv.MESSAGING_SYSTEM)
            if isinstance(peer, str) and peer:
                encoded["remoteEndpoint"] = {"serviceName": peer}
        return encoded


class ZipkinRemoteEndpointExporter(ZipkinExporter):
    """OpenTelemetry's Zipkin JSON exporter (v2 protocol) with :class:`RemoteEndpointJsonV2Encoder`."""

    def __init__(self, version: Protocol = Protocol.V2, *args: Any, **kwargs: Any) -> None:
        if version != Protocol.V2:
            raise ValueError("zipkin_eda writes Zipkin's JSON v2 (remoteEndpoint does not exist in v1)")
        super().__init__(version, *args, **kwargs)
        self.encoder = RemoteEndpointJsonV2Encoder(self.encoder.max_tag_value_length)  # type: ignore[assignment]
