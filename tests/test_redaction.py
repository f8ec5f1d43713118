"""The redaction policy (issue 21): OTEL_EDA_EXCEPTION_DETAIL and redaction patterns."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from otel_eda import redaction
from otel_eda._selfmetrics import internal_error
from otel_eda.redaction import REDACTED, Redaction
from otel_eda.settings import ExceptionDetail, Settings

CARD = "4111 1111 1111 1111"


def _raised(message: str) -> ValueError:
    try:
        raise ValueError(message)
    except ValueError as exc:
        return exc


@pytest.mark.parametrize(
    ("detail", "keys"),
    [
        ("type", {"exception.type"}),
        ("message", {"exception.type", "exception.message"}),
        ("full", {"exception.type", "exception.message", "exception.stacktrace"}),
    ],
)
def test_the_detail_level_decides_what_is_written(detail: str, keys: set[str]) -> None:
    exc = _raised(f"card {CARD} declined")
    attributes = Redaction(ExceptionDetail(detail)).exception_attributes(exc)
    assert set(attributes) == keys
    assert attributes["exception.type"] == "ValueError"
    if detail == "full":
        assert "_raised" in attributes["exception.stacktrace"]  # a real traceback


def test_patterns_apply_to_messages_and_stacktraces() -> None:
    policy = Redaction(ExceptionDetail.FULL, ("card_number", "email", r"order-\d+"))
    exc = _raised(f"card {CARD} of ann.lee@example.co.uk for order-991 declined")
    attributes = policy.exception_attributes(exc)
    for text in (attributes["exception.message"], attributes["exception.stacktrace"]):
        assert CARD not in text and "ann.lee@example.co.uk" not in text and "order-991" not in text
        assert text.count(REDACTED) >= 3
    assert policy.describe(exc) == f"ValueError: card {REDACTED} of {REDACTED} for {REDACTED} declined"


@pytest.mark.parametrize(
    "number", ["4111111111111111", "4111-1111-1111-1111", "5500 0000 0000 0004", "378282246310005"]
)
def test_card_numbers_in_their_usual_spellings_are_redacted(number: str) -> None:
    assert Redaction(patterns=("card_number",)).text(f"pan={number};") == f"pan={REDACTED};"


@pytest.mark.parametrize("text", ["order 1234567890123 shipped", "at 1700000000000000000 ns", "id 4111111111111112"])
def test_long_numbers_that_fail_the_luhn_check_are_kept(text: str) -> None:
    assert Redaction(patterns=("card_number",)).text(text) == text


def test_under_type_nothing_of_the_message_is_written() -> None:
    policy = Redaction(ExceptionDetail.TYPE, ("card_number",))
    exc = _raised(f"card {CARD}")
    assert policy.message(exc) is None and policy.stacktrace(exc) is None
    assert policy.describe(exc) == "ValueError"


def test_long_and_unprintable_messages_are_bounded() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    policy = Redaction()
    assert policy.message(Unprintable()) == "<unprintable>"
    assert len(policy.message(ValueError("x" * 10_000)) or "") == redaction.MAX_MESSAGE_LENGTH + 3


def test_settings_read_the_variables_and_a_patterns_file(tmp_path: Path) -> None:
    file = tmp_path / "patterns.txt"
    file.write_text("# ours\nemail\n\\bsecret-\\w+\n")
    s = Settings.from_environ(
        {
            "OTEL_EDA_EXCEPTION_DETAIL": "type",
            "OTEL_EDA_REDACT_PATTERNS": r"card_number, \d{3\,4}-x",
            "OTEL_EDA_REDACT_PATTERNS_FILE": str(file),
        }
    )
    assert s.errors == ()
    assert s.exception_detail is ExceptionDetail.TYPE
    assert s.redact_patterns == ("card_number", r"\d{3,4}-x", "email", r"\bsecret-\w+")
    policy = redaction.policy(s)
    assert policy.text("secret-abc 123-x a@b.io") == f"{REDACTED} {REDACTED} {REDACTED}"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_EDA_EXCEPTION_DETAIL", "everything"),
        ("OTEL_EDA_REDACT_PATTERNS", "card_number, ("),
        ("OTEL_EDA_REDACT_PATTERNS", ".*"),  # matches the empty string: would redact everything
        ("OTEL_EDA_REDACT_PATTERNS_FILE", "/nonexistent/patterns"),
        ("OTEL_EDA_LOG_LIFECYCLE", "loud"),
        ("OTEL_EDA_LOG_CORRELATION", "yes"),
    ],
)
def test_an_invalid_value_is_reported_and_the_default_used(variable: str, value: str) -> None:
    s = Settings.from_environ({variable: value})
    (error,) = s.errors
    assert error.variable == variable
    assert s.redact_patterns == () and s.exception_detail is ExceptionDetail.MESSAGE


def test_internal_errors_follow_the_policy(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    for detail, expect_message, expect_traceback in (("type", False, False), ("message", True, True)):
        monkeypatch.setenv("OTEL_EDA_EXCEPTION_DETAIL", detail)
        monkeypatch.setenv("OTEL_EDA_REDACT_PATTERNS", "card_number")
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="otel_eda"):
            try:
                raise ValueError(f"declined {CARD} for payment")
            except ValueError:
                internal_error("dead-letter handler", "handling a dead letter")
        (record,) = caplog.records
        text = caplog.text
        assert CARD not in text
        assert record.exc_info is None  # the traceback is written redacted, not re-rendered by handlers
        assert ("for payment" in text) is expect_message, detail
        assert ("Traceback" in text) is expect_traceback, detail
        assert "ValueError" in text


# -- end to end: a handler raises with a card number in its message -------------------------------

LEAK = """
import asyncio, logging, sys
import otel_eda
from otel_eda import EventBus, RetryPolicy, Rejected
from otel_eda.transports.interprocess import RecordForwarder

