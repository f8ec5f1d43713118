#!/usr/bin/env python
"""Speed of the flow page (issue 20, section 4): the page of a 10,000-event flow opens in
Chromium in under 3 s.

Run from the repository root (needs Debian's Chromium: ``scripts/chromium install``)::

    .venv/bin/python benchmarks/flow_page.py                 # 10,000 events, 5 repetitions
    .venv/bin/python benchmarks/flow_page.py --quick         # 500 events, 2 repetitions
    .venv/bin/python benchmarks/flow_page.py --json out.json # also write every number

Two flows of 10,000 events made with otel-eda's real bus (link mode), written as the
console exporter writes them: ``fan-out``, the one ``benchmarks/flow_explorer.py`` makes
(1 ``order_placed`` → 99 ``batch_ready`` → 9,900 ``item_shipped``, 20,099 spans: the
page groups the items, so few nodes are drawn), and ``chain``, 10,000 ``hop`` events each
emitted by the handling of the one before (the page draws its first and last 20 events
around one group node; ``open the group`` times the click that draws all 10,000).
``otel-eda flow <id> --file F --html page.html`` (a new interpreter) writes the page, timed
as ``write page``.

``open page``: a new tab of one headless Chromium (Playwright, ``executable_path``) loads the
page from its file, until the page has drawn everything (its causation graph, timeline and
service graph): the number is the page's own ``performance.now()`` at that moment, i.e. from
the start of the navigation (reading the file, parsing the HTML, the inlined d3 and the
flow's JSON, drawing). Goal: median under 3 s. ``click`` is the time to open the details of
an event and redraw the timeline's selection; ``open the group`` the click on a group node
that draws its members (the chain's 9,960 events; the fan-out's first group). Each line
gives the median (min-max) over the repetitions; the load average is printed, since on a
shared machine wall time also measures the other processes. The exit status is 0 whatever
the numbers: a measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flow_explorer import make_flow

from otel_eda import Delivery, EventBus
from otel_eda.testing import TelemetryCapture

ROOT = Path(__file__).resolve().parent.parent
GOAL_S = 3.0
CHROMIUM = Path(os.environ.get("OTEL_EDA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def make_chain(capture: TelemetryCapture, length: int) -> tuple[EventBus, str]:
    """A causation chain: each handling emits the next event (nothing to group: every node drawn)."""
    bus = capture.bus(service="relay", mode="link", queue_size=100_000)

    async def relay(d: Delivery) -> None:
        if d.payload["n"] + 1 < length:
            await d.emit("hop", {"n": d.payload["n"] + 1})

    async with bus:
        bus.subscribe("hop", relay, subscriber="relay")
        root = await bus.publish("hop", {"n": 0}, business_key="order-chain")
        await bus.join()
    return bus, root.correlation_id


def write_spans(path: Path, shape: str, batches: int, items: int) -> tuple[str, int, int]:
    with TelemetryCapture(service="warehouse") as capture:
        events = 1 + batches * (1 + items)
        flow = make_flow(capture, batches, items) if shape == "fan-out" else make_chain(capture, events)
        # on a thread of its own: Playwright's sync API keeps an event loop running on this one
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            bus, correlation_id = pool.submit(asyncio.run, flow).result()
        spans = capture.exporter.get_finished_spans()
        with path.open("w") as out:
            for span in spans:
                out.write(span.to_json())
                out.write("\n")
        return correlation_id, len(bus.store.flow(correlation_id)), len(spans)


def line(name: str, values: list[float], goal: float | None = None) -> str:
    median = statistics.median(values)
    verdict = ("  met" if median < goal else "  MISSED") if goal is not None else ""
    return f"  {name:<26} {median:7.3f} s ({min(values):.3f}-{max(values):.3f}){verdict}"


#: fan-out: 1 order, 99 batches, 9,900 items (siblings grouped); chain: 10,000 hops (its middle grouped)
SHAPES = ("fan-out", "chain")


def measure(browser: Any, shape: str, batches: int, items: int, reps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        spans, page = Path(tmp) / "console.json", Path(tmp) / "page.html"
        started = time.perf_counter()
        correlation_id, events, span_count = write_spans(spans, shape, batches, items)
        made = time.perf_counter() - started
        print(f"{shape}: a flow of {events} events, {span_count} spans, link mode; made in {made:.1f} s")
        command = [sys.executable, "-m", "otel_eda", "flow", correlation_id, "--file", str(spans), "--html", str(page)]
        writes = []
        for _ in range(reps):
            started = time.perf_counter()
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd=ROOT)
            writes.append(time.perf_counter() - started)
        page_bytes = page.stat().st_size
        opens, clicks, expands, drawn, drawn_expanded = [], [], [], 0, 0
        for _ in range(reps):
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            tab.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            tab.goto(page.as_uri(), timeout=120_000)
            tab.wait_for_selector("html[data-rendered=true]", timeout=120_000)
            assert not errors, errors
            assert f"{events} events" in tab.inner_text("#summary")
            opens.append(tab.evaluate("window.flowPageOpenMs") / 1000)
            drawn = tab.evaluate("document.querySelectorAll('#causation .node').length")
            clicks.append(
                tab.evaluate(
                    """() => { const t = performance.now();
                    document.querySelector('#causation .node[data-event-id]')
                      .dispatchEvent(new MouseEvent('click', {bubbles: true}));
                    return (performance.now() - t) / 1000; }"""
                )
            )
            expands.append(
                tab.evaluate(
                    """() => { const t = performance.now();
                    document.querySelector('#causation .node.group')
                      .dispatchEvent(new MouseEvent('click', {bubbles: true}));
                    return (performance.now() - t) / 1000; }"""
                )
            )
            drawn_expanded = tab.evaluate("document.querySelectorAll('#causation .node').length")
            tab.close()
    print(
        f"  page {page_bytes / 1e6:.1f} MB, {drawn} nodes drawn in the causation graph "
        f"({drawn_expanded} once its first group is open)"
    )
    print(line("write page (new interpreter)", writes))
    print(line("open page (Chromium)", opens, GOAL_S))
    print(line("click an event", clicks))
    print(line("open the group", expands))
    return {
        "events": events,
        "spans": span_count,
        "page_bytes": page_bytes,
        "nodes_drawn": drawn,
        "write_s": writes,
        "open_s": opens,
        "click_s": clicks,
        "open_group_s": expands,
        "nodes_drawn_group_open": drawn_expanded,
        "open_median_s": statistics.median(opens),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="500 events, 2 repetitions")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every number")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"Chromium is not installed at {CHROMIUM}: scripts/chromium install")
        return 0
    from playwright.sync_api import sync_playwright

    batches, items = (9, 54) if args.quick else (99, 100)
    reps = 2 if args.quick else max(1, args.reps)
    results: dict[str, Any] = {"goal_s": GOAL_S, "shapes": {}}
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        for shape in SHAPES:
            results["shapes"][shape] = measure(browser, shape, batches, items, reps)
        browser.close()
    results["load_average"] = os.getloadavg()
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
