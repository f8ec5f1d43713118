#!/usr/bin/env python
"""Speed of otel-eda's anomaly engine (issue 3, section 8).

Run from the repository root::

    .venv/bin/python benchmarks/anomaly_speed.py                 # full run
    .venv/bin/python benchmarks/anomaly_speed.py --quick         # smoke run, a few seconds
    .venv/bin/python benchmarks/anomaly_speed.py --json out.json # also write every number

Section "detectors": per-update cost of each streaming detector at window sizes 100,
1,000, 10,000 and 100,000 (the O(1) ones should be flat), the robust (median/MAD)
detector reported separately, against a naive implementation that keeps a deque of point
dicts and recomputes mean and standard deviation over the whole window for every point
(the original design's way). Each detector is filled to its window first (steady state),
then timed on a fixed pseudo-random series; cases are interleaved round-robin with the
order rotating each repetition, and each line gives the median (min-max) over the
repetitions in microseconds per update, plus ratios from the same run.

Section "one collection": a MeterProvider with the anomaly reader's temporality and
aggregation preferences and 100,000 counter attribute sets; the SDK's ``collect`` is
timed apart from otel-eda's part, which runs exactly as the reader runs it: conversion
to series points and zero fill (``AnomalyMetricReader._series``), then
``AnomalyEngine.evaluate`` with a z-score rule on every series. Full (generation 2)
garbage collections are counted per part.

Section "cad_ose": the cost of the ``cad_ose`` detector as shipped (range learnt online,
at most 5000 contexts) per point, each update timed alone in CPU time
(``process_time_ns``: the machine's other load left out): mean, p99 and max over the
NAB subset's files (if ``../shared/nab`` is there) and over a noisy series long enough to
fill its memory (the worst case: every step of noise is a new transition), the z-score
detector timed the same way in the same run; its memory per series (``tracemalloc``,
once full); and how many series of the 100,000 of the collection benchmark could carry
it within the 0.5 s budget of otel-eda's part, from the measured z-score collection time
and the per-point cost difference.

Section "artime": the same for the ``artime`` detector as shipped (range learnt online, at
most 1000 categories), with the categories each series ends with and the memory per
category (its bound: that times the cap, plus the retained values); the updates that do a
batch (the one ending the warm-up, and each rebuild over a widened range) are timed apart.
``--section artime`` (or ``cad_ose``) runs only that slow-detector section after the first
two.

Sections are separate functions returning plain dicts; ``main`` runs them and writes
``{"detectors": {...}, ...}`` with ``--json``. The exit status is 0 whatever the numbers:
this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, MetricsData
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation

from otel_eda.anomaly.detectors import make_detector

WINDOWS = (100, 1_000, 10_000, 100_000)


class NaiveZScore:
    """The original design's monitor: a deque of point dicts, mean/std recomputed per point."""

    threshold = 0.5

    def __init__(self, window: int) -> None:
        self.points: deque[dict[str, float]] = deque(maxlen=window)
        self.score = 0.0

    def update(self, t: float, x: float) -> NaiveZScore:
        self.points.append({"timestamp": t, "value": x})
        values = [p["value"] for p in self.points]
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
        self.score = 1.0 if std > 0 and abs(x - mean) > 2 * std else 0.0
        return self


def _series(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [100.0 + 10.0 * math.sin(i / 50.0) + rng.gauss(0.0, 1.0) for i in range(n)]


def _factory(kind: str, **params: Any) -> Callable[[], Any]:
    return lambda: make_detector(kind, **params)


def _cases(windows: Sequence[int]) -> dict[str, tuple[str, int, Callable[[], Any]]]:
    """name -> (group, window, factory)."""
    cases: dict[str, tuple[str, int, Callable[[], Any]]] = {}
    for w in windows:
        cases[f"zscore w={w}"] = ("O(1)", w, _factory("zscore", window=w))
        cases[f"ewma alpha=1/{w}"] = ("O(1)", w, _factory("ewma", alpha=1.0 / w))
        cases[f"trend w={w}"] = ("O(1)", w, _factory("trend", window=w))
        cases[f"likelihood w={w}"] = ("O(1)", w, _factory("likelihood", window=w, history=w))
        cases[f"robust w={w}"] = ("robust", w, _factory("robust", window=w))
        cases[f"naive w={w}"] = ("naive", w, lambda w=w: NaiveZScore(w))  # type: ignore[misc]
    return cases


def detector_section(windows: Sequence[int], reps: int, points: int, naive_budget: float) -> dict[str, Any]:
    """Time every detector case; return {case: {group, window, us_median, us_min, us_max}} plus ratios."""
    cases = _cases(windows)
    series = _series(points, seed=1)
    # Steady state: each detector has seen a full window before it is timed.
    state: dict[str, Any] = {}
    n_points: dict[str, int] = {}
    for name, (group, w, factory) in cases.items():
        det = factory()
        if group == "naive":
            for i in range(w):
                det.points.append({"timestamp": float(i), "value": series[i % points]})
            # the naive one costs O(w) per point: time fewer points, same total budget
            n_points[name] = max(5, min(points, int(naive_budget / (w * 0.05e-6) / reps)))
        else:
            for i, x in enumerate(_series(w + 1, seed=2)):
                det.update(1e9 - 60.0 * (w + 1 - i), x)
            n_points[name] = points
        state[name] = det
    timings: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    clock = {name: 1e9 for name in cases}  # each detector's own increasing epoch seconds
    for rep in range(reps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            det = state[name]
            update = det.update
            n = n_points[name]
            t0 = clock[name]
            start = time.perf_counter()
            for i in range(n):
                update(t0 + 60.0 * i, series[i])
            timings[name].append((time.perf_counter() - start) / n * 1e6)
            clock[name] = t0 + 60.0 * n
    results: dict[str, Any] = {}
    for name, (group, w, _) in cases.items():
        ts = timings[name]
        results[name] = {
            "group": group,
            "window": w,
            "points": n_points[name],
            "us_median": statistics.median(ts),
            "us_min": min(ts),
            "us_max": max(ts),
        }
    ratios: dict[str, float] = {}
    w0, w1 = windows[0], windows[-1]
    for kind in ("zscore", "trend", "likelihood", "robust", "naive"):
        a, b = f"{kind} w={w0}", f"{kind} w={w1}"
        ratios[f"{kind} w={w1} / w={w0}"] = results[b]["us_median"] / results[a]["us_median"]
    a, b = f"ewma alpha=1/{w0}", f"ewma alpha=1/{w1}"
    ratios[f"ewma alpha=1/{w1} / alpha=1/{w0}"] = results[b]["us_median"] / results[a]["us_median"]
    for w in windows:
        ratios[f"naive / zscore at w={w}"] = (
            results[f"naive w={w}"]["us_median"] / results[f"zscore w={w}"]["us_median"]
        )
    return {"cases": results, "ratios": ratios, "reps": reps}


def print_detector_section(res: dict[str, Any]) -> None:
    print(f"detectors: microseconds per update, median (min-max) of {res['reps']} interleaved repetitions")
    for group, title in (
        ("O(1)", "O(1) detectors"),
        ("robust", "robust (median/MAD, sorted list)"),
        ("naive", "naive"),
    ):
        print(f"  {title}")
        for name, r in res["cases"].items():
            if r["group"] == group:
                print(
                    f"    {name:26} {r['us_median']:11.2f} ({r['us_min']:.2f}-{r['us_max']:.2f})"
                    f"  [{r['points']} points per repetition]"
                )
    print("  ratios (from this run)")
    for name, v in res["ratios"].items():
        print(f"    {name:36} {v:10.2f}")


class _CapturingReader(MetricReader):
    """A reader that keeps the last collection, with the anomaly reader's preferences."""

    def __init__(self) -> None:
        from otel_eda.anomaly import reader as anomaly_reader

        super().__init__(
            preferred_temporality=anomaly_reader._TEMPORALITY,  # type: ignore[arg-type]
            preferred_aggregation={Histogram: ExponentialBucketHistogramAggregation()},
        )
        self.data: MetricsData | None = None

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        self.data = metrics_data

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


def _full_collections() -> int:
    return int(gc.get_stats()[2]["collections"])


def collection_section(series: int, reps: int) -> dict[str, Any]:
    """One collection of ``series`` counter attribute sets: SDK collect vs otel-eda's part.

    The engine watches the counter's rate with a z-score rule; its series cap is raised
    above ``series``. otel-eda's part is the reader's own path: the conversion to series
    points with the zero fill of quiet series, then the evaluation by the engine
    (detectors and alert rules). Each rep's otel-eda time is the sum of both parts in
    that rep; the medians are taken per part and of the sums.
    """
    from otel_eda.anomaly.engine import AnomalyEngine
    from otel_eda.anomaly.reader import AnomalyMetricReader
    from otel_eda.anomaly.rules import Rule

    reader = _CapturingReader()
    provider = MeterProvider(metric_readers=[reader])
    counter = provider.get_meter("bench").create_counter("jobs")
    attrs = [{"job": f"j{i}"} for i in range(series)]
    rule = Rule(name="jobs", metric="jobs", signal="rate", detector={"kind": "zscore", "window": 60})
    engine = AnomalyEngine([rule], max_series=series + 10)
    anomaly = AnomalyMetricReader(engine, interval_s=3600, start=False)  # its conversion, fed by hand
    timings: dict[str, list[float]] = {"sdk collect": [], "to series": [], "engine evaluate": []}
    ours: list[float] = []
    full_gc = {"sdk collect": 0, "otel-eda": 0}
    for rep in range(reps + 1):  # the first round creates the engine's series: not timed
        for a in attrs:
            counter.add(1 + rep % 3, a)
        g0 = _full_collections()
        t0 = time.perf_counter()
        reader.collect()
        t1 = time.perf_counter()
        g1 = _full_collections()
        assert reader.data is not None
        points, now = anomaly._series(reader.data)
        t2 = time.perf_counter()
        engine.evaluate(points, now)
        t3 = time.perf_counter()
        g2 = _full_collections()
        del points
        reader.data = None
        if rep:
            timings["sdk collect"].append(t1 - t0)
            timings["to series"].append(t2 - t1)
            timings["engine evaluate"].append(t3 - t2)
            ours.append(t3 - t1)
            full_gc["sdk collect"] += g1 - g0
            full_gc["otel-eda"] += g2 - g1
    provider.shutdown()
    medians = {k: statistics.median(v) for k, v in timings.items()}
    ours_median = statistics.median(ours)
    return {
        "series": series,
        "reps": reps,
        "seconds_median": medians,
        "otel_eda_s": ours_median,
        "otel_eda_s_min": min(ours),
        "otel_eda_s_max": max(ours),
        "goal_s": 0.5,
        "met": ours_median < 0.5,
        "ratio_otel_eda_to_sdk": ours_median / medians["sdk collect"],
        "engine_series": engine.series_count,
        "full_gc": full_gc,
    }


def print_collection_section(res: dict[str, Any]) -> None:
    print(f"one collection of {res['series']:,} series (median of {res['reps']}):")
    for name, seconds in res["seconds_median"].items():
        print(f"    {name:18} {seconds:8.3f} s")
    verdict = "met" if res["met"] else "MISSED"
    print(
        f"    otel-eda's part (to series + evaluate) {res['otel_eda_s']:.3f} s "
        f"({res['otel_eda_s_min']:.3f}-{res['otel_eda_s_max']:.3f}; goal < {res['goal_s']} s): {verdict}; "
        f"{res['ratio_otel_eda_to_sdk']:.2f}x the SDK's own collect; engine holds {res['engine_series']:,} series"
    )
    gcs = res["full_gc"]
    print(
        f"    full garbage collections over the {res['reps']} reps: {gcs['sdk collect']} in the SDK's collect, "
        f"{gcs['otel-eda']} in otel-eda's part"
    )


def _timed(factory: Callable[[], Any], values: Sequence[float]) -> list[int]:
    det = factory()
    update = det.update
    clock = time.process_time_ns  # CPU time of this process: a loaded machine's preemptions left out
    out = []
    for i, x in enumerate(values):
        t0 = clock()
        update(60.0 * i, x)
        out.append(clock() - t0)
    return out


def _stats_us(ns_list: list[int]) -> dict[str, float]:
    s = sorted(ns_list)
    return {
        "mean_us": sum(s) / len(s) / 1e3,
        "p99_us": s[min(len(s) - 1, int(0.99 * len(s)))] / 1e3,
        "max_us": s[-1] / 1e3,
        "points": len(s),
    }


def _nab_series(limit_files: int | None) -> dict[str, list[float]]:
    root = Path(__file__).resolve().parent.parent.parent / "shared" / "nab" / "data"
    out: dict[str, list[float]] = {}
    for path in sorted(root.glob("*/*.csv"))[:limit_files]:
        with path.open() as fh:
            fh.readline()
            out[f"{path.parent.name}/{path.name}"] = [float(line.split(",")[1]) for line in fh if line.strip()]
    return out


def cad_ose_section(noise_points: int, limit_files: int | None) -> dict[str, Any]:
    """Per-point cost and memory of the shipped cad_ose detector, z-score alongside."""
    import tracemalloc

    from otel_eda.anomaly.detectors import CadOseDetector

    shipped = CadOseDetector()
    series = _nab_series(limit_files)
    rng = random.Random(7)
    series["noise N(50, 5) (fills the memory)"] = [rng.gauss(50.0, 5.0) for _ in range(noise_points)]
    per_series: dict[str, Any] = {}
    all_cad: list[int] = []
    all_z: list[int] = []
    for name, values in series.items():
        cad = _timed(CadOseDetector, values)
        z = _timed(lambda: make_detector("zscore", window=120), values)
        per_series[name] = {"cad_ose": _stats_us(cad), "zscore": _stats_us(z)}
        all_cad += cad
        all_z += z
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    det = CadOseDetector()
    for x in series["noise N(50, 5) (fills the memory)"]:
        det.update(0.0, x)
    full_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {
        "max_contexts": shipped.max_contexts,
        "series": per_series,
        "all": {"cad_ose": _stats_us(all_cad), "zscore": _stats_us(all_z)},
        "memory_full_bytes": full_bytes,
        "contexts_when_measured": det.contexts,
    }


def series_within_budget(cad: dict[str, Any], collection: dict[str, Any], kind: str = "cad_ose") -> dict[str, float]:
    """How many of the collection's series could carry ``kind`` (cad_ose, artime) within the 0.5 s budget.

    Every series costs what it costs with the z-score rule today (the measured collection);
    each series switched to ``kind`` adds the difference of the mean per-point costs.
    """
    headroom = collection["goal_s"] - collection["otel_eda_s"]
    extra = (cad["all"][kind]["mean_us"] - cad["all"]["zscore"]["mean_us"]) * 1e-6
    worst = cad["series"].get("noise N(50, 5) (fills the memory)", cad["all"])
    extra_worst = worst[kind]["mean_us"] * 1e-6
    return {
        "headroom_s": headroom,
        "series_at_mean_cost": max(0.0, headroom / extra) if extra > 0 else math.inf,
        "series_at_full_memory_cost": max(0.0, headroom / extra_worst) if extra_worst > 0 else math.inf,
    }


def print_cad_ose_section(res: dict[str, Any], budget: dict[str, float] | None) -> None:
    print(f"cad_ose as shipped (max_contexts={res['max_contexts']}): microseconds per point, each update timed")
    print(f"    {'series':58} {'cad_ose mean / p99 / max':>28} {'zscore w=120 mean / p99':>26}")
    for name, r in {**res["series"], "all of the above": res["all"]}.items():
        c, z = r["cad_ose"], r["zscore"]
        print(
            f"    {name[:58]:58} {c['mean_us']:8.0f} /{c['p99_us']:7.0f} /{c['max_us']:8.0f} "
            f"{z['mean_us']:12.1f} /{z['p99_us']:7.1f}"
        )
    mb = res["memory_full_bytes"] / 1e6
    print(f"    memory of one series once full ({res['contexts_when_measured']} contexts): {mb:.1f} MB")
    if budget is not None:
        print(
            f"    series of the collection that can carry it within 0.5 s: {budget['series_at_mean_cost']:,.0f} at the "
            f"mean cost above, {budget['series_at_full_memory_cost']:,.0f} when all are full "
            f"(headroom {budget['headroom_s']:.3f} s over the z-score collection)"
        )


def _timed_artime(values: Sequence[float]) -> tuple[list[int], list[int], list[int]]:
    """Each update of a shipped ARTime timed; and the positions of its batches: the warm-up's end, the rebuilds."""
    from otel_eda.anomaly.detectors import ArtimeDetector

    det = ArtimeDetector()
    update = det.update
    clock = time.process_time_ns
    out = []
    rebuilds = []
    ends = []
    done = 0
    for i, x in enumerate(values):
        t0 = clock()
        update(60.0 * i, x)
        out.append(clock() - t0)
        if det.rebuilds != done:
            done = det.rebuilds
            rebuilds.append(i)
        elif i == det.probation - 1:
            ends.append(i)
    return out, ends, rebuilds


def artime_section(noise_points: int, limit_files: int | None) -> dict[str, Any]:
    """Per-point cost and memory of the shipped artime detector, z-score alongside (as ``cad_ose_section``).

    ARTime's memory grows with its categories (at most ``max_categories``), slowly: noise
    adds a few per thousand points. The memory per category is measured on the noise series
    (``tracemalloc``, past the warm-up) and the bound is that times the cap.
    """
    import tracemalloc

    from otel_eda.anomaly.detectors import ArtimeDetector
    from otel_eda.anomaly.rules import artime_rule_detector

    shipped = ArtimeDetector()
    rule_spec = artime_rule_detector({"kind": "zscore", "window": 120, "direction": "up", "hold": 120})
    rule_spec = {**rule_spec, "stagger": 0}  # (the stagger only delays the start)
    series = _nab_series(limit_files)
    rng = random.Random(7)
    noise = "noise N(50, 5)"
    series[noise] = [rng.gauss(50.0, 5.0) for _ in range(noise_points)]
    per_series: dict[str, Any] = {}
    all_art: list[int] = []
    all_z: list[int] = []
    all_rule: list[int] = []
    warmup_end: list[int] = []  # the update that ends the warm-up (a one-off batch), per series
    rebuild: list[int] = []  # the updates that rebuild the model over a widened range (a batch each)
    batches: set[int] = set()  # their positions in all_art
    categories: dict[str, int] = {}
    rebuilds: dict[str, int] = {}
    for name, values in series.items():
        art, ends, rebuilt = _timed_artime(values)
        rule = _timed(lambda: make_detector(**rule_spec), values)
        z = _timed(lambda: make_detector("zscore", window=120), values)
        per_series[name] = {"artime": _stats_us(art), "zscore": _stats_us(z), "rule": _stats_us(rule)}
        warmup_end += [art[k] for k in ends]
        rebuild += [art[k] for k in rebuilt]
        batches.update(len(all_art) + k for k in ends + rebuilt)
        rebuilds[name] = len(rebuilt)
        all_art += art
        all_z += z
        all_rule += rule
        det = ArtimeDetector()
        for x in values:
            det.update(0.0, x)
        categories[name] = det.categories
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    det = ArtimeDetector()
    settled = 2 * shipped.probation  # the warm-up's buffers are freed by then
    for x in series[noise][:settled]:
        det.update(0.0, x)
    base_bytes, warmup_peak = (m - before for m in tracemalloc.get_traced_memory())
    base_categories = det.categories
    base_retained = len(det._hist)
    for x in series[noise][settled:]:
        det.update(0.0, x)
    end_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # (the retained values grow meanwhile too: 8 bytes each, left out of the per-category figure)
    retained_growth = 8 * (len(det._hist) - base_retained)
    per_category = (end_bytes - base_bytes - retained_growth) / max(1, det.categories - base_categories)
    return {
        "max_categories": shipped.max_categories,
        "series": per_series,
        "categories": categories,
        "all": {"artime": _stats_us(all_art), "zscore": _stats_us(all_z), "rule": _stats_us(all_rule)},
        "all_but_batches": {"artime": _stats_us([t for k, t in enumerate(all_art) if k not in batches])},
        "warmup_end_us": sorted(t / 1e3 for t in warmup_end),
        "rebuild_us": sorted(t / 1e3 for t in rebuild),
        "rebuilds": rebuilds,
        "history_bytes": 16 * shipped.history,
        "memory_bytes": end_bytes,
        "warmup_peak_bytes": warmup_peak,
        "categories_when_measured": det.categories,
        "bytes_per_category": per_category,
        # (the retained values: at most 2 * history of them, 8 bytes each, some already counted in base_bytes)
        "memory_bound_bytes": base_bytes
        + per_category * ((shipped.max_categories or 0) - base_categories)
        + 16 * shipped.history,
    }


def print_artime_section(res: dict[str, Any], budget: dict[str, float] | None) -> None:
    print(f"artime as shipped (max_categories={res['max_categories']}): microseconds per point, each update timed")
    print(f"    {'series':52} {'cats':>5} {'artime mean / p99 / max':>28} {'zscore w=120 mean / p99':>26}")
    for name, r in {**res["series"], "all of the above": res["all"]}.items():
        c, z = r["artime"], r["zscore"]
        cats = res["categories"].get(name)
        print(
            f"    {name[:52]:52} {'' if cats is None else cats:>5} {c['mean_us']:8.0f} /{c['p99_us']:7.0f} "
            f"/{c['max_us']:8.0f} {z['mean_us']:12.1f} /{z['p99_us']:7.1f}"
        )
    a, r = res["all"]["artime"], res["all"]["rule"]
    b = res["all_but_batches"]["artime"]
    ends = res["warmup_end_us"]
    rebuilt = res["rebuild_us"]
    print(
        f"    goal p99 <= 100 us per update: {'met' if b['p99_us'] <= 100 else 'missed'} "
        f"({b['p99_us']:.0f} us without the {len(ends)} warm-up-ending and {len(rebuilt)} rebuilding updates, "
        f"measured apart; {a['p99_us']:.0f} us over all {a['points']} updates)"
    )
    if ends:
        print(
            f"    the update that ends the warm-up (one batch, once per series): {ends[len(ends) // 2]:.0f} us median, "
            f"{ends[-1]:.0f} us max"
        )
    if rebuilt:
        per = ", ".join(f"{n.split('/')[-1][:24]} {k}" for n, k in res["rebuilds"].items() if k)
        print(
            f"    a rebuild (a value beyond the learnt range: a replay of at most {res['history_bytes'] // 16} values, "
            f"at most one per 750): {rebuilt[len(rebuilt) // 2] / 1e3:.1f} ms median, {rebuilt[-1] / 1e3:.1f} ms max, "
            f"{sum(rebuilt) / 1e3 / max(1, a['points']) * 1e3:.1f} us per update on average; rebuilds per series: {per}"
        )
    print(
        f"    the default rules' detector (ARTime confirmed by a z-score of step medians, z-score fallback): "
        f"mean {r['mean_us']:.1f} us, p99 {r['p99_us']:.0f} us"
    )
    print(
        f"    memory of one series: {res['memory_bytes'] / 1e3:.0f} kB with {res['categories_when_measured']} "
        f"categories, {res['bytes_per_category']:.0f} B per category: at most "
        f"{res['memory_bound_bytes'] / 1e6:.1f} MB at the cap, with at most {res['history_bytes'] / 1e3:.0f} kB of "
        f"retained values (warm-up peak {res['warmup_peak_bytes'] / 1e3:.0f} kB)"
    )
    if budget is not None:
        print(
            f"    series of the collection that can carry it within 0.5 s: {budget['series_at_mean_cost']:,.0f} at the "
            f"mean cost above (headroom {budget['headroom_s']:.3f} s over the z-score collection)"
        )
        from otel_eda.anomaly.rules import ARTIME_BUDGET

        extra = ARTIME_BUDGET * (r["mean_us"] - res["all"]["zscore"]["mean_us"]) * 1e-6
        fits = extra <= budget["headroom_s"]
        print(
            f"    the default rules carry it on at most {ARTIME_BUDGET} series (ARTIME_BUDGET): "
            f"{extra * 1e3:.1f} ms more "
            f"per collection at the rule detector's mean cost: {'fits' if fits else 'does not fit'} the headroom"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="otel-eda anomaly engine speed")
    parser.add_argument("--json", type=Path, help="write all numbers to this file")
    parser.add_argument("--reps", type=int, default=7, help="interleaved repetitions (default 7)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small windows, few points (noisy)")
    parser.add_argument(
        "--section",
        action="append",
        choices=["cad_ose", "artime"],
        help="slow detectors to measure (default: both), after the detector and collection sections",
    )
    args = parser.parse_args(argv)
    args.section = args.section or ["cad_ose", "artime"]
    started = time.perf_counter()
    out: dict[str, Any] = {}
    if args.quick:
        det = detector_section((100, 1_000), reps=3, points=500, naive_budget=0.05)
    else:
        det = detector_section(WINDOWS, reps=max(args.reps, 3), points=20_000, naive_budget=2.0)
    out["detectors"] = det
    print_detector_section(det)
    col = collection_section(10_000 if args.quick else 100_000, reps=2 if args.quick else 3)
    out["collection"] = col
    print_collection_section(col)
    if "cad_ose" in args.section:
        cad = cad_ose_section(noise_points=1_500 if args.quick else 20_000, limit_files=2 if args.quick else None)
        budget = None if args.quick else series_within_budget(cad, col)
        out["cad_ose"] = {**cad, "budget": budget}
        print_cad_ose_section(cad, budget)
    if "artime" in args.section:
        art = artime_section(noise_points=1_500 if args.quick else 20_000, limit_files=2 if args.quick else None)
        budget = None if args.quick else series_within_budget(art, col, "artime")
        out["artime"] = {**art, "budget": budget}
        print_artime_section(art, budget)
    out["elapsed_s"] = time.perf_counter() - started
    print(f"elapsed {out['elapsed_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
