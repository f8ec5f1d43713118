"""``LinkAwareSampler``: a consumer span that starts a new trace follows its producer.

In link mode a consumer ``process`` span has no parent, only a link to the producer span.
A parent-based sampler would then roll the dice again for the new trace, and a flow
sampled at its root would lose its consumers. This sampler decides a parentless span
that has links by the links: sampled if any linked span was sampled, dropped otherwise.
Every other span is decided by the wrapped sampler (by default the SDK's
``OTEL_TRACES_SAMPLER`` choice).
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, get_current_span
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

__all__ = ["LinkAwareSampler"]


class LinkAwareSampler(Sampler):
    def __init__(self, delegate: Sampler) -> None:
        self._delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if links and not get_current_span(parent_context).get_span_context().is_valid:
            sampled = any(link.context.trace_flags.sampled for link in links)
            return SamplingResult(
                Decision.RECORD_AND_SAMPLE if sampled else Decision.DROP,
                attributes if sampled else None,
                None,
            )
        return self._delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"LinkAwareSampler{{{self._delegate.get_description()}}}"
