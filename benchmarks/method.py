"""The shared benchmark method: fresh process per measurement, interleaved, CPU time, ON minus OFF.

Every benchmark that compares telemetry costs (the hot path, a broker) measures the same
way, so its numbers can be set side by side:

* each measurement is a **fresh Python process** (no warm caches, imports, JIT-like
  specialisation or garbage left over from another case);
* the cases are **interleaved**: repetition *i* runs every case once, the order rotating
  each repetition, so a machine that gets busier or quieter shifts every case alike;
* the child measures **process CPU time** (``time.process_time()``: every thread, the span
  export thread included) around a fixed number of operations after a warm-up, then a
  flush, so a noisy 2-core machine that delays the process does not decide the result;
* an added cost is **ON minus OFF**, paired within a repetition; each value is printed
  as the median with its min-max over the repetitions; ratios are ratios of medians;
* each goal is printed as ``met`` or ``MISSED``; for a missed goal the slower case runs
  once more under a profiler (pyinstrument, else cProfile) and its profile is printed.

Parent side (the benchmark script)::

    from method import Case, Difference, Goal, Plan, report, run_interleaved

    cases = [
        Case("on", "my transport, telemetry on", [sys.executable, "child.py", "on"]),
        Case("off", "my transport, telemetry off", [sys.executable, "child.py", "off"]),
        Case("ref_on", "reference, telemetry on", [sys.executable, "child.py", "ref"]),
        Case("ref_off", "reference, telemetry off", [sys.executable, "child.py", "ref-off"]),
    ]
    added = [
        Difference("added", "my telemetry", on="on", off="off"),
        Difference("ref_added", "reference telemetry", on="ref_on", off="ref_off"),
    ]
    goals = [Goal("mine_vs_ref", "added cost, mine / reference", "added", "ref_added", 1.2, profile="on")]
    measurements = run_interleaved(cases, Plan(reps=9, ops=5000, warmup=1000))
    summary = report(measurements, added, goals)   # prints the table and verdicts; JSON-able dict

Child side (the program a :class:`Case` runs): set everything up, then hand one function
that performs ``n`` operations to :func:`child_measure` (or ``await``
:func:`child_measure_async` from inside an event loop)::

    from method import child_measure_async

    async def main() -> None:
        bus = ...                                   # set-up: not measured
        async def run(n: int) -> None:
            for _ in range(n):
                await bus.publish("orders", b"{}")
            await bus.join()
        await child_measure_async(run, flush=provider.force_flush)

The child reads how many operations to run from the environment the parent sets
(``BENCH_OPS``, ``BENCH_WARMUP``; ``BENCH_PROFILE=1`` asks for a profile of the measured
run) and prints one line ``BENCH-RESULT {json}`` with its CPU and wall seconds; anything
else it prints is shown only with a profile or a failure. ``extra`` (a callable returning
a dict of numbers) adds counts the parent prints, e.g. spans dropped.

Run a child by hand to see its output: ``BENCH_OPS=2000 .venv/bin/python child.py on``.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final

__all__ = [
    "Case",
    "Difference",
    "Goal",
    "Measurements",
    "Plan",
    "child_measure",
    "child_measure_async",
    "report",
    "run_interleaved",
]

RESULT_PREFIX: Final = "BENCH-RESULT "
OPS_VARIABLE: Final = "BENCH_OPS"
WARMUP_VARIABLE: Final = "BENCH_WARMUP"
PROFILE_VARIABLE: Final = "BENCH_PROFILE"


# --- what to measure ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    """One thing to measure: a command that runs in a fresh process and calls
    :func:`child_measure`. ``env`` is added to the parent's environment, from which every
    ``OTEL_*`` variable is removed first (a developer's shell must not change a case)."""

    key: str
    label: str
    argv: Sequence[str]
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    unit: str = "event"


@dataclasses.dataclass(frozen=True)
class Difference:
    """An added cost: case ``on`` minus case ``off``, paired within each repetition."""

    key: str
    label: str
    on: str
    off: str


@dataclasses.dataclass(frozen=True)
class Goal:
    """``numerator / denominator <= limit`` on medians (keys of cases or differences).

    ``profile`` names the case to profile when the goal is missed (the slower side)."""

    key: str
    label: str
    numerator: str
    denominator: str
    limit: float
    profile: str | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """Repetitions per case, operations measured per process, operations of warm-up."""

    reps: int = 9
    ops: int = 5000
    warmup: int = 1000
    timeout_s: float = 600.0


@dataclasses.dataclass
class Samples:
    """One series of values per repetition, in microseconds per operation (or a count)."""

    values: list[float] = dataclasses.field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.values)

    def summary(self) -> dict[str, Any]:
        return {
            "median": self.median(),
            "min": min(self.values),
            "max": max(self.values),
            "samples": list(self.values),
        }


