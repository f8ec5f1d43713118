"""Wrapping a client library's methods in place, and undoing it (``uninstrument()``).

The wrapper keeps the method it replaced under :data:`MARK`, so undoing needs no table of
originals, and a method some other code replaced after us is left as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Final

__all__ = ["MARK", "patch", "unpatch"]

#: The attribute of a wrapper that holds the method it replaced.
MARK: Final = "__otel_eda_original__"


def patch(cls: type, name: str, wrapper: Callable[..., Any]) -> None:
    """Replace ``cls.name`` (defined on ``cls`` itself) with ``wrapper``.

    >>> class Client:
    ...     def send(self) -> str:
    ...         return "sent"
    >>> patch(Client, "send", lambda self: "wrapped " + getattr(Client.send, MARK)(self))
    >>> Client().send()
    'wrapped sent'
    >>> unpatch(Client, "send")
    >>> Client().send()
    'sent'
    """
    original = cls.__dict__[name]
    functools.update_wrapper(wrapper, original)
    setattr(wrapper, MARK, original)
    setattr(cls, name, wrapper)


def unpatch(cls: type, name: str) -> None:
    """Put back what :func:`patch` replaced on ``cls.name``, if it is still our wrapper."""
    current = cls.__dict__.get(name)
    original = getattr(current, MARK, None)
    if original is not None:
        setattr(cls, name, original)
