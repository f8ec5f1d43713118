"""pika's queue depth and consumer count gauges against a real RabbitMQ (``scripts/rabbitmq``): a
thread with a connection of its own refreshes them, a queue is forgotten with its channels, the
thread stops on uninstrument, a forked child starts over with its own queues, and a queue the
broker no longer has reports nothing. (A broker outage: ``tests/test_pika_faults.py``.)"""

from __future__ import annotations

import copy
import os
import re
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pika
import pytest
from brokers import RabbitBroker, unique_name
from pika.adapters.blocking_connection import BlockingChannel

from otel_eda import _selfmetrics, semconv
from otel_eda.testing import TelemetryCapture
from otel_eda.transports import queue_gauges
from otel_eda.transports.pika import depth as pika_depth
from otel_eda.transports.pika.depth import PikaQueueDepth
from otel_eda.transports.pika.instrumentor import PikaInstrumentor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WAIT_S = 60.0
REFRESH_S = 0.1


def until(condition: Callable[[], bool], what: str, wait_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + wait_s
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


@pytest.fixture
def instrumentor(capture: TelemetryCapture) -> Iterator[PikaInstrumentor]:
    instrumentor = PikaInstrumentor()
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider, depth_refresh_s=REFRESH_S
    )
    try:
        yield instrumentor
    finally:
        instrumentor.uninstrument()


@pytest.fixture
def depth(instrumentor: PikaInstrumentor) -> PikaQueueDepth:
    telemetry = instrumentor._telemetry
    assert telemetry is not None
    return telemetry.depth


@pytest.fixture
def connection(rabbitmq: RabbitBroker, instrumentor: PikaInstrumentor) -> Iterator[pika.BlockingConnection]:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    try:
        yield connection
    finally:
        if connection.is_open:
            connection.close()


def gauge(capture: TelemetryCapture, metric: str, queue: str) -> list[Any]:
    return [p.value for p in capture.points(metric) if p.attributes.get(semconv.MESSAGING_DESTINATION_NAME) == queue]


def declare(channel: BlockingChannel, prefix: str) -> str:
    name = unique_name(prefix)
    channel.queue_declare(name)
    return name


def test_depth_and_consumers_are_gauges_refreshed_by_a_thread_with_its_own_connection(
    capture: TelemetryCapture, depth: PikaQueueDepth, connection: pika.BlockingConnection, rabbitmq: RabbitBroker
) -> None:
    channel = connection.channel()
    queue = declare(channel, "depth")
    try:
        assert depth.thread is None  # nothing consumed yet: no thread, no connection
        assert channel.basic_get(queue) == (None, None, None)  # tracks the queue
        for i in range(3):
            channel.basic_publish("", queue, str(i).encode())
        # the application's connection does nothing meanwhile: the thread asks with its own
        until(lambda: gauge(capture, semconv.METRIC_BROKER_QUEUE_DEPTH, queue) == [3], "a depth of 3")
        assert gauge(capture, semconv.METRIC_BROKER_QUEUE_CONSUMERS, queue) == [0]
        assert depth.thread is not None and depth.thread.name == "otel-eda-pika-queue-depth"
        (point,) = [
            p
            for p in capture.points(semconv.METRIC_BROKER_QUEUE_DEPTH)
            if p.attributes.get(semconv.MESSAGING_DESTINATION_NAME) == queue
        ]
        assert point.attributes[semconv.MESSAGING_SYSTEM] == "rabbitmq"
        consumer = connection.channel()
        consumer.basic_qos(prefetch_count=1)
        consumer.basic_consume(queue, lambda *args: None)
        until(lambda: gauge(capture, semconv.METRIC_BROKER_QUEUE_CONSUMERS, queue) == [1], "one consumer")
        connection.process_data_events(0.2)  # one message delivered to the consumer, two left
        until(lambda: gauge(capture, semconv.METRIC_BROKER_QUEUE_DEPTH, queue) == [2], "a depth of 2")
        # both channels closed: the queue is forgotten and its series goes
        consumer.close()
        channel.close()
        until(lambda: gauge(capture, semconv.METRIC_BROKER_QUEUE_DEPTH, queue) == [], "the series gone")
        assert queue not in depth.depths()
    finally:
        with pika.BlockingConnection(pika.URLParameters(rabbitmq.url)) as other:
            other.channel().queue_delete(queue)


