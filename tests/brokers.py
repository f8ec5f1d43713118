"""Real message brokers for tests, run by the project's own scripts: Kafka (``scripts/kafka``),
NATS (``scripts/nats``: :class:`NatsServer`, the session fixture ``nats_server``), RabbitMQ
(``scripts/rabbitmq``: :class:`RabbitBroker`, the session fixture ``rabbitmq``) and Redis
(``scripts/redis``: :class:`RedisServer`, the session fixture ``redis_server``).

Importable by test modules (``tests/`` is on ``sys.path`` under pytest's default import mode),
like ``zipkin_server.py``. ``conftest.py`` has a session-scoped ``kafka`` fixture (one broker
for the whole test session, started on first use); a test that stops or restarts a broker
(an outage) makes its own :class:`KafkaBroker` in a directory of its own, so the shared one
never goes down under another test::

    from brokers import KafkaBroker

    def test_outage(tmp_path: Path) -> None:
        with KafkaBroker(tmp_path / "kafka") as broker:
            ...  # clients bootstrap from broker.bootstrap_servers
            broker.stop()
            broker.start()  # the same ports and data: topics and committed offsets survive

The broker listens on free ports of 127.0.0.1 only (checked by the script); its jars are
fetched once per machine by ``scripts/kafka install`` (``scripts/test`` runs it). A broker
that does not start fails the test with the script's output and the broker's log: it is never
skipped.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psutil
import pytest
from processes import listening_addresses

from otel_eda import semconv
from otel_eda.testing import TelemetryCapture

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = ROOT / "scripts" / "kafka"
#: ``KAFKA_READY_TIMEOUT_S`` of ``scripts/kafka start``: seconds to wait for the broker to answer.
READY_TIMEOUT_S = 120

__all__ = [
    "KafkaBroker",
    "KafkaStartError",
    "NatsServer",
    "NatsStartError",
    "RabbitBroker",
    "RabbitStartError",
    "RedisServer",
    "RedisStartError",
    "client_config",
    "install_kafka",
    "kafka_broker_fixture_body",
    "nats_server_fixture_body",
    "rabbitmq_fixture_body",
    "redis_server_fixture_body",
    "send_outcomes",
    "unique_name",
]


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (all sockets held open until every port is chosen)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


class _Server(Protocol):
    def start(self) -> object: ...
    def stop(self) -> object: ...


_S = TypeVar("_S", bound=_Server)


def _started(server: _S, start_error: type[Exception]) -> Iterator[_S]:
    """The body of a server fixture: start, yield, stop; a server that does not start fails the test."""
    problem = None
    try:
        server.start()
    except start_error as exc:
        problem = str(exc)
    if problem is not None:
        server.stop()
        pytest.fail(problem, pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def unique_name(prefix: str) -> str:
    """A topic or group name no other test of the session uses (tests share one broker)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class KafkaStartError(RuntimeError):
    """``scripts/kafka`` could not install or start the broker; the message has its output and log."""


