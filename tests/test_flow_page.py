"""The flow page and ``otel-eda serve`` without a browser (issue 20): the page is one
self-contained file that carries the flow's JSON intact whatever the spans say; the
server answers its API from a real source, on 127.0.0.1, with clear errors. (In a real
Chromium: ``test_flow_page_browser.py``.)"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from zipkin_server import free_port

from otel_eda import Delivery, Rejected
from otel_eda.flows import cli
from otel_eda.flows.explorer import FileSource, FlowQuery, JaegerSource, ZipkinSource, find_flows, flow_json
from otel_eda.flows.page import render_page
from otel_eda.flows.serve import MAX_QUERY_LENGTH, FlowServer, parse_query
from otel_eda.testing import TelemetryCapture

HOSTILE = '</script><script>alert("x")</script><!-- & {{DATA}} \u2028'


class Declined(Rejected):
    pass


async def _flow(capture: TelemetryCapture) -> None:
    bus = capture.bus(service="shop", mode="link")

    async def pay(d: Delivery) -> None:
        await d.emit("payment_declined", {})

    async def audit(d: Delivery) -> None:
        with capture.tracer_provider.get_tracer("test").start_as_current_span(HOSTILE):  # text from the app
            pass
        raise Declined("declined")

    async with bus:
        bus.subscribe("order_placed", pay, subscriber="payment")
        bus.subscribe("payment_declined", audit, subscriber="audit")
        await bus.publish("order_placed", {}, business_key="order-7")
        await bus.join()


@pytest.fixture
def spans_file(tmp_path: Path) -> Path:
    """A flow of two events, one of whose handlings made a span named in hostile HTML, as the
    console exporter writes it."""
    with TelemetryCapture(service="shop") as capture:
        asyncio.run(_flow(capture))
        path = tmp_path / "spans.json"
        path.write_text("".join(s.to_json() + "\n" for s in capture.exporter.get_finished_spans()))
    return path


class _Resources(HTMLParser):
    """Every attribute of the page that could load something, and the scripts' texts."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[tuple[str, str, str]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "action") and value is not None:
                self.loads.append((tag, name, value))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


def test_flow_html_writes_one_self_contained_page_with_the_flow_intact(spans_file: Path, tmp_path: Path) -> None:
    page = tmp_path / "flow.html"
    assert cli.main(["flow", "--key", "order-7", "--file", str(spans_file), "--html", str(page)]) == cli.EXIT_FOUND
    html = page.read_text(encoding="utf-8")
    parser = _Resources()
    parser.feed(html)
    # nothing to fetch: the only URL-bearing attribute is the empty data: icon
    assert parser.loads == [("link", "href", "data:,")]
    assert not re.search(r"""(?:import\s*\(|@import|url\(\s*['"]?(?:https?:)?//)""", html)
    # three scripts: the data (which the hostile message did not end early), d3, the page
    data, library, app = parser.scripts
    document = json.loads(data)
    expected = find_flows(FileSource([spans_file]), FlowQuery(business_key="order-7"))
    # everything --json has, and the attributes of each publish and attempt span
    attributes = []
    for flow in document["flows"]:
        for event in flow["events"]:
            attributes.append(event.pop("attributes"))
            assert attributes[-1]["messaging.message.id"] == event["event_id"]
            for handling in event["handlings"]:
                for attempt in handling["attempt_spans"]:
                    assert attempt.pop("attributes")["messaging.consumer.group.name"] == handling["subscriber"]
    assert document["flows"] == [json.loads(json.dumps(flow_json(f))) for f in expected]
    events = document["flows"][0]["events"]
    names = {s["name"] for e in events for h in e["handlings"] for a in h["attempt_spans"] for s in a["spans"]}
    assert HOSTILE in names
    assert "d3js.org v7" in library and "Mike Bostock" in html  # the licence travels with it
    assert "drawCausation" in app


def test_flow_html_for_nothing_found_still_writes_the_page_and_exits_1(spans_file: Path, tmp_path: Path) -> None:
    page = tmp_path / "none.html"
    argv = ["flow", "--key", "order-404", "--file", str(spans_file), "--html", str(page)]
    assert cli.main(argv) == cli.EXIT_NOT_FOUND
    assert '"flows":[]' in page.read_text()


