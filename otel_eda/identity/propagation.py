"""``EdaPropagator``: carries the event identity across process and broker boundaries.

Registered as the ``eda`` entry point of ``opentelemetry_propagator``; enable it with
``OTEL_PROPAGATORS=tracecontext,baggage,eda`` (any order gives the same result).

Headers it writes and reads (lower case, values ASCII):

=====================  ===============================================================
``eda-event-id``       the event id (UUIDv7)
``eda-event-type``     the event type
``eda-event-created``  the creation time, decimal Unix epoch nanoseconds
``eda-business-key``   the business key, when the event has one
``eda-correlation-id`` the correlation id — only when no ``baggage`` propagator is set
``eda-causation-id``   the causation id — only when no ``baggage`` propagator is set
=====================  ===============================================================

The correlation and causation ids normally travel as the W3C baggage entries
``eda.correlation_id`` and ``eda.causation_id`` (written by the ``baggage`` propagator,
never by this one), so HTTP and database instrumentations carry them downstream too.

Every incoming value is validated (length cap, allowed characters, no control
characters); an invalid one is dropped, counted in ``eda.propagation.invalid`` and logged
at DEBUG with its field name, reason and length, never its text. ``extract`` and
``inject`` never raise. This module imports only the OpenTelemetry API: it is loaded
inside ``opentelemetry-instrument`` start-up, where importing the SDK or the
instrumentation package would break the CLI.

>>> from opentelemetry.context import Context
>>> from otel_eda.identity import EventContext, incoming_event, with_event
>>> event = EventContext.root("order_placed")
>>> carrier: dict[str, str] = {}
>>> EdaPropagator().inject(carrier, context=with_event(event))
>>> carrier["eda-event-id"] == event.event_id
True
>>> incoming_event(EdaPropagator().extract(carrier, context=Context())).event_type
'order_placed'
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    DefaultGetter,
    DefaultSetter,
    Getter,
    Setter,
    TextMapPropagator,
)

from otel_eda import otel_internals
from otel_eda._selfmetrics import count_invalid, internal_error
from otel_eda.identity.event import IncomingHeaders, current_event, flow_ids, set_incoming
from otel_eda.identity.validation import created_ns_problem, id_problem, type_problem

__all__ = [
    "HEADER_BUSINESS_KEY",
    "HEADER_CAUSATION_ID",
    "HEADER_CORRELATION_ID",
    "HEADER_CREATED",
    "HEADER_EVENT_ID",
    "HEADER_EVENT_TYPE",
    "EdaPropagator",
    "install_log_filters",
]

HEADER_EVENT_ID: Final = "eda-event-id"
HEADER_EVENT_TYPE: Final = "eda-event-type"
HEADER_CREATED: Final = "eda-event-created"
HEADER_BUSINESS_KEY: Final = "eda-business-key"
HEADER_CORRELATION_ID: Final = "eda-correlation-id"
HEADER_CAUSATION_ID: Final = "eda-causation-id"

_FIELDS: Final = frozenset(
    {
        HEADER_EVENT_ID,
        HEADER_EVENT_TYPE,
        HEADER_CREATED,
        HEADER_BUSINESS_KEY,
        HEADER_CORRELATION_ID,
        HEADER_CAUSATION_ID,
    }
)

_log = logging.getLogger(__name__)
#: ``opentelemetry.propagate.get_global_textmap``, once imported (see EdaPropagator)
_get_global_textmap: Callable[[], object] | None = None
_default_getter: Final = DefaultGetter()
_default_setter: Final = DefaultSetter()


def _first(getter: Getter[CarrierT], carrier: CarrierT, name: str) -> object:
    try:
        values = getter.get(carrier, name)
    except Exception:  # a carrier the getter cannot read (bytes, None, a raising mapping): no header
        _log.debug("could not read the %s header from a %s carrier", name, type(carrier).__name__)
        return None
    if values is None:
        return None
    if isinstance(values, str | bytes):  # a getter that returns a bare value
        return values
    try:
        return next(iter(values), None)
    except TypeError:
        return values


def _read(
    getter: Getter[CarrierT],
    carrier: CarrierT,
    name: str,
    problem: Callable[[object], str | None],
    direct_max: int = 0,
) -> Any:
    if direct_max:  # a dict read by a getter that returns its plain text values as they are
        value: Any = carrier.get(name)  # type: ignore[attr-defined]
        if value is not None and not (type(value) is str and len(value) <= direct_max and value.isascii()):
            value = _first(getter, carrier, name)  # anything else: what the getter makes of it
    else:
        value = _first(getter, carrier, name)
    if value is None:
        return None
    reason = problem(value)
    if reason is None:
        return value
    count_invalid(name, reason)
    if _log.isEnabledFor(logging.DEBUG):
        length = len(value) if isinstance(value, str | bytes) else -1
        _log.debug("dropped invalid %s header (%s, length %d)", name, reason, length)
    return None


class EdaPropagator(TextMapPropagator):
    """Injects and extracts otel-eda's event headers. See the module documentation."""

    def __init__(self) -> None:
        self._checked_textmap: object = None
        self._baggage_configured = True
        self._warned_no_baggage = False
        install_log_filters()

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = _default_getter,  # type: ignore[assignment]
    ) -> Context:
        try:
            # a getter may say that it returns the ASCII ``str`` values of a ``dict`` up to
            # ``direct_max`` characters as they are: those are read without calling it
            direct = getattr(getter, "direct_max", 0) if type(carrier) is dict else 0
            event_id = _read(getter, carrier, HEADER_EVENT_ID, id_problem, direct)
            event_type = _read(getter, carrier, HEADER_EVENT_TYPE, type_problem, direct)
            created = _read(getter, carrier, HEADER_CREATED, created_ns_problem, direct)
            business_key = _read(getter, carrier, HEADER_BUSINESS_KEY, type_problem, direct)
            correlation_id = _read(getter, carrier, HEADER_CORRELATION_ID, id_problem, direct)
            causation_id = _read(getter, carrier, HEADER_CAUSATION_ID, id_problem, direct)
            if (
                event_id is None
                and event_type is None
                and created is None
                and business_key is None
                and correlation_id is None
                and causation_id is None
            ):
                return context if context is not None else Context()
            headers = IncomingHeaders(
                event_id,
                event_type,
                int(created) if created is not None else None,
                business_key,
                correlation_id,
                causation_id,
            )
            return set_incoming(headers, context)
        except Exception:
            internal_error("propagator", "extracting headers")
            return context if context is not None else Context()

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = _default_setter,  # type: ignore[assignment]
    ) -> None:
        try:
            event = current_event(context)
            if event is not None:
                setter.set(carrier, HEADER_EVENT_ID, event.event_id)
                setter.set(carrier, HEADER_EVENT_TYPE, event.event_type)
                setter.set(carrier, HEADER_CREATED, str(event.created_ns))
                if event.business_key is not None:
                    setter.set(carrier, HEADER_BUSINESS_KEY, event.business_key)
            if not self._baggage_propagator_configured():
                ids = flow_ids(context)
                if ids is not None:
                    setter.set(carrier, HEADER_CORRELATION_ID, ids.correlation_id)
                    if ids.causation_id is not None:
                        setter.set(carrier, HEADER_CAUSATION_ID, ids.causation_id)
        except Exception:
            internal_error("propagator", "injecting headers")

    @property
    def fields(self) -> set[str]:
        return set(_FIELDS)

    def _baggage_propagator_configured(self) -> bool:
        """Whether the global propagator also carries W3C baggage (checked when it changes)."""
        # Imported at the first call: opentelemetry.propagate builds the global propagator,
        # and this class, at its own import time (an import statement per call costs as much
        # as the rest of this method).
        global _get_global_textmap
        if _get_global_textmap is None:
            from opentelemetry import propagate

            _get_global_textmap = propagate.get_global_textmap
        textmap = _get_global_textmap()
        if textmap is not self._checked_textmap:
            self._checked_textmap = textmap
            from opentelemetry.baggage.propagation import W3CBaggagePropagator

            self._baggage_configured = contains_propagator(textmap, W3CBaggagePropagator)
            if not self._baggage_configured and not self._warned_no_baggage:
                self._warned_no_baggage = True
                _log.warning(
                    "no 'baggage' propagator is configured (OTEL_PROPAGATORS); otel-eda carries the "
                    "correlation and causation ids in its own headers, but HTTP and database "
                    "instrumentations will not carry them downstream. Set "
                    "OTEL_PROPAGATORS=tracecontext,baggage,eda"
                )
        return self._baggage_configured


