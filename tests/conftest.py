from __future__ import annotations

from collections.abc import Iterator

import pytest

from otel_eda.testing import TelemetryCapture


@pytest.fixture
def capture() -> Iterator[TelemetryCapture]:
    with TelemetryCapture(service="shop") as cap:
        yield cap


from brokers import KafkaBroker, kafka_broker_fixture_body  # noqa: E402 (appended: one block per broker)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One real Kafka broker (``scripts/kafka``) for the whole test session, started on first use.

    Tests share it: each uses topics and groups of its own (``brokers.unique_name``). A test that
    stops or restarts a broker makes its own ``brokers.KafkaBroker``.
    """
    yield from kafka_broker_fixture_body(tmp_path_factory)
