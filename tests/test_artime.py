"""ARTime: row-for-row agreement with NAB's published ARTime outputs, the exact pruning, the online mode."""

from __future__ import annotations

import gc
import importlib.util
import math
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from otel_eda.anomaly.detectors import ArtimeDetector, make_detector
from otel_eda.anomaly.detectors import artime as artime_module
from otel_eda.anomaly.detectors.artime import ArtimeModel, julia_sum, nab_probationary_period
from otel_eda.anomaly.detectors.base import z_to_score

ROOT = Path(__file__).resolve().parent.parent
SUBSET = ROOT.parent / "shared" / "nab"
HAVE_SUBSET = (SUBSET / "reference" / "ARTime").is_dir()


def _nab_score() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nab_score_for_artime", ROOT / "benchmarks" / "nab_score.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ns = _nab_score()


def _one_file_corpus(name: str) -> Any:
    corpus = ns.load_corpus(SUBSET)
    k = [f.name for f in corpus.files].index(name)
    n = len(corpus.files[k].windows)
    return ns.Corpus([corpus.files[k]], [corpus.row_info[k]], n, n)


# Three files covering what NAB's run depends on: a short real series (probationary period
# 282, a downsampling step of 2), a 4032-row artificial one with many anomalies (step 5) and
# a long real one (probationary period 750, step 7, over 200 categories).
PINNED = [
    "realKnownCause/rogue_agent_key_hold.csv",
    "artificialWithAnomaly/art_load_balancer_spikes.csv",
    "realKnownCause/nyc_taxi.csv",
]


@pytest.mark.skipif(not HAVE_SUBSET, reason="NAB subset with reference outputs not present")
@pytest.mark.parametrize("name", PINNED)
def test_nab_inputs_reproduce_artime_row_for_row(name: str) -> None:
    corpus = _one_file_corpus(name)
    reference = ns.load_reference(SUBSET, corpus, "ARTime")
    mine = ns.artime_nab_inputs(SUBSET, corpus)
    assert ns.agreement(corpus, mine, reference) == [1.0]
    # not merely within 0.01 on scored rows: the same numbers on every row
    assert max(abs(a - b) for a, b in zip(mine[0], reference[0], strict=True)) < 1e-12
    assert sum(1 for s in reference[0] if s > 0) >= 3  # the file does exercise the anomaly path


def _brute_force_train(art: Any, f: Sequence[float], learning: bool = True) -> tuple[bool, float, float]:
    """ARTime's DVFA ``train!`` transcribed literally: every category, in ``sortperm(M, rev=true)`` order."""
    x = [*f, *[1 - v for v in f]]
    if not art.wa:
        art._add([1.0] * len(x))
        art.clusters = 1
        return False, 0.0, 0.0
    ms, mes, ems = [], [], []
    for j, ws in enumerate(art.w_sum):
        w = art.weights(j)
        em = [min(a, b) for a, b in zip(x, w, strict=True)]
        fs = sum(em) / ws
        we = w[15] + w[-1]
        es = (em[15] + em[-1]) / we if we else math.nan
        ms.append(fs * fs * fs * (es * es))
        mes.append(es)
        ems.append(em)
    order = sorted(range(len(ms)), key=lambda j: (not math.isnan(ms[j]), -ms[j] if ms[j] == ms[j] else 0.0))
    best_m, best_e, mismatch = 0.0, 0.0, True
    commits = []
    for j in order:
        m = ms[j]
        if m > best_m:
            best_m, best_e = m, mes[j]
        if not learning:
            continue
        if m >= art.rho_ub:
            commits.append(j)
            mismatch = False
        elif m >= art.rho_lb and mismatch:
            art._add(x)
            mismatch = False
            break
        else:
            break
    for j in commits:
        art._commit(j, ems[j][:16], ems[j][16:], sum(ems[j]))
    if mismatch and learning:
        art.clusters += 1
        art._add(x)
    return mismatch, best_m, best_e


