from __future__ import annotations

from collections.abc import Iterator

import pytest

from otel_eda.testing import TelemetryCapture


@pytest.fixture
def capture() -> Iterator[TelemetryCapture]:
    with TelemetryCapture(service="shop") as cap:
        yield cap