def install_kafka(timeout_s: float = 900.0) -> Path:
    """Resolve Kafka's jars (once per machine); return the directory holding them."""
    try:
        proc = subprocess.run(
            [str(KAFKA_SCRIPT), "install"], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise KafkaStartError(f"scripts/kafka install did not finish within {timeout_s:g} s") from exc
    if proc.returncode != 0:
        raise KafkaStartError(f"scripts/kafka install failed (exit {proc.returncode}):\n{proc.stderr}")
    return Path(proc.stdout.strip().splitlines()[-1])


class KafkaBroker:
    """One Kafka process (KRaft, broker and controller) run by ``scripts/kafka`` from ``directory``.

    A context manager: ``with KafkaBroker(tmp_path) as broker: ...`` starts and stops it. Its ports
    are chosen once, so :meth:`restart` brings it back at the same address with the same data.
    """

    def __init__(self, directory: Path, *, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        self.directory = Path(directory)
        self.port, self.controller_port = _free_ports(2)
        self.ready_timeout_s = ready_timeout_s
        #: what clients bootstrap from (``bootstrap_servers=``)
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        #: seconds the last :meth:`start` took (format and JVM start)
        self.start_seconds: float | None = None

    def __repr__(self) -> str:
        return f"KafkaBroker({self.bootstrap_servers}, directory={str(self.directory)!r})"

    def start(self) -> KafkaBroker:
        """Start the broker and wait until it answers (``scripts/kafka start``)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        install_kafka()
        env = {
            **os.environ,
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "KAFKA_READY_TIMEOUT_S": f"{self.ready_timeout_s:g}",
        }
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [str(KAFKA_SCRIPT), "start", str(self.directory)],
                capture_output=True,
                text=True,
                timeout=self.ready_timeout_s + 60,
                check=False,
                env=env,
            )
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise KafkaStartError(f"scripts/kafka start hung for {exc.timeout:g} s\n{self.log()}") from exc
        if proc.returncode != 0:  # its output has the broker's log
            raise KafkaStartError(
                f"scripts/kafka start {self.directory} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop the broker (TERM, then KILL); does nothing if it is not running."""
        if self.directory.is_dir():
            subprocess.run(
                [str(KAFKA_SCRIPT), "stop", str(self.directory)], capture_output=True, timeout=90, check=False
            )

    def restart(self) -> KafkaBroker:
        """Stop and start again: the same address, the same topics, records and committed offsets."""
        self.stop()
        return self.start()

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log(self) -> str:
        try:
            return (self.directory / "kafka.log").read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    @property
    def pid(self) -> int | None:
        """The broker's PID while it runs (from ``kafka.pid``), else ``None``."""
        try:
            return int((self.directory / "kafka.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid
        return pid is not None and psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE

    def listening_addresses(self) -> set[tuple[str, str, int]]:
        """Every ``(protocol, ip, port)`` the broker process listens on (TCP) or has bound (UDP)."""
        pid = self.pid
        assert pid is not None, "Kafka is not running"
        return listening_addresses(pid)


def kafka_broker_fixture_body(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """The body of a broker fixture: start, yield, stop; a broker that does not start fails the test."""
    yield from _started(KafkaBroker(tmp_path_factory.mktemp("kafka")), KafkaStartError)


def send_outcomes(capture: TelemetryCapture, topic: str) -> dict[str, int]:
    """``messaging.client.operation.duration`` counts of ``send`` to ``topic`` by ``error.type`` (``ok``: none)."""
    found: dict[str, int] = {}
    for point in capture.points(semconv.METRIC_OPERATION_DURATION):
        attrs = point.attributes or {}
        if (
            attrs.get(semconv.MESSAGING_OPERATION_NAME) == "send"
            and attrs.get(semconv.MESSAGING_DESTINATION_NAME) == topic
        ):
            key = str(attrs.get(semconv.ERROR_TYPE, "ok"))
            found[key] = found.get(key, 0) + point.count
    return found


def client_config(broker: KafkaBroker, **extra: Any) -> dict[str, Any]:
    """Keyword arguments for an aiokafka client of ``broker`` (short timeouts for a local broker)."""
    return {"bootstrap_servers": broker.bootstrap_servers, "request_timeout_ms": 20_000, **extra}


# -- NATS (scripts/nats) ---------------------------------------------------------------------------
NATS_SCRIPT = ROOT / "scripts" / "nats"


class NatsStartError(RuntimeError):
    """``scripts/nats`` could not build or start the server; the message has its output and log."""


class NatsServer:
    """One nats-server with JetStream run by ``scripts/nats`` from ``directory``, on free ports of 127.0.0.1.

    A context manager like :class:`KafkaBroker`; :meth:`restart` brings it back at the same address with
    the same JetStream store (file-storage streams and durable consumers survive).
    """

    def __init__(self, directory: Path, *, ready_timeout_s: float = 60.0) -> None:
        self.directory = Path(directory)
        self.port, self.monitor_port = _free_ports(2)
        self.ready_timeout_s = ready_timeout_s
        #: what clients connect to (``nats.connect(server.url)``)
        self.url = f"nats://127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        return f"NatsServer({self.url}, directory={str(self.directory)!r})"

    def start(self) -> NatsServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "NATS_PORT": str(self.port),
            "NATS_MONITOR_PORT": str(self.monitor_port),
            "NATS_READY_TIMEOUT_S": f"{self.ready_timeout_s:g}",
        }
        try:
            proc = subprocess.run(
                [str(NATS_SCRIPT), "start", str(self.directory)],
                capture_output=True,
                text=True,
                timeout=self.ready_timeout_s + 1800,  # a first start on a machine builds the server
                check=False,
                env=env,
            )
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise NatsStartError(f"scripts/nats start hung for {exc.timeout:g} s\n{self.log()}") from exc
        if proc.returncode != 0:
            raise NatsStartError(
                f"scripts/nats start {self.directory} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        return self

    def stop(self) -> None:
        """Stop the server (TERM, then KILL); does nothing if it is not running."""
        if self.directory.is_dir():
            subprocess.run(
                [str(NATS_SCRIPT), "stop", str(self.directory)], capture_output=True, timeout=60, check=False
            )

    def restart(self) -> NatsServer:
        self.stop()
        return self.start()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log(self) -> str:
        try:
            return (self.directory / "nats.log").read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    @property
    def pid(self) -> int | None:
        try:
            return int((self.directory / "nats.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def listening_addresses(self) -> set[tuple[str, str, int]]:
        """Every ``(protocol, ip, port)`` the server process listens on (TCP) or has bound (UDP)."""
        pid = self.pid
        assert pid is not None, "nats-server is not running"
        return listening_addresses(pid)


def nats_server_fixture_body(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """The body of a NATS fixture: start, yield, stop; a server that does not start fails the test."""
    yield from _started(NatsServer(tmp_path_factory.mktemp("nats")), NatsStartError)


# -- RabbitMQ ----------------------------------------------------------------------------------
RABBITMQ_SCRIPT = ROOT / "scripts" / "rabbitmq"


class RabbitStartError(RuntimeError):
    """``scripts/rabbitmq`` could not install or start the node; the message has its output and log."""


class RabbitBroker:
    """One RabbitMQ node (and its own epmd) run by ``scripts/rabbitmq`` from ``directory``.

    A context manager like :class:`KafkaBroker`; its four ports are chosen once, so :meth:`restart`
    brings it back at the same address with the same queues (durable messages and quorum queues kept).
    """

    def __init__(self, directory: Path, *, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        self.directory = Path(directory)
        self.port, self.dist_port, self.epmd_port, self.ctl_port = _free_ports(4)
        self.ready_timeout_s = ready_timeout_s
        #: what clients connect to (``aio_pika.connect(broker.url)``)
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.start_seconds: float | None = None

    def __repr__(self) -> str:
        return f"RabbitBroker({self.url}, directory={str(self.directory)!r})"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_CTL_PORT": str(self.ctl_port),
            "RABBITMQ_READY_TIMEOUT_S": f"{self.ready_timeout_s:g}",
        }

    def start(self) -> RabbitBroker:
        """Start the node and wait until it answers (``scripts/rabbitmq start``)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [str(RABBITMQ_SCRIPT), "start", str(self.directory)],
                capture_output=True,
                text=True,
                timeout=self.ready_timeout_s * 2 + 120,
                check=False,
                env=self._env(),
            )
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise RabbitStartError(f"scripts/rabbitmq start hung for {exc.timeout:g} s\n{self.log()}") from exc
        if proc.returncode != 0:
            raise RabbitStartError(
                f"scripts/rabbitmq start {self.directory} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop the node and its epmd; does nothing if they are not running."""
        if self.directory.is_dir():
            subprocess.run(
                [str(RABBITMQ_SCRIPT), "stop", str(self.directory)],
                capture_output=True,
                timeout=120,
                check=False,
                env=self._env(),
            )

    def restart(self) -> RabbitBroker:
        self.stop()
        return self.start()

    def __enter__(self) -> RabbitBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log(self) -> str:
        try:
            return (self.directory / "rabbitmq.log").read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def pids(self) -> dict[str, int]:
        """The running node's (``beam``) and epmd's PIDs (from the script's PID files)."""
        found = {}
        for name in ("beam", "epmd", "rabbitmq"):
            try:
                pid = int((self.directory / f"{name}.pid").read_text())
            except (FileNotFoundError, ValueError):
                continue
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found[name] = pid
        return found

    def listening_addresses(self) -> set[tuple[str, str, int]]:
        """Every ``(protocol, ip, port)`` the node and its epmd listen on (TCP) or have bound (UDP)."""
        found: set[tuple[str, str, int]] = set()
        for name, pid in self.pids().items():
            if name != "rabbitmq":  # the wrapper script: no sockets of its own
                found |= listening_addresses(pid)
        return found


def rabbitmq_fixture_body(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitBroker]:
    """The body of a RabbitMQ fixture: start, yield, stop; a node that does not start fails the test."""
    yield from _started(RabbitBroker(tmp_path_factory.mktemp("rabbitmq")), RabbitStartError)


# -- Redis (scripts/redis) ------------------------------------------------------------------
REDIS_SCRIPT = ROOT / "scripts" / "redis"


class RedisStartError(RuntimeError):
    """``scripts/redis`` could not install or start the server; the message has its output and log."""


class RedisServer:
    """One ``redis-server`` run by ``scripts/redis`` from ``directory``, on a free port of 127.0.0.1.

    A context manager like :class:`KafkaBroker`. ``persist=True`` keeps an append-only file, so
    :meth:`restart` brings back the streams, groups and pending entries (outage tests).
    """

    def __init__(self, directory: Path, *, persist: bool = False) -> None:
        self.directory = Path(directory)
        (self.port,) = _free_ports(1)
        self.persist = persist
        #: ``redis.Redis(**server.client_kwargs)``
        self.client_kwargs: dict[str, Any] = {"host": "127.0.0.1", "port": self.port}
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def __repr__(self) -> str:
        return f"RedisServer(127.0.0.1:{self.port}, directory={str(self.directory)!r})"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "REDIS_PORT": str(self.port), "REDIS_PERSIST": "1" if self.persist else "0"}
        for command in (["install"], ["start", str(self.directory)]):
            try:
                proc = subprocess.run(
                    [str(REDIS_SCRIPT), *command], capture_output=True, text=True, timeout=600, check=False, env=env
                )
            except subprocess.TimeoutExpired as exc:
                self.stop()
                raise RedisStartError(f"scripts/redis {command[0]} hung for {exc.timeout:g} s") from exc
            if proc.returncode != 0:
                raise RedisStartError(
                    f"scripts/redis {' '.join(command)} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
                )
        return self

    def stop(self) -> None:
        if self.directory.is_dir():
            subprocess.run(
                [str(REDIS_SCRIPT), "stop", str(self.directory)], capture_output=True, timeout=60, check=False
            )

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        try:
            return int((self.directory / "redis.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid
        return pid is not None and psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


def redis_server_fixture_body(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The body of a Redis fixture: start, yield, stop; a server that does not start fails the test."""
    yield from _started(RedisServer(tmp_path_factory.mktemp("redis")), RedisStartError)