def test_pruned_category_scan_is_the_full_scan() -> None:
    # The grouped, bounded scan must give the reference's outcome on every step: same
    # mismatch, activation, energy and categories, through changing vigilances.
    rng = random.Random(7)
    for trial in range(4):
        fast = artime_module._Art(0.6, 0.85)
        slow = artime_module._Art(0.6, 0.85)
        levels = [rng.randrange(81) / 80 for _ in range(8)]
        for step in range(400):
            levels = [*levels[1:], min(80, max(0, round(levels[-1] * 80 + rng.gauss(0, 6 + 4 * trial)))) / 80]
            scaled = [rng.random() for _ in range(8)]
            f = [*scaled, *levels]
            if step % 50 == 49:
                lb = rng.uniform(0.3, 0.9)
                fast.rho_lb = slow.rho_lb = lb
                fast.rho_ub = slow.rho_ub = rng.uniform(lb, 0.97)
            assert fast.train(f) == _brute_force_train(slow, f)
            assert [fast.weights(j) for j in range(len(fast.wa))] == [slow.weights(j) for j in range(len(slow.wa))]
    assert len(fast.wa) > 20


def test_nan_energy_makes_a_mismatch_with_zero_activation() -> None:
    # A category whose two energy weights are 0 has es = 0/0: NaN sorts first in Julia's
    # sortperm(rev=true), fails every test, and the reference's loop stops on it.
    art = artime_module._Art(0.5, 0.9)
    art.train([0.0] * 16)
    art._add([0.5] * 15 + [0.0] + [0.5] * 15 + [0.0])
    assert art.train([0.5] * 16) == (True, 0.0, 0.0)


def test_julia_sum_order() -> None:
    # Julia's sum: sequential below 16 elements; from 16 on, a1 + a2 then 16 accumulators
    # (4 AVX2 vectors), so the rounding differs from a sequential sum. On the 18 subset
    # files sequential sums give the same rows too: this pins the emulated order only.
    xs = [0.901, 0.031, 0.025, 0.541, 0.939, 0.381, 0.217, 0.422, 0.029, 0.222, 0.438, 0.496]
    xs += [0.233, 0.231, 0.219, 0.46, 0.29, 0.021]
    assert julia_sum(xs[:15]) == artime_module._seq_sum(xs[:15])
    assert julia_sum(xs) == 6.096
    assert artime_module._seq_sum(xs) == 6.096000000000001
    assert julia_sum([1.0] * 2100) == 2100.0  # pairwise halving above 1024


def test_nab_probationary_period_and_downsampling() -> None:
    assert nab_probationary_period(4032) == 604
    assert nab_probationary_period(1882) == 282
    assert nab_probationary_period(10320) == 750
    m = ArtimeModel(0.0, 1.0, 604)
    assert (m.sstep, m.trend_window) == (5, 120)
    m = ArtimeModel(0.0, 1.0, 750)
    assert (m.sstep, m.trend_window) == (7, 107)


def test_online_range_is_learnt_over_the_probationary_period() -> None:
    for history in (None, 0):
        rng = random.Random(3)
        d = ArtimeDetector(history=history)
        for i in range(749):
            d.update(float(i), 100.0 + 10.0 * math.sin(i / 20) + rng.gauss(0, 1))
            assert d.learning and d.score == 0.0
        d.update(749.0, 100.0)
        assert not d.learning and d.warm
        # values far beyond the learnt range count as its limits until a rebuild is due (1500
        # values in: the warm-up, then `probation` more), which widens it (or never, history=0)
        scores = [d.update(float(i), 1e9 if i % 97 == 0 else -1e9).score for i in range(750, 2000)]
        assert all(0.0 <= s <= 1.0 for s in scores)
        assert d.rebuilds == (0 if history == 0 else 1)
        assert any(s > 0 for s in scores) == (history == 0)  # (rebuilt: the replay learnt the pattern)


def test_online_mode_equals_nab_mode_given_the_same_range() -> None:
    # The shipped mode replays its first `probation` values into a model over their range:
    # what NAB's run would give with that range (and that probationary period).
    rng = random.Random(11)
    values = [
        50.0 + 20.0 * math.sin(i / 30) + rng.gauss(0, 2) + (40.0 if 2000 <= i < 2020 else 0.0) for i in range(3000)
    ]
    lo, hi = min(values[:750]), max(values[:750])
    clipped = [min(hi, max(lo, v)) for v in values]
    online = ArtimeDetector(max_categories=None)
    fixed = ArtimeDetector(min_value=lo, max_value=hi, max_categories=None)
    a = [online.update(float(i), v).score for i, v in enumerate(values)]
    b = [fixed.update(float(i), v).score for i, v in enumerate(clipped)]
    assert a[:1999] == b[:1999]
    assert any(s > 0 for s in a)


