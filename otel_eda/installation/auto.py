"""Drop-in auto-instrumentation: ``opentelemetry-instrument python app.py``, no code change.

Three entry points, all built on :func:`otel_eda.configure`:

- ``opentelemetry_distro`` ``otel_eda`` (:class:`EdaDistro`): defaults
  ``OTEL_EXPORTER_OTLP_PROTOCOL`` to ``http/protobuf``, the exporter otel-eda[otlp] ships,
  and adds ``system_metrics`` to ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` (otel-eda
  instruments the host CPU and memory metrics it watches itself);
- ``opentelemetry_configurator`` ``otel_eda`` (:class:`EdaConfigurator`): the SDK's
  configuration from the ``OTEL_*`` variables (or ``OTEL_CONFIG_FILE``) plus otel-eda's
  span processor, link-aware sampler, anomaly reader and propagator;
- ``opentelemetry_post_instrument`` ``otel_eda`` (:func:`post_instrument`): when another
  configurator ran (``opentelemetry-distro``'s, say), adds what it did not install, and
  names in one WARNING what could not be added.

Select them with ``OTEL_PYTHON_DISTRO=otel_eda`` and ``OTEL_PYTHON_CONFIGURATOR=otel_eda``
(with only otel-eda installed they are the only ones). With ``OTEL_EDA_STRICT=true`` an
invalid configuration stops the program before it starts (exit status 78, ``EX_CONFIG``):
``opentelemetry-instrument`` would otherwise log the error and run the application anyway.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Final, NoReturn

from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]
from opentelemetry.instrumentation.environment_variables import OTEL_PYTHON_DISABLED_INSTRUMENTATIONS

from otel_eda.installation.configuration import ConfigurationError, complete_installed, configure, default_otlp_protocol
from otel_eda.transports.aio_pika.contrib import disable_contrib_before_load as disable_contrib_aio_pika
from otel_eda.transports.aiokafka.contrib import disable_contrib_before_load
from otel_eda.transports.confluent_kafka.contrib import disable_contrib_before_load as disable_contrib_confluent_kafka
from otel_eda.transports.pika.contrib import disable_contrib_before_load as disable_contrib_pika

__all__ = ["EdaConfigurator", "EdaDistro", "post_instrument"]

_log = logging.getLogger(__name__)

#: Exit status of a start-up stopped by OTEL_EDA_STRICT=true (sysexits.h EX_CONFIG).
EXIT_CONFIG: Final = 78


class EdaDistro(BaseDistro):  # type: ignore[misc]
    """Environment defaults for otel-eda under ``opentelemetry-instrument``."""

    def _configure(self, **kwargs: Any) -> None:
        default_otlp_protocol()
        # otel-eda instruments host metrics itself, with the few it watches: keep the
        # auto-loaded system_metrics instrumentor (every metric, and a warning) out
        disabled = [
            p.strip() for p in os.environ.get(OTEL_PYTHON_DISABLED_INSTRUMENTATIONS, "").split(",") if p.strip()
        ]
        if "*" not in disabled and "system_metrics" not in disabled:
            os.environ[OTEL_PYTHON_DISABLED_INSTRUMENTATIONS] = ",".join([*disabled, "system_metrics"])
        # otel-eda's broker instrumentations replace the contrib ones: keep those from loading
        disable_contrib_aio_pika()
        disable_contrib_pika()
        disable_contrib_before_load()
        disable_contrib_confluent_kafka()


class EdaConfigurator:
    """The SDK's own configuration plus otel-eda's pieces (see :func:`otel_eda.configure`).

    ``opentelemetry-instrument`` builds the ``opentelemetry_configurator`` entry point and
    calls its ``configure(auto_instrumentation_version=...)``; the SDK's private
    ``_BaseConfigurator`` adds nothing otel-eda needs (``configure()`` is idempotent).
    """

    def configure(self, **kwargs: Any) -> None:
        _configure_or_stop(kwargs.get("auto_instrumentation_version"))


def post_instrument() -> None:
    """Complete what the chosen configurator installed; idempotent after EdaConfigurator."""
    try:
        complete_installed()
    except ConfigurationError as exc:
        _stop(exc)


def _configure_or_stop(version: str | None) -> None:
    try:
        configure(auto_instrumentation_version=version)
    except ConfigurationError as exc:
        _stop(exc)


def _stop(exc: ConfigurationError) -> NoReturn:
    # opentelemetry-instrument swallows exceptions from distros, configurators and hooks,
    # and a SystemExit in sitecustomize is a "Fatal Python error": exit cleanly instead.
    _log.critical("%s: the application is not started", exc)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_CONFIG)