def contains_propagator(textmap: object, kind: type) -> bool:
    """Whether ``textmap`` is, or is a composite that includes, a propagator of ``kind``."""
    if isinstance(textmap, kind):
        return True
    inner = otel_internals.propagators_of(textmap)
    return inner is not None and any(contains_propagator(p, kind) for p in inner)


class _Redacted:
    """Stands in for a logged argument: shows its length, never its text."""

    __slots__ = ("_length",)

    def __init__(self, value: object) -> None:
        self._length = len(value) if isinstance(value, str | bytes) else -1

    def __str__(self) -> str:
        length = f"{self._length} characters" if self._length >= 0 else "value"
        return f"<{length} redacted by otel-eda>"

    __repr__ = __str__


class _RedactInput(logging.Filter):
    """Rewrites OpenTelemetry warnings that would carry raw header text.

    ``W3CBaggagePropagator`` logs a rejected baggage header or entry verbatim (up to 8 KB,
    CR/LF included) and ``TraceState.from_header`` a malformed ``tracestate`` member. This
    filter keeps each warning but replaces every text argument by its length (numbers,
    such as lengths, are kept).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(a if isinstance(a, int | float) else _Redacted(a) for a in args)
        return True


#: The OpenTelemetry loggers that write raw incoming header text.
_RAW_INPUT_LOGGERS: Final = ("opentelemetry.baggage.propagation", "opentelemetry.trace.span")


def install_log_filters() -> None:
    """Attach the redacting filter to the OpenTelemetry loggers that echo input (once)."""
    for name in _RAW_INPUT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactInput) for f in logger.filters):
            logger.addFilter(_RedactInput())
