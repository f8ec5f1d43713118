"""The flow page in a real browser (issue 20): Debian's Chromium (``scripts/chromium install``)
driven by Playwright with ``executable_path`` (Playwright cannot download its own browser
here). One browser for the module (the only one that needs it); each test opens its own page.

* the page of every story order of the demo (``examples/order_flow.py``, link mode, its
  console files) loads with no console error and no request beyond the file itself, shows
  every event the lifecycle records name, and a click on each opens its details;
* ``otel-eda serve`` (a real subprocess) finds order-1003 by business key through the
  page's search box;
* a flow of 501 events stays readable: siblings grouped, a click opens a group.

A screenshot of each view is written to ``build/test-artifacts/flow-page/`` (or
``$OTEL_EDA_TEST_ARTIFACTS/flow-page/``). Skipped, with the reason, only when Chromium or
Playwright is not installed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flow_truth import explored_flow, recorded_flows
from otel_servers import Collector, Jaeger, wait_for
from test_flow_explorer import _event, _otlp_document, _otlp_span

from otel_eda import Delivery
from otel_eda.flows import cli
from otel_eda.flows.explorer import FlowQuery, JaegerSource, find_flows
from otel_eda.testing import TelemetryCapture

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "order_flow.py"
CHROMIUM = Path(os.environ.get("OTEL_EDA_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("OTEL_EDA_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts")) / "flow-page"
#: Chromium without a sandbox (root in a container), GPU or any traffic of its own
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT = {"width": 1400, "height": 1000}

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module's tests, closed when the module is done: while Playwright's
    sync API is open it keeps an event loop running on the main thread, where every later test
    module's ``asyncio.run`` would then fail."""
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM}: scripts/chromium install (apt-get, as root) installs it")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed: scripts/setup-venv installs it (the browser extra)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_FLAGS))
        yield chromium
        chromium.close()


