"""A replay across processes: a consumer killed with ``kill -9`` mid-batch, another group member
taking over. Kafka has no delivery counter: the replayed records show as a second handling of
the same event id (two process spans with one ``messaging.message.id``, two lifecycle
``received`` records), never as ``eda.delivery.attempt`` > 1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from brokers import KafkaBroker, client_config, unique_name
from console_telemetry import read_json_stream

from otel_eda import semconv
from otel_eda.testing import TelemetryCapture
from otel_eda.transports.aiokafka.instrumentor import AIOKafkaInstrumentor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

CONSUMER = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from aiokafka import AIOKafkaConsumer
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
    from otel_eda.transports.aiokafka.instrumentor import AIOKafkaInstrumentor

    name, stop_after = sys.argv[1], int(sys.argv[2])
    records = open(f"{name}.records.jsonl", "a")

    class FileRecorder:
        def record(self, record):
            records.write(json.dumps(record._asdict()) + "\\n")
            records.flush()

    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=open(f"{name}.spans.json", "w"))))
    AIOKafkaInstrumentor().instrument(tracer_provider=provider, recorders=[FileRecorder()])

    async def main():
        consumer = AIOKafkaConsumer(
            os.environ["TOPIC"], bootstrap_servers=os.environ["BOOTSTRAP"], group_id=os.environ["GROUP"],
            auto_offset_reset="earliest", enable_auto_commit=False, session_timeout_ms=6000,
            heartbeat_interval_ms=1000, max_poll_records=10,
        )
        await consumer.start()
        handled = 0
        async for record in consumer:
            handled += 1
            print(f"handling {record.offset}", flush=True)
            if handled == stop_after:
                if name == "first":
                    await asyncio.sleep(3600)  # killed here, mid-batch, nothing committed
                await consumer.commit()
                break
        await consumer.stop()

    asyncio.run(main())
    provider.shutdown()
    """
)


def start_consumer(
    tmp_path: Path, name: str, stop_after: int, env: dict[str, str], code: str = CONSUMER
) -> subprocess.Popen[str]:
    """Run the consumer ``code`` (argv: name, records to handle) in ``tmp_path``."""
    script = tmp_path / "consumer.py"
    script.write_text(code)
    return subprocess.Popen(
        [sys.executable, str(script), name, str(stop_after)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen[str], wanted: str, timeout_s: float) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    for line in proc.stdout:
        if line.strip() == wanted:
            return
        assert time.monotonic() < deadline, f"no {wanted!r} within {timeout_s}s"
    raise AssertionError(f"the consumer exited before {wanted!r}: {proc.stderr.read() if proc.stderr else ''}")


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_a_consumer_killed_mid_batch_shows_the_replay_as_a_second_handling(
    tmp_path: Path, kafka: KafkaBroker, capture: TelemetryCapture
) -> None:
    topic, group = unique_name("replay"), unique_name("replay-group")
    instrumentor = AIOKafkaInstrumentor()
    instrumentor.instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider)
    producer = AIOKafkaProducer(**client_config(kafka))
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(topic, f"order {i}".encode())
    finally:
        await producer.stop()
        instrumentor.uninstrument()
    sent = [(s.attributes or {})[semconv.MESSAGING_MESSAGE_ID] for s in capture.spans(name=f"send {topic}")]
    assert_replay_across_processes(tmp_path, kafka, topic, group, sent, CONSUMER)


def assert_replay_across_processes(
    tmp_path: Path, kafka: KafkaBroker, topic: str, group: str, sent: list[str], code: str
) -> None:
    """Run the consumer ``code`` twice in ``group``: the first killed while handling its second
    record (nothing committed), the second taking the partition over and handling all five; the
    first two records show as a second handling of the same event ids."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env = {**clean, "TOPIC": topic, "GROUP": group, "BOOTSTRAP": kafka.bootstrap_servers}

    first = start_consumer(tmp_path, "first", 2, env, code)
    try:
        wait_for_line(first, "handling 1", 120)  # record 0 handled, record 1 being handled
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    second = start_consumer(tmp_path, "second", 5, env, code)
    try:
        out, err = second.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        second.kill()
        raise
    assert second.returncode == 0, err
    assert [line for line in out.splitlines() if line.startswith("handling")] == [f"handling {i}" for i in range(5)]

    first_records = read_records(tmp_path / "first.records.jsonl")
    second_records = read_records(tmp_path / "second.records.jsonl")
    handled = [r for r in first_records + second_records if r["stage"] == "received"]
    handlings = Counter(r["event_id"] for r in handled)
    replayed = [r["event_id"] for r in first_records if r["stage"] == "received"]
    assert replayed == sent[:2]
    assert all(handlings[event_id] == 2 for event_id in replayed)  # both handlings collected
    assert sum(handlings.values()) == 7  # 2 before the kill, 5 after
    assert {r["attempt"] for r in first_records + second_records if r["stage"] == "completed"} == {
        1
    }  # not counted as delivery attempts

    spans = read_json_stream(tmp_path / "first.spans.json") + read_json_stream(tmp_path / "second.spans.json")
    process = [s for s in spans if s["name"] == f"process {topic}"]
    by_id = Counter(s["attributes"][semconv.MESSAGING_MESSAGE_ID] for s in process)
    # record 0's handling ended in the first process (its span was exported); record 1's was cut by the kill
    assert by_id[replayed[0]] == 2
    assert by_id[replayed[1]] == 1
