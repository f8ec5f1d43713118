"""The truth of a demo run, and the explorer's account of it, in one comparable shape
(importable by the test modules, like ``otel_servers.py``).

A flow is compared as ``{event id: (causation id, event type, {(subscriber, status, attempts)})}``:
the same events, the same causation edges, the same statuses and attempt counts.
"""

from __future__ import annotations

from typing import Any

from otel_eda.flows.explorer import Flow

Shape = dict[str, tuple[str | None, str, frozenset[tuple[str, str, int]]]]


def recorded_flows(summary: dict[str, Any]) -> dict[str, Shape]:
    """The flows of the story orders as the lifecycle records give them (the demo's ``--json``),
    by business key."""
    story = set(summary["orders"])
    flows: dict[str, Shape] = {}
    for event in summary["events"]:
        key = event["business_key"]
        if key not in story:
            continue
        flows.setdefault(key, {})[event["event_id"]] = (
            event["causation_id"],
            event["event_type"],
            frozenset((d["subscriber"], d["status"], d["attempts"]) for d in event["deliveries"]),
        )
    return flows


def explored_flow(flow: Flow) -> Shape:
    """The same shape from a flow the explorer rebuilt from spans."""
    return {
        event.event_id: (
            event.causation_id,
            event.event_type,
            frozenset((h.subscriber, h.status.value, h.attempt_count) for h in event.handlings.values()),
        )
        for event in flow.events
    }
