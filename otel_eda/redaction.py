"""The redaction policy: how much of an exception otel-eda writes, and which text it hides.

Payloads never go onto spans or log records. Exception messages do, by OpenTelemetry
convention, and handlers often put payload values into them (``raise ValueError(f"card
{number} declined")``). Everything otel-eda writes about an exception (the ``exception``
span event, lifecycle log records, dead letters, internal-error logs, ``repr``\\ s) goes
through one :class:`Redaction`:

* ``OTEL_EDA_EXCEPTION_DETAIL``: ``type`` writes the exception's type only (no
  ``exception.message``, no ``exception.stacktrace``); ``message`` (default) its type and
  message; ``full`` its type, message and stacktrace;
* ``OTEL_EDA_REDACT_PATTERNS`` / ``OTEL_EDA_REDACT_PATTERNS_FILE``: patterns replaced by
  ``[REDACTED]`` in every message and stacktrace otel-eda writes: ``card_number``
  (13-19 digits, spaces or dashes between them, passing the Luhn check), ``email``, or
  any regex.

Records of the application's own loggers are the application's: this policy does not
rewrite them.

>>> policy = Redaction(ExceptionDetail.MESSAGE, ("card_number", "email"))
>>> policy.describe(ValueError("card 4111 1111 1111 1111 of ann@example.com declined"))
'ValueError: card [REDACTED] of [REDACTED] declined'
>>> Redaction(ExceptionDetail.TYPE).exception_attributes(KeyError("secret"))
{'exception.type': 'KeyError'}
>>> policy.text("order 1234567890123 shipped")  # not a card number: fails the Luhn check
'order 1234567890123 shipped'
"""

from __future__ import annotations

import functools
import re
import traceback
from collections.abc import Callable, Iterable
from typing import Final

from otel_eda import semconv
from otel_eda.settings import ExceptionDetail, Settings

__all__ = [
    "REDACTED",
    "Redaction",
    "describe_exception",
    "exception_attributes",
    "exception_message",
    "exception_type",
    "policy",
    "redact",
]

#: What a redacted match is replaced by.
REDACTED: Final = "[REDACTED]"
#: Characters of an exception message written at most (the rest becomes "...").
MAX_MESSAGE_LENGTH: Final = 1024
#: Characters of a stacktrace written at most (``full`` only).
MAX_STACKTRACE_LENGTH: Final = 32_768

_CARD_NUMBER: Final = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?!\d)")
_EMAIL: Final = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_number(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group())
    return REDACTED if _luhn(digits) else match.group()


def _replacer(entry: str) -> Callable[[str], str]:
    if entry == "card_number":
        return functools.partial(_CARD_NUMBER.sub, _card_number)
    pattern = _EMAIL if entry == "email" else re.compile(entry)
    return functools.partial(pattern.sub, REDACTED)


def exception_type(exc: BaseException) -> str:
    """The fully qualified class name of an exception (``exception.type``, ``error.type``)."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class Redaction:
    """One redaction policy: an exception detail level and the patterns to hide.

    ``patterns`` are built-in names (``card_number``, ``email``) or regexes (an invalid
    one raises ``re.error``: :mod:`otel_eda.settings` validates the variables' entries).
    """

    __slots__ = ("_replacers", "detail", "patterns")

    def __init__(self, detail: ExceptionDetail = ExceptionDetail.MESSAGE, patterns: Iterable[str] = ()) -> None:
        self.detail = ExceptionDetail(detail)
        self.patterns = tuple(patterns)
        self._replacers = tuple(_replacer(p) for p in self.patterns)

    def text(self, text: str) -> str:
        """``text`` with every pattern replaced by ``[REDACTED]``."""
        for replace in self._replacers:
            text = replace(text)
        return text

    def message(self, exc: BaseException) -> str | None:
        """The exception's message as otel-eda writes it; ``None`` under ``type``."""
        if self.detail is ExceptionDetail.TYPE:
            return None
        try:
            text = str(exc)
        except Exception:
            return "<unprintable>"
        if len(text) > MAX_MESSAGE_LENGTH:
            text = text[:MAX_MESSAGE_LENGTH] + "..."
        return self.text(text)

    def stacktrace(self, exc: BaseException) -> str | None:
        """The formatted traceback (redacted) under ``full``; ``None`` otherwise."""
        if self.detail is not ExceptionDetail.FULL:
            return None
        try:
            text = "".join(traceback.format_exception(exc))
        except Exception:
            return None
        if len(text) > MAX_STACKTRACE_LENGTH:
            text = "..." + text[-MAX_STACKTRACE_LENGTH:]
        return self.text(text)

    def describe(self, exc: BaseException) -> str:
        """``Type`` or ``Type: message``: one line for a log message or a ``repr``."""
        message = self.message(exc)
        name = exception_type(exc)
        return f"{name}: {message}" if message else name

    def exception_attributes(self, exc: BaseException) -> dict[str, str]:
        """The attributes of an ``exception`` span event (or log record) under this policy."""
        attributes = {semconv.EXCEPTION_TYPE: exception_type(exc)}
        message = self.message(exc)
        if message is not None:
            attributes[semconv.EXCEPTION_MESSAGE] = message
        stacktrace = self.stacktrace(exc)
        if stacktrace is not None:
            attributes[semconv.EXCEPTION_STACKTRACE] = stacktrace
        return attributes

    def __repr__(self) -> str:
        return f"Redaction({self.detail.value!r}, {self.patterns!r})"


@functools.lru_cache(maxsize=8)
def _policy(detail: ExceptionDetail, patterns: tuple[str, ...]) -> Redaction:
    return Redaction(detail, patterns)


def policy(settings: Settings | None = None) -> Redaction:
    """The policy of ``settings`` (default: the ``OTEL_EDA_*`` variables, parsed once)."""
    s = settings if settings is not None else Settings.from_environ()
    return _policy(s.exception_detail, s.redact_patterns)


def redact(text: str) -> str:
    """``text`` with the process's redaction patterns applied."""
    return policy().text(text)


def exception_message(exc: BaseException) -> str | None:
    """The exception's message under the process's policy (``None`` under ``type``)."""
    return policy().message(exc)


def describe_exception(exc: BaseException) -> str:
    """``Type`` or ``Type: message`` under the process's policy."""
    return policy().describe(exc)


def exception_attributes(exc: BaseException) -> dict[str, str]:
    """The ``exception`` span event attributes under the process's policy."""
    return policy().exception_attributes(exc)
