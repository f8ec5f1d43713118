"""The ``otel-eda`` command (also ``python -m otel_eda``).

Sub-commands register in :data:`COMMANDS` (name, help, add_arguments, run); ``flow`` is
the causation explorer, ``serve`` the same in a browser::

    otel-eda flow <correlation-id> --zipkin http://127.0.0.1:9411
    otel-eda flow --key order-1003 --jaeger http://127.0.0.1:16686
    otel-eda flow --event <event-id> --file traces.jsonl --html flow.html
    otel-eda serve --jaeger http://127.0.0.1:16686

Exit statuses: 0 a flow was found and shown (gaps included), 1 nothing was found,
2 the command line or an ``OTEL_EDA_*`` setting was wrong (strict mode), 3 the source
could not be read (unreachable, an HTTP error, a missing file).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple, TextIO

from otel_eda._selfmetrics import count_config_error
from otel_eda.flows.explorer import (
    DEFAULT_LIMIT,
    FileSource,
    Flow,
    FlowQuery,
    JaegerSource,
    SourceError,
    SpanSource,
    ZipkinSource,
    find_flows,
    flow_json,
    flow_tree,
    render_plain,
    summary_line,
)
from otel_eda.flows.explorer.render import Node, render_rich
from otel_eda.flows.page import write_page
from otel_eda.flows.serve import FlowServer
from otel_eda.settings import Settings

__all__ = [
    "COMMANDS",
    "EXIT_FOUND",
    "EXIT_NOT_FOUND",
    "EXIT_SOURCE",
    "EXIT_USAGE",
    "Command",
    "gc_paused",
    "main",
]

EXIT_FOUND: Final = 0
EXIT_NOT_FOUND: Final = 1
EXIT_USAGE: Final = 2
EXIT_SOURCE: Final = 3

_log = logging.getLogger("otel_eda.cli")


class Command(NamedTuple):
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    #: runs the parsed command with the settings; returns the exit status
    run: Callable[[argparse.Namespace, Settings], int]


def _say(line: str) -> None:
    """One line for the person at the terminal (stderr): errors and "nothing found"."""
    sys.stderr.write(line + "\n")


class UsageError(Exception):
    """A wrong combination of arguments and settings (exit status 2)."""


# -- otel-eda flow ---------------------------------------------------------------------------------


def _add_flow_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "exit status: 0 a flow was found and shown (missing spans are marked gaps), 1 nothing found, "
        "2 a usage error, 3 the source could not be read (unreachable, an HTTP error, a missing file)"
    )
    what = parser.add_argument_group("what to show (one of)")
    what.add_argument("correlation_id", nargs="?", help="the flow's correlation id (its root event's id)")
    what.add_argument("--key", metavar="KEY", help="a business key: every flow it appears in (e.g. order-1003)")
    what.add_argument(
        "--event", metavar="EVENT_ID", help="an event: its chain of causes up to the root, and everything it caused"
    )
    _add_source_arguments(parser)
    how = parser.add_argument_group("how")
    how.add_argument(
        "--limit",
        metavar="N",
        type=_count,
        default=DEFAULT_LIMIT,
        help=f"events shown per flow, the rest counted (default {DEFAULT_LIMIT}; 0 shows all; --json has all)",
    )
    how.add_argument("--json", action="store_true", help="print the flows as JSON (for scripts)")
    how.add_argument(
        "--html",
        metavar="FILE",
        type=Path,
        help="also write the flows as one self-contained page (causation graph, timeline, services; works offline)",
    )


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group(
        "where to look (one of; default: OTEL_EDA_FLOW_ZIPKIN_URL, OTEL_EDA_FLOW_JAEGER_URL or OTEL_EDA_FLOW_FILE)"
    )
    where.add_argument("--zipkin", metavar="URL", help="Zipkin's base URL, e.g. http://127.0.0.1:9411")
    where.add_argument("--jaeger", metavar="URL", help="Jaeger's query service, e.g. http://127.0.0.1:16686")
    where.add_argument(
        "--file",
        metavar="PATH",
        action="append",
        help="spans written by the console exporter or the Collector's file exporter (a file or a directory; "
        "repeat for several)",
    )
    where.add_argument(
        "--lookback",
        metavar="SECONDS",
        type=_positive_seconds,
        help="how far back a Zipkin or Jaeger search goes (default: OTEL_EDA_FLOW_LOOKBACK, else 86400)",
    )


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, not {text!r}")
    return value


def _query(args: argparse.Namespace) -> FlowQuery:
    given = [v for v in (args.correlation_id, args.key, args.event) if v is not None]
    if len(given) != 1:
        raise UsageError("give one of: a correlation id, --key KEY, --event EVENT_ID")
    if not given[0].strip():
        raise UsageError("the id or key is empty")
    return FlowQuery(args.correlation_id, args.key, args.event)


def _source(args: argparse.Namespace, settings: Settings) -> SpanSource:
    lookback = args.lookback if args.lookback is not None else settings.flow_lookback_s
    chosen = [name for name in ("zipkin", "jaeger", "file") if getattr(args, name)]
    if len(chosen) > 1:
        raise UsageError("give one source: --zipkin, --jaeger or --file")
    if not chosen:
        configured = {
            "OTEL_EDA_FLOW_ZIPKIN_URL": settings.flow_zipkin_url,
            "OTEL_EDA_FLOW_JAEGER_URL": settings.flow_jaeger_url,
            "OTEL_EDA_FLOW_FILE": settings.flow_files or None,
        }
        present = [name for name, value in configured.items() if value]
        if not present:
            raise UsageError("no source: give --zipkin URL, --jaeger URL or --file PATH (or set OTEL_EDA_FLOW_*)")
        if len(present) > 1:
            names = ", ".join(present)
            raise UsageError(f"several sources are set ({names}): choose one with --zipkin/--jaeger/--file")
    if args.zipkin or (not chosen and settings.flow_zipkin_url):
        return ZipkinSource(args.zipkin or str(settings.flow_zipkin_url), lookback_s=lookback)
    if args.jaeger or (not chosen and settings.flow_jaeger_url):
        return JaegerSource(args.jaeger or str(settings.flow_jaeger_url), lookback_s=lookback)
    return FileSource(args.file or list(settings.flow_files))


def _renderer(out: TextIO) -> Callable[[list[tuple[Node, str]], TextIO], None]:
    """rich on a terminal (colour, tree guides) when otel-eda[explorer] is installed; plain text otherwise."""
    if out.isatty():
        try:
            import rich  # noqa: F401
        except ImportError:
            return render_plain
        return render_rich
    return render_plain


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a batch of allocations, then restore it.

    Reading a flow allocates a few objects per span and frees nothing until the end; the
    collector would walk every live object again and again meanwhile (it halves the time of
    a 10,000-event flow). The explorer's objects hold no reference cycles.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def run_flow(args: argparse.Namespace, settings: Settings, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    query = _query(args)
    source = _source(args, settings)
    with gc_paused():
        return _show_flows(args, query, source, out)


def _document(query: FlowQuery, source: SpanSource, flows: list[Flow]) -> dict[str, Any]:
    """What ``--json`` prints, the page draws and ``otel-eda serve``'s ``api/flows`` answers."""
    return {
        "query": str(query),
        "source": source.description,
        "skipped_spans": source.skipped,
        "flows": [flow_json(flow) for flow in flows],
    }


