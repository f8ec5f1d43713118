"""Bounded shutdown of everything otel-eda installed, at exit and on SIGTERM.

The SDK's own shutdown waits up to 30 s for the batch span processor's thread, whose last
exports retry for each batch's full exporter timeout while a backend refuses or hangs
(OTLP: 10 s a batch, with back-off); the MeterProvider's final export does the same.
Kubernetes kills a pod 30 s after SIGTERM, and SIGTERM's default action skips ``atexit``
altogether, so spans were lost without a word. Here:

* :func:`shutdown` shuts the global TracerProvider, MeterProvider and LoggerProvider (and
  any anomaly reader attached to a provider) down side by side, each on a daemon thread,
  and waits for them at most ``OTEL_EDA_SHUTDOWN_TIMEOUT`` seconds (default 5) in all.
  A span pipeline still busy then is abandoned: its queued spans and its batch in flight
  are counted lost (``eda.export.spans.lost{eda.reason=shutdown}``), and its exporter is
  interrupted. One log line (WARNING when anything was lost, INFO otherwise) says what it
  flushed, what it could not, and the process's span losses by reason: the final total of
  the throttled loss warnings.
* :func:`take_over_exit` (called by ``configure()``) replaces the providers' own ``atexit``
  shutdown by this bounded one, registered in :mod:`otel_eda.process_hooks`.
* :func:`install_sigterm_handler` (called by ``configure()`` from the main thread) handles
  SIGTERM when the application has no handler of its own (the handler is ``SIG_DFL``):
  a bounded shutdown, then the default action (the process dies of SIGTERM, as it would
  have). ``OTEL_EDA_HANDLE_SIGTERM=false`` leaves SIGTERM alone. A handler the application
  installs later replaces otel-eda's; it should then call :func:`shutdown` itself.

``os._exit`` and SIGKILL run no code: what is queued then is lost uncounted. Nothing here
raises into the application.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from otel_eda import otel_internals
from otel_eda._selfmetrics import internal_error
from otel_eda.process_hooks import ExitHook, ForkHook, register_exit_hook, register_fork_hook
from otel_eda.sdk.exportloss import (
    REASONS,
    LossCountingSpanExporter,
    exporter_of,
    span_processors,
)
from otel_eda.settings import Settings

__all__ = ["ShutdownReport", "install_sigterm_handler", "shutdown", "take_over_exit"]

_log = logging.getLogger(__name__)

#: How long giving up may wait for a queue's lock (the signal handler's thread may hold it).
_LOCK_WAIT_S: Final = 0.1


@dataclasses.dataclass(frozen=True)
class ShutdownReport:
    """What one bounded shutdown did."""

    seconds: float
    timeout_s: float
    #: providers (and attached readers) that did not finish within the bound
    unfinished: tuple[str, ...]
    #: spans handed to exporters and accepted, over the process's life
    spans_exported: int
    #: spans still queued when the bound ran out (counted lost)
    spans_abandoned_queued: int
    #: spans in an export call when the bound ran out (counted lost)
    spans_abandoned_in_flight: int
    #: spans lost over the process's life, by reason (queue_full, export_failed, shutdown)
    spans_lost: dict[str, int]
    #: messages embedded buses still held, never handled (``eda.bus.unhandled``)
    messages_unhandled: int = 0

    @property
    def lost(self) -> int:
        return sum(self.spans_lost.values())

    def describe(self) -> str:
        lost = ", ".join(f"{reason} {self.spans_lost.get(reason, 0)}" for reason in REASONS)
        if self.unfinished:
            what = (
                f"gave up after {self.seconds:.1f} s (OTEL_EDA_SHUTDOWN_TIMEOUT={self.timeout_s:g}) on "
                f"{', '.join(self.unfinished)}; could not flush "
                f"{self.spans_abandoned_queued + self.spans_abandoned_in_flight} span(s) "
                f"({self.spans_abandoned_queued} queued, {self.spans_abandoned_in_flight} in an export)"
            )
        else:
            what = f"finished in {self.seconds:.2f} s"
        return (
            f"otel-eda shutdown {what}; spans exported {self.spans_exported}, "
            f"lost {self.lost} ({lost}; eda.export.spans.lost); "
            f"bus messages never handled {self.messages_unhandled} (eda.bus.unhandled)"
        )


_done: ShutdownReport | None = None
_shutdown_lock = threading.Lock()


def _fresh_in_child() -> None:
    global _done, _shutdown_lock
    _shutdown_lock = threading.Lock()  # the parent may have been shutting down at fork time
    _done = None  # the child's own providers are not shut down


register_fork_hook(ForkHook("bounded shutdown", after_in_child=_fresh_in_child))


def shutdown(timeout_s: float | None = None) -> ShutdownReport:
    """Shut down what otel-eda installed, within ``timeout_s`` (default ``OTEL_EDA_SHUTDOWN_TIMEOUT``).

    Idempotent: a second call returns the first call's report. Logs one line.
    """
    global _done
    if not _shutdown_lock.acquire(timeout=timeout_s if timeout_s is not None else 30.0):
        return _empty(timeout_s or 0.0)
    try:
        if _done is None:
            bound = timeout_s if timeout_s is not None else Settings.from_environ().shutdown_timeout_s
            _done = _bounded_shutdown(bound)
            level = logging.WARNING if _done.lost or _done.unfinished or _done.messages_unhandled else logging.INFO
            _log.log(level, "%s", _done.describe())
        return _done
    except Exception:
        internal_error("shutdown", "shutting down OpenTelemetry")
        return _empty(timeout_s or 0.0)
    finally:
        _shutdown_lock.release()


def _empty(timeout_s: float) -> ShutdownReport:
    return ShutdownReport(0.0, timeout_s, (), 0, 0, 0, dict.fromkeys(REASONS, 0))


def _bounded_shutdown(timeout_s: float) -> ShutdownReport:
    began = time.monotonic()
    deadline = began + timeout_s
    unhandled = _report_unhandled_messages()  # counted before the MeterProvider's last export
    tracer_provider = trace.get_tracer_provider()
    pipelines = [
        e for e in (exporter_of(p) for p in span_processors(tracer_provider)) if isinstance(e, LossCountingSpanExporter)
    ]
    tasks: dict[str, Callable[[], None]] = {}
    if isinstance(tracer_provider, TracerProvider):
        tasks[type(tracer_provider).__name__] = tracer_provider.shutdown
    meter_provider = metrics.get_meter_provider()
    if isinstance(meter_provider, MeterProvider) and not otel_internals.meter_provider_is_shut_down(meter_provider):
        millis = timeout_s * 1000
        tasks[type(meter_provider).__name__] = lambda: meter_provider.shutdown(timeout_millis=millis)
    for index, reader in enumerate(_attached_readers()):
        tasks[f"{type(reader).__name__}#{index}"] = reader.shutdown
    logger_provider = _sdk_logger_provider()
    if logger_provider is not None:
        tasks[type(logger_provider).__name__] = logger_provider.shutdown
    threads = {name: _start(name, task) for name, task in tasks.items()}
    for thread in threads.values():
        thread.join(max(0.0, deadline - time.monotonic()))
    unfinished = tuple(name for name, thread in threads.items() if thread.is_alive())
    queued = in_flight = 0
    if type(tracer_provider).__name__ in unfinished:
        for exporter in pipelines:
            _stop_batch_worker(tracer_provider, exporter)
            q, f = exporter.abandon(_LOCK_WAIT_S)
            queued += q
            in_flight += f
    lost = dict.fromkeys(REASONS, 0)
    for exporter in pipelines:
        for reason, count in exporter.tally.totals().items():
            lost[reason] += count
    return ShutdownReport(
        seconds=time.monotonic() - began,
        timeout_s=timeout_s,
        unfinished=unfinished,
        spans_exported=sum(e.exported for e in pipelines),
        spans_abandoned_queued=queued,
        spans_abandoned_in_flight=in_flight,
        spans_lost=lost,
        messages_unhandled=unhandled,
    )


def _report_unhandled_messages() -> int:
    try:
        from otel_eda.transports.bus import report_unhandled
    except ImportError:  # pragma: no cover
        return 0
    return report_unhandled()


def _start(name: str, task: Callable[[], None]) -> threading.Thread:
    def run() -> None:
        try:
            task()
        except Exception:
            internal_error("shutdown", f"shutting down {name}")

    thread = threading.Thread(target=run, name=f"otel-eda-shutdown-{name}", daemon=True)
    thread.start()
    return thread


def _stop_batch_worker(provider: object, exporter: LossCountingSpanExporter) -> None:
    """Tell the batch processor that feeds ``exporter`` to start no further export."""
    for processor in span_processors(provider):
        batch = otel_internals.batch_worker(processor)
        if batch is not None and otel_internals.worker_exporter(batch) is exporter:
            otel_internals.stop_worker_exports(batch)


def _attached_readers() -> list[Any]:
    from otel_eda.anomaly.reader import _attached

    return list(_attached)


def _sdk_logger_provider() -> Any:
    try:
        from opentelemetry import _logs
        from opentelemetry.sdk._logs import LoggerProvider
    except ImportError:  # pragma: no cover
        return None
    provider = _logs.get_logger_provider()
    return provider if isinstance(provider, LoggerProvider) else None


# -- at exit ---------------------------------------------------------------------------

_exit_hook: ExitHook | None = None


def take_over_exit() -> None:
    """Run the bounded :func:`shutdown` at interpreter exit instead of the providers' own."""
    global _exit_hook
    import atexit

    for provider, attribute in (
        (trace.get_tracer_provider(), "_atexit_handler"),
        (metrics.get_meter_provider(), "_atexit_handler"),
        (_sdk_logger_provider(), "_at_exit_handler"),
    ):
        handler = getattr(provider, attribute, None)
        if handler is not None:
            atexit.unregister(handler)
            setattr(provider, attribute, None)
    if _exit_hook is None:
        _exit_hook = register_exit_hook(ExitHook("bounded shutdown", _shutdown_at_exit))


def _shutdown_at_exit() -> None:
    shutdown()


# -- SIGTERM ---------------------------------------------------------------------------

_installed_handler: Callable[[int, FrameType | None], None] | None = None


def install_sigterm_handler(settings: Settings) -> bool:
    """Handle SIGTERM (bounded shutdown, then the default action) if nobody else does.

    Only from the main thread, only when SIGTERM's handler is ``SIG_DFL``, and not with
    ``OTEL_EDA_HANDLE_SIGTERM=false``. Returns whether otel-eda's handler is in place.
    """
    global _installed_handler
    if not settings.handle_sigterm or not hasattr(signal, "SIGTERM"):
        return False
    try:
        current = signal.getsignal(signal.SIGTERM)
        if _installed_handler is not None and current is _installed_handler:
            return True
        if current is not signal.SIG_DFL or threading.current_thread() is not threading.main_thread():
            _log.debug("otel-eda leaves SIGTERM alone (handler %r, or not the main thread)", current)
            return False
        _installed_handler = _on_sigterm
        signal.signal(signal.SIGTERM, _on_sigterm)
        return True
    except (ValueError, OSError):  # not the main interpreter, or no signals here
        return False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    shutdown()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)  # the default action: the process ends by SIGTERM
