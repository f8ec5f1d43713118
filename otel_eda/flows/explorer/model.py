"""What the explorer rebuilds: a :class:`Flow` of :class:`FlowEvent` values, each handled
by subscribers (:class:`Handling`) in one or more attempts (:class:`HandlingAttempt`).

The shape mirrors the lifecycle records (``otel_eda.flows.store``): the same events, the
same causation edges, one handling per subscriber with its status and attempt count, so a
flow rebuilt from spans can be compared with the flow the records give.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Final

from otel_eda.flows.explorer.spans import SpanData

__all__ = ["Flow", "FlowEvent", "Handling", "HandlingAttempt", "Outcome"]


class Outcome(enum.StrEnum):
    """How a handling attempt, or a whole handling, ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    RETRIED = "retried"  # this attempt failed; another one follows
    DEAD_LETTERED = "dead_lettered"
    REJECTED = "rejected"
    #: the span says nothing about how it ended (no outcome attribute, no lifecycle event)
    UNKNOWN = "unknown"


#: The worst first: a flow's status is its worst handling's.
SEVERITY: Final = (
    Outcome.DEAD_LETTERED,
    Outcome.FAILED,
    Outcome.REJECTED,
    Outcome.RETRIED,
    Outcome.UNKNOWN,
    Outcome.COMPLETED,
)


@dataclasses.dataclass(slots=True)
class HandlingAttempt:
    """One CONSUMER ``process`` span: one attempt at handling one event."""

    attempt: int
    outcome: Outcome
    span: SpanData
    #: seconds the handler ran (the lifecycle event's, else the span's duration)
    duration_s: float
    #: seconds the message waited before this attempt (queued, or backing off)
    queue_s: float | None
    error_type: str | None
    #: spans that are not messaging spans (HTTP, DB, the handler's own), made during it
    foreign: list[SpanData] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class Handling:
    """One subscriber's handling of one event, over all its attempts."""

    subscriber: str
    service: str
    attempts: list[HandlingAttempt] = dataclasses.field(default_factory=list)

    @property
    def status(self) -> Outcome:
        return self.attempts[-1].outcome if self.attempts else Outcome.UNKNOWN

    @property
    def attempt_count(self) -> int:
        """The highest attempt number seen (what the lifecycle records count)."""
        return max((a.attempt for a in self.attempts), default=0)

    @property
    def retries(self) -> int:
        return sum(1 for a in self.attempts if a.outcome is Outcome.RETRIED)

    @property
    def replays(self) -> int:
        """Attempts whose number was seen before: the event was delivered again (a replay)."""
        return len(self.attempts) - len({a.attempt for a in self.attempts})

    @property
    def missing_attempts(self) -> list[int]:
        """Attempt numbers with no span: a hole below the highest one, or the attempt
        that must follow a last attempt that says ``retried``."""
        seen = {a.attempt for a in self.attempts}
        top = max(seen, default=0)
        missing = [n for n in range(1, top) if n not in seen]
        if self.attempts and self.attempts[-1].outcome is Outcome.RETRIED:
            missing.append(top + 1)
        return missing

    @property
    def error_type(self) -> str | None:
        for attempt in reversed(self.attempts):
            if attempt.error_type:
                return attempt.error_type
        return None

    @property
    def queue_s(self) -> float | None:
        """Time in queue before the first attempt."""
        return self.attempts[0].queue_s if self.attempts else None

    @property
    def duration_s(self) -> float | None:
        """How long the last attempt ran."""
        return self.attempts[-1].duration_s if self.attempts else None

    @property
    def end_ns(self) -> int:
        return max((a.span.end_ns for a in self.attempts), default=0)