def test_a_select_connection_consumer_is_tracked_too(
    capture: TelemetryCapture, depth: PikaQueueDepth, rabbitmq: RabbitBroker, connection: pika.BlockingConnection
) -> None:
    queue = declare(connection.channel(), "select-depth")
    seen: list[list[Any]] = []

    def check() -> None:  # on the ioloop: the depth is read by another thread meanwhile
        seen.append(gauge(capture, semconv.METRIC_BROKER_QUEUE_CONSUMERS, queue))
        if seen[-1] == [1]:
            select.close()
        else:
            select.ioloop.call_later(0.05, check)

    def on_channel(channel: Any) -> None:
        channel.basic_consume(queue, lambda *args: None)
        check()

    select = pika.SelectConnection(
        pika.URLParameters(rabbitmq.url), on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel)
    )
    timer = select.ioloop.call_later(WAIT_S, select.ioloop.stop)
    select.add_on_close_callback(lambda conn, reason: select.ioloop.stop())
    try:
        select.ioloop.start()
        select.ioloop.remove_timeout(timer)
        assert seen and seen[-1] == [1], "the select consumer was never counted"
        assert gauge(capture, semconv.METRIC_BROKER_QUEUE_DEPTH, queue) in ([0], [])
        until(lambda: gauge(capture, semconv.METRIC_BROKER_QUEUE_DEPTH, queue) == [], "forgotten with its channel")
    finally:
        connection.channel().queue_delete(queue)


def test_a_deleted_queue_reports_nothing_and_uninstrument_stops_the_thread(
    capture: TelemetryCapture,
    instrumentor: PikaInstrumentor,
    depth: PikaQueueDepth,
    connection: pika.BlockingConnection,
    rabbitmq: RabbitBroker,
) -> None:
    log_start = len(rabbitmq.log())
    channel = connection.channel()
    queue = declare(channel, "deleted")
    channel.basic_consume(queue, lambda *args: None)
    until(lambda: gauge(capture, semconv.METRIC_BROKER_QUEUE_CONSUMERS, queue) == [1], "one consumer")
    connection.channel().queue_delete(queue)  # the broker cancels the consumer; the channel stays open
    until(lambda: gauge(capture, semconv.METRIC_BROKER_QUEUE_CONSUMERS, queue) == [], "nothing for a deleted queue")
    assert depth.depths() == {queue: (None, None)}
    opened, closed = depth_connections(rabbitmq.log()[log_start:])
    assert len(opened) == 1 and not closed  # one connection, kept through the queue's NOT_FOUND
    thread_connection = opened[0]
    thread = depth.thread
    assert thread is not None and thread.is_alive()
    instrumentor.uninstrument()
    assert not thread.is_alive()
    assert capture.points(semconv.METRIC_BROKER_QUEUE_DEPTH) == []
    # its connection closed with it: the node logged the close of every depth connection opened here
    until(lambda: depth_connections(rabbitmq.log()[log_start:]) == ([thread_connection], [thread_connection]), "closed")
    instrumentor.instrument()  # the fixture uninstruments again


def depth_connections(log: str) -> tuple[list[str], list[str]]:
    """The Erlang pids of the depth connections ``log`` (the node's) shows opened, and closed."""
    opened = re.findall(r"connection <(\S+)> \(\S+ -> \S+\) has a client-provided name: otel-eda queue depth", log)
    closed = re.findall(r"closing AMQP connection <(\S+)> \(\S+ -> \S+ - otel-eda queue depth,", log)
    return opened, closed


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork")
def test_a_forked_child_forgets_the_parents_queues_and_starts_its_own_thread(
    depth: PikaQueueDepth, connection: pika.BlockingConnection, rabbitmq: RabbitBroker
) -> None:
    channel = connection.channel()
    queue = declare(channel, "fork")
    try:
        channel.basic_get(queue)
        until(lambda: depth.depths().get(queue) == (0, 0), "the parent's depth")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report through the pipe, never return into pytest
            code = 1
            try:
                forgot = depth.thread is None and depth.depths() == {}
                own = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
                own.channel().basic_get(queue)
                deadline = time.monotonic() + WAIT_S
                while depth.depths().get(queue) != (0, 0) and time.monotonic() < deadline:
                    time.sleep(0.05)
                thread = depth.thread
                ok = forgot and depth.depths().get(queue) == (0, 0) and thread is not None and thread.is_alive()
                os.write(write, b"ok" if ok else f"forgot={forgot} {depth.depths()}".encode())
                own.close()
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            answer = pipe.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert answer == b"ok"
        # the parent's thread goes on, unharmed by the child's
        assert depth.thread is not None and depth.thread.is_alive()
        channel.basic_publish("", queue, b"x")
        until(lambda: depth.depths().get(queue) == (1, 0), "the parent's depth after the fork")
    finally:
        connection.channel().queue_delete(queue)


