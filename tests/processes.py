"""What a server process of the tests listens on (for the "127.0.0.1 only" checks)."""

from __future__ import annotations

import socket

import psutil

__all__ = ["listening_addresses"]


def listening_addresses(pid: int) -> set[tuple[str, str, int]]:
    """Every ``(protocol, ip, port)`` process ``pid`` listens on (TCP) or has bound (UDP)."""
    found: set[tuple[str, str, int]] = set()
    for conn in psutil.Process(pid).net_connections(kind="inet"):
        if conn.type == socket.SOCK_STREAM and conn.status == psutil.CONN_LISTEN:
            found.add(("tcp", conn.laddr.ip, conn.laddr.port))
        elif conn.type == socket.SOCK_DGRAM:
            found.add(("udp", conn.laddr.ip, conn.laddr.port))
    return found
