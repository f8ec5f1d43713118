"""Reading a rules file, bounded so that no file can stall start-up.

Limits (each breach is one :class:`~otel_eda.anomaly.rules.RulesFileError` naming the
file, and the line where there is one):

* the file is at most :data:`MAX_FILE_BYTES` (1 MiB): a larger one is refused before it
  is read;
* at most :data:`MAX_RULES` rules and :data:`MAX_INHIBITIONS` inhibitions;
* YAML: at most :data:`MAX_YAML_NODES` nodes once aliases are expanded (an "alias bomb"
  of a few hundred bytes would otherwise expand to gigabytes), counted on the parsed node
  graph before anything is built;
* error messages quote at most :data:`MAX_QUOTE` characters of the file.

YAML is parsed with PyYAML's C loader (``CSafeLoader``, libyaml) when PyYAML was built
with it, else its pure-Python ``SafeLoader`` (several times slower). JSON rules get their
line from a single pass over the file; a JSON syntax error has a line and a column
(``file:line:column``). A file that cannot be read has no line (``file: cannot read``).

The same unchanged file (same path, size, modification time and inode) is parsed once
per process: ``configure()`` checking the file and the anomaly reader building its engine
share one parse (the outcome, rules or error, is kept for the last few files).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from otel_eda.anomaly.inhibition import Inhibition
from otel_eda.anomaly.rules import Rule, RuleSet, RulesFileError, _rule_from_mapping

__all__ = ["MAX_FILE_BYTES", "MAX_INHIBITIONS", "MAX_QUOTE", "MAX_RULES", "MAX_YAML_NODES", "read_rule_set"]

#: Largest rules file read (bytes).
MAX_FILE_BYTES: Final = 1024 * 1024
#: Most rules in one file.
MAX_RULES: Final = 10_000
#: Most inhibitions in one file.
MAX_INHIBITIONS: Final = 1_000
#: Most YAML nodes (scalars, lists, mappings) under ``rules`` and ``inhibit``, aliases expanded.
MAX_YAML_NODES: Final = 1_000_000
#: Most characters of the file quoted in an error message.
MAX_QUOTE: Final = 80

_TOP_LEVEL: Final = frozenset({"rules", "inhibit"})

_cache_lock = threading.Lock()
#: (path, size, mtime_ns, inode, detector registry generation) -> RuleSet or error message
_cache: dict[tuple[Any, ...], RuleSet | str] = {}
_CACHE_SIZE: Final = 8

#: (line, column or None, raw item)
_Item = tuple[int, int | None, Any]


def read_rule_set(path: str | Path) -> RuleSet:
    """The rules and inhibitions of ``path``; raises :class:`RulesFileError`."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise RulesFileError(f"{path}: cannot read the rules file ({exc.strerror or exc})") from None
    from otel_eda.anomaly.registry import generation

    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, generation())
    with _cache_lock:
        cached = _cache.get(key)
    if cached is None:
        try:
            cached = _parse(path, st.st_size)
        except RulesFileError as exc:
            cached = str(exc)
        with _cache_lock:
            if len(_cache) >= _CACHE_SIZE:
                _cache.pop(next(iter(_cache)))
            _cache[key] = cached
    if isinstance(cached, str):
        raise RulesFileError(cached)
    return cached


