"""Rules files: inhibitions, bounded reading, positions in errors, parsed once."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from otel_eda.anomaly import rulesfile
from otel_eda.anomaly.inhibition import Inhibition
from otel_eda.anomaly.rules import RulesFileError, load_rule_set, load_rules

RULES_WITH_INHIBIT = """\
rules:
  - name: lag-growing
    alert: LagGrowing
    metric: eda.consumer.lag
    detector: {kind: growth, window: 6}
  - name: lag-critical
    alert: LagCritical
    metric: eda.consumer.lag
    detector: {kind: threshold, op: gt, value: 1000}
    severity: critical
inhibit:
  - source_match: {alertname: LagCritical}
    target_match: {alertname: LagGrowing}
    equal: [messaging.consumer.group.name]
"""


def test_inhibitions_are_read_from_yaml_and_json(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES_WITH_INHIBIT)
    rule_set = load_rule_set(path)
    assert [r.name for r in rule_set.rules] == ["lag-growing", "lag-critical"]
    expected = Inhibition({"alertname": "LagCritical"}, {"alertname": "LagGrowing"}, ("messaging.consumer.group.name",))
    assert rule_set.inhibitions == (expected,)
    as_json = tmp_path / "rules.json"
    import yaml

    as_json.write_text(json.dumps(yaml.safe_load(RULES_WITH_INHIBIT), indent=2))
    assert load_rule_set(as_json) == rule_set


@pytest.mark.parametrize(
    ("suffix", "text", "expected"),
    [
        (".yaml", RULES_WITH_INHIBIT.replace("equal:", "equals:"), r"rules.yaml:12: inhibition: unknown field"),
        (
            ".yaml",
            RULES_WITH_INHIBIT.replace("inhibit:", "inhibits:"),
            r"rules.yaml:11: unknown top-level key 'inhibits'",
        ),
        (
            ".yaml",
            RULES_WITH_INHIBIT.replace("source_match: {alertname: LagCritical}", "source_match: {}"),
            r"rules.yaml:12: inhibition: source_match must be a non-empty mapping",
        ),
        (
            ".json",
            '{"rules": [], "inhibit": [\n {"source_match": {"a": "b"}}]}',
            r"rules.json:2: inhibition: missing field 'target_match'",
        ),
        (".json", '{"rules": [],\n "extra": 1}', r"rules.json:1:1: unknown top-level key"),
        (".json", '{"rules": [\n  {"name": "a", "metric": "m"}\n  {"name": "b"}\n]}', r"rules.json:3:3: Expecting ','"),
        (".yaml", "", r"rules.yaml:1: the rules file is empty"),
        (".yaml", "rules:\n  - !!python/object:os.system {}\n", r"rules.yaml:2: could not determine a constructor"),
    ],
)
def test_errors_name_the_file_and_line(tmp_path: Path, suffix: str, text: str, expected: str) -> None:
    path = tmp_path / f"rules{suffix}"
    path.write_text(text)
    with pytest.raises(RulesFileError, match=expected):
        load_rule_set(path)


def test_an_unreadable_file_has_no_line_zero(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(RulesFileError) as info:
        load_rules(missing)
    assert str(info.value) == f"{missing}: cannot read the rules file (No such file or directory)"
    with pytest.raises(RulesFileError) as info:
        load_rules(tmp_path)  # a directory
    assert ":0:" not in str(info.value) and str(info.value).startswith(f"{tmp_path}: cannot read the rules file")


def test_a_yaml_alias_bomb_is_refused_before_it_expands_with_a_short_message(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = "rules:\n  - name: bomb\n    metric: m\n    match:\n" + "".join(f"      {line}\n" for line in lines)
    path = tmp_path / "rules.yaml"
    path.write_text(bomb)
    assert len(bomb) < 1_000  # 9**9 = 387 million strings once expanded
    with pytest.raises(RulesFileError) as info:
        load_rules(path)
    message = str(info.value)
    assert f"more than {rulesfile.MAX_YAML_NODES:,} YAML nodes" in message and len(message) < 300


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - &r\n    name: x\n    metric: m\n    match: *r\n")
    with pytest.raises(RulesFileError, match="YAML nodes"):
        load_rules(path)


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    with open(path, "wb") as f:
        f.truncate(rulesfile.MAX_FILE_BYTES + 1)  # sparse: nothing to parse if it were read
    size = rulesfile.MAX_FILE_BYTES + 1
    with pytest.raises(RulesFileError, match=rf"rules.json: the rules file has {size:,} bytes, more than the limit"):
        load_rules(path)


def test_error_messages_quote_little_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"rules": [{"name": "x" * 100_000, "metric": "m", "signal": "nope"}]}))
    with pytest.raises(RulesFileError) as info:
        load_rules(path)
    assert len(str(info.value)) < len(str(path)) + 500


def test_json_rules_get_their_own_line_in_one_pass(tmp_path: Path) -> None:
    rules = [{"name": f"r{i}", "metric": "m", "summary": "r1 r2 r3"} for i in range(8_000)]
    rules[-1]["signal"] = "bogus"
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"rules": rules}, indent=1))
    # each rule is 6 lines ({, 3 fields, }, ...) after the 2 opening lines
    with pytest.raises(RulesFileError, match=rf"rules.json:{2 + 7999 * 5 + 1}: rule 'r7999': unknown signal"):
        load_rules(path)


def test_too_many_rules_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps([{"name": f"r{i}", "metric": "m"} for i in range(rulesfile.MAX_RULES + 1)]))
    with pytest.raises(RulesFileError, match=r"more than the limit of 10,000"):
        load_rules(path)


def test_an_unchanged_file_is_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    parse = rulesfile._parse

    def counting(*args: Any) -> Any:
        calls.append(args)
        return parse(*args)

    monkeypatch.setattr(rulesfile, "_parse", counting)
    path = tmp_path / "rules.yaml"
    path.write_text(RULES_WITH_INHIBIT)
    first = load_rule_set(path)
    assert load_rule_set(path) is first and len(calls) == 1
    path.write_text(RULES_WITH_INHIBIT.replace("1000", "2000"))
    os.utime(path, ns=(1, 1))  # another version, even within the file system's time resolution
    assert load_rule_set(path) is not first and len(calls) == 2


def test_the_c_yaml_loader_is_used_when_available(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    yaml = pytest.importorskip("yaml")
    if not yaml.__with_libyaml__:
        pytest.skip("PyYAML without libyaml")
    used: list[object] = []
    compose = yaml.compose

    def recording(text: str, Loader: Any) -> Any:
        used.append(Loader)
        return compose(text, Loader=Loader)

    monkeypatch.setattr(yaml, "compose", recording)
    path = tmp_path / "rules.yaml"
    path.write_text(RULES_WITH_INHIBIT + "# another version\n")
    load_rule_set(path)
    assert used == [yaml.CSafeLoader]


CONFIGURE_TWICE = """
import otel_eda
from otel_eda.anomaly import rulesfile

