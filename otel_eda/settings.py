"""otel-eda's own settings, parsed from the ``OTEL_EDA_*`` environment variables.

=============================== ========= ============================================
variable                         default   meaning
=============================== ========= ============================================
``OTEL_EDA_TRACE_MODE``          parent    ``parent`` or ``link``: how consumer spans
                                           relate to producer spans (see ``TraceMode``)
``OTEL_EDA_BAGGAGE_KEYS``        (none)    comma-separated baggage keys copied onto
                                           every span as attributes
``OTEL_EDA_STORE_MAX_EVENTS``    10000     events the in-process store keeps
``OTEL_EDA_ANOMALY_INTERVAL``    5         seconds between anomaly evaluations
``OTEL_EDA_RULES_FILE``          (none)    YAML or JSON alert rules (default rule set)
``OTEL_EDA_MAX_SERIES``          10000     series the anomaly engine tracks at most
``OTEL_EDA_ALERTMANAGER_URL``    (none)    Alertmanager base URL, e.g. http://127.0.0.1:9093
``OTEL_EDA_STRICT``              false     ``true``: invalid settings stop start-up
``OTEL_EDA_SHUTDOWN_TIMEOUT``    5         seconds shutdown may take (exit, SIGTERM,
                                           ``otel_eda.shutdown()``), whatever exporters do
``OTEL_EDA_HANDLE_SIGTERM``      true      flush on SIGTERM when the application has no
                                           handler of its own, then the default action
``OTEL_EDA_LOG_CORRELATION``     true      the current event's ids on every log record
``OTEL_EDA_LOG_LIFECYCLE``       failures  ``off``, ``failures`` or ``all``: stages logged
``OTEL_EDA_EXCEPTION_DETAIL``    message   ``type``, ``message`` or ``full``
``OTEL_EDA_REDACT_PATTERNS``     (none)    ``card_number``, ``email``, regexes (``,``-separated)
``OTEL_EDA_REDACT_PATTERNS_FILE`` (none)   the same, one a line, from a file
``OTEL_EDA_FLOW_ZIPKIN_URL``     (none)    ``otel-eda flow``: Zipkin base URL
``OTEL_EDA_FLOW_JAEGER_URL``     (none)    ``otel-eda flow``: Jaeger query base URL
``OTEL_EDA_FLOW_FILE``           (none)    ``otel-eda flow``: span files (os.pathsep)
``OTEL_EDA_FLOW_LOOKBACK``       86400     ``otel-eda flow``: seconds searched back
=============================== ========= ============================================

An invalid value is reported once per process as one ERROR naming the variable, the value
and the accepted values; that setting's default is used instead, and the problem is kept
in :attr:`Settings.errors` (``configure()`` counts it, and fails in strict mode).

>>> s = Settings.from_environ({"OTEL_EDA_TRACE_MODE": "link", "OTEL_EDA_MAX_SERIES": "500"})
>>> s.trace_mode.value, s.max_series, s.errors
('link', 500, ())
>>> bad = Settings.from_environ({"OTEL_EDA_ANOMALY_INTERVAL": "soon"})
>>> bad.anomaly_interval_s, bad.errors[0].variable
(5.0, 'OTEL_EDA_ANOMALY_INTERVAL')
>>> Settings.from_environ({"OTEL_EDA_BAGGAGE_KEYS": "tenant.id, region"}).baggage_keys
('tenant.id', 'region')
>>> Settings.from_environ({"OTEL_EDA_BAGGAGE_KEYS": "eda.correlation_id"}).baggage_keys  # never raw ids
()
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from otel_eda import semconv
from otel_eda.environment_variables import (
    OTEL_EDA_ALERTMANAGER_URL,
    OTEL_EDA_ANOMALY_INTERVAL,
    OTEL_EDA_BAGGAGE_KEYS,
    OTEL_EDA_CLOUDEVENTS,
    OTEL_EDA_CLOUDEVENTS_SOURCE,
    OTEL_EDA_EXCEPTION_DETAIL,
    OTEL_EDA_FLOW_FILE,
    OTEL_EDA_FLOW_JAEGER_URL,
    OTEL_EDA_FLOW_LOOKBACK,
    OTEL_EDA_FLOW_ZIPKIN_URL,
    OTEL_EDA_HANDLE_SIGTERM,
    OTEL_EDA_LOG_CORRELATION,
    OTEL_EDA_LOG_LIFECYCLE,
    OTEL_EDA_MAX_SERIES,
    OTEL_EDA_METADATA_ATTRIBUTES,
    OTEL_EDA_NATS_MSG_ID,
    OTEL_EDA_PROCESS_SPAN_MAX_S,
    OTEL_EDA_REDACT_PATTERNS,
    OTEL_EDA_REDACT_PATTERNS_FILE,
    OTEL_EDA_RULES_FILE,
    OTEL_EDA_SETTLE_SPANS,
    OTEL_EDA_SHUTDOWN_TIMEOUT,
    OTEL_EDA_SPAN_EVENTS,
    OTEL_EDA_STORE_MAX_EVENTS,
    OTEL_EDA_STRICT,
    OTEL_EDA_TRACE_MODE,
)

__all__ = [
    "DEFAULT_MAX_EVENTS",
    "REDACT_BUILTINS",
    "CloudEventsMode",
    "ExceptionDetail",
    "InvalidSetting",
    "LifecycleLogs",
    "Settings",
    "TraceMode",
    "sdk_disabled",
]

_log = logging.getLogger(__name__)

_VARIABLES = (
    OTEL_EDA_TRACE_MODE,
    OTEL_EDA_BAGGAGE_KEYS,
    OTEL_EDA_STORE_MAX_EVENTS,
    OTEL_EDA_ANOMALY_INTERVAL,
    OTEL_EDA_RULES_FILE,
    OTEL_EDA_MAX_SERIES,
    OTEL_EDA_ALERTMANAGER_URL,
    OTEL_EDA_STRICT,
    OTEL_EDA_SHUTDOWN_TIMEOUT,
    OTEL_EDA_HANDLE_SIGTERM,
    OTEL_EDA_SPAN_EVENTS,
    OTEL_EDA_PROCESS_SPAN_MAX_S,
    OTEL_EDA_SETTLE_SPANS,
    OTEL_EDA_CLOUDEVENTS,
    OTEL_EDA_CLOUDEVENTS_SOURCE,
    OTEL_EDA_METADATA_ATTRIBUTES,
    OTEL_EDA_LOG_CORRELATION,
    OTEL_EDA_LOG_LIFECYCLE,
    OTEL_EDA_EXCEPTION_DETAIL,
    OTEL_EDA_REDACT_PATTERNS,
    OTEL_EDA_REDACT_PATTERNS_FILE,
    OTEL_EDA_FLOW_ZIPKIN_URL,
    OTEL_EDA_FLOW_JAEGER_URL,
    OTEL_EDA_FLOW_FILE,
    OTEL_EDA_FLOW_LOOKBACK,
    OTEL_EDA_NATS_MSG_ID,
)
#: W3C baggage keys are RFC 7230 tokens; copying more than this many per span costs too much.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_METADATA_KEY = re.compile(r"[a-z0-9][a-z0-9_.\-]*")
MAX_BAGGAGE_KEYS = 32
#: Events the in-process store keeps unless ``OTEL_EDA_STORE_MAX_EVENTS`` says otherwise.
DEFAULT_MAX_EVENTS: Final = 10_000


class CloudEventsMode(enum.StrEnum):
    """``OTEL_EDA_CLOUDEVENTS``: whether transports read and write CloudEvents headers."""

    OFF = "off"
    READ = "read"
    WRITE = "write"


class TraceMode(enum.StrEnum):
    """How a consumer span relates to its producer span (``OTEL_EDA_TRACE_MODE``).

    ``parent``: the consumer span is the producer span's child (one trace per flow) and
    also links to it. ``link``: the consumer span starts a new trace and links to the
    producer span; it is sampled when its producer was (with ``LinkAwareSampler``).
    """

    PARENT = "parent"
    LINK = "link"


class ExceptionDetail(enum.StrEnum):
    """How much of an exception otel-eda writes (``OTEL_EDA_EXCEPTION_DETAIL``).

    ``type``: the exception's type only; ``message`` (default): its type and message;
    ``full``: type, message and stacktrace. Redaction patterns apply to every message and
    stacktrace written (see :mod:`otel_eda.redaction`).
    """

    TYPE = "type"
    MESSAGE = "message"
    FULL = "full"


class LifecycleLogs(enum.StrEnum):
    """Which lifecycle stages otel-eda logs (``OTEL_EDA_LOG_LIFECYCLE``).

    ``off``; ``failures`` (default): retries, rejections, dead letters and drops;
    ``all``: every stage (see :mod:`otel_eda.logs.lifecycle`).
    """

    OFF = "off"
    FAILURES = "failures"
    ALL = "all"


#: Names of the built-in redaction patterns (:mod:`otel_eda.redaction` defines them).
REDACT_BUILTINS: Final = ("card_number", "email")
#: Redaction patterns read at most (from the variable and the file together).
MAX_REDACT_PATTERNS: Final = 64


def sdk_disabled() -> bool:
    """``OTEL_SDK_DISABLED=true``: the OpenTelemetry SDK is off, and otel-eda installs nothing."""
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


@dataclasses.dataclass(frozen=True)
class InvalidSetting:
    """One ``OTEL_EDA_*`` variable whose value was rejected."""

    variable: str
    value: str
    accepted: str
    default: str

    def __str__(self) -> str:
        return (
            f"invalid {self.variable}={self.value!r}: accepted values are {self.accepted}; "
            f"using the default {self.default}"
        )


@dataclasses.dataclass(frozen=True)
class Settings:
    """otel-eda's settings. ``Settings()`` is all defaults; ``from_environ()`` reads the variables."""

    trace_mode: TraceMode = TraceMode.PARENT
    baggage_keys: tuple[str, ...] = ()
    store_max_events: int = DEFAULT_MAX_EVENTS
    anomaly_interval_s: float = 5.0
    rules_file: str | None = None
    max_series: int = 10_000
    alertmanager_url: str | None = None
    strict: bool = False
    shutdown_timeout_s: float = 5.0
    handle_sigterm: bool = True
    span_events: bool = False
    process_span_max_s: float = 30.0
    settle_spans: bool = False
    cloudevents: CloudEventsMode = CloudEventsMode.READ
    cloudevents_source: str | None = None
    metadata_attributes: tuple[str, ...] = ()
    log_correlation: bool = True
    log_lifecycle: LifecycleLogs = LifecycleLogs.FAILURES
    exception_detail: ExceptionDetail = ExceptionDetail.MESSAGE
    #: redaction patterns: built-in names (``REDACT_BUILTINS``) and regexes that compile
    redact_patterns: tuple[str, ...] = ()
    #: ``otel-eda flow``'s default source (at most one is used: see the command's help)
    flow_zipkin_url: str | None = None
    flow_jaeger_url: str | None = None
    flow_files: tuple[str, ...] = ()
    flow_lookback_s: float = 86_400.0
    #: JetStream publishes get ``Nats-Msg-Id`` = the event id (the NATS instrumentation)
    nats_msg_id: bool = False
    errors: tuple[InvalidSetting, ...] = dataclasses.field(default=(), compare=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse the ``OTEL_EDA_*`` variables of ``environ`` (default ``os.environ``).

        Parsing is memoised on the variables' values, so however many buses and readers
        ask, each invalid value is logged once.
        """
        env = os.environ if environ is None else environ
        return _parse(tuple(env.get(name) for name in _VARIABLES))


@functools.lru_cache(maxsize=16)
def _parse(values: tuple[str | None, ...]) -> Settings:
    raw = dict(zip(_VARIABLES, values, strict=True))
    d = Settings()
    errors: list[InvalidSetting] = []

    def invalid(name: str, accepted: str, default: object) -> None:
        value = raw[name] or ""
        shown = value if len(value) <= 64 and value.isprintable() else f"<{len(value)} characters>"
        errors.append(InvalidSetting(name, shown, accepted, str(default)))

    def positive(name: str, default: float, *, integer: bool) -> float:
        text = (raw[name] or "").strip()
        if not text:
            return default
        try:
            value = int(text) if integer else float(text)
            if value > 0 and value != float("inf"):
                return value
        except ValueError:
            pass
        invalid(name, "a positive integer" if integer else "a positive number of seconds", default)
        return default

    mode = d.trace_mode
    if text := (raw[OTEL_EDA_TRACE_MODE] or "").strip():
        try:
            mode = TraceMode(text.lower())
        except ValueError:
            invalid(OTEL_EDA_TRACE_MODE, "parent, link", mode.value)

    keys: tuple[str, ...] = ()
    if text := (raw[OTEL_EDA_BAGGAGE_KEYS] or "").strip():
        parts = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
        if len(parts) <= MAX_BAGGAGE_KEYS and all(
            _TOKEN.fullmatch(p) and not p.startswith(semconv.EDA_PREFIX) for p in parts
        ):
            keys = parts
        else:
            accepted = f"up to {MAX_BAGGAGE_KEYS} comma-separated baggage keys (tokens, none starting with eda.)"
            invalid(OTEL_EDA_BAGGAGE_KEYS, accepted, "none")

    def flag(name: str, default: bool) -> bool:
        text = (raw[name] or "").strip().lower()
        if not text:
            return default
        if text in ("true", "false"):
            return text == "true"
        invalid(name, "true, false", str(default).lower())
        return default

    strict = flag(OTEL_EDA_STRICT, d.strict)

    cloudevents = d.cloudevents
    if text := (raw[OTEL_EDA_CLOUDEVENTS] or "").strip():
        try:
            cloudevents = CloudEventsMode(text.lower())
        except ValueError:
            invalid(OTEL_EDA_CLOUDEVENTS, "off, read, write", cloudevents.value)

    source = (raw[OTEL_EDA_CLOUDEVENTS_SOURCE] or "").strip() or None
    if source is not None and (len(source) > 256 or not source.isprintable() or " " in source):
        invalid(OTEL_EDA_CLOUDEVENTS_SOURCE, "a URI-reference of at most 256 characters", "/<service.name>")
        source = None

    metadata_keys: tuple[str, ...] = ()
    if text := (raw[OTEL_EDA_METADATA_ATTRIBUTES] or "").strip():
        parts = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
        if len(parts) <= 16 and all(_METADATA_KEY.fullmatch(p) and len(p) <= 64 for p in parts):
            metadata_keys = parts
        else:
            invalid(OTEL_EDA_METADATA_ATTRIBUTES, "up to 16 comma-separated metadata keys ([a-z0-9_.-])", "none")

    def http_url(name: str) -> str | None:
        url = (raw[name] or "").strip().rstrip("/") or None
        if url is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
            invalid(name, "an http:// or https:// URL", "none")
            url = None
        return url

    url = http_url(OTEL_EDA_ALERTMANAGER_URL)

    logs = _parse_logging(raw, invalid)
    settings = Settings(
        trace_mode=mode,
        baggage_keys=keys,
        store_max_events=int(positive(OTEL_EDA_STORE_MAX_EVENTS, d.store_max_events, integer=True)),
        anomaly_interval_s=positive(OTEL_EDA_ANOMALY_INTERVAL, d.anomaly_interval_s, integer=False),
        rules_file=(raw[OTEL_EDA_RULES_FILE] or "").strip() or None,
        max_series=int(positive(OTEL_EDA_MAX_SERIES, d.max_series, integer=True)),
        alertmanager_url=url,
        strict=strict,
        shutdown_timeout_s=positive(OTEL_EDA_SHUTDOWN_TIMEOUT, d.shutdown_timeout_s, integer=False),
        handle_sigterm=flag(OTEL_EDA_HANDLE_SIGTERM, d.handle_sigterm),
        span_events=flag(OTEL_EDA_SPAN_EVENTS, d.span_events),
        process_span_max_s=positive(OTEL_EDA_PROCESS_SPAN_MAX_S, d.process_span_max_s, integer=False),
        settle_spans=flag(OTEL_EDA_SETTLE_SPANS, d.settle_spans),
        cloudevents=cloudevents,
        cloudevents_source=source,
        metadata_attributes=metadata_keys,
        flow_zipkin_url=http_url(OTEL_EDA_FLOW_ZIPKIN_URL),
        flow_jaeger_url=http_url(OTEL_EDA_FLOW_JAEGER_URL),
        flow_files=tuple(p for p in (raw[OTEL_EDA_FLOW_FILE] or "").split(os.pathsep) if p.strip()),
        flow_lookback_s=positive(OTEL_EDA_FLOW_LOOKBACK, d.flow_lookback_s, integer=False),
        nats_msg_id=flag(OTEL_EDA_NATS_MSG_ID, d.nats_msg_id),
        errors=tuple(errors),
        **logs,
    )
    for error in errors:
        _log.error("%s", error)
    return settings


def _parse_logging(raw: Mapping[str, str | None], invalid: Callable[[str, str, object], None]) -> dict[str, Any]:
    """The log and redaction settings: ``OTEL_EDA_LOG_*``, ``OTEL_EDA_EXCEPTION_DETAIL``,
    ``OTEL_EDA_REDACT_PATTERNS`` and ``OTEL_EDA_REDACT_PATTERNS_FILE``."""
    d = Settings()
    parsed: dict[str, Any] = {}
    if text := (raw[OTEL_EDA_LOG_CORRELATION] or "").strip().lower():
        if text in ("true", "false"):
            parsed["log_correlation"] = text == "true"
        else:
            invalid(OTEL_EDA_LOG_CORRELATION, "true, false", "true")
    for name, enum_type, default in (
        (OTEL_EDA_LOG_LIFECYCLE, LifecycleLogs, d.log_lifecycle),
        (OTEL_EDA_EXCEPTION_DETAIL, ExceptionDetail, d.exception_detail),
    ):
        if text := (raw[name] or "").strip().lower():
            try:
                parsed["log_lifecycle" if enum_type is LifecycleLogs else "exception_detail"] = enum_type(text)
            except ValueError:
                invalid(name, ", ".join(m.value for m in enum_type), default.value)
    patterns: list[str] = []
    if text := (raw[OTEL_EDA_REDACT_PATTERNS] or "").strip():
        # a comma inside a regex is written \,
        entries = [e.replace("\\,", ",").strip() for e in re.split(r"(?<!\\),", text)]
        patterns += _valid_patterns(OTEL_EDA_REDACT_PATTERNS, [e for e in entries if e], invalid)
    if path := (raw[OTEL_EDA_REDACT_PATTERNS_FILE] or "").strip():
        try:
            with open(path, encoding="utf-8") as file:
                lines = [line.strip() for line in file.read(1 << 20).splitlines()]
        except (OSError, UnicodeDecodeError):
            invalid(OTEL_EDA_REDACT_PATTERNS_FILE, "a readable UTF-8 file of patterns", "none")
        else:
            entries = [line for line in lines if line and not line.startswith("#")]
            patterns += _valid_patterns(OTEL_EDA_REDACT_PATTERNS_FILE, entries, invalid)
    if patterns:
        parsed["redact_patterns"] = tuple(dict.fromkeys(patterns))[:MAX_REDACT_PATTERNS]
    return parsed


def _valid_patterns(variable: str, entries: list[str], invalid: Callable[[str, str, object], None]) -> list[str]:
    """The entries that are built-in names or compiling regexes; the first bad one is reported."""
    valid = []
    for entry in entries:
        if entry not in REDACT_BUILTINS:
            try:
                if re.compile(entry).match(""):
                    raise re.error("matches the empty string")
            except re.error:
                invalid(variable, f"{', '.join(REDACT_BUILTINS)} or regexes that match something", "none")
                return []
        valid.append(entry)
    return valid
