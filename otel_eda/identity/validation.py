"""Validation of identity values that arrive from outside the process.

Every value read from a message header or a baggage entry passes through here before
otel-eda stores, stamps or records it. A rejected value is never echoed: callers log the
field name, the reason and the length only.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_METADATA_ENTRIES",
    "MAX_METADATA_KEY_LENGTH",
    "MAX_METADATA_VALUE_LENGTH",
    "MAX_TYPE_LENGTH",
    "created_ns_problem",
    "id_problem",
    "metadata_key_problem",
    "metadata_value_problem",
    "type_problem",
    "valid_type",
]

MAX_ID_LENGTH: Final = 128
MAX_TYPE_LENGTH: Final = 128
MAX_CREATED_NS_DIGITS: Final = 20
#: Metadata of one event: at most this many entries ...
MAX_METADATA_ENTRIES: Final = 16
#: ... with keys of at most 64 characters (lower-case letters, digits, ``_ . -``: they
#: travel as header names ``eda-meta-<key>``, which HTTP lower-cases) ...
MAX_METADATA_KEY_LENGTH: Final = 64
#: ... and values of at most 256 printable characters.
MAX_METADATA_VALUE_LENGTH: Final = 256

# ids: UUIDs and the usual upstream correlation-id shapes; no spaces, no separators that
# have a meaning in headers or baggage (',', ';', '=', '"'), no control characters.
_ID_RE: Final = re.compile(r"[A-Za-z0-9._:\-]+")
# event types and business keys may also use '/' and '@'.
_TYPE_RE: Final = re.compile(r"[A-Za-z0-9._:/@\-]+")
_METADATA_KEY_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.\-]*")


def _problem(value: object, pattern: re.Pattern[str], max_length: int) -> str | None:
    if not isinstance(value, str):
        return "not_a_string"
    if not value:
        return "empty"
    if len(value) > max_length:
        return "too_long"
    if pattern.fullmatch(value) is None:
        return "bad_characters"
    return None


def id_problem(value: object) -> str | None:
    """Why ``value`` is not a valid event, correlation or causation id (``None`` if it is).

    >>> id_problem("0190f0c2-7a3e-7d51-9b1c-2f0e8a6d4c11") is None
    True
    >>> id_problem("abc\\r\\nSet-Cookie: x")
    'bad_characters'
    """
    return _problem(value, _ID_RE, MAX_ID_LENGTH)


def type_problem(value: object) -> str | None:
    """Why ``value`` is not a valid event type or business key (``None`` if it is)."""
    return _problem(value, _TYPE_RE, MAX_TYPE_LENGTH)


def valid_type(value: object) -> bool:
    return type_problem(value) is None


def created_ns_problem(value: object) -> str | None:
    """Why a creation-time header (decimal epoch nanoseconds) is not valid."""
    if not isinstance(value, str):
        return "not_a_string"
    if not value:
        return "empty"
    if len(value) > MAX_CREATED_NS_DIGITS:
        return "too_long"
    if not (value.isascii() and value.isdigit()):
        return "bad_characters"
    return None


def metadata_key_problem(value: object) -> str | None:
    """Why ``value`` is not a valid metadata key (``None`` if it is).

    >>> metadata_key_problem("tenant"), metadata_key_problem("Tenant"), metadata_key_problem("a b")
    (None, 'bad_characters', 'bad_characters')
    """
    return _problem(value, _METADATA_KEY_RE, MAX_METADATA_KEY_LENGTH)


def metadata_value_problem(value: object) -> str | None:
    """Why ``value`` is not a valid metadata value: printable text, no control characters."""
    if not isinstance(value, str):
        return "not_a_string"
    if len(value) > MAX_METADATA_VALUE_LENGTH:
        return "too_long"
    if not value.isprintable():
        return "bad_characters"
    return None
