"""Event identity: the immutable :class:`EventContext` and where it lives in an OTel Context.

An event has an id (UUIDv7), a correlation id (the business flow; a root event's
correlation id is its own id), a causation id (the id of the event whose handling emitted
it), a type, a creation time and an optional business key (an order number, say).

The current event is stored in the OpenTelemetry ``Context`` under an otel-eda key, so it
follows ``context.attach``, threads that copy the context, asyncio tasks and explicit
``context=`` arguments. :func:`flow_ids` is the one validated accessor through which the
span processor, the bus and the store read the ids of the flow a context belongs to.

>>> order = EventContext.root("order_placed", business_key="order-123")
>>> payment = order.child("payment_authorized")
>>> payment.correlation_id == order.event_id and payment.causation_id == order.event_id
True
>>> payment.business_key
'order-123'
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final, NamedTuple

from opentelemetry import baggage, trace
from opentelemetry.context import Context, create_key, get_current, get_value, set_value

from otel_eda import otel_internals, semconv
from otel_eda._selfmetrics import count_invalid
from otel_eda.identity.ids import next_event_id
from otel_eda.identity.validation import (
    MAX_METADATA_ENTRIES,
    id_problem,
    metadata_key_problem,
    metadata_value_problem,
    type_problem,
)

__all__ = [
    "BAGGAGE_CAUSATION_ID",
    "BAGGAGE_CORRELATION_ID",
    "EventContext",
    "FlowIds",
    "current_event",
    "flow_ids",
    "with_event",
]

#: W3C baggage key carrying the correlation id across processes.
BAGGAGE_CORRELATION_ID: Final = semconv.EDA_CORRELATION_ID
#: W3C baggage key carrying the causation id across processes.
BAGGAGE_CAUSATION_ID: Final = semconv.EDA_CAUSATION_ID


_EVENT_KEY: Final = create_key("otel_eda.event")
#: The context key of the current event (read it with :func:`current_event`; the span
#: processor reads the key directly on every span start).
EVENT_KEY: Final = _EVENT_KEY
# Set by the propagator's extract: what the otel-eda headers said (validated).
_INCOMING_KEY: Final = create_key("otel_eda.incoming")

_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})

#: The context keys of the baggage and of the current span, found through the public API
#: (the API keeps both names private). The hot path reads and writes these two entries of a
#: ``Context`` directly: one copy of the context instead of one per entry.
BAGGAGE_KEY: Final = next(iter(baggage.set_baggage("k", "v", Context())))
SPAN_KEY: Final = next(iter(trace.set_span_in_context(trace.INVALID_SPAN, Context())))
_BAGGAGE_KEY: Final = BAGGAGE_KEY


def _baggage_is_a_dict() -> bool:
    """Whether the API stores baggage as a plain dict (opentelemetry-api 1.x does); if not,
    :func:`with_event` goes through the baggage API."""
    try:
        ctx = baggage.set_baggage("b", "2", Context({BAGGAGE_KEY: {"a": "1"}}))
        return isinstance(ctx.get(BAGGAGE_KEY), dict) and dict(baggage.get_all(ctx)) == {"a": "1", "b": "2"}
    except Exception:
        return False


_DIRECT_BAGGAGE: Final = _baggage_is_a_dict()
#: the current context: the ContextVar's own get where the runtime context is the default one
_current: Final[Callable[[], Context]] = otel_internals.current_context_getter() or get_current
_EMPTY_DICT: Final[Mapping[str, str]] = {}


@dataclasses.dataclass(frozen=True, slots=True)
class EventContext:
    """The identity of one event. Immutable; build it with :meth:`root` or :meth:`child`.

    ``metadata`` is a small str→str mapping (at most 16 entries; keys of at most 64
    lower-case letters, digits, ``_ . -``; values of at most 256 printable characters)
    that travels with the event in ``eda-meta-<key>`` headers (never in baggage) and reaches
    the handler; only the keys listed in ``OTEL_EDA_METADATA_ATTRIBUTES`` go onto spans.

    Events pickle and deep-copy (records and dead letters cross process boundaries).
    """

    event_id: str
    correlation_id: str
    causation_id: str | None
    event_type: str
    created_ns: int
    business_key: str | None = None
    metadata: Mapping[str, str] = dataclasses.field(default_factory=lambda: _EMPTY, compare=False)

    def __post_init__(self) -> None:
        for name in ("event_id", "correlation_id"):
            problem = id_problem(getattr(self, name))
            if problem:
                raise ValueError(f"invalid {name}: {problem}")
        if self.causation_id is not None and id_problem(self.causation_id):
            raise ValueError(f"invalid causation_id: {id_problem(self.causation_id)}")
        problem = type_problem(self.event_type)
        if problem:
            raise ValueError(f"invalid event_type: {problem}")
        if self.business_key is not None and type_problem(self.business_key):
            raise ValueError(f"invalid business_key: {type_problem(self.business_key)}")
        if self.metadata is not _EMPTY:
            object.__setattr__(self, "metadata", _freeze_metadata(self.metadata) if self.metadata else _EMPTY)

    def __reduce__(self) -> tuple[type[EventContext], tuple[object, ...]]:
        # The frozen metadata (a MappingProxyType) does not pickle: rebuild from a dict.
        return (
            EventContext,
            (
                self.event_id,
                self.correlation_id,
                self.causation_id,
                self.event_type,
                self.created_ns,
                self.business_key,
                dict(self.metadata) if self.metadata else _EMPTY_DICT,
            ),
        )

    def __deepcopy__(self, memo: dict[int, object]) -> EventContext:
        return self  # immutable

    def __copy__(self) -> EventContext:
        return self

    @classmethod
    def root(
        cls,
        event_type: str,
        *,
        business_key: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> EventContext:
        """A new flow: the event is its own correlation id and has no cause."""
        event_id = next_event_id()
        return _made(cls, event_id, event_id, None, event_type, business_key, metadata)

    def child(
        self,
        event_type: str,
        *,
        business_key: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> EventContext:
        """An event caused by this one: same flow, causation id = this event's id.

        The business key is inherited unless a new one is given.
        """
        return _made(
            EventContext,
            next_event_id(),
            self.correlation_id,
            self.event_id,
            event_type,
            business_key if business_key is not None else self.business_key,
            metadata,
        )


#: event types and business keys already found valid (bounded): most processes use a few
_VALID_NAMES: Final[dict[str, None]] = {}
_MAX_VALID_NAMES: Final = 4096
_new_object = object.__new__


def _valid_name(value: object) -> bool:
    if value in _VALID_NAMES:  # only a str is ever stored
        return type(value) is str
    if type_problem(value) is not None:
        return False
    if len(_VALID_NAMES) < _MAX_VALID_NAMES:
        _VALID_NAMES[value] = None  # type: ignore[index]
    return True


def _made(
    cls: type[EventContext],
    event_id: str,
    correlation_id: str,
    causation_id: str | None,
    event_type: str,
    business_key: str | None,
    metadata: Mapping[str, str] | None,
) -> EventContext:
    """A new event whose ids otel-eda made or already holds as valid: only the event type,
    business key and metadata are checked (the checks ``__post_init__`` makes for them)."""
    if (
        metadata
        or cls is not EventContext
        or not ((type(event_type) is str and event_type in _VALID_NAMES) or _valid_name(event_type))
    ):
        return cls(event_id, correlation_id, causation_id, event_type, time.time_ns(), business_key, metadata or _EMPTY)
    if business_key is not None and not _valid_name(business_key):
        raise ValueError(f"invalid business_key: {type_problem(business_key)}")
    event = _new_object(cls)
    _set_event_id(event, event_id)
    _set_correlation_id(event, correlation_id)
    _set_causation_id(event, causation_id)
    _set_event_type(event, event_type)
    _set_created_ns(event, time.time_ns())
    _set_business_key(event, business_key)
    _set_metadata(event, _EMPTY)
    return event


def _slot_setter(name: str) -> Callable[[EventContext, object], None]:
    """The setter of one of :class:`EventContext`'s slots: what ``object.__setattr__`` finds
    by name, without the look-up (a new event sets all seven)."""
    setter: Callable[[EventContext, object], None] = vars(EventContext)[name].__set__
    return setter


_set_event_id: Final = _slot_setter("event_id")
_set_correlation_id: Final = _slot_setter("correlation_id")
_set_causation_id: Final = _slot_setter("causation_id")
_set_event_type: Final = _slot_setter("event_type")
_set_created_ns: Final = _slot_setter("created_ns")
_set_business_key: Final = _slot_setter("business_key")
_set_metadata: Final = _slot_setter("metadata")


def _freeze_metadata(metadata: Mapping[str, str]) -> Mapping[str, str]:
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise ValueError(f"metadata has more than {MAX_METADATA_ENTRIES} entries")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("metadata keys and values must be str")
        problem = metadata_key_problem(key)
        if problem is not None:
            raise ValueError(f"invalid metadata key ({problem}): lower-case letters, digits, '_', '.', '-', at most 64")
        problem = metadata_value_problem(value)
        if problem is not None:
            raise ValueError(f"invalid metadata value for {key!r} ({problem}): at most 256 printable characters")
    return MappingProxyType(dict(metadata))


class FlowIds(NamedTuple):
    """The ids of the flow a context belongs to, as read by :func:`flow_ids`."""

    correlation_id: str
    causation_id: str | None


class IncomingHeaders(NamedTuple):
    """What the otel-eda headers of one message said, each value already validated."""

    event_id: str | None
    event_type: str | None
    created_ns: int | None
    business_key: str | None
    correlation_id: str | None  # only when no baggage propagator carried it
    causation_id: str | None


def with_event(event: EventContext, context: Context | None = None) -> Context:
    """Return ``context`` (default: the current one) with ``event`` as the current event.

    The correlation and causation ids are also set as W3C baggage entries, so that a
    ``baggage`` propagator carries them to every downstream service and protocol.
    """
    return event_context(event, context)


def event_context(event: EventContext, context: Context | None = None, *extra: tuple[str, object]) -> Context:
    """:func:`with_event`, plus ``extra`` (key, value) entries, in one new ``Context``."""
    base = context if context is not None else _current()
    if not _DIRECT_BAGGAGE:
        ctx = _with_event_slow(event, base)
        for key, value in extra:
            ctx = set_value(key, value, ctx)
        return ctx
    values = dict(base)
    values[_EVENT_KEY] = event
    for key, value in extra:
        values[key] = value
    entries = values.get(_BAGGAGE_KEY)
    if (
        event.causation_id is None
        and type(entries) is dict
        and len(entries) == 1
        and entries.get(BAGGAGE_CORRELATION_ID) == event.correlation_id
    ):
        return Context(values)  # _direct_baggage's short case: the baggage says so already
    values[_BAGGAGE_KEY] = _direct_baggage(event, base.get(_BAGGAGE_KEY))
    return Context(values)


def event_baggage(event: EventContext, context: Context) -> object:
    """The baggage (the value under ``BAGGAGE_KEY``) of ``with_event(event, context)``,
    without building that context: what an in-process hand-off carries to its consumers."""
    if not _DIRECT_BAGGAGE:
        return _with_event_slow(event, context).get(_BAGGAGE_KEY)
    entries = context.get(_BAGGAGE_KEY)
    if not entries:  # _direct_baggage's common case (a new flow): otel-eda's entries alone
        causation = event.causation_id
        if causation is None:
            return {BAGGAGE_CORRELATION_ID: event.correlation_id}
        return {BAGGAGE_CORRELATION_ID: event.correlation_id, BAGGAGE_CAUSATION_ID: causation}
    return _direct_baggage(event, entries)


def _direct_baggage(event: EventContext, entries: object) -> dict[str, object]:
    """The baggage entries with ``event`` current, given the current ``entries``: these
    entries themselves when they already say so, otel-eda's entries first."""
    correlation, causation = event.correlation_id, event.causation_id
    if not entries or not isinstance(entries, dict):
        return (
            {BAGGAGE_CORRELATION_ID: correlation}
            if causation is None
            else {BAGGAGE_CORRELATION_ID: correlation, BAGGAGE_CAUSATION_ID: causation}
        )
    if entries.get(BAGGAGE_CORRELATION_ID) == correlation and (
        # the baggage already says so, otel-eda's entries first
        (BAGGAGE_CAUSATION_ID not in entries and next(iter(entries)) == BAGGAGE_CORRELATION_ID)
        if causation is None
        else entries.get(BAGGAGE_CAUSATION_ID) == causation and _leads(entries)
    ):
        return entries
    # otel-eda's entries go first: when upstream baggage fills the W3C limits (180 entries,
    # 8192 bytes), the baggage propagator drops the *last* entries on inject.
    bag: dict[str, object] = {BAGGAGE_CORRELATION_ID: correlation}
    if causation is not None:
        bag[BAGGAGE_CAUSATION_ID] = causation
    for key, value in entries.items():
        if key not in (BAGGAGE_CORRELATION_ID, BAGGAGE_CAUSATION_ID):
            bag[key] = value
    return bag


