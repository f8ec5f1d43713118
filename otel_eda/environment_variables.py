"""otel-eda's own ``OTEL_EDA_*`` environment variables, as plain constants.

This module is the ``opentelemetry_environment_variables`` entry point: the
``opentelemetry-instrument`` command turns every ``OTEL_*`` name here into a flag
(``OTEL_EDA_TRACE_MODE`` becomes ``--eda_trace_mode``). It imports nothing, so loading it
costs nothing. Parsing and defaults live in :mod:`otel_eda.settings`.
"""

from __future__ import annotations

from typing import Final

OTEL_EDA_TRACE_MODE: Final = "OTEL_EDA_TRACE_MODE"
"""``parent`` (default) or ``link``: how a consumer span relates to its producer span."""

OTEL_EDA_BAGGAGE_KEYS: Final = "OTEL_EDA_BAGGAGE_KEYS"
"""Comma-separated W3C baggage keys copied onto every span as attributes (default: none)."""

OTEL_EDA_STORE_MAX_EVENTS: Final = "OTEL_EDA_STORE_MAX_EVENTS"
"""Events the in-process store keeps (default 10000)."""

OTEL_EDA_ANOMALY_INTERVAL: Final = "OTEL_EDA_ANOMALY_INTERVAL"
"""Seconds between two evaluations of the anomaly engine (default 5)."""

OTEL_EDA_RULES_FILE: Final = "OTEL_EDA_RULES_FILE"
"""A YAML or JSON file of alert rules (default: the built-in rule set)."""

OTEL_EDA_MAX_SERIES: Final = "OTEL_EDA_MAX_SERIES"
"""Series the anomaly engine tracks at most; more go to one overflow series (default 10000)."""

OTEL_EDA_ALERTMANAGER_URL: Final = "OTEL_EDA_ALERTMANAGER_URL"
"""Base URL of a Prometheus Alertmanager that receives the alerts (default: none)."""

OTEL_EDA_STRICT: Final = "OTEL_EDA_STRICT"
"""``true``: an invalid setting or a failed SDK configuration stops start-up (default false)."""

OTEL_EDA_SHUTDOWN_TIMEOUT: Final = "OTEL_EDA_SHUTDOWN_TIMEOUT"
"""Seconds the shutdown of everything otel-eda installed may take, whatever the exporters do (default 5)."""

OTEL_EDA_HANDLE_SIGTERM: Final = "OTEL_EDA_HANDLE_SIGTERM"
"""``true`` (default): on SIGTERM, when the application has no handler, flush within the bound, then die."""

OTEL_EDA_SPAN_EVENTS: Final = "OTEL_EDA_SPAN_EVENTS"
"""``true``: lifecycle stage span events (``eda.received``, ``eda.completed``, ...) on process
spans, for debugging (default false: the outcome and the time in queue are span attributes)."""

OTEL_EDA_PROCESS_SPAN_MAX_S: Final = "OTEL_EDA_PROCESS_SPAN_MAX_S"
"""Longest a pull consumer's process span stays open when the application asks for no next
message, commits, seeks or closes: it is ended then, marked ``eda.process.truncated`` (default 30)."""

OTEL_EDA_SETTLE_SPANS: Final = "OTEL_EDA_SETTLE_SPANS"
"""``true``: an explicit ack/nack/reject/commit gets a ``settle {destination}`` CLIENT span
(default false; automatic settlement never gets one)."""

OTEL_EDA_CLOUDEVENTS: Final = "OTEL_EDA_CLOUDEVENTS"
"""``off``, ``read`` (default: an incoming binary-mode CloudEvent keeps its id, type and time)
or ``write`` (also write CloudEvents headers on every published event)."""

OTEL_EDA_CLOUDEVENTS_SOURCE: Final = "OTEL_EDA_CLOUDEVENTS_SOURCE"
"""The CloudEvents ``source`` of published events (default ``/<service.name>``)."""

OTEL_EDA_METADATA_ATTRIBUTES: Final = "OTEL_EDA_METADATA_ATTRIBUTES"
"""Comma-separated event metadata keys put onto process and publish spans as
``eda.metadata.<key>`` (default: none; metadata always reaches the handler)."""

OTEL_EDA_LOG_CORRELATION: Final = "OTEL_EDA_LOG_CORRELATION"
"""``true`` (default): every ``logging`` record carries the current event's ids (``eda_*`` fields)."""

OTEL_EDA_LOG_LIFECYCLE: Final = "OTEL_EDA_LOG_LIFECYCLE"
"""``off``, ``failures`` (default) or ``all``: which lifecycle stages otel-eda logs."""

OTEL_EDA_EXCEPTION_DETAIL: Final = "OTEL_EDA_EXCEPTION_DETAIL"
"""``type``, ``message`` (default) or ``full``: how much of an exception otel-eda writes."""

OTEL_EDA_REDACT_PATTERNS: Final = "OTEL_EDA_REDACT_PATTERNS"
"""Comma-separated patterns redacted from what otel-eda writes: ``card_number``, ``email`` or regexes."""

OTEL_EDA_REDACT_PATTERNS_FILE: Final = "OTEL_EDA_REDACT_PATTERNS_FILE"
"""A file of patterns to redact, one a line (``card_number``, ``email`` or a regex; ``#`` comments)."""

OTEL_EDA_FLOW_ZIPKIN_URL: Final = "OTEL_EDA_FLOW_ZIPKIN_URL"
"""``otel-eda flow``: Zipkin's base URL, e.g. ``http://127.0.0.1:9411`` (default: none)."""

OTEL_EDA_FLOW_JAEGER_URL: Final = "OTEL_EDA_FLOW_JAEGER_URL"
"""``otel-eda flow``: Jaeger's query service base URL, e.g. ``http://127.0.0.1:16686`` (default: none)."""

OTEL_EDA_FLOW_FILE: Final = "OTEL_EDA_FLOW_FILE"
"""``otel-eda flow``: span files or directories, separated by ``os.pathsep`` (default: none)."""

OTEL_EDA_FLOW_LOOKBACK: Final = "OTEL_EDA_FLOW_LOOKBACK"
"""``otel-eda flow``: seconds back from now that a Zipkin or Jaeger search covers (default 86400)."""

OTEL_EDA_NATS_MSG_ID: Final = "OTEL_EDA_NATS_MSG_ID"
"""``true``: the NATS instrumentation sets JetStream's ``Nats-Msg-Id`` header to the event id on
every JetStream publish without one, so the stream de-duplicates a republished event (default false)."""