def _page_document(query: FlowQuery, source: SpanSource, flows: list[Flow]) -> dict[str, Any]:
    """The document with the attributes of each publish span and handling attempt span (what
    the page shows of an event when it is clicked)."""
    document = _document(query, source, flows)
    for flow, flow_document in zip(flows, document["flows"], strict=True):
        for event, event_document in zip(flow.events, flow_document["events"], strict=True):
            event_document["attributes"] = dict(event.publishes[0].attributes) if event.publishes else {}
            handlings = zip(event.handlings.values(), event_document["handlings"], strict=True)
            for handling, handling_document in handlings:
                attempts = zip(handling.attempts, handling_document["attempt_spans"], strict=True)
                for attempt, attempt_document in attempts:
                    attempt_document["attributes"] = dict(attempt.span.attributes)
    return document


def _show_flows(args: argparse.Namespace, query: FlowQuery, source: SpanSource, out: TextIO) -> int:
    try:
        flows = find_flows(source, query)
    except SourceError as exc:
        _say(f"otel-eda flow: error: {exc}")
        return EXIT_SOURCE
    if source.skipped:
        _log.warning("%d spans could not be read and were skipped", source.skipped)
    if args.json or args.html:
        document = _document(query, source, flows)
        if args.json:
            json.dump(document, out, separators=(",", ":"))
            out.write("\n")
        if args.html:
            try:
                write_page(args.html, _page_document(query, source, flows))
            except OSError as exc:
                _say(f"otel-eda flow: error: cannot write {args.html}: {exc.strerror or exc}")
                return EXIT_SOURCE
            _say(f"otel-eda flow: wrote {args.html} ({len(flows)} flow{'s' if len(flows) != 1 else ''})")
    if not flows:
        _say(f"otel-eda flow: no flow found for {query} in {source.description}")
        return EXIT_NOT_FOUND
    if not args.json:
        trees = [(flow_tree(flow, args.limit), summary_line(flow)) for flow in flows]
        _renderer(out)(trees, out)
    return EXIT_FOUND