@dataclasses.dataclass(slots=True)
class FlowEvent:
    """One event of a flow, as its spans tell it."""

    event_id: str
    correlation_id: str
    causation_id: str | None
    event_type: str
    business_key: str | None
    destination: str | None
    #: the service that published it (``None`` when its publish span is missing)
    publisher: str | None
    #: PRODUCER spans of this event (more than one: it was published again)
    publishes: list[SpanData] = dataclasses.field(default_factory=list)
    handlings: dict[str, Handling] = dataclasses.field(default_factory=dict)
    #: (event id, subscriber) of the handling whose span the publish span descends from
    emitted_by: tuple[str, str] | None = None
    #: spans that are not messaging spans, made around its publish outside any handling
    foreign: list[SpanData] = dataclasses.field(default_factory=list)

    @property
    def published_ns(self) -> int:
        if self.publishes:
            return self.publishes[0].start_ns
        return min((a.span.start_ns for h in self.handlings.values() for a in h.attempts), default=0)

    @property
    def missing_publish(self) -> bool:
        return not self.publishes

    @property
    def status(self) -> str:
        """The event's status as the lifecycle store words it: the worst final handling,
        ``completed`` when every handling completed, else ``in_progress``; ``published``
        when no handling was seen."""
        states = [h.status for h in self.handlings.values()]
        if not states:
            return "published"
        for worst in (Outcome.DEAD_LETTERED, Outcome.FAILED, Outcome.REJECTED):
            if worst in states:
                return worst.value
        if all(s is Outcome.COMPLETED for s in states):
            return Outcome.COMPLETED.value
        return "in_progress"


@dataclasses.dataclass(slots=True)
class Flow:
    """Every event of one correlation id, with its causation, handlings and gaps."""

    correlation_id: str
    #: oldest first
    events: list[FlowEvent]
    #: causation ids named by some event of the flow but never seen: sampled out or lost
    missing_events: list[str]
    #: spans of the flow that belong to no event (nothing to hang them under)
    stray: list[SpanData]
    start_ns: int
    end_ns: int
    _by_id: dict[str, FlowEvent] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_id = {e.event_id: e for e in self.events}

    def event(self, event_id: str) -> FlowEvent | None:
        return self._by_id.get(event_id)

    @property
    def business_keys(self) -> list[str]:
        return sorted({e.business_key for e in self.events if e.business_key})

    @property
    def services(self) -> list[str]:
        names = {e.publisher for e in self.events if e.publisher}
        names.update(h.service for e in self.events for h in e.handlings.values())
        return sorted(names)

    @property
    def wall_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9

    @property
    def status(self) -> Outcome:
        states = {h.status for e in self.events for h in e.handlings.values()}
        return next((s for s in SEVERITY if s in states), Outcome.COMPLETED)

    @property
    def gaps(self) -> int:
        """Missing spans: unseen causes, publishes and attempts."""
        return (
            len(self.missing_events)
            + sum(1 for e in self.events if e.missing_publish)
            + sum(len(h.missing_attempts) for e in self.events for h in e.handlings.values())
        )

    def children(self, event_id: str | None) -> list[FlowEvent]:
        return [e for e in self.events if e.causation_id == event_id]

    def critical_path(self) -> list[tuple[FlowEvent, Handling | None]]:
        """The chain of causes of the handling that ended last, root first: each step is an
        event and the handling of it that led on (``None`` for the last event when no
        handling of it was seen)."""
        last: tuple[int, FlowEvent, Handling | None] | None = None
        for event in self.events:
            candidates: list[tuple[int, Handling | None]] = [(h.end_ns, h) for h in event.handlings.values()]
            if not candidates:
                candidates = [(max((s.end_ns for s in event.publishes), default=0), None)]
            for end_ns, handling in candidates:
                if last is None or end_ns > last[0]:
                    last = (end_ns, event, handling)
        if last is None:
            return []
        path: list[tuple[FlowEvent, Handling | None]] = [(last[1], last[2])]
        seen = {last[1].event_id}
        current = last[1]
        while current.causation_id is not None:
            cause = self._by_id.get(current.causation_id)
            if cause is None or cause.event_id in seen:
                break
            seen.add(cause.event_id)
            subscriber = current.emitted_by[1] if current.emitted_by else None
            path.append((cause, cause.handlings.get(subscriber) if subscriber else None))
            current = cause
        path.reverse()
        return path