def _parse(path: Path, size: int) -> RuleSet:
    if size > MAX_FILE_BYTES:
        raise RulesFileError(
            f"{path}: the rules file has {size:,} bytes, more than the limit of {MAX_FILE_BYTES:,} "
            "(otel_eda.anomaly.rulesfile.MAX_FILE_BYTES)"
        )
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise RulesFileError(f"{path}: cannot read the rules file ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:  # grew since the stat
        raise RulesFileError(f"{path}: the rules file has more than {MAX_FILE_BYTES:,} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RulesFileError(f"{path}:{line}: the rules file is not UTF-8 text") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        rules, inhibitions = _yaml_items(path, text)
    else:
        rules, inhibitions = _json_items(path, text)
    return RuleSet(_rules(path, rules), _inhibitions(path, inhibitions))


def _where(path: Path, line: int, column: int | None) -> str:
    return f"{path}:{line}:{column}" if column is not None else f"{path}:{line}"


def _quote(value: object) -> str:
    text = repr(value)
    return text if len(text) <= MAX_QUOTE else text[: MAX_QUOTE - 3] + "..."


def _rules(path: Path, items: list[_Item]) -> tuple[Rule, ...]:
    if len(items) > MAX_RULES:
        raise RulesFileError(f"{path}: {len(items):,} rules, more than the limit of {MAX_RULES:,}")
    rules: list[Rule] = []
    names: set[str] = set()
    for line, column, raw in items:
        where = _where(path, line, column)
        if not isinstance(raw, Mapping):
            raise RulesFileError(f"{where}: each rule must be a mapping")
        try:
            rule = _rule_from_mapping(raw)
        except (ValueError, TypeError) as exc:
            raise RulesFileError(f"{where}: rule {_quote(raw.get('name', '?'))}: {_short(exc)}") from None
        if rule.name in names:
            raise RulesFileError(f"{where}: duplicate rule name {_quote(rule.name)}")
        names.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def _inhibitions(path: Path, items: list[_Item]) -> tuple[Inhibition, ...]:
    if len(items) > MAX_INHIBITIONS:
        raise RulesFileError(f"{path}: {len(items):,} inhibitions, more than the limit of {MAX_INHIBITIONS:,}")
    out = []
    for line, column, raw in items:
        where = _where(path, line, column)
        if not isinstance(raw, Mapping):
            raise RulesFileError(f"{where}: each inhibition must be a mapping")
        try:
            out.append(Inhibition.from_mapping(raw))
        except (ValueError, TypeError) as exc:
            raise RulesFileError(f"{where}: inhibition: {_short(exc)}") from None
    return tuple(out)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 4 * MAX_QUOTE else text[: 4 * MAX_QUOTE - 3] + "..."


# -- YAML ---------------------------------------------------------------------------------


def _yaml_items(path: Path, text: str) -> tuple[list[_Item], list[_Item]]:
    try:
        import yaml
    except ImportError:
        raise RulesFileError(f"{path}: YAML rules need PyYAML: pip install 'otel-eda[rules]'") from None
    loader_class = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader
    try:
        root = yaml.compose(text, Loader=loader_class)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise RulesFileError(f"{where}: {_short_yaml(exc)}") from None
    sections = _yaml_sections(path, root, yaml)
    nodes = [node for section in sections.values() for node in section]
    total = _expanded_size(nodes, yaml)
    if total > MAX_YAML_NODES:
        raise RulesFileError(
            f"{path}: the rules expand to more than {MAX_YAML_NODES:,} YAML nodes (aliases of aliases?); "
            "limit: otel_eda.anomaly.rulesfile.MAX_YAML_NODES"
        )
    loader = loader_class("")
    out: dict[str, list[_Item]] = {"rules": [], "inhibit": []}
    for name, section in sections.items():
        if len(section) > (MAX_RULES if name == "rules" else MAX_INHIBITIONS):
            out[name] = [(1, None, None)] * len(section)  # reported by the count check, unbuilt
            continue
        for node in section:
            try:
                out[name].append((node.start_mark.line + 1, None, loader.construct_document(node)))
            except yaml.YAMLError as exc:  # e.g. a tag SafeLoader refuses (!!python/object)
                mark = getattr(exc, "problem_mark", None) or node.start_mark
                raise RulesFileError(f"{path}:{mark.line + 1}: {_short_yaml(exc)}") from None
    return out["rules"], out["inhibit"]


def _short_yaml(exc: Any) -> str:
    return _short(Exception(getattr(exc, "problem", None) or exc))


def _yaml_sections(path: Path, root: Any, yaml: Any) -> dict[str, list[Any]]:
    """The ``rules`` and ``inhibit`` sequences (a bare sequence: rules only)."""
    if root is None:
        raise RulesFileError(f"{path}:1: the rules file is empty: expected a 'rules:' list")
    if isinstance(root, yaml.SequenceNode):
        return {"rules": list(root.value)}
    if not isinstance(root, yaml.MappingNode):
        raise RulesFileError(f"{path}:{root.start_mark.line + 1}: expected a list of rules")
    sections: dict[str, list[Any]] = {}
    for key, value in root.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else None
        if name not in _TOP_LEVEL:
            raise RulesFileError(
                f"{path}:{key.start_mark.line + 1}: unknown top-level key {_quote(name)}: use 'rules' and 'inhibit'"
            )
        if not isinstance(value, yaml.SequenceNode):
            raise RulesFileError(f"{path}:{value.start_mark.line + 1}: {name!r} must be a list")
        sections[name] = list(value.value)
    if "rules" not in sections:
        raise RulesFileError(f"{path}:{root.start_mark.line + 1}: expected a top-level 'rules:' list")
    return sections


def _expanded_size(nodes: list[Any], yaml: Any) -> int:
    """Nodes under ``nodes`` with every alias expanded, without expanding anything.

    Aliased nodes are the same node objects in the composed graph, so the sizes of
    collections are memoised by identity (scalars count 1 and are not stored); a
    recursive alias (which SafeLoader would also refuse to build) counts as over the
    limit. Iterative: no recursion limit to hit.
    """
    scalar = yaml.ScalarNode
    mapping = yaml.MappingNode
    over = MAX_YAML_NODES + 1
    sizes: dict[int, int] = {}
    expanding: set[int] = set()  # collections whose children are being sized
    total = 0
    for root in nodes:
        if root.__class__ is scalar:
            total += 1
            continue
        stack: list[tuple[Any, bool]] = [(root, False)]
        while stack:
            node, done = stack.pop()
            key = id(node)
            children = [n for pair in node.value for n in pair] if node.__class__ is mapping else node.value
            if done:
                expanding.discard(key)
                size = 1
                for child in children:
                    size += 1 if child.__class__ is scalar else sizes[id(child)]
                sizes[key] = size if size < over else over
                continue
            if key in sizes:
                continue
            if key in expanding:
                return over  # a node that contains itself
            expanding.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in children if c.__class__ is not scalar and id(c) not in sizes)
        total += sizes[id(root)]
        if total > MAX_YAML_NODES:
            return over
    return total


# -- JSON ---------------------------------------------------------------------------------

_WHITESPACE: Final = " \t\n\r"


def _json_items(path: Path, text: str) -> tuple[list[_Item], list[_Item]]:
    """Each rule and inhibition with the line and column where it starts, in one pass.

    ``json.loads`` checks the whole document (its errors carry line and column); then a
    scan with ``JSONDecoder.raw_decode`` walks the top level to the ``rules`` (and
    ``inhibit``) arrays and decodes their elements one by one, so each element's offset
    is known and lines are counted incrementally, never from the start for each rule.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RulesFileError(f"{path}:{exc.lineno}:{exc.colno}: {exc.msg}") from None
    decoder = json.JSONDecoder()
    lines = _LineCounter(text)
    if isinstance(data, list):
        return _json_array(text, _skip(text, 0), decoder, lines), []
    if not isinstance(data, dict) or "rules" not in data:
        raise RulesFileError(f"{path}:1:1: expected a list of rules (or an object with a 'rules' list)")
    unknown = set(data) - _TOP_LEVEL
    if unknown:
        raise RulesFileError(
            f"{path}:1:1: unknown top-level key(s) {_quote(sorted(unknown))}: use 'rules' and 'inhibit'"
        )
    starts = _json_object_values(text, decoder)
    out: dict[str, list[_Item]] = {}
    for name in ("rules", "inhibit"):
        if name not in data:
            continue
        start = starts[name]
        if not isinstance(data[name], list):
            line, column = lines.at(start)
            raise RulesFileError(f"{path}:{line}:{column}: {name!r} must be a list")
        out[name] = _json_array(text, start, decoder, lines)
    return out["rules"], out.get("inhibit", [])


def _skip(text: str, index: int) -> int:
    while index < len(text) and text[index] in _WHITESPACE:
        index += 1
    return index


def _json_object_values(text: str, decoder: json.JSONDecoder) -> dict[str, int]:
    """Where each top-level key's value starts (the last one for a repeated key, as json.loads)."""
    starts: dict[str, int] = {}
    index = _skip(text, 0) + 1  # past "{"
    while True:
        index = _skip(text, index)
        if text[index] == "}":
            return starts
        key, index = decoder.raw_decode(text, index)
        index = _skip(text, index) + 1  # past ":"
        index = _skip(text, index)
        starts[key] = index
        _, index = decoder.raw_decode(text, index)
        index = _skip(text, index)
        if text[index] == ",":
            index += 1


def _json_array(text: str, start: int, decoder: json.JSONDecoder, lines: _LineCounter) -> list[_Item]:
    items: list[_Item] = []
    index = _skip(text, start + 1)  # past "["
    while text[index] != "]":
        line, _ = lines.at(index)
        value, index = decoder.raw_decode(text, index)
        items.append((line, None, value))  # file:line, as for YAML rules
        if len(items) > MAX_RULES:
            break  # the count check reports it
        index = _skip(text, index)
        if text[index] == ",":
            index = _skip(text, index + 1)
    return items


class _LineCounter:
    """Line and column of increasing offsets, counting newlines only once."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._offset = 0
        self._line = 1
        self._line_start = 0

    def at(self, offset: int) -> tuple[int, int]:
        text = self._text
        if offset < self._offset:  # not increasing (never, in one scan): count from the start
            self._offset, self._line, self._line_start = 0, 1, 0
        newlines = text.count("\n", self._offset, offset)
        if newlines:
            self._line += newlines
            self._line_start = text.rindex("\n", self._offset, offset) + 1
        self._offset = offset
        return self._line, offset - self._line_start + 1