parse = rulesfile._parse
calls = []
rulesfile._parse = lambda *a: calls.append(a) or parse(*a)
otel_eda.configure()
otel_eda.configure()
from otel_eda.anomaly.reader import installed_reader
engine = installed_reader().engine
print(len(calls), [r.name for r in engine.rules], len(engine.inhibitions))
"""


def test_configure_parses_the_rules_file_once(tmp_path: Path) -> None:
    import subprocess

    path = tmp_path / "rules.yaml"
    path.write_text(RULES_WITH_INHIBIT)
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(CONFIGURE_TWICE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_EDA_RULES_FILE=str(path),
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_EDA_ANOMALY_INTERVAL="3600",
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "1 ['lag-growing', 'lag-critical'] 1"


CONFIGURE_BAD_FILE = """
import logging
logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(message)s")
import otel_eda
otel_eda.configure()
from otel_eda.anomaly.reader import installed_reader
print("RULES", len(installed_reader().engine.rules))
"""


def test_a_bad_rules_file_is_one_error_and_the_defaults_are_used(tmp_path: Path) -> None:
    import subprocess

    from otel_eda.anomaly.rules import default_rules

    path = tmp_path / "rules.yaml"
    path.write_text(RULES_WITH_INHIBIT.replace("kind: growth", "kind: nonesuch"))
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(CONFIGURE_BAD_FILE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_EDA_RULES_FILE=str(path),
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_EDA_ANOMALY_INTERVAL="3600",
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, errors
    assert errors[0].startswith(
        f"ERROR invalid OTEL_EDA_RULES_FILE: {path}:2: rule 'lag-growing': unknown detector kind 'nonesuch': "
    )
    assert errors[0].endswith("; using the default rule set")
    assert f"RULES {len(default_rules())}" in result.stdout


def test_a_condition_detector_in_a_file_says_to_add_the_rule_from_python(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: c\n    metric: m\n    detector: {kind: condition}\n")
    with pytest.raises(RulesFileError, match=r"rules.yaml:2: rule 'c': the 'condition' detector takes a Python"):
        load_rules(path)
