"""The README's promises: its first two commands, and a quick start that runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_commands_and_ci_calls_the_second() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert first_block is not None and README.index("```bash") < README.index("\n## ")
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["scripts/demo", "scripts/test"]
    for command in commands:
        assert os.access(ROOT / command, os.X_OK)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test" in ci and "ruff" in ci and "mypy" in ci
    # both set up .venv at the repository root with every extra (benchmarks' included)
    setup = (ROOT / "scripts" / "setup-venv").read_text()
    assert "-m venv .venv" in setup and '-e ".[all]"' in setup
    for command in commands:
        assert "scripts/setup-venv" in (ROOT / command).read_text()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (every_extra,) = extras.pop("all")  # all = ["otel-eda[...]"]: every other extra, whatever its order
    assert sorted(every_extra.removeprefix("otel-eda[").removesuffix("]").split(",")) == sorted(extras)


def test_quick_start_runs(tmp_path: Path) -> None:
    block = re.search(r"## Quick start\n\n```python\n(.*?)```", README, re.S)
    assert block is not None
    script = tmp_path / "quickstart.py"
    script.write_text(block.group(1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "OTEL_TRACES_EXPORTER": "none", "OTEL_SERVICE_NAME": "quickstart"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("- order_placed from quickstart [completed] payment: completed")
    assert lines[1].startswith("  - payment_authorized from quickstart [unrouted]")
