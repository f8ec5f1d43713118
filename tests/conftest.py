from __future__ import annotations

from collections.abc import Iterator

import pytest
from brokers import KafkaBroker, RedisServer, kafka_broker_fixture_body, redis_server_fixture_body
from otel_servers import Collector, Jaeger, running_collector, running_jaeger
from zipkin_server import ZipkinServer, zipkin_fixture

from otel_eda.testing import TelemetryCapture


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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server (``scripts/redis``) for the whole test session, started on first use.

    Tests share it: each uses streams and groups of its own (``brokers.unique_name``). A test that
    stops or restarts a server makes its own ``brokers.RedisServer``.
    """
    yield from redis_server_fixture_body(tmp_path_factory)