def _leads(entries: Mapping[str, object]) -> bool:
    """Whether the correlation and causation entries are the first two of ``entries``."""
    first = iter(entries)
    return next(first) == BAGGAGE_CORRELATION_ID and next(first, None) == BAGGAGE_CAUSATION_ID


def _with_event_slow(event: EventContext, context: Context) -> Context:
    """:func:`with_event` through the baggage API only (where its storage is not a dict)."""
    ctx = set_value(_EVENT_KEY, event, context)
    entries = baggage.get_all(ctx)
    wanted = [(BAGGAGE_CORRELATION_ID, event.correlation_id)]
    if event.causation_id is not None:
        wanted.append((BAGGAGE_CAUSATION_ID, event.causation_id))
    if list(itertools.islice(entries.items(), len(wanted))) == wanted and (
        event.causation_id is not None or BAGGAGE_CAUSATION_ID not in entries
    ):
        return ctx
    others = [(k, v) for k, v in entries.items() if k not in (BAGGAGE_CORRELATION_ID, BAGGAGE_CAUSATION_ID)]
    ctx = baggage.clear(ctx)
    for key, value in (*wanted, *others):
        ctx = baggage.set_baggage(key, value, ctx)
    return ctx


def current_event(context: Context | None = None) -> EventContext | None:
    """The event being published or handled in ``context`` (default: the current one)."""
    event = (context if context is not None else _current()).get(_EVENT_KEY)
    return event if isinstance(event, EventContext) else None


