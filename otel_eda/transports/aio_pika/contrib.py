"""otel-eda's aio-pika instrumentation replaces the contrib one when both are installed.

Two instrumentations of one client would write two producer spans per record and inject
the trace context twice. Three places make otel-eda's win, whatever the load order:

* :func:`disable_contrib_before_load`, called by otel-eda's distro before
  ``opentelemetry-instrument`` loads the instrumentors: adds the contrib entry point's name
  (``aio-pika``) to ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``, so the contrib one never loads
  (logged once, at INFO);
* :func:`uninstrument_contrib`, called by otel-eda's instrumentor before it wraps: undoes a
  contrib instrumentation already applied (another distro ran, or the application called
  it);
* :func:`uninstrument_contrib` again from otel-eda's ``opentelemetry_post_instrument`` hook:
  undoes a contrib instrumentation loaded after otel-eda's (its wrappers are then the
  outer ones, and unwrapping them leaves otel-eda's in place).

Nothing happens when the user disabled otel-eda's instrumentation
(``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_eda_aio_pika``): the contrib one then runs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Final

__all__ = [
    "CONTRIB_ENTRY_POINT",
    "ENTRY_POINT",
    "after_instrumentors",
    "disable_contrib_before_load",
    "uninstrument_contrib",
]

_log = logging.getLogger(__name__)

#: otel-eda's and the contrib's names in the ``opentelemetry_instrumentor`` entry-point group.
ENTRY_POINT: Final = "otel_eda_aio_pika"
CONTRIB_ENTRY_POINT: Final = "aio-pika"
_CONTRIB_MODULE: Final = "opentelemetry.instrumentation.aio_pika"
_DISABLED: Final = "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"
_logged = False


def _log_once(how: str) -> None:
    global _logged
    if not _logged:
        _logged = True
        _log.info(
            "otel-eda's aio-pika instrumentation (%s) replaces opentelemetry-instrumentation-aio-pika: %s",
            ENTRY_POINT,
            how,
        )


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def disable_contrib_before_load(environ: MutableMapping[str, str] | None = None) -> bool:
    """Add ``aio-pika`` to ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` when both instrumentations
    are installed and otel-eda's is not disabled. Returns whether it did."""
    env = os.environ if environ is None else environ
    disabled = [name.strip() for name in env.get(_DISABLED, "").split(",") if name.strip()]
    if "*" in disabled or ENTRY_POINT in disabled or CONTRIB_ENTRY_POINT in disabled:
        return False
    # otel-eda's entry point is installed with otel-eda; the contrib one where its module is (a
    # module lookup costs far less than scanning every distribution's entry points at start-up)
    if not _installed("aio_pika") or not _installed(_CONTRIB_MODULE):
        return False
    env[_DISABLED] = ",".join([*disabled, CONTRIB_ENTRY_POINT])
    _log_once(f"added {CONTRIB_ENTRY_POINT!r} to {_DISABLED}")
    return True


def uninstrument_contrib() -> bool:
    """Undo the contrib aio-pika instrumentation if it is applied. Returns whether it was."""
    if _CONTRIB_MODULE not in sys.modules:  # never imported: nothing to undo, and no import cost
        return False
    try:
        from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor as ContribInstrumentor

        contrib = ContribInstrumentor()
        if not contrib.is_instrumented_by_opentelemetry:
            return False
        contrib.uninstrument()
    except Exception:
        _log.warning("otel-eda could not undo the contrib aio-pika instrumentation", exc_info=True)
        return False
    _log_once("uninstrumented it")
    return True


def after_instrumentors() -> None:
    """The ``opentelemetry_post_instrument`` hook: undo a contrib instrumentation loaded after
    otel-eda's (only when otel-eda's is applied)."""
    if "otel_eda.transports.aio_pika.instrumentor" not in sys.modules:
        return
    from otel_eda.transports.aio_pika.instrumentor import AioPikaInstrumentor

    if AioPikaInstrumentor().is_instrumented_by_opentelemetry:
        uninstrument_contrib()