def test_queues_and_brokers_over_the_limits_are_left_out_logged_and_counted_once(
    capture: TelemetryCapture,
    depth: PikaQueueDepth,
    connection: pika.BlockingConnection,
    rabbitmq: RabbitBroker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors = capture.meter_provider.get_meter("t").create_counter(semconv.METRIC_INTERNAL_ERRORS)
    monkeypatch.setattr(_selfmetrics, "_error_counter", lambda: errors)
    monkeypatch.setattr(queue_gauges, "MAX_QUEUES", 2)
    monkeypatch.setattr(pika_depth, "MAX_BROKERS", 1)

    def counted() -> int:
        return sum(
            p.value
            for p in capture.points(semconv.METRIC_INTERNAL_ERRORS)
            if p.attributes.get(semconv.EDA_COMPONENT) == "queue_depth"
        )

    channel = connection.channel()
    queues = [declare(channel, f"limit{i}") for i in range(4)]
    # the same node under another name is another broker to the depth thread (host, port, vhost, user)
    other = pika.BlockingConnection(pika.URLParameters(rabbitmq.url.replace("127.0.0.1", "localhost")))
    try:
        for queue in queues[:3]:
            channel.basic_get(queue)
            channel.basic_get(queue)  # again: nothing more
        until(lambda: set(depth.depths()) == set(queues[:2]) and None not in depth.depths()[queues[0]], "two read")
        assert counted() == 1
        assert sum("the depth of" in r.getMessage() and "not reported" in r.getMessage() for r in caplog.records) == 1
        other.channel().basic_get(queues[3])
        other.channel().basic_get(queues[3])
        assert set(depth.depths()) == set(queues[:2])
        assert counted() == 2
        assert sum("more than 1 brokers" in r.getMessage() for r in caplog.records) == 1
    finally:
        other.close()
        for queue in queues:
            channel.queue_delete(queue)


class WatchedParameters(pika.URLParameters):
    """The application's parameters, noting every write of ``ssl_options`` (by object id)."""

    __slots__ = ()
    writes: ClassVar[list[int]] = []

    @property
    def ssl_options(self) -> Any:
        return pika.URLParameters.ssl_options.fget(self)  # type: ignore[attr-defined]

    @ssl_options.setter
    def ssl_options(self, value: Any) -> None:
        WatchedParameters.writes.append(id(self))
        pika.URLParameters.ssl_options.fset(self, value)  # type: ignore[attr-defined]


def test_the_depth_connection_copies_the_applications_parameters_without_changing_them(
    rabbitmq: RabbitBroker, instrumentor: PikaInstrumentor, depth: PikaQueueDepth
) -> None:
    connection = pika.BlockingConnection(WatchedParameters(rabbitmq.url))
    try:
        params = connection._impl.params  # the application connection's own parameters object
        before = copy.deepcopy(params)
        WatchedParameters.writes.clear()
        channel = connection.channel()
        queue = declare(channel, "params")
        channel.basic_get(queue)  # tracked: the depth thread's parameters are copied from the application's
        until(lambda: None not in depth.depths().get(queue, (None,)), "the depth read")
        assert id(params) not in WatchedParameters.writes
        assert params == before and params.ssl_options is None
        channel.queue_delete(queue)
    finally:
        connection.close()
    tls = pika.ConnectionParameters(ssl_options=pika.SSLOptions(ssl.create_default_context(), "broker"), retry_delay=3)
    own = pika_depth._own_parameters(tls)
    assert own is not tls and own.ssl_options is tls.ssl_options  # the SSLContext stays shared
    assert own.retry_delay == 0 and tls.retry_delay == 3


def test_a_refresh_interval_longer_than_two_heartbeats_keeps_the_depth_connection(
    capture: TelemetryCapture, rabbitmq: RabbitBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The depth connection asks for a 5 s heartbeat; a BlockingConnection only does I/O when
    # called, so between refreshes 13 s apart the thread answers the broker's heartbeats
    # itself: otherwise the broker closes the connection and every refresh fails once.
    errors = capture.meter_provider.get_meter("t").create_counter(semconv.METRIC_INTERNAL_ERRORS)
    monkeypatch.setattr(_selfmetrics, "_error_counter", lambda: errors)
    application = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    opened: list[Any] = []

    class Counted(pika.BlockingConnection):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            opened.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(pika, "BlockingConnection", Counted)
    instrumentor = PikaInstrumentor()
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider, depth_refresh_s=13.0
    )
    channel = application.channel()
    queue = declare(channel, "heartbeat")
    try:
        channel.basic_get(queue)  # tracks the queue
        until(lambda: gauge(capture, semconv.METRIC_BROKER_QUEUE_DEPTH, queue) == [0], "the depth read")
        time.sleep(30.0)  # two more refreshes, each after more than two heartbeats
        queue_depth_errors = [
            p.value
            for p in capture.points(semconv.METRIC_INTERNAL_ERRORS)
            if p.attributes.get(semconv.EDA_COMPONENT) == "queue_depth"
        ]
        assert queue_depth_errors in ([], [0])
        assert len(opened) == 1 and opened[0].is_open
        assert gauge(capture, semconv.METRIC_BROKER_QUEUE_DEPTH, queue) == [0]
    finally:
        instrumentor.uninstrument()
        channel.queue_delete(queue)
        application.close()
