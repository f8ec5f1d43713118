"""Lifecycle records: what the bus and service API write at each step of an event's life.

Records are made by the code that moves events, not derived from spans, so they stay
exact when traces are sampled. A record is a small, picklable value carrying the whole
identity of its event, so records from several processes can be merged into one store.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Protocol

__all__ = ["LifecycleRecord", "Recorder", "Stage"]


class Stage(enum.StrEnum):
    """One step of an event's life."""

    PUBLISHED = "published"
    UNROUTED = "unrouted"  # published, but no subscriber existed
    DROPPED = "dropped"  # a subscriber's queue stayed full past the publish timeout
    RECEIVED = "received"  # delivered to a consumer (once per delivery)
    COMPLETED = "completed"
    FAILED = "failed"  # final: the handler failed and nothing follows (no retry, no dead letter)
    REJECTED = "rejected"  # final: the handler refused the event (raised Rejected)
    RETRIED = "retried"  # one attempt failed; another follows
    DEAD_LETTERED = "dead_lettered"  # final: every attempt failed
    KEYED = "keyed"  # a handler attached a business key


FINAL_STAGES = frozenset({Stage.COMPLETED, Stage.FAILED, Stage.REJECTED, Stage.DEAD_LETTERED, Stage.DROPPED})


class LifecycleRecord(NamedTuple):
    """One step of one event's life, as written by the bus (an immutable tuple: cheap to
    build on the hot path, picklable across processes)."""

    stage: Stage
    time_ns: int
    event_id: str
    correlation_id: str
    causation_id: str | None
    event_type: str
    service: str
    business_key: str | None = None
    #: the subscriber (consumer group) for delivery stages; ``None`` for publish stages
    subscriber: str | None = None
    attempt: int = 0
    #: seconds spent in the stage this record closes (processing time for completed/failed)
    duration_s: float | None = None
    error_type: str | None = None
    created_ns: int = 0
    #: trace and span id of the span of this step (0 when there is none)
    trace_id: int = 0
    span_id: int = 0
    #: the exception's message for a failed step, as otel-eda may write it (bounded)
    error_message: str | None = None


class Recorder(Protocol):
    """Anything that takes lifecycle records: a store, a forwarder to another process."""

    def record(self, record: LifecycleRecord) -> None: ...
