"""The causation explorer: "what happened to order 123?" across services, after the fact,
from Zipkin, Jaeger or files (the ``otel-eda flow`` command).

* :mod:`~otel_eda.flows.explorer.spans`: :class:`SpanData`, one span from any source;
* :mod:`~otel_eda.flows.explorer.decoding`: Zipkin JSON v2, OTLP JSON and the SDK's
  console output into :class:`SpanData`;
* :mod:`~otel_eda.flows.explorer.backends`, :mod:`~otel_eda.flows.explorer.files`: the
  sources (:class:`ZipkinSource`, :class:`JaegerSource`, :class:`FileSource`);
* :mod:`~otel_eda.flows.explorer.stitching`: :func:`build_flows`, spans into flows;
* :mod:`~otel_eda.flows.explorer.query`: :func:`find_flows` for a correlation id, a
  business key or an event id;
* :mod:`~otel_eda.flows.explorer.render`: trees, summary lines and JSON.
"""

from otel_eda.flows.explorer.backends import JaegerSource, ZipkinSource
from otel_eda.flows.explorer.files import FileSource
from otel_eda.flows.explorer.model import Flow, FlowEvent, Handling, HandlingAttempt, Outcome
from otel_eda.flows.explorer.query import FlowQuery, find_flows
from otel_eda.flows.explorer.render import DEFAULT_LIMIT, flow_json, flow_tree, render_plain, summary_line
from otel_eda.flows.explorer.source import SourceError, SpanSource
from otel_eda.flows.explorer.spans import SpanData
from otel_eda.flows.explorer.stitching import build_flows

__all__ = [
    "DEFAULT_LIMIT",
    "FileSource",
    "Flow",
    "FlowEvent",
    "FlowQuery",
    "Handling",
    "HandlingAttempt",
    "JaegerSource",
    "Outcome",
    "SourceError",
    "SpanData",
    "SpanSource",
    "ZipkinSource",
    "build_flows",
    "find_flows",
    "flow_json",
    "flow_tree",
    "render_plain",
    "summary_line",
]