@dataclass
class OpenPage:
    page: Any
    #: console errors and uncaught exceptions
    problems: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def event_ids(self) -> set[str]:
        ids: list[str] = self.page.eval_on_selector_all(
            "#causation .node[data-event-id]", "nodes => nodes.map(n => n.dataset.eventId)"
        )
        return set(ids)

    def shoot(self, name: str) -> None:
        """The whole page and each view, as test artefacts."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
        for view in ("causation-view", "timeline-view", "services-view", "details"):
            self.page.locator(f"#{view}").screenshot(path=ARTIFACTS / f"{name}-{view}.png")


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    pages: list[OpenPage] = []

    def opener(url: str) -> OpenPage:
        page = browser.new_page(viewport=VIEWPORT)
        opened = OpenPage(page)
        page.on("console", lambda m: opened.problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: opened.problems.append(str(e)))
        page.on("request", lambda r: opened.requests.append(r.url))
        page.goto(url)
        page.wait_for_selector("html[data-rendered=true]", timeout=60_000)
        pages.append(opened)
        return opened

    yield opener
    for opened in pages:
        opened.page.close()


@dataclass(frozen=True)
class Demo:
    summary: dict[str, Any]
    telemetry: Path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """The order-flow demo in link mode, its spans in the services' console files."""
    workdir = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_TRACES_EXPORTER="console", OTEL_METRICS_EXPORTER="none", PYTHONUNBUFFERED="1")
    result = subprocess.run(
        [
            *(sys.executable, str(DEMO), "--orders", "6", "--traffic", "0", "--mode", "link", "--timeout", "60"),
            *("--output-dir", str(workdir / "telemetry"), "--json", str(workdir / "summary.json")),
        ],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert result.returncode == 0, f"demo failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return Demo(json.loads((workdir / "summary.json").read_text()), workdir / "telemetry")


def test_the_page_of_each_demo_order_shows_every_event_and_a_click_opens_its_details(
    demo: Demo, open_page: Any, tmp_path: Path
) -> None:
    expected = recorded_flows(demo.summary)
    assert sorted(expected) == [f"order-{n}" for n in range(1001, 1007)]
    for key, shape in expected.items():
        html = tmp_path / f"{key}.html"
        assert cli.main(["flow", "--key", key, "--file", str(demo.telemetry), "--html", str(html)]) == cli.EXIT_FOUND
        opened = open_page(html.as_uri())
        assert opened.problems == [], f"{key}: {opened.problems}"
        assert opened.requests == [html.as_uri()]  # works offline: nothing else is fetched
        assert opened.event_ids() == set(shape), key
        page = opened.page
        assert key in page.inner_text("#summary")
        for event_id, (_, event_type, handlings) in shape.items():
            page.click(f'#causation .node[data-event-id="{event_id}"]')
            details = page.locator("#details")
            assert details.get_attribute("data-event-id") == event_id
            text = details.inner_text()
            assert event_type in text and event_id in text
            assert "publish span attributes" in text and "messaging.system" in text
            for subscriber, status, attempts in handlings:
                assert f"handled by {subscriber}" in text
                assert f"{status.replace('_', '-')}" in text and f"attempt {attempts}" in text
        # the service graph: the order service that placed it, and every subscriber (a service of its own)
        services = page.eval_on_selector_all("#services .svc", "nodes => nodes.map(n => n.dataset.service)")
        assert sorted(services) == sorted({"order"} | {h[0] for _, _, hs in shape.values() for h in hs})
        assert page.eval_on_selector("#timeline", "c => c.height") > 0
        if key == "order-1004":  # a dead-lettered notification: the README's picture
            (dead,) = [e for e, (_, _, hs) in shape.items() if any(h[1] == "dead_lettered" for h in hs)]
            page.click(f'#causation .node[data-event-id="{dead}"]')
            opened.shoot("demo-order-1004")
        assert opened.problems == [], f"{key}: {opened.problems}"


@contextlib.contextmanager
def serving(*source: str) -> Iterator[str]:
    """``otel-eda serve --port 0`` with ``source`` (e.g. ``--file DIR``) as a subprocess: its
    URL; stopped by PID."""
    process = subprocess.Popen(
        [sys.executable, "-m", "otel_eda", "serve", *source, "--port", "0"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stderr is not None
    stderr = process.stderr
    threading.Thread(target=lambda: [lines.put(line) for line in stderr], daemon=True).start()
    try:
        line = lines.get(timeout=60)
        assert " is at http://127.0.0.1:" in line, line
        yield line.split(" is at ", 1)[1].split()[0]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_finds_a_flow_by_business_key_from_the_search_box(demo: Demo, open_page: Any) -> None:
    (expected,) = [shape for key, shape in recorded_flows(demo.summary).items() if key == "order-1003"]
    with serving("--file", str(demo.telemetry)) as url:
        opened = open_page(url)
        page = opened.page
        assert page.is_visible("#search-text")
        page.select_option("#search-kind", "key")
        page.fill("#search-text", "order-1003")
        page.click("#search button")
        page.wait_for_selector("#causation .node[data-event-id]", timeout=60_000)
        assert opened.event_ids() == set(expected)
        assert "1 flow for business key order-1003" in page.inner_text("#status-line")
        assert page.url.endswith("?key=order-1003")  # a link to the answer
        page.click(f'#causation .node[data-event-id="{next(iter(expected))}"]')
        assert "handled by payment" in page.inner_text("#details")
        opened.shoot("serve-order-1003")
        # an unknown key: said so, no error
        page.fill("#search-text", "order-404")
        page.click("#search button")
        page.wait_for_selector("text=No flow found for business key order-404")
        assert opened.problems == []
        assert all(r.startswith(url) for r in opened.requests)  # only the server: never the backend


async def _fan_out(capture: TelemetryCapture, batches: int, items: int) -> None:
    bus = capture.bus(service="warehouse", mode="link", queue_size=10_000)

    async def place(d: Delivery) -> None:
        for b in range(batches):
            await d.emit("batch_ready", {"batch": b})

    async def batch(d: Delivery) -> None:
        for i in range(items):
            await d.emit("item_shipped", {"item": i})

    async def ship(d: Delivery) -> None:
        pass

    async with bus:
        bus.subscribe("order_placed", place, subscriber="planner")
        bus.subscribe("batch_ready", batch, subscriber="packer")
        bus.subscribe("item_shipped", ship, subscriber="courier")
        await bus.publish("order_placed", {}, business_key="order-big")
        await bus.join()


def test_a_flow_of_500_events_is_grouped_and_a_click_opens_a_group(open_page: Any, tmp_path: Path) -> None:
    with TelemetryCapture(service="warehouse") as capture:
        # on a thread of its own: Playwright's sync API keeps an event loop running on this one
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _fan_out(capture, batches=10, items=49)).result()
        spans = tmp_path / "spans.json"
        spans.write_text("".join(s.to_json() + "\n" for s in capture.exporter.get_finished_spans()))
    html = tmp_path / "big.html"
    assert cli.main(["flow", "--key", "order-big", "--file", str(spans), "--html", str(html)]) == cli.EXIT_FOUND
    opened = open_page(html.as_uri())
    page = opened.page
    assert "501 events" in page.inner_text("#summary")
    # 1 order + 10 batches drawn, each batch's 49 items one group node
    assert len(opened.event_ids()) == 11
    sizes = page.eval_on_selector_all("#causation .node.group", "nodes => nodes.map(n => +n.dataset.groupSize)")
    assert sizes == [49] * 10
    opened.shoot("flow-501-grouped")
    page.click("#causation .node.group >> nth=0")
    assert len(opened.event_ids()) == 11 + 49
    assert len(page.query_selector_all("#causation .node.group")) == 9
    # the timeline holds every handling, in at most 8 lanes per service
    height = page.eval_on_selector("#timeline", "c => c.getBoundingClientRect().height")
    assert 0 < height < 3 * (8 * 14 + 12) + 40
    assert opened.problems == []


def test_a_deep_chain_and_a_cycle_of_causes_show_every_event(open_page: Any, tmp_path: Path) -> None:
    """Damaged or unusual data: a causation chain 2,000 events deep, and two events that name
    each other as their cause (no root leads to them). The chain opens as its first and last
    20 events around one group node, coloured by the worst status inside it (one handling
    failed in the middle); a click on it draws every event, once."""
    chain = [_otlp_span("r0", kind=4, attrs=_event("e0", "e0", None, "tick"))]
    chain += [_otlp_span(f"r{i}", kind=4, attrs=_event(f"e{i}", "e0", f"e{i - 1}", "tick")) for i in range(1, 2000)]
    failed = {**_event("e1000", "e0", "e999", "tick"), "eda.outcome": "failed"}
    chain.append(_otlp_span("h1000", kind=5, attrs=failed, parent="r1000"))
    cycle = [
        _otlp_span("x1", kind=4, attrs=_event("x1", "e0", "x2", "loop")),
        _otlp_span("x2", kind=4, attrs=_event("x2", "e0", "x1", "loop")),
    ]
    spans = tmp_path / "spans.jsonl"
    spans.write_text(json.dumps(_otlp_document(chain + cycle)) + "\n")
    html = tmp_path / "deep.html"
    assert cli.main(["flow", "e0", "--file", str(spans), "--html", str(html)]) == cli.EXIT_FOUND
    opened = open_page(html.as_uri())
    drawn = "#causation .node[data-event-id]"
    ids: list[str] = opened.page.eval_on_selector_all(drawn, "nodes => nodes.map(n => n.dataset.eventId)")
    assert sorted(ids) == sorted([f"e{i}" for i in (*range(20), *range(1980, 2000))] + ["x1", "x2"])
    assert (opened.page.text_content("#causation .node.group") or "").startswith("⋯ a chain of 1960")
    assert opened.page.get_attribute("#causation .node.group rect", "fill") == "#d93025"  # failed
    opened.page.dispatch_event("#causation .node.group", "click")  # far right of the view: no scrolling
    ids = opened.page.eval_on_selector_all(drawn, "nodes => nodes.map(n => n.dataset.eventId)")
    assert sorted(ids) == sorted([f"e{i}" for i in range(2000)] + ["x1", "x2"])
    opened.page.click('#causation .node[data-event-id="x1"]')
    assert "x2" in opened.page.inner_text("#details")
    assert opened.problems == []


# -- otel-eda serve against the real Jaeger ----------------------------------------------------------


@pytest.fixture(scope="module")
def demo_in_jaeger(collector: Collector, jaeger: Jaeger, tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """The demo through the real Collector into the real Jaeger (and Zipkin), link mode."""
    workdir = tmp_path_factory.mktemp("demo-jaeger")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.otlp_http}",
        OTEL_METRICS_EXPORTER="none",
        PYTHONUNBUFFERED="1",
    )
    result = subprocess.run(
        [
            *(sys.executable, str(DEMO), "--orders", "6", "--traffic", "0", "--mode", "link", "--timeout", "60"),
            *("--output-dir", str(workdir / "telemetry"), "--json", str(workdir / "summary.json")),
        ],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert result.returncode == 0, f"demo failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return Demo(json.loads((workdir / "summary.json").read_text()), workdir / "telemetry")


@pytest.mark.integration
def test_serve_finds_a_flow_in_jaeger_by_business_key_from_the_search_box(
    demo_in_jaeger: Demo, jaeger: Jaeger, open_page: Any
) -> None:
    """Jaeger's query API sends no CORS headers: the page asks otel-eda serve, which asks Jaeger."""
    summary = demo_in_jaeger.summary
    expected = recorded_flows(summary)["order-1004"]
    correlation_id = next(e["correlation_id"] for e in summary["events"] if e["event_id"] in expected)
    jaeger_url = f"http://127.0.0.1:{jaeger.query}"

    def arrived() -> bool:  # the Collector batches: wait until Jaeger holds the whole flow
        flows = find_flows(JaegerSource(jaeger_url, lookback_s=3600), FlowQuery(correlation_id=correlation_id))
        return bool(flows) and explored_flow(flows[0]) == expected

    wait_for(arrived, 60, "order-1004 complete in Jaeger")
    with serving("--jaeger", jaeger_url) as url:
        opened = open_page(url + "?key=order-1004")  # a link to an answer searches at once
        page = opened.page
        # the session's Jaeger may hold other runs' order-1004 too (the explorer's truth test
        # sends the demo there): the page opens one of the flows, and this run's is one of them
        page.wait_for_selector("#causation .node[data-event-id]", timeout=60_000)
        buttons = page.query_selector_all("nav#flows button")
        for index in range(max(1, len(buttons))):
            if buttons:
                buttons[index].click()
            if page.query_selector(f'#causation .node[data-event-id="{correlation_id}"]') is not None:
                break
        page.wait_for_selector(f'#causation .node[data-event-id="{correlation_id}"]', timeout=5_000)
        assert opened.event_ids() == set(expected)
        assert f"from Jaeger at {jaeger_url}" in page.inner_text("#status-line")
        opened.shoot("serve-jaeger-order-1004")
        assert opened.problems == []
        assert all(r.startswith(url) for r in opened.requests)


def test_text_from_spans_is_shown_as_text_never_run(open_page: Any, tmp_path: Path) -> None:
    hostile = '</script><script>alert("x")</script><img src=x onerror=alert(1)>'
    document = _otlp_document(
        [
            _otlp_span("p1", kind=4, attrs={**_event("e1", "e1", None, "order_placed"), "note": hostile}),
            _otlp_span(hostile, kind=1, attrs={"eda.correlation_id": "e1"}, parent="p1"),
        ]
    )
    spans = tmp_path / "spans.jsonl"
    spans.write_text(json.dumps(document) + "\n")
    html = tmp_path / "hostile.html"
    assert cli.main(["flow", "e1", "--file", str(spans), "--html", str(html)]) == cli.EXIT_FOUND
    opened = open_page(html.as_uri())
    dialogs: list[str] = []
    opened.page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    opened.page.click('#causation .node[data-event-id="e1"]')
    assert hostile in opened.page.inner_text("#details")  # the attribute, as text
    assert f"1 spans outside any handling ({hostile})" in opened.page.inner_text("#summary")  # the name
    assert opened.page.query_selector("#details img") is None
    assert dialogs == [] and opened.problems == []
    assert opened.requests == [html.as_uri()]  # the <img src=x> was never made an element