def test_flow_html_into_a_missing_directory_is_exit_3(
    spans_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["flow", "--key", "order-7", "--file", str(spans_file), "--html", str(tmp_path / "no" / "f.html")]
    assert cli.main(argv) == cli.EXIT_SOURCE
    assert "cannot write" in capsys.readouterr().err


def test_the_search_page_has_no_data_and_the_search_box() -> None:
    html = render_page(None, search=True)
    assert 'data-mode="serve"' in html and 'id="search-text"' in html
    assert '<script type="application/json" id="flow-data">null</script>' in html


# -- the server ---------------------------------------------------------------------------------------


def _document(source: Any, query: FlowQuery) -> dict[str, Any]:
    flows = find_flows(source, query)
    return {
        "query": str(query),
        "source": source.description,
        "skipped_spans": 0,
        "flows": [flow_json(f) for f in flows],
    }


@pytest.fixture
def server(spans_file: Path) -> Iterator[FlowServer]:
    running = FlowServer(lambda query: _document(FileSource([spans_file]), query))
    running.start()
    yield running
    running.close()


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def test_the_server_listens_on_127_0_0_1_and_serves_the_search_page(server: FlowServer) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    status, kind, body = _get(server.url)
    assert (status, kind) == (200, "text/html; charset=utf-8")
    assert b'data-mode="serve"' in body


def test_the_api_finds_a_flow_by_business_key_correlation_id_and_event_id(server: FlowServer) -> None:
    status, kind, body = _get(server.url + "api/flows?key=order-7")
    assert (status, kind) == (200, "application/json")
    (flow,) = json.loads(body)["flows"]
    assert flow["business_keys"] == ["order-7"] and len(flow["events"]) == 2
    by_id = json.loads(_get(server.url + "api/flows?correlation_id=" + flow["correlation_id"])[2])
    assert [f["correlation_id"] for f in by_id["flows"]] == [flow["correlation_id"]]
    child = next(e for e in flow["events"] if e["causation_id"])
    by_event = json.loads(_get(server.url + "api/flows?event=" + child["event_id"])[2])
    assert [e["event_id"] for e in by_event["flows"][0]["events"]] == [child["causation_id"], child["event_id"]]
    nothing = json.loads(_get(server.url + "api/flows?key=order-404")[2])
    assert nothing["flows"] == [] and nothing["query"] == "business key order-404"


@pytest.mark.parametrize(
    ("query", "status", "error"),
    [
        ("", 400, "give one of"),
        ("key=a&event=b", 400, "give one of"),
        ("key=a&key=b", 400, "give one of"),
        ("key=%20", 400, "key is empty"),
        ("key=" + "x" * (MAX_QUERY_LENGTH + 1), 400, "longer than"),
    ],
)
def test_a_bad_query_is_400_with_the_reason(server: FlowServer, query: str, status: int, error: str) -> None:
    answer = _get(server.url + "api/flows?" + query)
    assert answer[0] == status and error in json.loads(answer[2])["error"]


def test_an_unknown_path_is_404(server: FlowServer) -> None:
    assert _get(server.url + "etc/passwd")[0] == 404


@pytest.mark.parametrize("backend", ["zipkin", "jaeger"])
def test_an_unreachable_backend_is_502_with_the_reason(backend: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    source = ZipkinSource(url) if backend == "zipkin" else JaegerSource(url)
    running = FlowServer(lambda query: _document(source, query))
    running.start()
    try:
        status, _, body = _get(running.url + "api/flows?key=order-1")
    finally:
        running.close()
    assert status == 502
    assert json.loads(body)["error"].startswith("cannot reach ") and url in json.loads(body)["error"]


def test_a_failing_query_is_500_and_the_server_goes_on(spans_file: Path) -> None:
    calls: list[FlowQuery] = []

    def find(query: FlowQuery) -> dict[str, Any]:
        calls.append(query)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return _document(FileSource([spans_file]), query)

    running = FlowServer(find)
    running.start()
    try:
        assert _get(running.url + "api/flows?key=order-7")[0] == 500
        assert _get(running.url + "api/flows?key=order-7")[0] == 200
    finally:
        running.close()


def test_parse_query_names_the_kind() -> None:
    assert parse_query("correlation_id=c") == FlowQuery(correlation_id="c")
    assert parse_query("event=e&other=1") == FlowQuery(event_id="e")


def test_serve_without_a_source_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OTEL_EDA_FLOW_ZIPKIN_URL", "OTEL_EDA_FLOW_JAEGER_URL", "OTEL_EDA_FLOW_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["serve", "--port", "0"]) == cli.EXIT_USAGE
    assert "no source" in capsys.readouterr().err


def test_serve_on_a_taken_port_is_exit_3(spans_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    taken = FlowServer(lambda query: {})
    try:
        port = int(taken.url.rsplit(":", 1)[1].strip("/"))
        assert cli.main(["serve", "--file", str(spans_file), "--port", str(port)]) == cli.EXIT_SOURCE
    finally:
        taken.close()
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
