"""The id generator and the bus after ``os.fork()`` (POSIX only).

Issue 2, section 14. A forked child inherits the generator's state: without the
``register_at_fork`` reseed (``otel_eda/ids.py``), parent and child would produce the same
ids in the same millisecond. The children here are kept minimal (pytest and other tests may
have threads alive at fork time): they compute, write a result to a pipe and leave with
``os._exit``, never returning into pytest.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Callable

import pytest

from otel_eda.identity import ids
from otel_eda.identity.ids import new_event_id, timestamp_ms
from otel_eda.identity.validation import id_problem

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

N = 10_000
CHILD_TIMEOUT_S = 30.0


def _in_child(work: Callable[[], object]) -> tuple[int, int]:
    """Fork; the child runs ``work`` and writes its JSON result to a pipe. Returns (pid, read end)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller
        code = 70
        try:
            os.close(read_fd)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's handler
            signal.alarm(int(CHILD_TIMEOUT_S))  # alarms are not inherited: set our own
            data = json.dumps(work()).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view) :]
            code = 0
        except BaseException:
            code = 71
        finally:
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def _collect(pid: int, read_fd: int) -> tuple[int, object]:
    chunks = []
    with os.fdopen(read_fd, "rb") as pipe:
        while chunk := pipe.read(1 << 16):
            chunks.append(chunk)
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child did not exit")
        time.sleep(0.01)
    data = b"".join(chunks)
    return os.waitstatus_to_exitcode(status), (json.loads(data) if data else None)


def _assert_uuid7_sequence(values: list[str]) -> None:
    assert all(id_problem(v) is None and len(v) == 36 and v[14] == "7" and v[19] in "89ab" for v in values)
    assert all(a < b for a, b in itertools.pairwise(values)), "ids are not monotonic"
    stamps = [timestamp_ms(v) for v in values]
    assert stamps == sorted(stamps)


def _generate(make: Callable[[], str]) -> list[str]:
    return [make() for _ in range(N)]


def test_ids_after_fork_are_distinct_and_monotonic() -> None:
    before = [new_event_id() for _ in range(100)]  # the generator has state when we fork
    pid, fd = _in_child(lambda: _generate(new_event_id))
    parent = _generate(new_event_id)  # right after the fork, concurrently with the child
    code, child = _collect(pid, fd)

    assert code == 0
    assert isinstance(child, list) and len(child) == N
    _assert_uuid7_sequence(parent)
    _assert_uuid7_sequence(child)
    assert before[-1] < parent[0]  # the parent's sequence simply continues
    everything = before + parent + child
    assert len(set(everything)) == len(everything), "parent and child produced the same id"
    # Beyond distinct ids: the child does not replay the parent's random stream in later
    # milliseconds either. Independent streams share about N * N / 2**32 (0.02) tails.
    assert len(random_tails(parent) & random_tails(child)) <= 3


def random_tails(values: list[str]) -> set[str]:
    """The 32 random bits that end each id."""
    return {v[-8:] for v in values}


def test_a_generator_without_the_fork_hook_would_collide() -> None:
    """Control: the check above detects the hazard (a generator nobody reseeds in the child)."""
    unprotected = ids._Generator()
    unprotected.next()
    pid, fd = _in_child(lambda: _generate(unprotected.next))
    parent = _generate(unprotected.next)
    code, child = _collect(pid, fd)
    assert code == 0 and isinstance(child, list)
    # The same random stream: the child's ids repeat the parent's low bits (and collide
    # outright whenever both run in the same millisecond).
    assert len(random_tails(parent) & random_tails(child)) > N // 2


def _bus_in_child() -> dict[str, object]:
    import asyncio

    from otel_eda.testing import TelemetryCapture
    from otel_eda.transports.bus import Delivery

    async def main() -> dict[str, object]:
        handled: list[str] = []
        with TelemetryCapture(service="forked") as capture:
            async with capture.bus(service="forked") as bus:

                async def pay(delivery: Delivery) -> None:
                    handled.append(delivery.event.event_id)
                    await delivery.emit("payment_authorized")

                bus.subscribe("order_placed", pay, subscriber="payment")
                bus.subscribe("payment_authorized", lambda d: handled.append(d.event.event_id), subscriber="audit")
                order = await bus.publish("order_placed", business_key="order-1")
                await bus.join()
            flow = bus.store.flow(order.correlation_id)
            return {
                "order": order.event_id,
                "handled": handled,
                "flow": [(e.event_type, e.status, e.causation_id) for e in flow],
                "spans": sorted(s.name for s in capture.spans()),
                "ids": [new_event_id() for _ in range(1000)],
            }

    return asyncio.run(main())


def test_bus_created_in_a_forked_child_works() -> None:
    warm = [new_event_id() for _ in range(10)]
    pid, fd = _in_child(_bus_in_child)
    parent = [new_event_id() for _ in range(1000)]
    code, result = _collect(pid, fd)

    assert code == 0, "the child failed (exit 71) or timed out"
    assert isinstance(result, dict)
    order = result["order"]
    assert result["flow"] == [
        ["order_placed", "completed", None],
        ["payment_authorized", "completed", order],
    ]
    assert len(result["handled"]) == 2 and result["handled"][0] == order
    assert result["spans"] == [
        "process order_placed",
        "process payment_authorized",
        "send order_placed",
        "send payment_authorized",
    ]
    child_ids = [order, *result["handled"], *result["ids"]]
    assert not set(child_ids) & set(warm + parent)


def test_fork_while_the_generator_lock_is_held_by_another_thread() -> None:
    """A thread holding the generator's lock at fork time must not deadlock the child."""
    import threading

    hold = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with ids._generator._lock:
            hold.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert hold.wait(5)
        pid, fd = _in_child(lambda: [new_event_id() for _ in range(10)])
    finally:
        release.set()
        thread.join()
    code, child = _collect(pid, fd)
    assert code == 0, "the child could not generate ids (exit 71) or hung"
    assert isinstance(child, list) and len(set(child)) == 10
