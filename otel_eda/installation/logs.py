"""What ``configure()`` installs for logs: ids on log records, their OpenTelemetry
attributes, lifecycle logs (see :mod:`otel_eda.logs`)."""

from __future__ import annotations

import threading

from opentelemetry import _logs

from otel_eda.flows import default_recorders
from otel_eda.logs.bridge import add_event_log_processor
from otel_eda.logs.correlation import install_log_correlation, uninstall_log_correlation
from otel_eda.logs.lifecycle import LifecycleLogger
from otel_eda.process_hooks import fresh_lock_in_child
from otel_eda.settings import LifecycleLogs, Settings

__all__ = ["install_logs", "lifecycle_logger", "uninstall_logs"]

_lock = threading.Lock()
fresh_lock_in_child(__name__)  # a thread of the parent may have held it at fork time
_lifecycle: LifecycleLogger | None = None


def install_logs(settings: Settings) -> None:
    """Install (idempotently) what ``settings`` ask for.

    ``OTEL_EDA_LOG_CORRELATION=true`` (default): the record factory, and the
    ``EventLogRecordProcessor`` on the global SDK ``LoggerProvider`` when there is one.
    ``OTEL_EDA_LOG_LIFECYCLE`` other than ``off``: a :class:`LifecycleLogger` among the
    process-wide recorders (:mod:`otel_eda.flows.default_recorders`); a changed setting
    replaces it.
    """
    global _lifecycle
    if settings.log_correlation:
        install_log_correlation()
        add_event_log_processor(_logs.get_logger_provider())
    with _lock:
        if _lifecycle is not None and _lifecycle.mode is not settings.log_lifecycle:
            default_recorders.uninstall(_lifecycle)
            _lifecycle = None
        if _lifecycle is None and settings.log_lifecycle is not LifecycleLogs.OFF:
            _lifecycle = LifecycleLogger(settings)
            default_recorders.install(_lifecycle)


def lifecycle_logger() -> LifecycleLogger | None:
    """The lifecycle logger ``configure()`` installed, if any."""
    return _lifecycle


def uninstall_logs() -> None:
    """Undo :func:`install_logs`: the lifecycle logger leaves the process-wide recorders and
    the record factory is restored (when no other factory wrapped it since)."""
    global _lifecycle
    with _lock:
        if _lifecycle is not None:
            default_recorders.uninstall(_lifecycle)
            _lifecycle = None
    uninstall_log_correlation()