def _incoming(context: Context | None) -> IncomingHeaders | None:
    value = get_value(_INCOMING_KEY, context)
    return value if isinstance(value, IncomingHeaders) else None


def flow_ids(context: Context | None = None) -> FlowIds | None:
    """The validated correlation and causation ids of ``context``, or ``None``.

    Sources, in order: the current event; the baggage entries ``eda.correlation_id`` and
    ``eda.causation_id`` (set by any upstream service, so validated here); otel-eda's own
    headers when no baggage propagator is configured. An invalid value is never returned.
    """
    event = get_value(_EVENT_KEY, context)
    if isinstance(event, EventContext):
        return FlowIds(event.correlation_id, event.causation_id)
    entries = baggage.get_all(context)
    correlation = entries.get(BAGGAGE_CORRELATION_ID)
    causation = entries.get(BAGGAGE_CAUSATION_ID)
    if correlation is None or causation is None:
        incoming = _incoming(context)
        if incoming is not None:
            correlation = correlation if correlation is not None else incoming.correlation_id
            causation = causation if causation is not None else incoming.causation_id
    if correlation is None or id_problem(correlation) is not None:
        return None
    if causation is not None and id_problem(causation) is not None:
        causation = None
    return FlowIds(str(correlation), None if causation is None else str(causation))


