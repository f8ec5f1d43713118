"""otel-eda's broker instrumentation replaces the contrib one when both are installed.

Two instrumentations of one client would write two producer spans per message and inject
the trace context twice. Three places make otel-eda's win, whatever the load order:

* :meth:`ContribReplacement.disable_contrib_before_load`, called by otel-eda's distro before
  ``opentelemetry-instrument`` loads the instrumentors: adds the contrib entry point's name
  to ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``, so the contrib one never loads (logged once,
  at INFO);
* :meth:`ContribReplacement.uninstrument_contrib`, called by otel-eda's instrumentor before
  it wraps: undoes a contrib instrumentation already applied (another distro ran, or the
  application called it);
* :meth:`ContribReplacement.after_instrumentors` from otel-eda's
  ``opentelemetry_post_instrument`` hook: undoes a contrib instrumentation loaded after
  otel-eda's (its wrappers are then the outer ones, and unwrapping them leaves otel-eda's in
  place).

Nothing happens when the user disabled otel-eda's instrumentation (its entry point's name in
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``): the contrib one then runs. Each broker package's
``contrib`` module holds one :class:`ContribReplacement` and exposes its three methods.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Final

__all__ = ["ContribReplacement"]

_DISABLED: Final = "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _instrumentor(path: str) -> object:
    """The instrumentor named ``module:Class`` (a singleton, as every BaseInstrumentor)."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)()


@dataclass
class ContribReplacement:
    """How otel-eda's instrumentation of one client keeps the contrib one out.

    >>> r = ContribReplacement("aiokafka", "otel_eda_aiokafka", "aiokafka",
    ...     "opentelemetry.instrumentation.aiokafka:AIOKafkaInstrumentor",
    ...     "otel_eda.transports.aiokafka.instrumentor:AIOKafkaInstrumentor", __name__)
    >>> environ = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "otel_eda_aiokafka"}
    >>> r.disable_contrib_before_load(environ)
    False
    """

    #: the client's name as its distribution and module spell it (``aio-pika`` / ``aio_pika``)
    client: str
    #: otel-eda's and the contrib's names in the ``opentelemetry_instrumentor`` group
    entry_point: str
    contrib_entry_point: str
    #: ``module:Class`` of the contrib instrumentor and of otel-eda's
    contrib_instrumentor: str
    instrumentor: str
    #: the logger of the broker package's ``contrib`` module
    logger_name: str
    #: whether the replacement was logged (once per process)
    logged: bool = False

    @property
    def _contrib_module(self) -> str:
        return self.contrib_instrumentor.split(":")[0]

    def _log_once(self, how: str) -> None:
        if not self.logged:
            self.logged = True
            logging.getLogger(self.logger_name).info(
                "otel-eda's %s instrumentation (%s) replaces opentelemetry-instrumentation-%s: %s",
                self.client,
                self.entry_point,
                self.contrib_entry_point,
                how,
            )

    def disable_contrib_before_load(self, environ: MutableMapping[str, str] | None = None) -> bool:
        """Add the contrib entry point to ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` when both
        instrumentations are installed and otel-eda's is not disabled. Returns whether it did."""
        env = os.environ if environ is None else environ
        disabled = [name.strip() for name in env.get(_DISABLED, "").split(",") if name.strip()]
        if "*" in disabled or self.entry_point in disabled or self.contrib_entry_point in disabled:
            return False
        # otel-eda's entry point is installed with otel-eda; the contrib one where its module is (a
        # module lookup costs far less than scanning every distribution's entry points at start-up)
        if not _installed(self.client.replace("-", "_")) or not _installed(self._contrib_module):
            return False
        env[_DISABLED] = ",".join([*disabled, self.contrib_entry_point])
        self._log_once(f"added {self.contrib_entry_point!r} to {_DISABLED}")
        return True

    def uninstrument_contrib(self) -> bool:
        """Undo the contrib instrumentation if it is applied. Returns whether it was."""
        if self._contrib_module not in sys.modules:  # never imported: nothing to undo, no import cost
            return False
        try:
            contrib = _instrumentor(self.contrib_instrumentor)
            if not contrib.is_instrumented_by_opentelemetry:  # type: ignore[attr-defined]
                return False
            contrib.uninstrument()  # type: ignore[attr-defined]
        except Exception:
            logging.getLogger(self.logger_name).warning(
                "otel-eda could not undo the contrib %s instrumentation", self.client, exc_info=True
            )
            return False
        self._log_once("uninstrumented it")
        return True

    def after_instrumentors(self) -> None:
        """The ``opentelemetry_post_instrument`` hook: undo a contrib instrumentation loaded
        after otel-eda's (only when otel-eda's is applied)."""
        if self.instrumentor.split(":")[0] not in sys.modules:
            return
        if _instrumentor(self.instrumentor).is_instrumented_by_opentelemetry:  # type: ignore[attr-defined]
            self.uninstrument_contrib()
