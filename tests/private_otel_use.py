"""Finds uses of private OpenTelemetry names in Python source (an AST scan).

A use is reported when a module, outside :mod:`otel_eda.otel_internals`:

- imports a ``_``-prefixed name from an ``opentelemetry`` module, or imports from a module
  with a ``_``-prefixed part (``opentelemetry.sdk._configuration``); the logs signal's
  packages ``opentelemetry._logs`` and ``opentelemetry.sdk._logs`` are the only logs API
  OpenTelemetry Python has and are allowed (their own ``_internal`` modules are not);
- calls ``getattr``/``setattr``/``hasattr``/``delattr`` with a ``_``-prefixed string
  literal, on any object (the object's type is seldom known statically), unless the line
  says ``# not OpenTelemetry`` (another library's private attribute, or otel-eda's own);
- reads or writes a ``_``-prefixed attribute (dunders excepted) of an object that comes
  from an ``opentelemetry`` module: a name imported from one (or from ``otel_internals``,
  whose accessors hand out SDK objects), ``super()`` or ``self``/``cls`` in a class derived
  from one (unless the class defines that attribute itself), a parameter annotated with
  such a type, or a variable assigned from any of these (followed through attributes,
  calls, subscripts, ``for`` and ``with`` targets).

It is a static approximation: an object reached through an unannotated parameter is not
followed. The tests in ``tests/test_otel_internals.py`` check it finds each kind of use.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path

ALLOWED_PRIVATE_MODULES = frozenset(
    {"opentelemetry._logs", "opentelemetry.sdk._logs", "opentelemetry.sdk._logs.export"}
)
INTERNALS_MODULE = "otel_eda.otel_internals"
NOT_OPENTELEMETRY = "# not OpenTelemetry"
_REFLECTION = frozenset({"getattr", "setattr", "hasattr", "delattr"})


@dataclasses.dataclass(frozen=True)
class PrivateUse:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _otel_module(module: str) -> bool:
    return module == "opentelemetry" or module.startswith("opentelemetry.")


def _private_module(module: str) -> bool:
    if module in ALLOWED_PRIVATE_MODULES:
        return False
    return any(_private(part) for part in module.split("."))


def _names_in(node: ast.AST | None) -> Iterator[str]:
    if node is None:
        return
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            yield sub.id
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):  # a quoted annotation
            with contextlib.suppress(SyntaxError):
                yield from _names_in(ast.parse(sub.value, mode="eval"))


class _Scanner:
    def __init__(self, path: str, tree: ast.Module, lines: list[str]) -> None:
        self.path = path
        self.tree = tree
        self.lines = lines
        self.found: list[PrivateUse] = []
        self.otel_names: set[str] = set()

    def report(self, node: ast.AST, what: str) -> None:
        self.found.append(PrivateUse(self.path, getattr(node, "lineno", 0), what))

    # -------------------------------------------------------------------- imports
    def scan_imports(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if _otel_module(alias.name):
                        self.otel_names.add(alias.asname or alias.name.split(".")[0])
                        if _private_module(alias.name):
                            self.report(node, f"import of private module {alias.name}")
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == INTERNALS_MODULE or node.module.startswith(INTERNALS_MODULE + "."):
                    self.otel_names.update(alias.asname or alias.name for alias in node.names)
                    continue
                if node.module == "otel_eda":
                    self.otel_names.update(
                        alias.asname or alias.name for alias in node.names if alias.name == "otel_internals"
                    )
                    continue
                if not _otel_module(node.module):
                    continue
                if _private_module(node.module):
                    self.report(node, f"import from private module {node.module}")
                for alias in node.names:
                    self.otel_names.add(alias.asname or alias.name)
                    full = f"{node.module}.{alias.name}"
                    if _private(alias.name) and full not in ALLOWED_PRIVATE_MODULES:
                        self.report(node, f"import of private name {full}")

    # -------------------------------------------------------------------- values
    def _otel_valued(self, node: ast.AST | None, known: set[str]) -> bool:
        while True:
            if node is None:
                return False
            if isinstance(node, ast.Name):
                return node.id in known
            if isinstance(node, ast.Attribute | ast.Subscript | ast.Starred | ast.Await):
                node = node.value
            elif isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in _REFLECTION and node.args:
                    node = node.args[0]
                elif isinstance(func, ast.Name) and func.id in {"tuple", "list", "iter", "next", "reversed"}:
                    return any(self._otel_valued(a, known) for a in node.args)
                else:
                    node = func
            elif isinstance(node, ast.BoolOp):
                return any(self._otel_valued(v, known) for v in node.values)
            elif isinstance(node, ast.IfExp):
                return self._otel_valued(node.body, known) or self._otel_valued(node.orelse, known)
            elif isinstance(node, ast.NamedExpr):
                node = node.value
            else:
                return False

    @staticmethod
    def _targets(target: ast.AST) -> Iterator[str]:
        """The plain names a target binds (``x``, ``a, b``; not ``obj.attr`` nor ``d[k]``)."""
        if isinstance(target, ast.Name):
            yield target.id
        elif isinstance(target, ast.Tuple | ast.List):
            for element in target.elts:
                yield from _Scanner._targets(element)
        elif isinstance(target, ast.Starred):
            yield from _Scanner._targets(target.value)

    def _function_known(self, func: ast.FunctionDef | ast.AsyncFunctionDef, outer: set[str]) -> set[str]:
        known = set(outer)
        args = func.args
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if arg is not None and any(n in self.otel_names for n in _names_in(arg.annotation)):
                known.add(arg.arg)
        body = ast.Module(body=func.body, type_ignores=[])
        changed = True
        while changed:
            changed = False
            for node in ast.walk(body):
                pairs: list[tuple[ast.AST, ast.AST | None]] = []
                if isinstance(node, ast.Assign):
                    pairs = [(t, node.value) for t in node.targets]
                elif isinstance(node, ast.AnnAssign):
                    if any(n in self.otel_names for n in _names_in(node.annotation)):
                        pairs = [(node.target, node.target)]
                        known_before = len(known)
                        known.update(self._targets(node.target))
                        changed |= len(known) != known_before
                    pairs.append((node.target, node.value))
                elif isinstance(node, ast.NamedExpr):
                    pairs = [(node.target, node.value)]
                elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
                    pairs = [(node.target, node.iter)]
                elif isinstance(node, ast.With | ast.AsyncWith):
                    pairs = [(item.optional_vars, item.context_expr) for item in node.items if item.optional_vars]
                for target, value in pairs:
                    if value is not None and self._otel_valued(value, known):
                        new = set(self._targets(target)) - known
                        if new:
                            known |= new
                            changed = True
        return known

    # -------------------------------------------------------------------- accesses
    def _check_accesses(self, root: ast.AST, known: set[str], self_names: set[str], own: set[str]) -> None:
        for node in ast.walk(root):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in _REFLECTION
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
            ):
                name = node.args[1].value
                line = self.lines[node.lineno - 1] if 0 < node.lineno <= len(self.lines) else ""
                if isinstance(name, str) and _private(name) and NOT_OPENTELEMETRY not in line:
                    self.report(node, f"{node.func.id}(..., {name!r})")
            if not isinstance(node, ast.Attribute) or not _private(node.attr):
                continue
            base = node.value
            if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
                if self_names:
                    self.report(node, f"super().{node.attr} of an OpenTelemetry base class")
            elif isinstance(base, ast.Name) and base.id in {"self", "cls"} and base.id not in known:
                if self_names and node.attr not in own:
                    self.report(node, f"{base.id}.{node.attr} inherited from an OpenTelemetry class")
            elif self._otel_valued(base, known):
                self.report(node, f"{ast.unparse(base)}.{node.attr}")

    @staticmethod
    def _own_attributes(definition: ast.ClassDef) -> set[str]:
        own: set[str] = set()
        for node in ast.walk(definition):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node is not definition:
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)  # class-level assignments
        return own

    def scan(self) -> list[PrivateUse]:
        self.scan_imports()
        module_known = set(self.otel_names)
        definitions = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
        module_level = ast.Module(body=[n for n in self.tree.body if not isinstance(n, definitions)], type_ignores=[])
        self._check_accesses(module_level, module_known, set(), set())
        for node in self.tree.body:
            self._scan_definition(node, module_known, set(), set())
        return self.found

    def _scan_definition(self, node: ast.stmt, outer: set[str], self_names: set[str], own: set[str]) -> None:
        if isinstance(node, ast.ClassDef):
            derived = any(self._otel_valued(b, outer) for b in node.bases)
            names = {"self", "cls"} if derived else set()
            own_attrs = self._own_attributes(node)
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    self._scan_definition(item, outer, names, own_attrs)
                else:
                    self._check_accesses(item, outer, names, own_attrs)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            known = self._function_known(node, outer)
            for decorator in node.decorator_list:
                self._check_accesses(decorator, outer, set(), set())
            body = [n for n in node.body if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
            self._check_accesses(ast.Module(body=body, type_ignores=[]), known, self_names, own)
            for inner in node.body:
                if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    self._scan_definition(inner, known, self_names, own)


def private_uses(source: str, path: str = "<source>") -> list[PrivateUse]:
    """Every private OpenTelemetry use in ``source`` (see the module's docstring)."""
    return _Scanner(path, ast.parse(source, path), source.splitlines()).scan()


def private_uses_in(paths: Iterable[Path], root: Path) -> list[PrivateUse]:
    found: list[PrivateUse] = []
    for path in paths:
        found += private_uses(path.read_text(), str(path.relative_to(root)))
    return found
