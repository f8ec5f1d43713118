"""Faults with Redis Streams and otel-eda's instrumentation, against real redis-servers:

* the server restarted mid-flow (a server of the test's own, with an append-only file): the
  application gets the client's own errors and nothing else, failed sends are counted, and
  after the restart the flow goes on with the entries' identity intact;
* a consumer killed (``kill -9``) with entries pending, another one claiming them: both
  handlings are visible in the lifecycle records, the claimed one with attempt 2.
"""

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
import redis
from brokers import RedisServer, unique_name
from opentelemetry.trace import SpanKind, StatusCode

from otel_eda import semconv
from otel_eda.flows.records import LifecycleRecord
from otel_eda.identity import current_event
from otel_eda.testing import TelemetryCapture
from otel_eda.transports.redis.instrumentor import RedisStreamsInstrumentor, outgoing_event, processing

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


class ListRecorder:
    def __init__(self) -> None:
        self.records: list[LifecycleRecord] = []

    def record(self, record: LifecycleRecord) -> None:
        self.records.append(record)


def test_a_restart_mid_flow_gives_the_clients_errors_counts_failed_sends_and_the_flow_resumes(
    tmp_path: Path, capture: TelemetryCapture
) -> None:
    recorder = ListRecorder()
    instrumentor = RedisStreamsInstrumentor()
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider,
        meter_provider=capture.meter_provider,
        recorders=[recorder],
        lag_refresh_s=0.05,
    )
    stream, group = unique_name("orders"), unique_name("billing")

    def lag() -> list[float]:
        return [
            p.value
            for p in capture.points(semconv.METRIC_CONSUMER_LAG)
            if p.attributes.get(semconv.MESSAGING_DESTINATION_NAME) == stream
        ]

    def eventually(wanted: list[float]) -> None:
        deadline = time.monotonic() + 30
        while lag() != wanted:
            assert time.monotonic() < deadline, lag()
            time.sleep(0.05)

    try:
        with RedisServer(tmp_path / "redis", persist=True) as server:
            client = redis.Redis(**server.client_kwargs, socket_timeout=5)
            client.xgroup_create(stream, group, id="0", mkstream=True)
            with outgoing_event(event_type="order_placed") as before:
                client.xadd(stream, {"n": "1"})
                client.xadd(stream, {"n": "2"})
            [[_, [first]]] = client.xreadgroup(group, "c1", {stream: ">"}, count=1)  # never acknowledged
            eventually([1])
            server.stop()
            eventually([])  # the refresh failed: no stale value is reported
            with pytest.raises(redis.ConnectionError):  # the client's own error, unchanged
                client.xadd(stream, {"n": "lost"})
            with pytest.raises(redis.ConnectionError):
                client.xreadgroup(group, "c1", {stream: ">"}, count=10)
            server.start()  # the same port and the append-only file: streams, groups and pending kept
            client.xadd(stream, {"n": "3"})
            eventually([2])  # the refresh found the server again
            handled = []
            for _, entries in client.xreadgroup(group, "c1", {stream: ">"}, count=10):
                for entry in entries:
                    with processing(entry):
                        event = current_event()
                        assert event is not None
                        handled.append(event)
                        client.xack(stream, group, entry[0])
            client.close()
    finally:
        instrumentor.uninstrument()
    assert first is not None
    # the second entry, added before the restart, is handled after it with its identity intact
    assert handled[0].event_id == before.events[1].event_id and handled[0].event_type == "order_placed"
    assert len(handled) == 2
    failed = capture.counter_total(
        semconv.METRIC_SENT_MESSAGES, {semconv.ERROR_TYPE: "redis.exceptions.ConnectionError"}
    )
    assert failed == 1
    assert capture.counter_total(semconv.METRIC_SENT_MESSAGES) == 4
    sends = capture.spans(name=f"send {stream}", kind=SpanKind.PRODUCER)
    assert [s.status.status_code for s in sends].count(StatusCode.ERROR) == 1
    processes = capture.spans(name=f"process {stream}")
    assert [(s.attributes or {})[semconv.EDA_OUTCOME] for s in processes][-2:] == ["completed", "completed"]
    assert not [s for s in capture.spans(kind=SpanKind.CLIENT) if s.status.status_code is StatusCode.ERROR]


