"""The current event's ids on every ``logging.LogRecord``, by a log record factory.

While an event is current (in a handler, in a publish, in any thread or asyncio task that
carries its context), every record made by any logger carries:

==================== ====================================================================
record attribute      value
==================== ====================================================================
``eda_event_id``      the current event's id
``eda_correlation_id`` its correlation id (the business flow)
``eda_causation_id``  its causation id (the event whose handling emitted it), or ``""``
``eda_event_type``    its type
``eda_business_key``  its business key, or ``""``
``otelTraceID``       the current span's trace id (32 hex digits), ``"0"`` without one
``otelSpanID``        the current span's span id (16 hex digits), ``"0"`` without one
==================== ====================================================================

Every record made through the factory has every one of these fields (``""`` and ``"0"``
when nothing is current), so a plain format string works everywhere, in a flow or not:
``"%(levelname)s [%(eda_correlation_id)s %(otelTraceID)s] %(message)s"``. The ``otel*``
names and values are those of ``opentelemetry-instrumentation-logging``, which also sets
them on every record and composes with this factory in either order (and adds
``otelTraceSampled`` and ``otelServiceName``).
Without an event but with W3C baggage carrying ``eda.correlation_id`` (an HTTP request
from an otel-eda service), the correlation and causation ids come from the baggage, as on
spans.

A record factory rather than a ``logging.Filter``: a filter sits on one handler or logger
and misses the handlers added later and every logger that does not propagate to it. The
factory wraps the one installed before it. A record made with nothing at all in the
OpenTelemetry context (no event, span or baggage) costs one call of the factory, one
context-variable read and seven attribute stores: under 2.5 % of the instructions of a
plain ``logger.info`` through a ``StreamHandler`` (``benchmarks/bench_logs.py`` measures
it). The fields must be stored on each record: a ``logging`` format string (``%``,
``str.format`` or ``$`` style) and the JSON formatters read ``record.__dict__``, so
class-level defaults on ``LogRecord`` would not be seen. With something current, the
values of the last context seen are kept, so the records of one handler compute them
once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context

from otel_eda import otel_internals
from otel_eda.identity.event import current_event, flow_ids
from otel_eda.process_hooks import fresh_lock_in_child

__all__ = [
    "BUSINESS_KEY",
    "CAUSATION_ID",
    "CORRELATION_ID",
    "EVENT_ID",
    "EVENT_TYPE",
    "FIELDS",
    "FORMAT_DEFAULTS",
    "RECORD_FIELDS",
    "current_fields",
    "event_fields",
    "install_log_correlation",
    "log_correlation_installed",
    "uninstall_log_correlation",
]

EVENT_ID: Final = "eda_event_id"
CORRELATION_ID: Final = "eda_correlation_id"
CAUSATION_ID: Final = "eda_causation_id"
EVENT_TYPE: Final = "eda_event_type"
BUSINESS_KEY: Final = "eda_business_key"
#: The record attributes of the current event's identity, in this order.
FIELDS: Final = (EVENT_ID, CORRELATION_ID, CAUSATION_ID, EVENT_TYPE, BUSINESS_KEY)
#: opentelemetry-instrumentation-logging's record attributes (same names, same values).
TRACE_ID: Final = "otelTraceID"
SPAN_ID: Final = "otelSpanID"
#: the instrumentation's sampled flag: otel-eda does not set it (the bridge drops it)
TRACE_SAMPLED: Final = "otelTraceSampled"
#: Every attribute the factory sets on each record, in the order it sets them.
RECORD_FIELDS: Final = (*FIELDS, TRACE_ID, SPAN_ID)
_Values = tuple[str, str, str, str, str, str, str]
_NOTHING: Final[_Values] = ("", "", "", "", "", "0", "0")
#: ``logging.Formatter(fmt, defaults=FORMAT_DEFAULTS)``: a format string using these fields
#: also works on records made without the factory (before it was installed, or by
#: ``logging.LogRecord(...)`` directly); every record the factory makes has them all.
FORMAT_DEFAULTS: Final[Mapping[str, str]] = dict(zip(RECORD_FIELDS, _NOTHING, strict=True))

_lock = threading.Lock()
fresh_lock_in_child(__name__)  # a thread of the parent may have held it at fork time
_previous: Callable[..., logging.LogRecord] | None = None


def _context_reader() -> Callable[[], Context]:
    """The fastest way to read the current OpenTelemetry context.

    The API keeps it in a ``ContextVar`` of its runtime context; reading that variable
    directly saves three Python calls per record. Any other runtime context (an
    ``OTEL_PYTHON_CONTEXT`` plug-in) is read through the public API.
    """
    return otel_internals.current_context_getter() or otel_context.get_current


def _values(context: Context | None) -> _Values:
    event = current_event(context)
    if event is not None:
        ids: tuple[str, str, str, str, str] = (
            event.event_id,
            event.correlation_id,
            event.causation_id or "",
            event.event_type,
            event.business_key or "",
        )
    else:
        flow = flow_ids(context)
        ids = ("", flow.correlation_id, flow.causation_id or "", "", "") if flow is not None else ("",) * 5
    span_context = trace.get_current_span(context).get_span_context()
    if span_context.is_valid:
        return (*ids, format(span_context.trace_id, "032x"), format(span_context.span_id, "016x"))
    return (*ids, "0", "0")


def event_fields(context: Context | None = None) -> dict[str, str]:
    """The record attributes of ``context`` (default: the current one), every field set."""
    return dict(zip(RECORD_FIELDS, _values(context), strict=True))


#: The values of the last context seen: a handler's records share one context object
#: (contexts are immutable; attaching another one makes a new object). One tuple, swapped
#: whole, so threads never see a context with another one's values.
_last: tuple[Context | None, _Values] = (None, _NOTHING)


def _current_values(context: Context) -> _Values:
    global _last
    seen, values = _last
    if seen is not context:
        try:
            values = _values(context)
        except Exception:  # never let a log call fail: the fields stay empty
            values = _NOTHING
        _last = (context, values)
    return values


def current_fields(context: Context) -> dict[str, str]:
    """:func:`event_fields` of ``context``, computed once per context object."""
    return dict(zip(RECORD_FIELDS, _current_values(context), strict=True))


def _factory(previous: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """A record factory calling ``previous`` and setting every field of :data:`RECORD_FIELDS`.

    The path with nothing current is the one nearly every record of a service takes outside
    event handling: one context-variable read, a truth test, seven stores of constants (each
    a plain attribute store: a ``__dict__.update`` materialises the record's dict early and
    costs several times more). ``*args, **kwargs`` forwarding measured fewer instructions
    than an explicit signature that still accepts keywords.
    """
    read_context = _context_reader()

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: Any = previous(*args, **kwargs)
        context = read_context()
        if not context:  # nothing in the OpenTelemetry context: the common, cheap case
            record.eda_event_id = ""
            record.eda_correlation_id = ""
            record.eda_causation_id = ""
            record.eda_event_type = ""
            record.eda_business_key = ""
            record.otelTraceID = "0"
            record.otelSpanID = "0"
        else:
            seen, values = _last  # the cache of _current_values, read here: one call less
            if seen is not context:
                values = _current_values(context)
            (
                record.eda_event_id,
                record.eda_correlation_id,
                record.eda_causation_id,
                record.eda_event_type,
                record.eda_business_key,
                record.otelTraceID,
                record.otelSpanID,
            ) = values
        return record  # type: ignore[no-any-return]

    make_record.otel_eda_previous = previous  # type: ignore[attr-defined]
    return make_record


def install_log_correlation() -> bool:
    """Install the record factory (once); returns whether this call installed it."""
    global _previous
    with _lock:
        if _previous is not None:
            return False
        previous = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_factory(previous))
        _previous = previous
        return True


def log_correlation_installed() -> bool:
    return _previous is not None


def uninstall_log_correlation() -> bool:
    """Restore the factory that was installed before, when this one is still the outermost.

    When another factory has wrapped it since (``LoggingInstrumentor`` instrumented after
    ``configure()``), it stays in that chain; returns whether it was removed.
    """
    global _previous
    with _lock:
        current = logging.getLogRecordFactory()
        previous = _previous
        if previous is None:
            return False
        wrapped: object = getattr(current, "otel_eda_previous", None)
        if wrapped is not previous:
            return False
        logging.setLogRecordFactory(previous)
        _previous = None
        return True
