#!/usr/bin/env python
"""Speed of the causation explorer (issue 19, section 6): a flow of 10,000 events rebuilt
and printed from a file in under 2 s.

Run from the repository root::

    .venv/bin/python benchmarks/flow_explorer.py                 # 10,000 events, 5 repetitions
    .venv/bin/python benchmarks/flow_explorer.py --quick         # 500 events, 2 repetitions
    .venv/bin/python benchmarks/flow_explorer.py --json out.json # also write every number

The flow is made by otel-eda's real bus on a ``TelemetryCapture`` (real SDK spans), in link
mode (every handling its own trace, the harder case for stitching): one ``order_placed``
whose handler emits 99 ``batch_ready`` events, each of whose handlers emits 100
``item_shipped`` events (1 + 99 + 9,900 = 10,000 events, each handled once: 20,000 spans),
plus one ``charge card`` span inside each ``batch_ready`` handling. The spans are written
twice: as the SDK's console exporter prints them (pretty-printed JSON objects back to back,
the bulkiest format) and as the Collector's file exporter writes them (OTLP JSON, one
document per line, one document per 100 spans).

Cases, each timed as a fresh ``otel-eda flow <correlation id> --file F`` would run it:

* ``rebuild``: read the file, decode every span, stitch the flow (``find_flows``), with the
  cyclic garbage collector paused as the command pauses it;
* ``print (limit 200)`` and ``print (all)``: build the tree and write it as plain text
  (what a pipe gets) to an in-memory buffer, with the default limit and with ``--limit 0``;
* ``command``: the whole command in a new interpreter (start-up and imports included),
  its output to ``/dev/null``, with the default limit.

Each line gives the wall-time median (min-max) over the repetitions and the median CPU
time (this process and its children), in seconds, for ``rebuild + print`` and ``command``
with two verdicts: on the CPU-time median (the command is single-threaded and its input is
in the page cache, so on an idle machine its wall time is its CPU time; on a shared machine
the wall time also measures the other processes) and on the wall-time median. The load
average is printed beside them. The exit status is 0
whatever the numbers: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from otel_eda import Delivery, EventBus
from otel_eda.flows.cli import gc_paused
from otel_eda.flows.explorer import FileSource, FlowQuery, find_flows, flow_tree, render_plain, summary_line
from otel_eda.flows.explorer.decoding import from_console
from otel_eda.flows.explorer.spans import SpanData
from otel_eda.testing import TelemetryCapture

ROOT = Path(__file__).resolve().parent.parent
GOAL_S = 2.0


async def make_flow(capture: TelemetryCapture, batches: int, items: int) -> tuple[EventBus, str]:
    bus = capture.bus(service="warehouse", mode="link", queue_size=100_000)
    tracer = capture.tracer_provider.get_tracer("bench")

    async def place(d: Delivery) -> None:
        for b in range(batches):
            await d.emit("batch_ready", {"batch": b})

    async def batch(d: Delivery) -> None:
        with tracer.start_as_current_span("charge card"):
            pass
        for i in range(items):
            await d.emit("item_shipped", {"item": i})

    async def ship(d: Delivery) -> None:
        pass

    async with bus:
        bus.subscribe("order_placed", place, subscriber="planner")
        bus.subscribe("batch_ready", batch, subscriber="packer")
        bus.subscribe("item_shipped", ship, subscriber="courier")
        root = await bus.publish("order_placed", {}, business_key="order-bench")
        await bus.join()
    return bus, root.correlation_id


def _otlp_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": str(value)}


def _otlp_span(span: SpanData) -> dict[str, Any]:
    kinds = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}
    return {
        "traceId": span.trace_id,
        "spanId": span.span_id,
        "parentSpanId": span.parent_id or "",
        "name": span.name,
        "kind": kinds[span.kind.value],
        "startTimeUnixNano": str(span.start_ns),
        "endTimeUnixNano": str(span.end_ns),
        "attributes": [{"key": k, "value": _otlp_value(v)} for k, v in span.attributes.items()],
        "events": [
            {
                "timeUnixNano": str(e.time_ns),
                "name": e.name,
                "attributes": [{"key": k, "value": _otlp_value(v)} for k, v in e.attributes.items()],
            }
            for e in span.events
        ],
        "links": [
            {
                "traceId": link.trace_id,
                "spanId": link.span_id,
                "attributes": [{"key": k, "value": _otlp_value(v)} for k, v in link.attributes.items()],
            }
            for link in span.links
        ],
        "status": {"code": 2} if span.error else {},
    }


def write_files(directory: Path, batches: int, items: int) -> tuple[Path, Path, str, int, int]:
    with TelemetryCapture(service="warehouse") as capture:
        bus, correlation_id = asyncio.run(make_flow(capture, batches, items))
        spans = capture.exporter.get_finished_spans()
        console = directory / "console.json"
        with console.open("w") as out:
            for span in spans:
                out.write(span.to_json())
                out.write("\n")
        events = len(bus.store.flow(correlation_id))
    decoded = [from_console(json.loads(span.to_json())) for span in spans]
    otlp = directory / "otlp.jsonl"
    with otlp.open("w") as out:
        for start in range(0, len(decoded), 100):
            chunk = decoded[start : start + 100]
            document = {
                "resourceSpans": [
                    {
                        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "warehouse"}}]},
                        "scopeSpans": [{"scope": {"name": "otel_eda"}, "spans": [_otlp_span(s) for s in chunk]}],
                    }
                ]
            }
            out.write(json.dumps(document, separators=(",", ":")))
            out.write("\n")
    return console, otlp, correlation_id, events, len(spans)


def _cpu_s() -> float:
    """CPU seconds of this process and of its finished children (the ``command`` case)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(repetitions: int, case: Callable[[], object]) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each repetition (CPU time is what a loaded machine does not inflate)."""
    walls, cpus = [], []
    for _ in range(repetitions):
        cpu, started = _cpu_s(), time.perf_counter()
        case()
        walls.append(time.perf_counter() - started)
        cpus.append(_cpu_s() - cpu)
    return walls, cpus


def line(name: str, walls: list[float], cpus: list[float]) -> str:
    median = statistics.median(walls)
    judged = name.startswith(("rebuild + print", "command"))
    cpu = statistics.median(cpus)
    verdict = (
        f"  cpu {'met' if cpu < GOAL_S else 'MISSED'}, wall {'met' if median < GOAL_S else 'MISSED'}" if judged else ""
    )
    return f"  {name:<34} wall {median:7.3f} s ({min(walls):.3f}-{max(walls):.3f})  cpu {cpu:7.3f} s{verdict}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="500 events, 2 repetitions")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every number")
    args = parser.parse_args(argv)
    batches, items = (9, 54) if args.quick else (99, 100)
    reps = 2 if args.quick else max(1, args.reps)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        console, otlp, correlation_id, events, span_count = write_files(Path(tmp), batches, items)
        print(
            f"flow of {events} events, {span_count} spans, link mode; made in {time.perf_counter() - started:.1f} s; "
            f"console file {console.stat().st_size / 1e6:.1f} MB, OTLP file {otlp.stat().st_size / 1e6:.1f} MB"
        )
        results.update(events=events, spans=span_count, goal_s=GOAL_S, load_average=os.getloadavg(), files={})
        print("load average (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
        for label, path in (("console (pretty JSON)", console), ("Collector (OTLP JSON lines)", otlp)):
            print(f"{label}:")
            cases: dict[str, tuple[list[float], list[float]]] = {}

            def rebuild(path: Path = path) -> Any:
                with gc_paused():  # as the command runs it
                    (flow,) = find_flows(FileSource([path]), FlowQuery(correlation_id=correlation_id))
                assert len(flow.events) == events, (len(flow.events), events)
                return flow

            def rebuild_and_print(limit: int, path: Path = path) -> None:
                flow = rebuild(path)
                with gc_paused():
                    render_plain([(flow_tree(flow, limit), summary_line(flow))], io.StringIO())

            cases["rebuild"] = timed(reps, rebuild)
            cases["rebuild + print (limit 200)"] = timed(reps, lambda: rebuild_and_print(200))
            cases["rebuild + print (all, --limit 0)"] = timed(reps, lambda: rebuild_and_print(0))
            command = [sys.executable, "-m", "otel_eda", "flow", correlation_id, "--file", str(path)]
            with open(os.devnull, "w") as null:
                cases["command (new interpreter)"] = timed(
                    reps, lambda command=command: subprocess.run(command, stdout=null, check=True, cwd=ROOT)
                )
            for name, (walls, cpus) in cases.items():
                print(line(name, walls, cpus))
            results["files"][label] = {
                "bytes": path.stat().st_size,
                "cases": {
                    name: {"median_s": statistics.median(w), "wall_s": w, "cpu_s": c} for name, (w, c) in cases.items()
                },
            }
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