def test_categories_are_bounded() -> None:
    rng = random.Random(5)
    d = ArtimeDetector(max_categories=40, probation=200)
    for i in range(6000):
        d.update(float(i), rng.random())
    assert d.categories == 40


def test_is_anomaly_holds_after_a_detection() -> None:
    d = ArtimeDetector(hold=5)
    seen = []
    for i in range(3000):
        x = float(i % 48) + (30.0 if 2500 <= i < 2510 else 0.0)
        d.update(600.0 * i, x)
        seen.append(d.is_anomaly)
    first = seen.index(True)
    assert seen[first : first + 5] == [True] * 5 and seen[first + 5] is False


def test_make_detector_and_bad_parameters() -> None:
    d = make_detector("artime", min_value=0.0)
    assert isinstance(d, ArtimeDetector) and d.min_value == 0.0 and d.max_categories == 1000
    with pytest.raises(ValueError, match="min_value"):
        make_detector("artime", min_value=2.0, max_value=1.0)
    with pytest.raises(ValueError, match="probation"):
        make_detector("artime", probation=4)
    with pytest.raises(ValueError, match="max_categories"):
        make_detector("artime", max_categories=0)
    # invalid points are skipped, never raised
    d = ArtimeDetector()
    for bad in (math.nan, math.inf, True, "x"):
        d.update(0.0, bad)  # type: ignore[arg-type]
    assert d.skipped == 4


def test_a_quiet_series_draws_anomalies_every_day_even_from_the_reference() -> None:
    # Why ARTime is not the default latency detector: a steady noisy p95, one value every 5 s
    # for a simulated day, draws about ten anomalies from it (online, its range widened as
    # new extremes come, and from the reference given the whole day's range in advance),
    # against at most one alert a day.
    rng = random.Random(1)
    values = [max(0.0, rng.gauss(0.05, 0.005)) for _ in range(17_280)]
    online = ArtimeDetector()
    nab = ArtimeDetector(min_value=min(values), max_value=max(values), max_categories=None)
    counts = [0, 0]
    for i, v in enumerate(values):
        for k, det in enumerate((online, nab)):
            if det.update(5.0 * i, v).score > 0:
                counts[k] += 1
    assert counts == [9, 12]


@pytest.mark.skipif(not HAVE_SUBSET, reason="NAB subset with reference outputs not present")
def test_fidelity_report_for_artime(capsys: pytest.CaptureFixture[str]) -> None:
    corpus = _one_file_corpus("realKnownCause/rogue_agent_key_hold.csv")
    report = ns.artime_fidelity_report(SUBSET, corpus)
    runs = report["runs"]
    assert list(runs) == [
        "NAB inputs",
        "NAB inputs, max_categories=1000",
        "online: range of the first 750 values, frozen (history=0)",
        "online (shipped): range widened by rebuilds (history=3000)",
    ]
    assert runs["NAB inputs"]["agreement"] == [1.0]
    assert runs["NAB inputs"]["scores"] == report["reference"]
    ns.print_fidelity(report)
    out = capsys.readouterr().out
    assert "fidelity to NAB's ARTime rows" in out and "threshold 1e-06" in out


