"""Answering "what happened to ...?": :func:`find_flows` for a correlation id, a business
key or an event id, from any :class:`~otel_eda.flows.explorer.source.SpanSource`."""

from __future__ import annotations

import dataclasses

from otel_eda import semconv
from otel_eda.flows.explorer.model import Flow
from otel_eda.flows.explorer.source import SpanSource
from otel_eda.flows.explorer.spans import SpanData
from otel_eda.flows.explorer.stitching import build_flows, restrict_to_event

__all__ = ["FlowQuery", "find_flows"]


@dataclasses.dataclass(frozen=True)
class FlowQuery:
    """One of: a correlation id (the flow), a business key (every flow it appears in), or
    an event id (its chain of causes up to the root, and everything it caused)."""

    correlation_id: str | None = None
    business_key: str | None = None
    event_id: str | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.correlation_id, self.business_key, self.event_id) if v is not None]
        if len(given) != 1 or not given[0]:
            raise ValueError("give exactly one of correlation_id, business_key, event_id")

    def __str__(self) -> str:
        if self.correlation_id is not None:
            return f"correlation id {self.correlation_id}"
        if self.business_key is not None:
            return f"business key {self.business_key}"
        return f"event {self.event_id}"


def _correlation_ids(spans: list[SpanData], attribute: str, value: str) -> list[str]:
    found: dict[str, int] = {}
    for span in spans:
        if span.text(attribute) == value:
            correlation_id = span.text(semconv.EDA_CORRELATION_ID) or span.text(
                semconv.MESSAGING_MESSAGE_CONVERSATION_ID
            )
            if correlation_id is not None:
                found[correlation_id] = min(found.get(correlation_id, span.start_ns), span.start_ns)
    return sorted(found, key=lambda c: (found[c], c))


def _flow(source: SpanSource, correlation_id: str) -> Flow | None:
    spans = source.traces_with(semconv.EDA_CORRELATION_ID, correlation_id)
    return build_flows(spans).get(correlation_id)


def find_flows(source: SpanSource, query: FlowQuery) -> list[Flow]:
    """The flows that answer ``query``, oldest first (empty when none is found).

    Raises :class:`~otel_eda.flows.explorer.source.SourceError` when the source cannot answer.
    """
    if query.correlation_id is not None:
        flow = _flow(source, query.correlation_id)
        return [flow] if flow is not None else []
    if query.business_key is not None:
        attribute, value = semconv.EDA_BUSINESS_KEY, query.business_key
    else:
        attribute, value = semconv.MESSAGING_MESSAGE_ID, str(query.event_id)
    flows = []
    for correlation_id in _correlation_ids(source.traces_with(attribute, value), attribute, value):
        flow = _flow(source, correlation_id)
        if flow is None:
            continue
        if query.event_id is not None:
            flow = restrict_to_event(flow, query.event_id)
            if flow is None:
                continue
        flows.append(flow)
    return flows
