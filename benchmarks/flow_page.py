#!/usr/bin/env python
"""Speed of the flow page (issue 20, section 4): the page of a 10,000-event flow opens in
Chromium in under 3 s.

Run from the repository root (needs Debian's Chromium: ``scripts/chromium install``)::

    .venv/bin/python benchmarks/flow_page.py                 # 10,000 events, 5 repetitions
    .venv/bin/python benchmarks/flow_page.py --quick         # 500 events, 2 repetitions
    .venv/bin/python benchmarks/flow_page.py --json out.json # also write every number

The flow is the one ``benchmarks/flow_explorer.py`` makes with otel-eda's real bus (link
mode, 1 ``order_placed`` → 99 ``batch_ready`` → 9,900 ``item_shipped``: 10,000 events,
20,099 spans), written as the console exporter writes it; ``otel-eda flow <id> --file F
--html page.html`` (a new interpreter) writes the page, timed as ``write page``.

``open page``: a new tab of one headless Chromium (Playwright, ``executable_path``) loads the
page from its file, until the page has drawn everything (its causation graph, timeline and
service graph): the number is the page's own ``performance.now()`` at that moment, i.e. from
the start of the navigation (reading the file, parsing the HTML, the inlined d3 and the
flow's JSON, drawing). Goal: median under 3 s. ``click`` is the time to open the details of
an event and redraw the timeline's selection. Each line gives the median (min-max) over the
repetitions; the load average is printed, since on a shared machine wall time also measures
the other processes. The exit status is 0 whatever the numbers: a measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
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


def write_spans(path: Path, batches: int, items: int) -> tuple[str, int, int]:
    with TelemetryCapture(service="warehouse") as capture:
        bus, correlation_id = asyncio.run(make_flow(capture, batches, items))
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
    results: dict[str, Any] = {"goal_s": GOAL_S}
    with tempfile.TemporaryDirectory() as tmp:
        spans, page = Path(tmp) / "console.json", Path(tmp) / "page.html"
        started = time.perf_counter()
        correlation_id, events, span_count = write_spans(spans, batches, items)
        print(f"flow of {events} events, {span_count} spans, link mode; made in {time.perf_counter() - started:.1f} s")
        command = [sys.executable, "-m", "otel_eda", "flow", correlation_id, "--file", str(spans), "--html", str(page)]
        writes = []
        for _ in range(reps):
            started = time.perf_counter()
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd=ROOT)
            writes.append(time.perf_counter() - started)
        page_bytes = page.stat().st_size
        print(f"page {page_bytes / 1e6:.1f} MB")
        print("load average (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
        opens, clicks = [], []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
            for _ in range(reps):
                tab = browser.new_page(viewport={"width": 1400, "height": 1000})
                errors: list[str] = []
                tab.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
                tab.goto(page.as_uri(), timeout=120_000)
                tab.wait_for_selector("html[data-rendered=true]", timeout=120_000)
                assert not errors, errors
                assert f"{events} events" in tab.inner_text("#summary")
                opens.append(tab.evaluate("window.flowPageOpenMs") / 1000)
                clicks.append(
                    tab.evaluate(
                        """() => { const t = performance.now();
                        document.querySelector('#causation .node[data-event-id]')
                          .dispatchEvent(new MouseEvent('click', {bubbles: true}));
                        return (performance.now() - t) / 1000; }"""
                    )
                )
                tab.close()
            browser.close()
    print(line("write page (new interpreter)", writes))
    print(line("open page (Chromium)", opens, GOAL_S))
    print(line("click an event", clicks))
    results.update(
        events=events,
        spans=span_count,
        load_average=os.getloadavg(),
        page_bytes=page_bytes,
        write_s=writes,
        open_s=opens,
        click_s=clicks,
        open_median_s=statistics.median(opens),
    )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
