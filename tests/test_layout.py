"""The package's layout rules: layers, names in one place, one version, one export list."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import otel_eda

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "otel_eda"
VENV_BIN = Path(sys.executable).parent


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_layer_imports_a_layer_above_it() -> None:
    """The contracts in pyproject.toml ([tool.importlinter]), checked by import-linter."""
    result = subprocess.run(
        [str(VENV_BIN / "lint-imports"), "--no-cache", "--no-logo"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_identity_messaging_flows_and_settings_use_the_api_only() -> None:
    """They are loaded by opentelemetry-instrument's start-up and by applications that
    bring their own SDK set-up: none imports the OpenTelemetry SDK."""
    offenders = []
    for layer in ("identity", "messaging", "flows"):
        for path in (PACKAGE / layer).rglob("*.py"):
            offenders += [f"{path.relative_to(ROOT)}: {m}" for m in _imports(path) if m.startswith("opentelemetry.sdk")]
    for name in ("settings.py", "environment_variables.py", "semconv.py", "process_hooks.py", "version.py"):
        path = PACKAGE / name
        offenders += [
            f"{name}: {m}"
            for m in _imports(path)
            if m.startswith(("opentelemetry.sdk", "otel_eda.")) and m != "otel_eda.environment_variables"
        ]
    assert not offenders


def test_the_anomaly_engine_works_on_metrics_alone() -> None:
    """Importing and running the anomaly package loads none of the event runtime."""
    code = """
import sys
from otel_eda.anomaly.engine import AnomalyEngine
from otel_eda.anomaly.reader import AnomalyMetricReader
from otel_eda.anomaly.rules import default_rules
from otel_eda.anomaly.series import SeriesPoint
engine = AnomalyEngine(default_rules())
engine.evaluate([SeriesPoint("messaging.process.duration", "p95", (), 0.1, 1.0)], 1.0)
runtime = [m for m in sys.modules if m.startswith(("otel_eda.identity", "otel_eda.messaging", "otel_eda.flows",
                                                      "otel_eda.transports", "otel_eda.installation"))]
print(runtime)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _string_constants(tree: ast.AST) -> list[ast.Constant]:
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def test_every_span_metric_and_attribute_name_lives_in_semconv() -> None:
    offenders = []
    for path in _modules():
        if path.name == "semconv.py":
            continue
        for const in _string_constants(ast.parse(path.read_text(), str(path))):
            if const.value.startswith(("messaging.", "eda.")):
                offenders.append(f"{path.relative_to(ROOT)}:{const.lineno}: {const.value!r}")
    assert not offenders, "use otel_eda.semconv:\n" + "\n".join(offenders)


def test_the_version_is_written_once_in_the_package_metadata() -> None:
    from importlib import metadata

    assert otel_eda.__version__ == metadata.version("otel-eda")
    pyproject_version = next(
        line.split('"')[1] for line in (ROOT / "pyproject.toml").read_text().splitlines() if line.startswith("version")
    )
    offenders = [p for p in _modules() if f'"{pyproject_version}"' in p.read_text()]
    assert not offenders


def test_one_list_of_public_names() -> None:
    """``otel_eda._EXPORTS`` is the list; ``__all__`` derives from it and the typed imports
    that type checkers read match it name for name and module for module."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    typed = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.module
                typed.update({alias.asname or alias.name: stmt.module for alias in stmt.names})
    assert typed == otel_eda._EXPORTS
    assert set(otel_eda.__all__) == {*otel_eda._EXPORTS, "__version__"}
    for name in otel_eda._EXPORTS:
        assert getattr(otel_eda, name) is not None


def test_what_user_code_catches_passes_or_subclasses_is_importable_from_otel_eda() -> None:
    from otel_eda import Alert, ConfigurationError, EventSummary, Rejected, with_event

    assert issubclass(ConfigurationError, Exception) and issubclass(Rejected, Exception)
    assert Alert.__module__ == "otel_eda.anomaly.alerts"
    assert callable(with_event) and EventSummary.__name__ == "EventSummary"


def test_fork_and_exit_hooks_are_registered_in_one_place() -> None:
    offenders = []
    for path in _modules():
        if path.name == "process_hooks.py":
            continue
        text = path.read_text()
        if "register_at_fork" in text or "atexit.register" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders
