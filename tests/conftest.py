from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from brokers import (
    KafkaBroker,
    NatsServer,
    RabbitBroker,
    RedisServer,
    kafka_broker_fixture_body,
    nats_server_fixture_body,
    rabbitmq_fixture_body,
    redis_server_fixture_body,
)
from otel_servers import Collector, Jaeger, running_collector, running_jaeger
from zipkin_server import ZipkinServer, zipkin_fixture

from otel_eda.flows import default_recorders
from otel_eda.installation.logs import uninstall_logs
from otel_eda.logs.correlation import log_correlation_installed
from otel_eda.testing import TelemetryCapture

#: scripts the tests run in subprocesses, not test modules: ``--doctest-modules`` would import
#: them, and gunicorn_app.py calls ``configure()`` at import (gunicorn's ``--preload`` pattern)
collect_ignore = ["gunicorn_app.py", "fork_storm.py", "shutdown_probe.py"]

_left_by: list[str] = []


@pytest.fixture(autouse=True)
def no_process_wide_logging_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts without what ``configure()`` installs process-wide for logs (the
    record factory, the lifecycle logger among the default recorders): a test that finds it
    left over starts clean and says which test ran before it."""
    if log_correlation_installed() or default_recorders.installed():
        leaked = f"{log_correlation_installed()=}, {default_recorders.installed()=}"
        sys.__stderr__.write(f"\nprocess-wide logging state left over after {_left_by[-1:]}: {leaked}; reset\n")
        uninstall_logs()
        for recorder in default_recorders.installed():
            default_recorders.uninstall(recorder)
    yield
    _left_by[:] = [request.node.nodeid]


@pytest.fixture
def capture() -> Iterator[TelemetryCapture]:
    with TelemetryCapture(service="shop") as cap:
        yield cap


# The Collector route (app -> Collector -> Zipkin and Jaeger), one set of real servers per test
# session, shared by the modules that use it (test_collector_route.py, test_flow_explorer_truth.py).
# A module that needs servers of its own defines fixtures of the same names (they take precedence).
zipkin = zipkin_fixture(scope="session")


@pytest.fixture(scope="session")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    with running_jaeger(tmp_path_factory.mktemp("jaeger")) as server:
        yield server


@pytest.fixture(scope="session")
def collector(tmp_path_factory: pytest.TempPathFactory, jaeger: Jaeger, zipkin: ZipkinServer) -> Iterator[Collector]:
    with running_collector(tmp_path_factory.mktemp("otelcol"), jaeger, zipkin.spans_endpoint) as server:
        yield server


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One real Kafka broker (``scripts/kafka``) for the whole test session, started on first use.

    Tests share it: each uses topics and groups of its own (``brokers.unique_name``). A test that
    stops or restarts a broker makes its own ``brokers.KafkaBroker``.
    """
    yield from kafka_broker_fixture_body(tmp_path_factory)


@pytest.fixture
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A Kafka broker of the test's own, for a test that stops and restarts it (an outage)."""
    yield from kafka_broker_fixture_body(tmp_path_factory)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One real nats-server with JetStream (``scripts/nats``) for the whole test session, started on first use.

    Tests share it: each uses subjects, streams and consumers of its own (``brokers.unique_name``). A test
    that stops or restarts the server makes its own ``brokers.NatsServer``.
    """
    yield from nats_server_fixture_body(tmp_path_factory)


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitBroker]:
    """One real RabbitMQ node (``scripts/rabbitmq``) for the whole test session, started on first use.

    Tests share it: each uses queues and exchanges of its own (``brokers.unique_name``). A test that
    stops or restarts the broker makes its own ``brokers.RabbitBroker``.
    """
    yield from rabbitmq_fixture_body(tmp_path_factory)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server (``scripts/redis``) for the whole test session, started on first use.

    Tests share it: each uses streams and groups of its own (``brokers.unique_name``). A test that
    stops or restarts a server makes its own ``brokers.RedisServer``.
    """
    yield from redis_server_fixture_body(tmp_path_factory)