# -- otel-eda serve --------------------------------------------------------------------------------

#: ``otel-eda serve``'s port unless ``--port`` says otherwise
DEFAULT_SERVE_PORT: Final = 9480


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "exit status: 0 stopped (Ctrl-C), 2 a usage error, 3 the port could not be opened"
    _add_source_arguments(parser)
    parser.add_argument(
        "--port",
        metavar="PORT",
        type=_port,
        default=DEFAULT_SERVE_PORT,
        help=f"the port on 127.0.0.1 (default {DEFAULT_SERVE_PORT}; 0 picks a free one)",
    )


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (0-65535), not {text!r}")
    return value


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    _source(args, settings)  # a usage error shows now, not at the first search

    def find(query: FlowQuery) -> dict[str, Any]:
        source = _source(args, settings)  # a new source per search: files are read again
        with gc_paused():
            flows = find_flows(source, query)
            if source.skipped:
                _log.warning("%d spans could not be read and were skipped", source.skipped)
            return _page_document(query, source, flows)

    try:
        server = FlowServer(find, args.port)
    except OSError as exc:
        _say(f"otel-eda serve: error: cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}")
        return EXIT_SOURCE
    _say(f"otel-eda serve: the flow page is at {server.url} (Ctrl-C stops it)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return EXIT_FOUND


COMMANDS: list[Command] = [
    Command(
        "flow",
        "what happened to a flow, a business key or an event, across services, from Zipkin, Jaeger or files",
        _add_flow_arguments,
        run_flow,
    ),
    Command(
        "serve",
        "the flow page in a browser, with a search box (business key, correlation id, event id), on 127.0.0.1",
        _add_serve_arguments,
        run_serve,
    ),
]


# -- the command line ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-eda", description="otel-eda's command line: look into event-driven flows."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module documentation)."""
    logging.basicConfig(level=logging.WARNING, format="otel-eda: %(levelname)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = Settings.from_environ()
    for error in settings.errors:
        count_config_error(error.variable)
    if settings.errors and settings.strict:
        _say(f"otel-eda: error: {settings.errors[0]} (OTEL_EDA_STRICT=true)")
        return EXIT_USAGE
    try:
        status: int = args.run(args, settings)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        _say(f"otel-eda {args.command}: error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return status
