"""How otel-eda keeps the contrib pika instrumentation out (no broker needed)."""

from __future__ import annotations

import logging

import pytest

from otel_eda.transports.pika import contrib


def test_the_distro_disables_the_contrib_entry_point_and_says_so_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(contrib.REPLACEMENT, "logged", False)
    caplog.set_level(logging.INFO, logger=contrib.__name__)
    first: dict[str, str] = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "urllib"}
    second: dict[str, str] = {}
    assert contrib.disable_contrib_before_load(first) is True
    assert contrib.disable_contrib_before_load(second) is True
    assert first["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] == "urllib,pika"
    assert second["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] == "pika"
    messages = [r.getMessage() for r in caplog.records if r.name == contrib.__name__]
    assert len(messages) == 1 and "replaces opentelemetry-instrumentation-pika" in messages[0]


@pytest.mark.parametrize("disabled", ["otel_eda_pika", "*", "pika", "requests, otel_eda_pika"])
def test_nothing_changes_when_either_is_disabled_already(disabled: str) -> None:
    environ = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": disabled}
    assert contrib.disable_contrib_before_load(environ) is False
    assert environ == {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": disabled}