logging.basicConfig(stream=sys.stderr, level=logging.DEBUG, format="%(levelname)s %(name)s %(message)s")
otel_eda.configure()


async def main() -> None:
    async with EventBus(service="shop", retry=RetryPolicy(2, 0.0)) as bus:
        def charge(delivery):
            raise ValueError(f"card {delivery.payload['card']} declined")

        def refuse(delivery):
            raise Rejected(f"card {delivery.payload['card']} refused")

        def broken_dead_letter_handler(letter):
            raise RuntimeError(f"could not park {letter!r}")

        bus.subscribe("order_placed", charge, subscriber="payment")
        bus.subscribe("order_placed", refuse, subscriber="fraud")
        bus.subscribe_dead_letters(broken_dead_letter_handler)
        event = await bus.publish("order_placed", {"card": "4111 1111 1111 1111"}, business_key="order-1")
        await bus.join()
        print(bus.store.render_flow(event.correlation_id))
        for letter in bus.dead_letters:
            print(repr(letter), str(letter))
        for summary in bus.store.flow(event.correlation_id):
            print(repr(summary))


asyncio.run(main())
"""


def _leak_run(tmp_path: Path, detail: str) -> str:
    import os
    import subprocess
    import sys

    script = tmp_path / "leak.py"
    script.write_text(LEAK)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="console",
        OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED="true",
        OTEL_EDA_EXCEPTION_DETAIL=detail,
        OTEL_EDA_LOG_LIFECYCLE="all",
        OTEL_SERVICE_NAME="shop",
    )
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_under_type_the_card_number_appears_nowhere_otel_eda_writes(tmp_path: Path) -> None:
    """Exported spans, OTel log records, lifecycle logs, the store's rendering, dead letters
    (fields, repr), otel-eda's own stderr output: everything the script prints."""
    written = _leak_run(tmp_path, "type")
    assert "exception.type" in written and "dead_lettered" in written and "ValueError" in written  # it ran
    assert "4111 1111 1111 1111" not in written, [line for line in written.splitlines() if "4111" in line]


def test_under_message_the_same_run_shows_it(tmp_path: Path) -> None:
    """The control: the test above can fail (the number is there when the policy allows it)."""
    assert "4111 1111 1111 1111" in _leak_run(tmp_path, "message")


def test_exceptions_of_alert_callbacks_and_detectors_follow_the_policy(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Alerts: an alert callback or a detector is the application's code, and its exception
    is written like a handler's (type only under ``type``, redacted with patterns)."""
    import time

    from otel_eda.anomaly.alerts import Alert, AlertState, Severity
    from otel_eda.anomaly.callbacks import CallbackSink
    from otel_eda.anomaly.registry import GuardedDetector

    alert = Alert(
        name="ErrorsHigh",
        rule="errors",
        severity=Severity.CRITICAL,
        state=AlertState.FIRING,
        series_labels={"service": "payment"},
        value=0.5,
        threshold=0.1,
        score=1.0,
        started_at=time.time(),
        ended_at=None,
        summary="errors 50%",
    )

    def callback(alert: Alert) -> None:
        raise ValueError(f"could not page about card {CARD}")

    class Leaky:
        score = 0.0
        is_anomaly = False

        def update(self, t: float, x: float) -> None:
            raise ValueError(f"card {CARD} in a series label")

    for detail, patterns, expect_message in (("type", "", False), ("message", "card_number", True)):
        monkeypatch.setenv("OTEL_EDA_EXCEPTION_DETAIL", detail)
        monkeypatch.setenv("OTEL_EDA_REDACT_PATTERNS", patterns)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="otel_eda"):
            CallbackSink(callback).send(alert)
            detector = GuardedDetector("leaky", Leaky())
            detector.update(1.0, 1.0)
            detector.update(2.0, 1.0)  # again: at DEBUG
        assert len(caplog.records) >= 3, caplog.text
        assert CARD not in caplog.text, detail
        assert all(record.exc_info is None for record in caplog.records)  # written redacted, not re-rendered
        assert ("could not page about card" in caplog.text) is expect_message, detail
        assert "ValueError" in caplog.text