CONSUMER = textwrap.dedent(
    """
    import json, os, sys, time
    import redis
    from opentelemetry.sdk.trace import TracerProvider
    from otel_eda.transports.redis.instrumentor import RedisStreamsInstrumentor, processing

    records = open("first.records.jsonl", "a")

    class FileRecorder:
        def record(self, record):
            records.write(json.dumps(record._asdict()) + "\\n")
            records.flush()

    RedisStreamsInstrumentor().instrument(tracer_provider=TracerProvider(), recorders=[FileRecorder()])
    r = redis.Redis(host="127.0.0.1", port=int(os.environ["REDIS_PORT"]))
    stream, group = os.environ["STREAM"], os.environ["GROUP"]
    handled = 0
    for _, entries in r.xreadgroup(group, "first", {stream: ">"}, count=10, block=10000):
        for entry in entries:
            with processing(entry):
                handled += 1
                if handled == 4:
                    print("stuck", flush=True)
                    time.sleep(3600)  # killed here: this entry and the rest stay pending
                r.xack(stream, group, entry[0])
    """
)


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_consumer_killed_with_entries_pending_and_a_claim_show_both_handlings(
    tmp_path: Path, redis_server: RedisServer, capture: TelemetryCapture
) -> None:
    stream, group = unique_name("orders"), unique_name("billing")
    recorder = ListRecorder()
    instrumentor = RedisStreamsInstrumentor()
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider, recorders=[recorder]
    )
    client = redis.Redis(**redis_server.client_kwargs)
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
        with outgoing_event(event_type="order_placed") as out:
            for i in range(10):
                client.xadd(stream, {"n": str(i)})
        script = tmp_path / "consumer.py"
        script.write_text(CONSUMER)
        env = {**os.environ, "REDIS_PORT": str(redis_server.port), "STREAM": stream, "GROUP": group}
        first = subprocess.Popen(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert first.stdout is not None
            line = first.stdout.readline()
            assert line.strip() == "stuck", first.stderr.read() if first.stderr else ""
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        assert client.xpending(stream, group)["pending"] == 7  # three acknowledged, seven pending
        _, claimed, _ = client.xautoclaim(stream, group, "second", min_idle_time=0)
        for entry in claimed:
            with processing(entry):
                client.xack(stream, group, entry[0])
        assert client.xpending(stream, group)["pending"] == 0
    finally:
        client.close()
        instrumentor.uninstrument()
    ids = [e.event_id for e in out.events]
    theirs = read_records(tmp_path / "first.records.jsonl")
    ours = [r._asdict() for r in recorder.records if r.event_id in ids and r.stage.value != "published"]
    received_first = [r["event_id"] for r in theirs if r["stage"] == "received"]
    completed_first = [r["event_id"] for r in theirs if r["stage"] == "completed"]
    assert received_first == ids and completed_first == ids[:3]  # the 4th was being handled when killed
    received_second = [r["event_id"] for r in ours if r["stage"] == "received"]
    assert received_second == ids[3:]  # the seven pending ones, claimed
    completed_second = [(r["event_id"], r["attempt"]) for r in ours if r["stage"] == "completed"]
    assert completed_second == [(i, 2) for i in ids[3:]]
    # every event handled to completion exactly once over both consumers; the 4th received twice
    completions = Counter(completed_first + [i for i, _ in completed_second])
    assert completions == Counter(ids)
    assert Counter(received_first + received_second)[ids[3]] == 2
    processes = capture.spans(name=f"process {stream}")
    assert [(s.attributes or {})[semconv.EDA_DELIVERY_ATTEMPT] for s in processes] == [2] * 7
    assert capture.counter_total(semconv.METRIC_CONSUMED_MESSAGES) == 7