def incoming_event(context: Context, metadata: Mapping[str, str] | None = None) -> EventContext | None:
    """The event a message carried, rebuilt from an extracted context, or ``None``.

    ``None`` when the message has no valid otel-eda event id or type. The correlation id
    falls back to the event id (a root event) when no valid one arrived. Invalid otel-eda
    baggage entries are counted in ``eda.propagation.invalid`` here, once per message.
    """
    entries = _baggage_entries(context)
    correlation = entries.get(BAGGAGE_CORRELATION_ID)
    causation = entries.get(BAGGAGE_CAUSATION_ID)
    # each baggage id validated once: counted here, and then used as flow_ids() would
    correlation_ok = causation_ok = True
    if correlation is not None and (problem := id_problem(correlation)) is not None:
        count_invalid(BAGGAGE_CORRELATION_ID, problem)
        correlation_ok = False
    if causation is not None and (problem := id_problem(causation)) is not None:
        count_invalid(BAGGAGE_CAUSATION_ID, problem)
        causation_ok = False
    incoming = _incoming(context)
    if incoming is None or incoming.event_id is None or incoming.event_type is None:
        return None
    if isinstance(get_value(_EVENT_KEY, context), EventContext):  # not an extracted context: its event's ids
        ids = flow_ids(context)
        correlation_id = ids.correlation_id if ids else incoming.event_id
        causation_id = ids.causation_id if ids else None
    else:
        if correlation is None or causation is None:  # otel-eda's own headers (validated on extract)
            if correlation is None and incoming.correlation_id is not None:
                correlation, correlation_ok = incoming.correlation_id, True
            if causation is None and incoming.causation_id is not None:
                causation, causation_ok = incoming.causation_id, True
        if correlation is None or not correlation_ok:
            correlation_id, causation_id = incoming.event_id, None
        else:
            correlation_id = str(correlation)
            causation_id = str(causation) if causation is not None and causation_ok else None
    created_ns = incoming.created_ns if incoming.created_ns is not None else time.time_ns()
    if metadata:
        return EventContext(
            incoming.event_id,
            correlation_id,
            causation_id,
            incoming.event_type,
            created_ns,
            incoming.business_key,
            metadata,
        )
    # every value was validated above or by the propagator's extract: not a second time
    event = _new_object(EventContext)
    _set_event_id(event, incoming.event_id)
    _set_correlation_id(event, correlation_id)
    _set_causation_id(event, causation_id)
    _set_event_type(event, incoming.event_type)
    _set_created_ns(event, created_ns)
    _set_business_key(event, incoming.business_key)
    _set_metadata(event, _EMPTY)
    return event


def _baggage_entries(context: Context) -> Mapping[str, object]:
    if _DIRECT_BAGGAGE:
        entries = context.get(BAGGAGE_KEY) if context is not None else get_current().get(BAGGAGE_KEY)
        return entries if isinstance(entries, dict) else _EMPTY_DICT
    return baggage.get_all(context)


def set_incoming(headers: IncomingHeaders, context: Context | None) -> Context:
    return set_value(_INCOMING_KEY, headers, context)
