"""Showing flows: a tree per flow (plain text, or coloured with ``rich`` on a terminal),
a summary line, and a JSON form for scripts.

Each event is a node, each of its handlings (one per subscriber) a node under it, and
under a handling the events it emitted and the other spans (HTTP, DB, ...) it made. A
flow of more than ``limit`` events shows its first ``limit`` (depth first, oldest first)
and says how many it left out; ``limit=0`` shows them all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Final, TextIO

from otel_eda.flows.explorer.model import Flow, FlowEvent, Handling, Outcome
from otel_eda.flows.explorer.spans import SpanData

__all__ = ["DEFAULT_LIMIT", "Node", "flow_json", "flow_tree", "render_plain", "render_rich", "summary_line"]

#: Events shown per flow unless asked otherwise (``--limit``).
DEFAULT_LIMIT: Final = 200
#: Foreign spans listed under one handling attempt; more are counted.
FOREIGN_SHOWN: Final = 8

_STATUS_STYLE: Final = {
    Outcome.COMPLETED: "green",
    Outcome.FAILED: "bold red",
    Outcome.REJECTED: "magenta",
    Outcome.DEAD_LETTERED: "bold red",
    Outcome.RETRIED: "yellow",
    Outcome.UNKNOWN: "dim",
}
_GAP: Final = "bold yellow"
#: the multiplication sign of "retried x2"
TIMES: Final = "\u00d7"

Segment = tuple[str, str]  # (text, rich style; "" for none)


@dataclasses.dataclass(slots=True)
class Node:
    segments: list[Segment]
    children: list[Node] = dataclasses.field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.segments)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def short_error(error_type: str) -> str:
    return error_type.rsplit(".", 1)[-1]


def status_words(handling: Handling) -> str:
    words = handling.status.value.replace("_", "-")
    retries = handling.retries
    if handling.status is Outcome.RETRIED:
        return f"retried {TIMES}{retries}"
    if retries:
        words += f" (retried {TIMES}{retries})"
    return words


def _handling_node(handling: Handling) -> Node:
    segments: list[Segment] = [(handling.subscriber, "bold")]
    if handling.service != handling.subscriber:
        segments.append((f" ({handling.service})", "dim"))
    segments.append((f" {status_words(handling)}", _STATUS_STYLE[handling.status]))
    segments.append((f"  {duration(handling.duration_s)}", ""))
    if handling.queue_s is not None:
        segments.append((f"  queue {duration(handling.queue_s)}", "dim"))
    if handling.error_type:
        segments.append((f"  {short_error(handling.error_type)}", "red"))
    if handling.replays:
        segments.append((f"  replayed {TIMES}{handling.replays}", "yellow"))
    for number in handling.missing_attempts:
        segments.append((f"  ⋯ attempt {number} missing", _GAP))
    node = Node(segments)
    several = len(handling.attempts) > 1
    for attempt in handling.attempts:
        shown = attempt.foreign[:FOREIGN_SHOWN]
        for span in shown:
            node.children.append(_span_node(span, f"attempt {attempt.attempt}: " if several else ""))
        if len(attempt.foreign) > len(shown):
            node.children.append(Node([(f"· {len(attempt.foreign) - len(shown)} more spans", "dim")]))
    return node


def _span_node(span: SpanData, prefix: str = "") -> Node:
    segments: list[Segment] = [(f"· {prefix}{span.name}", "dim"), (f"  {duration(span.duration_s)}", "dim")]
    if span.error:
        segments.append(("  error", "red"))
    return Node(segments)


def _event_node(event: FlowEvent) -> Node:
    segments: list[Segment] = [(event.event_type, "bold cyan")]
    if event.publisher:
        segments.append((f" from {event.publisher}", ""))
    else:
        segments.append(("  ⋯ publish span missing", _GAP))
    if event.business_key:
        segments.append((f"  key {event.business_key}", "dim"))
    segments.append((f"  event {event.event_id}", "dim"))
    if len(event.publishes) > 1:
        segments.append((f"  published {TIMES}{len(event.publishes)}", "yellow"))
    if not event.handlings:
        segments.append(("  no handling seen", "yellow"))
    node = Node(segments)
    for span in event.foreign[:FOREIGN_SHOWN]:
        node.children.append(_span_node(span))
    return node


def flow_tree(flow: Flow, limit: int = DEFAULT_LIMIT) -> Node:
    """The tree of ``flow``: its header, its events under their causes, its gaps."""
    keys = ", ".join(flow.business_keys)
    header: list[Segment] = []
    if keys:
        header.append((f"{keys}  ", "bold"))
    header.append((f"correlation id {flow.correlation_id}", ""))
    header.append((f"  [{flow.status.value.replace('_', '-')}]", _STATUS_STYLE[flow.status]))
    root = Node(header)

    ids = {e.event_id for e in flow.events}
    children: dict[str | None, list[FlowEvent]] = {}
    for event in flow.events:  # oldest first
        cause = event.causation_id if event.causation_id in ids or event.causation_id in flow.missing_events else None
        children.setdefault(cause, []).append(event)

    shown = 0
    # (parent node, event id or missing cause id, is it a placeholder for a missing event)
    stack: list[tuple[Node, FlowEvent | str]] = []
    tops: list[FlowEvent | str] = [*children.get(None, ()), *flow.missing_events]
    tops.sort(key=lambda e: e.published_ns if isinstance(e, FlowEvent) else _first_child_ns(children, e))
    stack.extend((root, item) for item in reversed(tops))
    while stack:
        parent, item = stack.pop()
        if limit and shown >= limit:
            break
        if isinstance(item, str):
            node = Node([(f"⋯ event {item} missing (its spans were sampled out or lost)", _GAP)])
            parent.children.append(node)
            stack.extend((node, child) for child in reversed(children.get(item, ())))
            continue
        shown += 1
        node = _event_node(item)
        parent.children.append(node)
        by_handling = {name: _handling_node(h) for name, h in item.handlings.items()}
        node.children.extend(by_handling.values())
        later: list[tuple[Node, FlowEvent | str]] = []
        for child in children.get(item.event_id, ()):
            owner = child.emitted_by[1] if child.emitted_by and child.emitted_by[0] == item.event_id else None
            later.append((by_handling.get(owner, node) if owner else node, child))
        stack.extend(reversed(later))
    left = len(flow.events) - shown
    if left > 0:
        root.children.append(
            Node([(f"… {left} more events not shown (limit {limit}): --limit 0 shows all, --json gives all", _GAP)])
        )
    if flow.stray:
        names = ", ".join(sorted({s.name for s in flow.stray})[:5])
        root.children.append(Node([(f"· {len(flow.stray)} spans outside any handling ({names})", "dim")]))
    return root


def _first_child_ns(children: dict[str | None, list[FlowEvent]], missing: str) -> int:
    return min((e.published_ns for e in children.get(missing, ())), default=0)


def summary_line(flow: Flow) -> str:
    services = flow.services
    parts = [
        f"{len(flow.events)} events",
        f"{len(services)} services ({', '.join(services)})",
        f"wall {duration(flow.wall_s)}",
    ]
    path = flow.critical_path()
    if path:
        steps = []
        for event, handling in path:
            steps.append(f"{event.event_type}@{handling.subscriber}" if handling else event.event_type)
        last_end = max([path[-1][1].end_ns] if path[-1][1] else [s.end_ns for s in path[-1][0].publishes] or [0])
        parts.append(f"critical path {' → '.join(steps)} ({duration(max(0, last_end - flow.start_ns) / 1e9)})")
    gaps = flow.gaps
    if gaps:
        parts.append(f"{gaps} gap{'s' if gaps != 1 else ''} (missing spans)")
    return ", ".join(parts)


# -- output --------------------------------------------------------------------------------------


def _walk(node: Node) -> Iterator[tuple[str, Node]]:
    """(guide prefix, node) for every node, depth first, iteratively (deep flows)."""
    yield "", node
    stack: list[tuple[Node, str, bool]] = [(c, "", i == len(node.children) - 1) for i, c in enumerate(node.children)]
    stack.reverse()
    while stack:
        current, prefix, last = stack.pop()
        yield f"{prefix}{'└── ' if last else '├── '}", current
        inner = prefix + ("    " if last else "│   ")
        count = len(current.children)
        stack.extend((c, inner, i == count - 1) for i, c in reversed(list(enumerate(current.children))))


def _lines(node: Node) -> Iterator[str]:
    """Plain text: the tree drawn with box-drawing characters."""
    for guide, current in _walk(node):
        yield guide + current.text


def _depth(node: Node) -> int:
    deepest, stack = 0, [(node, 0)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in current.children)
    return deepest


def render_plain(trees: list[tuple[Node, str]], out: TextIO) -> None:
    """Write each (tree, summary line) as plain text."""
    for index, (tree, summary) in enumerate(trees):
        if index:
            out.write("\n")
        out.write("\n".join(_lines(tree)))
        out.write(f"\n{summary}\n")


#: Deeper trees are drawn line by line (still coloured): rich's tree indents every level
#: by four columns and wraps, which a long causation chain turns into noise.
RICH_TREE_MAX_DEPTH: Final = 24


def render_rich(trees: list[tuple[Node, str]], out: TextIO) -> None:
    """Write each (tree, summary line) with rich: colour and tree guides on a terminal."""
    from rich.console import Console
    from rich.text import Text
    from rich.tree import Tree

    console = Console(file=out, highlight=False)
    for index, (node, summary) in enumerate(trees):
        if index:
            console.print()
        if _depth(node) <= RICH_TREE_MAX_DEPTH:
            tree = Tree(Text.assemble(*node.segments))
            stack = [(tree, child) for child in reversed(node.children)]
            while stack:
                parent, current = stack.pop()
                branch = parent.add(Text.assemble(*current.segments))
                stack.extend((branch, child) for child in reversed(current.children))
            console.print(tree)
        else:
            for guide, current in _walk(node):
                console.print(Text.assemble((guide, "dim"), *current.segments), soft_wrap=True)
        console.print(Text(summary, style="bold"))


# -- JSON ------------------------------------------------------------------------------------------


def _span_json(span: SpanData) -> dict[str, Any]:
    return {
        "name": span.name,
        "service": span.service,
        "kind": span.kind.value,
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "start_ns": span.start_ns,
        "duration_s": span.duration_s,
        "error": span.error,
    }


def _handling_json(handling: Handling) -> dict[str, Any]:
    return {
        "subscriber": handling.subscriber,
        "service": handling.service,
        "status": handling.status.value,
        "attempts": handling.attempt_count,
        "retries": handling.retries,
        "replays": handling.replays,
        "missing_attempts": handling.missing_attempts,
        "queue_s": handling.queue_s,
        "duration_s": handling.duration_s,
        "error_type": handling.error_type,
        "attempt_spans": [
            {
                "attempt": a.attempt,
                "outcome": a.outcome.value,
                "trace_id": a.span.trace_id,
                "span_id": a.span.span_id,
                "start_ns": a.span.start_ns,
                "duration_s": a.duration_s,
                "queue_s": a.queue_s,
                "error_type": a.error_type,
                "error_message": a.span.status_message,
                "spans": [_span_json(s) for s in a.foreign],
            }
            for a in handling.attempts
        ],
    }


def flow_json(flow: Flow) -> dict[str, Any]:
    """Everything the explorer knows of ``flow``, as plain JSON values (no limit applies)."""
    return {
        "correlation_id": flow.correlation_id,
        "business_keys": flow.business_keys,
        "status": flow.status.value,
        "services": flow.services,
        "start_ns": flow.start_ns,
        "wall_s": flow.wall_s,
        "gaps": flow.gaps,
        "missing_events": flow.missing_events,
        "critical_path": [
            {"event_id": e.event_id, "event_type": e.event_type, "subscriber": h.subscriber if h else None}
            for e, h in flow.critical_path()
        ],
        "events": [
            {
                "event_id": e.event_id,
                "correlation_id": e.correlation_id,
                "causation_id": e.causation_id,
                "event_type": e.event_type,
                "business_key": e.business_key,
                "destination": e.destination,
                "publisher": e.publisher,
                "status": e.status,
                "published_ns": e.published_ns,
                "missing_publish": e.missing_publish,
                "publishes": len(e.publishes),
                "trace_id": e.publishes[0].trace_id if e.publishes else None,
                "span_id": e.publishes[0].span_id if e.publishes else None,
                "emitted_by": {"event_id": e.emitted_by[0], "subscriber": e.emitted_by[1]} if e.emitted_by else None,
                "handlings": [_handling_json(h) for h in e.handlings.values()],
                "spans": [_span_json(s) for s in e.foreign],
            }
            for e in flow.events
        ],
        "stray_spans": [_span_json(s) for s in flow.stray],
    }