@pytest.mark.parametrize("stagger_offset", [0, 300, 600])
def test_the_default_latency_rule_alerts_on_a_slowdown_once_artime_is_in_charge(
    stagger_offset: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shipped processing-latency rule: ARTime confirmed by a z >= 3 z-score, after its
    # fallback. Past the warm-up (750 points plus a stagger of at most 750), a tripled p95
    # raises the alert once, with ARTime in charge, within 60 values (5 minutes at one value
    # every 5 s: how soon depends on where the stagger put ARTime's downsampling steps and
    # masking; 1 to 56 values over offsets 0 to 750); the quiet day before it raised none.
    import itertools

    from otel_eda.anomaly.detectors import fallback
    from otel_eda.anomaly.engine import AnomalyEngine
    from otel_eda.anomaly.rules import default_rules
    from otel_eda.anomaly.series import SeriesPoint

    monkeypatch.setattr(fallback, "_started", itertools.count(stagger_offset))  # this series' offset
    rule = next(r for r in default_rules() if r.name == "processing-latency")
    gc.collect()  # (other tests' engines free their ARTime slots: at most ARTIME_BUDGET per process)
    attrs = (("messaging.destination.name", "orders"), ("messaging.consumer.group.name", "billing"))
    engine = AnomalyEngine([rule])
    rng = random.Random(4)
    fired_at = []
    for i in range(4000):
        t = 5.0 * i
        p95 = rng.gauss(0.05, 0.005) * (3.0 if i >= 3000 else 1.0)
        for a in engine.evaluate([SeriesPoint("messaging.process.duration", "p95", attrs, t, p95)], now=t):
            if a.state.value == "firing" and a.started_at == t:
                fired_at.append(i)
    state = next(iter(engine._states[rule.name].values()))
    assert stagger_offset <= state.detector.offset < stagger_offset + 10  # (the rule's checks create a few first)
    assert isinstance(state.detector.active, ArtimeDetector)
    assert len(fired_at) == 1 and 3000 <= fired_at[0] < 3060, (state.detector.offset, fired_at)


def test_confirm_gates_the_verdict_not_the_score() -> None:
    rng = random.Random(1)
    values = [max(0.0, rng.gauss(0.05, 0.005)) for _ in range(17_280)]
    plain = ArtimeDetector()
    gated = ArtimeDetector(confirm={"kind": "zscore", "window": 120, "direction": "up", "threshold": 0.9973})
    held = confirmed = 0
    for i, v in enumerate(values):
        assert plain.update(5.0 * i, v).score == gated.update(5.0 * i, v).score
        held += plain.is_anomaly
        confirmed += gated.is_anomaly
    assert held > 500 and confirmed < held / 20
    with pytest.raises(ValueError, match="confirm"):
        ArtimeDetector(confirm="zscore")  # type: ignore[arg-type]


def test_a_value_beyond_the_range_rebuilds_the_reference_over_the_range_seen_so_far() -> None:
    # The online mode, past its warm-up: the first value above the learnt range makes it what
    # the reference would be given the range known so far (here every value so far is
    # retained: the replay starts at the series' first value), row for row from there on.
    rng = random.Random(12)
    values = [50.0 + 20.0 * math.sin(i / 30) + rng.uniform(-2, 2) for i in range(3500)]
    values[100], values[101] = 0.0, 75.0  # the lowest value of the series, and above the rest, in the warm-up
    for k in range(20):
        values[2000 + k] = 120.0 - k  # the highest, from value 2000 on
    online = ArtimeDetector(max_categories=None)
    a = [online.update(float(i), v).score for i, v in enumerate(values)]
    assert online.rebuilds == 1
    fixed = ArtimeDetector(min_value=0.0, max_value=120.0, max_categories=None)
    b = [fixed.update(float(i), v).score for i, v in enumerate(values)]
    assert a[2000:] == b[2000:]
    assert any(s > 0 for s in a[2000:])
    # with the first range frozen (history=0), the values above it are clamped: other rows
    frozen = ArtimeDetector(max_categories=None, history=0)
    c = [frozen.update(float(i), v).score for i, v in enumerate(values)]
    assert frozen.rebuilds == 0 and c[2000:] != b[2000:]


def test_rebuilds_are_bounded_on_a_trending_series() -> None:
    # A series that rises for ever widens the range at every value: rebuilds are at least
    # `probation` values apart and each replays at most `history` values (and the memory of
    # the retained values is bounded by 2 * history).
    d = ArtimeDetector(probation=200, history=400)
    rng = random.Random(2)
    for i in range(5000):
        d.update(float(i), 0.01 * i + rng.gauss(0, 0.1))
        assert len(d._hist) <= 800
    # from value 400 on (warm-up 200, then at least 200 apart): at most (5000 - 400) / 200 + 1
    assert 20 <= d.rebuilds <= 24
    with pytest.raises(ValueError, match="history"):
        ArtimeDetector(probation=200, history=100)


def test_an_incident_widening_many_ranges_at_once_rebuilds_a_few_series_per_collection() -> None:
    # 12 series evaluated together (one collection every 5 s) all jump past their learnt range
    # in the same collection: each rebuild replays up to `history` values, so at most
    # REBUILDS_PER_COLLECTION run per collection; the others clamp and take their turn later.
    assert artime_module.REBUILDS_PER_COLLECTION == 4
    rng = random.Random(3)
    detectors = [ArtimeDetector(probation=200, history=400) for _ in range(12)]
    per_collection = []
    for i in range(460):  # warm-up 200 values, a rebuild due from value 400 on
        t = 1_000.0 + 5.0 * i
        before = sum(d.rebuilds for d in detectors)
        for d in detectors:
            usual = 9.0 if i == 0 else 11.0 if i == 1 else rng.uniform(9.0, 11.0)  # the range: [9, 11]
            d.update(t + rng.uniform(0.0, 0.01), usual + (50.0 if i >= 450 else 0.0))
        per_collection.append(sum(d.rebuilds for d in detectors) - before)
    assert per_collection[:450] == [0] * 450
    assert per_collection[450:454] == [4, 4, 4, 0]
    assert all(d.rebuilds == 1 for d in detectors)
    artime_module._rebuilding[:] = [-math.inf, 0.0]  # (a later test's rebuild is not in this collection)


def test_confirm_on_steps_ignores_one_outlier_and_takes_a_lasting_rise() -> None:
    # confirm_on="step": the confirming detector sees the median of each of ARTime's
    # downsampling steps (7 values at probation 750), so one outlier a step cannot confirm
    # a flag; a rise that lasts a step can, and the verdict then lasts as long as the
    # confirmation does (one alert for a sustained incident).
    spec = {"kind": "zscore", "window": 480, "direction": "up", "hold": 120, "threshold": z_to_score(4.0)}
    rng = random.Random(9)
    base = [rng.gauss(50.0, 1.0) for _ in range(3000)]
    spiky = [v + (40.0 if i % 7 == 3 and i > 2000 else 0.0) for i, v in enumerate(base)]
    risen = [v + (10.0 if i >= 2000 else 0.0) for i, v in enumerate(base)]
    for values, expect in ((spiky, False), (risen, True)):
        d = ArtimeDetector(confirm=spec, confirm_on="step")
        assert d.confirm is not None
        confirmed = []
        for i, v in enumerate(values):
            d.update(5.0 * i, v)
            confirmed.append(d.confirm.is_anomaly)
        assert any(confirmed[2000:2100]) is expect
    with pytest.raises(ValueError, match="confirm_on"):
        ArtimeDetector(confirm=spec, confirm_on="values")


def test_the_default_latency_rule_keeps_quiet_series_of_several_kinds_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    # The shipped latency rule (ARTime confirmed by a z >= 4.5 over step medians, its z-score
    # fallback before), one simulated day of each quiet kind its gate was chosen on
    # (benchmarks/artime_gate.py: heavy tails, cycles, a bounded random walk, a ratio of few
    # failures): at most one alert. (ARTime unconfirmed: about 8 to 15 on each.)
    import itertools

    from otel_eda.anomaly.detectors import fallback
    from otel_eda.anomaly.engine import AnomalyEngine
    from otel_eda.anomaly.rules import default_rules
    from otel_eda.anomaly.series import SeriesPoint

    spec = importlib.util.spec_from_file_location("artime_gate_for_test", ROOT / "benchmarks" / "artime_gate.py")
    assert spec is not None and spec.loader is not None
    gate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gate)
    monkeypatch.setattr(fallback, "_started", itertools.count(0))
    rule = next(r for r in default_rules() if r.name == "processing-latency")
    attrs = (("messaging.destination.name", "orders"), ("messaging.consumer.group.name", "billing"))
    fired = {}
    for kind in gate.KINDS:
        gc.collect()  # (at most ARTIME_BUDGET series per process carry ARTime)
        engine = AnomalyEngine([rule])
        n = 0
        for i, v in enumerate(gate.quiet_series(kind, 1, gate.DAY)):
            t = 5.0 * i
            for a in engine.evaluate([SeriesPoint("messaging.process.duration", "p95", attrs, t, v)], now=t):
                n += a.state.value == "firing" and a.started_at == t
        state = next(iter(engine._states[rule.name].values()))
        assert isinstance(state.detector.active, ArtimeDetector) and state.detector.active.warm
        fired[kind] = n
    assert all(n <= 1 for n in fired.values()), fired
