"""Logs that know their event: ids on log records, lifecycle logs.

* :mod:`~otel_eda.logs.correlation`: a log record factory putting the current event's ids
  (``eda_correlation_id``, ...) and the current span's ids on every ``logging`` record;
* :mod:`~otel_eda.logs.bridge`: a ``LogRecordProcessor`` for the OpenTelemetry SDK's
  logging bridge that turns them into ``eda.*`` attributes (imports the SDK: import it
  explicitly);
* :mod:`~otel_eda.logs.structured`: the same ids for ``structlog`` (a processor);
* :mod:`~otel_eda.logs.lifecycle`: a recorder logging lifecycle stages by level
  (``OTEL_EDA_LOG_LIFECYCLE``).

``configure()`` installs all of it (``OTEL_EDA_LOG_CORRELATION=false`` leaves the
factory and the processor out).
"""