@dataclasses.dataclass
class Measurements:
    """What :func:`run_interleaved` measured: per case, CPU and wall µs per operation and
    whatever numbers the child reported in ``extra``, one value per repetition."""

    plan: Plan
    cases: list[Case]
    cpu_us: dict[str, Samples]
    wall_us: dict[str, Samples]
    extra: dict[str, dict[str, Samples]]
    seconds: float = 0.0

    def samples(self, key: str, differences: Iterable[Difference] = ()) -> Samples:
        """CPU µs per operation of a case, or of a difference (paired per repetition)."""
        if key in self.cpu_us:
            return self.cpu_us[key]
        for diff in differences:
            if diff.key == key:
                on, off = self.cpu_us[diff.on].values, self.cpu_us[diff.off].values
                return Samples([a - b for a, b in zip(on, off, strict=True)])
        raise KeyError(key)


# --- parent: run the cases -----------------------------------------------------------------
def child_environment(case: Case, plan: Plan, ops: int, *, profile: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(case.env)
    env[OPS_VARIABLE] = str(ops)
    env[WARMUP_VARIABLE] = str(plan.warmup)
    env["PYTHONUNBUFFERED"] = "1"
    if profile:
        env[PROFILE_VARIABLE] = "1"
    else:
        env.pop(PROFILE_VARIABLE, None)
    return env


class ChildFailed(RuntimeError):
    """A case's process exited with an error or printed no result line."""


def run_child(case: Case, plan: Plan, ops: int | None = None, *, profile: bool = False) -> tuple[dict[str, Any], str]:
    """Run ``case`` once in a fresh process; return its result and its other output."""
    proc = subprocess.run(
        list(case.argv),
        env=child_environment(case, plan, plan.ops if ops is None else ops, profile=profile),
        capture_output=True,
        text=True,
        timeout=plan.timeout_s,
        check=False,
    )
    lines = proc.stdout.splitlines()
    results = [line for line in lines if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not results:
        raise ChildFailed(
            f"case {case.key} ({' '.join(case.argv)}) exited {proc.returncode}:\n{proc.stdout[-2000:]}"
            f"\n{proc.stderr[-4000:]}"
        )
    other = "\n".join(line for line in lines if not line.startswith(RESULT_PREFIX))
    return json.loads(results[-1][len(RESULT_PREFIX) :]), other


def run_interleaved(cases: Sequence[Case], plan: Plan, *, progress: bool = True) -> Measurements:
    """Run every case ``plan.reps`` times, one fresh process per measurement, round-robin
    with the order rotating each repetition."""
    began = time.perf_counter()
    if len({c.key for c in cases}) != len(cases):
        raise ValueError("case keys must be unique")
    cpu = {c.key: Samples() for c in cases}
    wall = {c.key: Samples() for c in cases}
    extra: dict[str, dict[str, Samples]] = {c.key: defaultdict(Samples) for c in cases}
    for rep in range(plan.reps):
        shift = rep % len(cases)
        for case in [*cases[shift:], *cases[:shift]]:
            result, _ = run_child(case, plan)
            ops = result["ops"]
            cpu[case.key].values.append(result["cpu_s"] / ops * 1e6)
            wall[case.key].values.append(result["wall_s"] / ops * 1e6)
            for name, value in result.get("extra", {}).items():
                extra[case.key][name].values.append(float(value))
        if progress:
            print(f"  repetition {rep + 1}/{plan.reps} done ({time.perf_counter() - began:.0f} s)", file=sys.stderr)
    return Measurements(
        plan, list(cases), cpu, wall, {k: dict(v) for k, v in extra.items()}, time.perf_counter() - began
    )


# --- parent: report --------------------------------------------------------------------------
def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "unknown"


def describe_machine() -> str:
    return f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average {_load()}"


def _range(samples: Samples, fmt: str = "8.1f") -> str:
    return f"{samples.median():{fmt}}  {min(samples.values):{fmt}} - {max(samples.values):{fmt}}"


def report(
    measurements: Measurements,
    differences: Sequence[Difference] = (),
    goals: Sequence[Goal] = (),
    *,
    profile_missed: bool = True,
    profile_always: bool = False,
    profile_ops: int | None = None,
) -> dict[str, Any]:
    """Print the cases, the differences and the goals; return every number as a dict.

    A missed goal (or every goal with ``profile_always``) profiles its ``profile`` case in
    one more fresh process of ``profile_ops`` operations (default: the plan's)."""
    plan = measurements.plan
    unit = measurements.cases[0].unit if measurements.cases else "op"
    width = max([len(c.label) for c in measurements.cases] + [len(d.label) for d in differences] + [10])
    head = f"{'median':>8}  {'min':>8} - {'max':>8}"
    print(f"  CPU us per {unit} (process CPU, all threads; {plan.reps} fresh processes each, interleaved)")
    print(f"    {'case':<{width}}  {head}   wall us median   {unit}s/s (wall)")
    out: dict[str, Any] = {"plan": dataclasses.asdict(plan), "cases": {}, "differences": {}, "goals": {}}
    for case in measurements.cases:
        cpu, wall = measurements.cpu_us[case.key], measurements.wall_us[case.key]
        rate = 1e6 / wall.median()
        print(f"    {case.label:<{width}}  {_range(cpu)}   {wall.median():14.1f}   {rate:10.0f}")
        extras = {name: s.summary() for name, s in measurements.extra.get(case.key, {}).items()}
        out["cases"][case.key] = {
            "label": case.label,
            "cpu_us": cpu.summary(),
            "wall_us": wall.summary(),
            "per_second_wall": rate,
            "extra": extras,
        }
    if differences:
        print(f"  added CPU us per {unit} (ON minus OFF, paired per repetition)")
        for diff in differences:
            samples = measurements.samples(diff.key, differences)
            print(f"    {diff.label:<{width}}  {_range(samples)}   ({diff.on} - {diff.off})")
            out["differences"][diff.key] = {"label": diff.label, "on": diff.on, "off": diff.off, **samples.summary()}
    if goals:
        print("  goals (ratio of medians)")
    for goal in goals:
        num = measurements.samples(goal.numerator, differences).median()
        den = measurements.samples(goal.denominator, differences).median()
        ratio = num / den if den > 0 else float("inf")
        met = ratio <= goal.limit
        print(
            f"    {goal.label}: {num:.1f} / {den:.1f} = {ratio:.2f}x (goal <= {goal.limit:g}x): "
            + ("met" if met else "MISSED")
        )
        out["goals"][goal.key] = {
            "label": goal.label,
            "numerator": goal.numerator,
            "denominator": goal.denominator,
            "ratio": ratio,
            "limit": goal.limit,
            "met": met,
        }
        if goal.profile is not None and (profile_always or (profile_missed and not met)):
            case = next(c for c in measurements.cases if c.key == goal.profile)
            _, text = run_child(case, plan, profile_ops, profile=True)
            print(f"    profile of '{case.label}' ({profile_ops or plan.ops} {unit}s, a fresh process):")
            print("\n".join("      " + line for line in text.splitlines() if line.strip()))
            out["goals"][goal.key]["profile"] = text
    out["seconds"] = measurements.seconds
    return out


# --- child: measure ----------------------------------------------------------------------------
def _int_from_env(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _emit(ops: int, cpu_s: float, wall_s: float, extra: Callable[[], Mapping[str, float]] | None) -> None:
    result: dict[str, Any] = {"ops": ops, "cpu_s": cpu_s, "wall_s": wall_s}
    if extra is not None:
        result["extra"] = dict(extra())
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def child_measure(
    run: Callable[[int], object],
    *,
    flush: Callable[[], object] | None = None,
    extra: Callable[[], Mapping[str, float]] | None = None,
) -> None:
    """In a case's process: warm up, then measure ``run(BENCH_OPS)`` plus ``flush()``."""
    ops = _int_from_env(OPS_VARIABLE, 5000)
    run(_int_from_env(WARMUP_VARIABLE, 1000))
    if flush is not None:
        flush()
    gc.collect()
    profiler = _Profiler.start_if_asked()
    cpu, wall = time.process_time(), time.perf_counter()
    run(ops)
    if flush is not None:
        flush()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if profiler is not None:
        profiler.stop_and_print()
    _emit(ops, cpu, wall, extra)


async def child_measure_async(
    run: Callable[[int], Awaitable[object]],
    *,
    flush: Callable[[], object] | None = None,
    extra: Callable[[], Mapping[str, float]] | None = None,
) -> None:
    """:func:`child_measure` for a coroutine function, awaited in the caller's event loop."""
    ops = _int_from_env(OPS_VARIABLE, 5000)
    await run(_int_from_env(WARMUP_VARIABLE, 1000))
    if flush is not None:
        flush()
    gc.collect()
    profiler = _Profiler.start_if_asked()
    cpu, wall = time.process_time(), time.perf_counter()
    await run(ops)
    if flush is not None:
        flush()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if profiler is not None:
        profiler.stop_and_print()
    _emit(ops, cpu, wall, extra)


# --- child: profile ------------------------------------------------------------------------------
_STDLIB: Final = os.path.realpath(sysconfig.get_paths()["stdlib"])
_HERE: Final = os.path.realpath(os.path.dirname(__file__))


def _module(path: str) -> str:
    real = os.path.realpath(path)
    parts = real.replace("\\", "/").split("/")
    if "site-packages" in parts:
        parts = parts[len(parts) - parts[::-1].index("site-packages") :]
    elif "otel_eda" in parts:
        parts = parts[len(parts) - 1 - parts[::-1].index("otel_eda") :]
    elif real.startswith(_STDLIB + os.sep):
        parts = real[len(_STDLIB) + 1 :].split(os.sep)
    elif real.startswith(_HERE + os.sep):
        return "benchmark." + os.path.basename(real).removesuffix(".py")
    else:
        return os.path.basename(real)
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _area(module: str) -> str:
    """Where time goes, coarsely: ``opentelemetry.sdk.trace``, ``otel_eda.telemetry``, ``asyncio``."""
    parts = module.split(".")
    if parts[0] == "opentelemetry":
        keep = 3 if len(parts) > 2 and parts[1] == "sdk" else 2
        return ".".join(parts[:keep])
    if parts[0] in ("otel_eda", "benchmark"):
        return ".".join(parts[:2])
    return parts[0]


@functools.lru_cache(maxsize=8192)
def _describe(identifier: str) -> tuple[str, str]:
    """(function label, area) of a pyinstrument frame identifier."""
    function, _, rest = identifier.partition("\x00")
    path, _, line = rest.partition("\x00")
    if not path:
        return function, function
    module = _module(path)
    return f"{function}  ({module}:{line})", _area(module)


def _top(seconds: Mapping[str, float], n: int) -> list[tuple[str, float]]:
    return sorted(seconds.items(), key=lambda item: item[1], reverse=True)[:n]


class _Profiler:
    """pyinstrument (else cProfile) around the measured run, when ``BENCH_PROFILE=1``."""

    def __init__(self) -> None:
        try:
            from pyinstrument import Profiler
        except ImportError:  # pragma: no cover - pyinstrument is in the bench extra
            import cProfile

            self._cprofile: Any = cProfile.Profile()
            self._pyinstrument: Any = None
            self._cprofile.enable()
        else:
            self._cprofile = None
            self._pyinstrument = Profiler(interval=0.0002, async_mode="disabled")
            self._pyinstrument.start()

    @classmethod
    def start_if_asked(cls) -> _Profiler | None:
        return cls() if os.environ.get(PROFILE_VARIABLE) == "1" else None

    def stop_and_print(self, top: int = 14) -> None:
        if self._cprofile is not None:
            self._print_cprofile(top)
            return
        from pyinstrument.frame_info import frame_info_get_identifier

        session = self._pyinstrument.stop()
        total = sum(t for _, t in session.frame_records) or 1.0
        own: dict[str, float] = defaultdict(float)
        inclusive: dict[str, float] = defaultdict(float)
        areas: dict[str, float] = defaultdict(float)
        for stack, seconds in session.frame_records:
            described = [_describe(frame_info_get_identifier(f)) for f in stack]
            if not described:
                continue
            label, area = described[-1]
            own[label] += seconds
            areas[area] += seconds
            for fn in {label for label, _ in described}:
                inclusive[fn] += seconds
        print(f"pyinstrument, main thread, {session.sample_count} samples; share of the profiled time")
        print("self time by area:")
        for area, seconds in _top(areas, 10):
            print(f"  {seconds / total:6.1%}  {area}")
        print("top functions by self time:")
        for fn, seconds in _top(own, top):
            print(f"  {seconds / total:6.1%}  {fn}")
        eda = [(fn, s) for fn, s in _top(inclusive, len(inclusive)) if "(otel_eda." in fn]
        if eda:
            print("otel_eda functions by inclusive time:")
            for fn, seconds in eda[:top]:
                print(f"  {seconds / total:6.1%}  {fn}")

    def _print_cprofile(self, top: int) -> None:
        import io
        import pstats

        self._cprofile.disable()
        out = io.StringIO()
        pstats.Stats(self._cprofile, stream=out).sort_stats("tottime").print_stats(top)
        print(f"cProfile, top {top} by own time:")
        print(out.getvalue())
