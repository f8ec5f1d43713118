"""Zipkin outage (issue 4, section 4): every span is either in Zipkin or counted as lost.

A real OpenZipkin server (``scripts/zipkin``, in-memory storage, through ``tests/zipkin_server.py``)
receives the spans of an application under steady load: a subprocess that calls
``otel_eda.configure()`` with ``OTEL_TRACES_EXPORTER=zipkin_json`` (so the pipeline is the one
``configure()`` builds: a ``BatchSpanProcessor`` with the SDK's zipkin-json exporter, whose
losses ``configure()`` counts with ``track_span_losses``; the app calls that once more, which
must find the one pipeline already tracked), and publishes ``RATE`` events a second on an
``EventBus`` (two spans an event). It answers commands on stdin with JSON lines on stdout.

Timeline::

    up (UP_S) | freeze, count, stop | down >= 30 s, Zipkin restarted (empty) | restored (RESTORED_S)
      | freeze, count, stop | down again, still frozen (DOWN_AGAIN_S): the queue fills
      | load stops, the lock is released, provider.shutdown() with Zipkin down and a full queue

**Why the equation is exact.** ``emitted == found_before_stop + found_at_end + lost`` where
``emitted`` is counted by an extra SpanProcessor (every ended, sampled span), ``lost`` by
``track_span_losses`` (queue overflow, failed or raising exports, shutdown), and the two
``found`` are Zipkin's stored span counts taken just before each stop. The race between
counting and stopping is closed by *freezing* the export pipeline: the app acquires the
batch processor's private ``_batch_processor._export_lock`` (the worker exports only while
holding it, so once we hold it no export is in flight and none can start), reports how many
spans its exporter has had accepted so far, and keeps it while the test waits for Zipkin's
count to reach exactly that number (Zipkin stores asynchronously after its 202) and stops
Zipkin. Only then does the app release the lock. The load keeps running all along: spans
queue up, and overflow the small queue (``OTEL_BSP_MAX_QUEUE_SIZE``) while exports are
stalled, which is how this test provokes ``queue_full`` losses. Between the first freeze and
the restart no export can succeed, and after the second freeze none can (Zipkin is down to
the end), so ``found_at_end`` is exactly what was accepted between the restart and the
second freeze, and every other span must be counted as lost.

Also checked: the application raised nothing (no exception reached the load loop or the
handler, no traceback on stderr); export resumed after the restart (spans that started after
it are in Zipkin); memory stayed bounded (RSS, sampled every 0.25 s, never more than
``RSS_BOUND_MB`` above its value just before the first stop); the anomaly engine fired the
default ``SpansLost`` rule (``OTEL_EDA_ANOMALY_INTERVAL=0.5``); the loss WARNING is throttled;
and ``provider.shutdown()`` with Zipkin down returned within ``SHUTDOWN_BOUND_S``.

**The shutdown bound.** ``TracerProvider.shutdown()`` shuts the ``BatchSpanProcessor`` down,
which joins its export thread for at most 30 s (``BatchProcessor.shutdown``'s default
``timeout_millis``; the provider passes no timeout) while that thread exports what is queued,
then shuts the exporter down (closes the HTTP session) and returns, abandoning an export
still in flight; what is still queued then is counted as lost (reason ``shutdown``). With
Zipkin *stopped* a connection is refused at once, so each batch fails in the time it takes to
serialise it (tens of ms for 512 spans): at most ``max_queue_size / max_export_batch_size``
batches, well under a second here. With Zipkin *unreachable* (packets dropped, a hung
server), each batch waits for ``OTEL_EXPORTER_ZIPKIN_TIMEOUT`` (seconds in this SDK, default
10), and the shutdown returns after at most 30 s plus the exporter's shutdown.

Duration: about 90 s (Zipkin's start, twice, is most of it: 10-20 s each on two cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import IO, Any

import pytest
from zipkin_server import ZipkinServer, zipkin_fixture

ROOT = Path(__file__).resolve().parents[1]

RATE = 400  # events a second, two spans each
UP_S = 6.0
OUTAGE_S = 30.0  # Zipkin stays stopped at least this long before it is started again
RESTORED_S = 6.0
DOWN_AGAIN_S = 2.0
QUEUE = 256  # OTEL_BSP_MAX_QUEUE_SIZE: overflows while the test holds the export lock
BATCH = 64
SHUTDOWN_BOUND_S = 5.0  # connection refused: see the module docstring
RSS_BOUND_MB = 16.0

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

zipkin = zipkin_fixture(scope="module")

APP = textwrap.dedent(
    """
    import asyncio, json, logging, math, sys, threading, time, traceback

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import otel_eda
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from otel_eda import EventBus
    from otel_eda.sdk.exportloss import LossCountingSpanExporter, span_loss_tallies, track_span_losses

    RATE = int(sys.argv[1])


    class CountEnded(SpanProcessor):
        def __init__(self):
            self.ended = 0
            self.lock = threading.Lock()

        def on_end(self, span):
            if span.context.trace_flags.sampled:
                with self.lock:
                    self.ended += 1


    alerts = []
    otel_eda.configure(on_alert=alerts.append)
    provider = trace.get_tracer_provider()
    by_configure = len(span_loss_tallies(provider))
    tracked = track_span_losses(provider)  # idempotent
    counter = CountEnded()
    provider.add_span_processor(counter)
    (bsp,) = [p for p in provider._active_span_processor._span_processors if isinstance(p, BatchSpanProcessor)]
    exporter = bsp._batch_processor._exporter
    assert isinstance(exporter, LossCountingSpanExporter), exporter
    (tally,) = span_loss_tallies(provider)
    export_lock = bsp._batch_processor._export_lock

    state = {"phase": "up", "stop": False, "frozen": False, "errors": [], "handled": 0, "published": 0}
    latencies = {}
    rss = []


    def out(**fields):
        sys.stdout.write(json.dumps(fields) + "\\n")
        sys.stdout.flush()


    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20


    def sample_rss():
        while not state["stop"]:
            rss.append((time.time(), state["phase"], rss_mb()))
            time.sleep(0.25)


    def counts():
        return {"emitted": counter.ended, "exported": exporter.exported, "lost": tally.totals(),
                "handled": state["handled"], "published": state["published"]}


    def control(loop, done):
        for line in sys.stdin:
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "freeze":
                export_lock.acquire()  # waits for an export in flight; then none can start
                state["frozen"] = True
                out(**counts())
            elif cmd == "thaw":
                state["frozen"] = False
                export_lock.release()
                out(ok=True)
            elif cmd == "phase":
                state["phase"] = arg
                out(ok=True)
            elif cmd == "status":
                out(**counts(), alerts=len(alerts))
            elif cmd == "stop":
                state["stop"] = True
                loop.call_soon_threadsafe(done.set)
                return


    def work():
        x = 0
        for i in range(300):
            x += i * i
        return x


    async def main():
        done = asyncio.Event()
        threading.Thread(target=control, args=(asyncio.get_running_loop(), done), daemon=True).start()
        threading.Thread(target=sample_rss, daemon=True).start()
        async with EventBus() as bus:
            async def handle(delivery):
                try:
                    work()
                    latencies.setdefault(delivery.payload["phase"], []).append(
                        time.perf_counter() - delivery.payload["t0"])
                    state["handled"] += 1
                except BaseException:
                    state["errors"].append(traceback.format_exc())
                    raise

            bus.subscribe("tick", handle, subscriber="worker")
            out(ready=True, tracked=tracked, by_configure=by_configure)
            period = 1.0 / RATE
            next_at = time.perf_counter()
            while not done.is_set():
                try:
                    await bus.publish("tick", {"t0": time.perf_counter(), "phase": state["phase"]})
                    state["published"] += 1
                except BaseException:
                    state["errors"].append(traceback.format_exc())
                next_at += period
                delay = next_at - time.perf_counter()
                if delay > 0:
                    try:
                        await asyncio.wait_for(done.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
                else:
                    next_at = time.perf_counter()
                    await asyncio.sleep(0)
            await bus.join()


    asyncio.run(main())
    if state["frozen"]:  # the export thread may run again: it finds Zipkin down and a full queue
        export_lock.release()
    queued_at_shutdown = len(bsp._batch_processor._queue)
    started = time.monotonic()
    provider.shutdown()  # Zipkin is down
    shutdown_s = time.monotonic() - started
    meters = metrics.get_meter_provider()
    meters.shutdown()  # the anomaly reader evaluates once more


    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, math.ceil(q * len(xs)) - 1)] if xs else None


    out(final=True, shutdown_s=shutdown_s, queued_at_shutdown=queued_at_shutdown, **counts(), errors=state["errors"],
        latency_ms={k: {"n": len(v), "p50": pct(v, 0.5) * 1e3, "p99": pct(v, 0.99) * 1e3}
                    for k, v in latencies.items()},
        rss=rss,
        alerts=[{"labels": dict(a.labels), "state": a.state.value, "value": a.value} for a in alerts])
    """
)


class App:
    """The load subprocess: one command a line on stdin, one JSON answer a line on stdout."""

    def __init__(self, zipkin: ZipkinServer, tmp_path: Path) -> None:
        script = tmp_path / "outage_app.py"
        script.write_text(APP)
        self.stderr_path = tmp_path / "app.stderr"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(
            OTEL_SERVICE_NAME="outage-app",
            OTEL_TRACES_EXPORTER="zipkin_json",
            OTEL_EXPORTER_ZIPKIN_ENDPOINT=zipkin.spans_endpoint,
            OTEL_EXPORTER_ZIPKIN_TIMEOUT="5",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
            OTEL_BSP_MAX_QUEUE_SIZE=str(QUEUE),
            OTEL_BSP_MAX_EXPORT_BATCH_SIZE=str(BATCH),
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_EDA_ANOMALY_INTERVAL="0.5",
            OTEL_EDA_STORE_MAX_EVENTS="1000",  # the store is full (steady memory) before the outage
            PYTHONPATH=str(ROOT),
        )
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(RATE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
            cwd=ROOT,
        )
        ready = self.read()
        assert ready.get("ready") and ready["by_configure"] == ready["tracked"] == 1, ready

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise AssertionError(f"the app exited ({self.proc.returncode}):\n{self.stderr()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def send(self, command: str) -> dict[str, Any]:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(command + "\n")
        stdin.flush()
        return {} if command == "stop" else self.read()

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._stderr.close()


def test_every_span_is_in_zipkin_or_counted_lost_through_an_outage(zipkin: ZipkinServer, tmp_path: Path) -> None:
    started = time.monotonic()
    app = App(zipkin, tmp_path)
    notes: list[str] = []
    try:
        time.sleep(UP_S)
        assert zipkin.span_count() > 0, "spans should reach Zipkin before the outage"

        # -- first stop: count exactly what Zipkin holds, then take it down -------------
        frozen1 = app.send("freeze")
        found_before_stop = zipkin.wait_for_span_count(frozen1["exported"], timeout_s=30)
        assert found_before_stop == frozen1["exported"], "Zipkin stores exactly what it accepted"
        rss_before = time.time()
        zipkin.stop()
        stopped_at = time.monotonic()
        app.send("phase down")
        app.send("thaw")

        # -- the outage: at least OUTAGE_S with Zipkin stopped, then a restart (empty) ------
        while time.monotonic() - stopped_at < OUTAGE_S:
            time.sleep(min(5.0, OUTAGE_S - (time.monotonic() - stopped_at)))
            notes.append(f"down {time.monotonic() - stopped_at:4.1f} s: {app.send('status')}")
        assert time.monotonic() - stopped_at >= OUTAGE_S
        zipkin.start()
        restarted_at_epoch = time.time()
        outage_s = time.monotonic() - stopped_at
        app.send("phase restored")
        time.sleep(RESTORED_S)

        # -- second stop: what the restarted Zipkin holds, then down to the end ------------
        frozen2 = app.send("freeze")
        resumed = frozen2["exported"] - frozen1["exported"]
        found_at_end = zipkin.wait_for_span_count(resumed, timeout_s=30)
        assert found_at_end == resumed
        after_restart = [s for s in zipkin.spans() if s["timestamp"] / 1e6 >= restarted_at_epoch]
        zipkin.stop()
        app.send("phase down-again")
        time.sleep(DOWN_AGAIN_S)  # still frozen: the queue fills up (and overflows) for the shutdown

        # -- stop the load; shut down with Zipkin down ----------------------------------
        app.send("stop")
        final = app.read()
        assert final.get("final"), final
        app.proc.wait(30)
        stderr = app.stderr()
    finally:
        app.close()
        notes.append(f"test took {time.monotonic() - started:.1f} s")
        print("\n".join(notes))

    lost = final["lost"]
    emitted = final["emitted"]
    print(
        f"outage {outage_s:.1f} s; emitted {emitted}; in Zipkin before the stop {found_before_stop}, "
        f"after the restart {found_at_end}; lost {lost}; shutdown with {final['queued_at_shutdown']} spans queued "
        f"{final['shutdown_s'] * 1e3:.0f} ms; "
        f"latency {final['latency_ms']}"
    )

    # the application raised nothing
    assert final["errors"] == []
    assert "Traceback" not in stderr, stderr[-3000:]
    assert final["published"] == final["handled"] > RATE * (UP_S + OUTAGE_S) * 0.5

    # every span is accounted for, exactly
    assert emitted == found_before_stop + found_at_end + sum(lost.values()), (emitted, found_before_stop, lost)
    assert final["exported"] == frozen2["exported"]  # nothing got through after the second stop
    assert emitted == final["exported"] + sum(lost.values())
    assert lost["export_failed"] > 0
    assert lost["queue_full"] > 0

    # export resumed after the restart, with spans started after it
    assert found_at_end > 0 and after_restart

    # the loss WARNING is throttled: one per reason per 30 s, plus one summary per reason at shutdown
    reports = [line for line in stderr.splitlines() if "otel_eda.sdk.exportloss: otel-eda:" in line]
    print("app's stderr:", *stderr.splitlines()[:40], sep="\n  ")
    assert 2 <= len(reports) <= 3 * (2 + int((time.monotonic() - started) // 30)), reports

    # the anomaly engine saw the loss
    print("alerts:", *[(a["labels"]["alertname"], a["labels"].get("eda.reason"), a["state"]) for a in final["alerts"]])
    fired = {a["labels"].get("eda.reason") for a in final["alerts"] if a["labels"]["alertname"] == "SpansLost"}
    assert {"export_failed", "queue_full"} <= fired, final["alerts"]

    # shutdown with Zipkin down returned within the bound
    assert final["shutdown_s"] < SHUTDOWN_BOUND_S

    # memory stayed bounded through the outage
    baseline = [mb for t, _, mb in final["rss"] if t <= rss_before][-1]
    during = [mb for t, phase, mb in final["rss"] if phase == "down"]
    assert during and max(during) - baseline < RSS_BOUND_MB, (baseline, max(during))
    print(f"RSS before the stop {baseline:.1f} MB, max during the outage {max(during):.1f} MB")
