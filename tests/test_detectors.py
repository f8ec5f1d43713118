"""Streaming detectors: interface, input skipping, numerical stability, behaviour, bounds."""

from __future__ import annotations

import math
import random
import statistics
import sys
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from otel_eda.anomaly._context import ContextModel
from otel_eda.anomaly.detectors import (
    MAX_WINDOW,
    ContextDetector,
    Detector,
    EwmaDetector,
    LikelihoodDetector,
    RobustDetector,
    ThresholdDetector,
    TrendDetector,
    ZScoreDetector,
    make_detector,
)

KINDS: dict[str, dict[str, Any]] = {
    "threshold": {"op": "gt", "value": 150.0},
    "zscore": {"window": 200},
    "ewma": {"alpha": 0.05},
    "trend": {"window": 60},
    "robust": {"window": 200},
    "likelihood": {"window": 200, "history": 400},
    "context": {"window": 200, "history": 400, "learn": 100},
    "cad_ose": {"learn": 100, "max_contexts": 500},
    "fallback": {"detector": {"kind": "cad_ose", "learn": 100}, "warmup": 100},
}
#: kinds whose ``is_anomaly`` is not ``score >= threshold``: cad_ose holds an anomaly for its
#: rest period (its score rests at 0 meanwhile); fallback answers with the detector in charge
HELD = {"cad_ose", "fallback"}


def noise(n: int, seed: int, mean: float = 100.0, sd: float = 1.0) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mean, sd) for _ in range(n)]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_interface(kind: str) -> None:
    det = make_detector(kind, **KINDS[kind])
    assert isinstance(det, Detector)
    assert det.score == 0.0 and det.value is None and det.skipped == 0 and not det.is_anomaly
    assert 0.0 <= det.threshold <= 1.0
    for i, x in enumerate(noise(300, seed=1)):
        assert det.update(60.0 * i, x) is det
        assert 0.0 <= det.score <= 1.0
        if kind not in HELD:
            assert det.is_anomaly == (det.score >= det.threshold)
    assert det.value == x


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_invalid_points_are_skipped_without_changing_state(kind: str) -> None:
    a = make_detector(kind, **KINDS[kind])
    b = make_detector(kind, **KINDS[kind])
    bad: list[Any] = [math.nan, math.inf, -math.inf, True, False, None, "1.0", b"1", [1.0], 10**400, object()]
    xs = [*noise(250, seed=2), 200.0]
    skipped = 0
    for i, x in enumerate(xs):
        if i % 25 == 0:
            for v in bad:
                assert b.update(60.0 * i, v) is b
                skipped += 1
            b.update(math.nan, x)
            b.update("now", x)  # type: ignore[arg-type]
            skipped += 2
        a.update(60.0 * i, x)
        b.update(60.0 * i, x)
        assert a.score == b.score
    assert b.skipped == skipped and a.skipped == 0
    assert b.value == a.value == 200.0


def test_integer_like_numbers_are_accepted() -> None:
    det = ZScoreDetector(window=10)
    for v in (1, 2.0, Fraction(3, 1), Decimal("4"), 5):
        det.update(0.0, v)  # type: ignore[arg-type]
    assert det.skipped == 0 and det.value == 5.0
    for bad in (Decimal("NaN"), Decimal("1e400"), 1j, "5"):
        det.update(0.0, bad)  # type: ignore[arg-type]
    assert det.skipped == 4 and det.value == 5.0


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_extreme_finite_values_never_raise(kind: str) -> None:
    det = make_detector(kind, **KINDS[kind])
    for i, x in enumerate([1e308, -1e308, 1e-308, 0.0, 1e308, 5e-324, -1e308] * 40):
        det.update(float(i), x)
        assert 0.0 <= det.score <= 1.0
    for i in range(300):  # recovers: normal values after the extreme ones
        det.update(1000.0 + i, 1.0 + (i % 3))
        assert 0.0 <= det.score <= 1.0


def test_zscore_is_stable_for_large_values() -> None:
    w = 500
    xs = [1e9 + v for v in noise(5000, seed=3, mean=0.0, sd=1e-3)]
    det = ZScoreDetector(window=w)
    for i, x in enumerate(xs):
        det.update(float(i), x)
    tail = xs[-w:]
    exact_mean = math.fsum(tail) / w
    exact_sd = math.sqrt(math.fsum((v - exact_mean) ** 2 for v in tail) / w)
    assert det.mean == pytest.approx(exact_mean, rel=1e-15, abs=1e-9)
    assert det.std == pytest.approx(exact_sd, rel=1e-6)
    # The textbook E[x^2] - E[x]^2 cannot even see the noise at this magnitude:
    naive_var = sum(v * v for v in tail) / w - (sum(tail) / w) ** 2
    assert abs(naive_var - exact_sd**2) > 100 * exact_sd**2


def test_zscore_between_recomputations_matches_two_pass() -> None:
    det = ZScoreDetector(window=1000)
    xs = [1e9 + v for v in noise(1700, seed=4, mean=0.0, sd=1e-2)]  # 700 incremental replacements
    for i, x in enumerate(xs):
        det.update(float(i), x)
    tail = xs[-1000:]
    # between exact recomputations the sliding update drifts by input rounding only
    # (ulp(1e9) = 1.2e-7 against a spread of 1e-2)
    assert det.std == pytest.approx(statistics.pstdev(tail), rel=1e-4)


def test_ewma_is_stable_for_large_values() -> None:
    det = EwmaDetector(alpha=0.01)
    for i, x in enumerate(noise(20000, seed=5, mean=1e9, sd=1e-3)):
        det.update(float(i), x)
    assert math.sqrt(det.var) == pytest.approx(1e-3, rel=0.2)
    assert not det.is_anomaly
    assert det.update(20001.0, 1e9 + 0.02).is_anomaly


def test_trend_noise_does_not_fire_but_a_ramp_does() -> None:
    det = TrendDetector(window=60)
    fired = 0
    for i, x in enumerate(noise(20000, seed=6)):
        fired += det.update(1.7e9 + 60.0 * i, x).is_anomaly
    assert fired == 0
    ramp_fired = []
    for i in range(120):
        if det.update(1.7e9 + 60.0 * (20000 + i), 100.0 + 0.1 * i + random.Random(i).gauss(0, 1)).is_anomaly:
            ramp_fired.append(i)
    assert ramp_fired and ramp_fired[0] < 60
    assert det.slope > 0


def test_trend_slope_matches_least_squares_with_epoch_times() -> None:
    det = TrendDetector(window=50)
    ts = [1.7e9 + 30.0 * i for i in range(130)]
    xs = [1e6 + 0.25 * (t - ts[0]) + g for t, g in zip(ts, noise(130, seed=7, mean=0.0), strict=True)]
    for t, x in zip(ts, xs, strict=True):
        det.update(t, x)
    slope = statistics.linear_regression(ts[-50:], xs[-50:]).slope
    assert det.slope == pytest.approx(slope, rel=1e-9)


@pytest.mark.parametrize("kind", ["zscore", "ewma", "robust", "likelihood", "context"])
def test_spike_fires_after_calm_noise(kind: str) -> None:
    det = make_detector(kind, **KINDS[kind])
    xs = noise(600, seed=8)
    fired = [i for i, x in enumerate(xs) if det.update(60.0 * i, x).is_anomaly]
    assert fired == []
    assert det.update(60.0 * 600, 150.0).is_anomaly


@pytest.mark.parametrize("kind", ["zscore", "ewma", "robust", "likelihood", "context"])
def test_step_fires(kind: str) -> None:
    det = make_detector(kind, **KINDS[kind])
    for i, x in enumerate(noise(600, seed=9)):
        det.update(60.0 * i, x)
    fired = [i for i, x in enumerate(noise(20, seed=10, mean=120.0)) if det.update(60.0 * (600 + i), x).is_anomaly]
    assert fired and fired[0] == 0


def test_threshold_detector_ops_and_band() -> None:
    cases = {
        "gt": [False, False, True],
        "ge": [False, True, True],
        "lt": [True, False, False],
        "le": [True, True, False],
    }
    for op, expected in cases.items():
        det = ThresholdDetector(op=op, value=10.0)
        assert [det.update(0.0, x).is_anomaly for x in (9.0, 10.0, 11.0)] == expected, op
        assert det.threshold_value == 10.0
    band = ThresholdDetector(min=1.0, max=2.0)
    assert [band.update(0.0, x).score for x in (0.5, 1.0, 1.5, 2.0, 2.5)] == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert band.threshold_value == 2.0
    band.update(0.0, 0.0)
    assert band.threshold_value == 1.0
    assert ThresholdDetector(max=5).update(0.0, 7.6).value == 7.6  # rules compare value with 1.5 * limit


def test_robust_mad_matches_brute_force() -> None:
    rng = random.Random(11)
    det = RobustDetector(window=37)
    xs: list[float] = []
    for i in range(400):
        x = float(rng.choice([rng.randint(0, 5), rng.gauss(0, 3), 100.0]))
        det.update(float(i), x)
        xs.append(x)
        win = xs[-37:]
        med = statistics.median(win)
        assert det.median == med
        assert det.mad == statistics.median([abs(v - med) for v in win])


def test_robust_ignores_outliers_in_its_scale() -> None:
    det = RobustDetector(window=100)
    xs = noise(100, seed=12)
    for i in range(0, 100, 10):
        xs[i] = 1e6  # 10% wild outliers inflate a standard deviation, not the MAD
    for i, x in enumerate(xs):
        det.update(float(i), x)
    assert det.update(100.0, 110.0).is_anomaly


def test_windows_are_capped() -> None:
    for kind in ("zscore", "trend", "robust", "likelihood", "context"):
        with pytest.raises(ValueError, match="100000"):
            make_detector(kind, window=MAX_WINDOW + 1)
    det = ZScoreDetector(window=100)
    for i in range(10_000):
        det.update(float(i), float(i % 7))
    assert len(det._m.buf) == 100
    r = RobustDetector(window=50)
    t = TrendDetector(window=40)
    lk = LikelihoodDetector(window=30, history=60)
    for i in range(5_000):
        r.update(float(i), float(i % 11))
        t.update(float(i), float(i % 11))
        lk.update(float(i), float(i % 11))
    assert len(r._sorted) == len(r._fifo) == 50
    assert len(t._buf) == 40
    assert len(lk._values.buf) == 30 and len(lk._raw.buf) == 60 and len(lk._recent) <= lk.short


def test_memory_is_bounded_by_the_window() -> None:
    det = ZScoreDetector(window=1000)
    for i in range(2000):
        det.update(float(i), float(i))
    before = sys.getsizeof(det._m.buf)
    for i in range(2000, 50_000):
        det.update(float(i), float(i))
    assert sys.getsizeof(det._m.buf) == before


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("nope", {}, "unknown detector kind 'nope'"),
        ("zscore", {"window": 1}, "window must be an integer"),
        ("zscore", {"window": 2.5}, "window must be an integer"),
        ("zscore", {"window": True}, "window must be an integer"),
        ("zscore", {"windw": 10}, "bad parameters"),
        ("zscore", {"threshold": 1.5}, "threshold must be"),
        ("ewma", {"alpha": 0}, "alpha must be"),
        ("ewma", {"alpha": math.nan}, "alpha must be"),
        ("threshold", {}, "give op and value"),
        ("threshold", {"op": "eq", "value": 1}, "op must be one of"),
        ("threshold", {"op": "gt", "value": math.inf}, "value must be a finite number"),
        ("threshold", {"min": 2, "max": 1}, "must not exceed"),
        ("threshold", {"op": "gt", "value": 1, "max": 3}, "not both"),
        ("trend", {"window": 10, "warmup": 20}, "must not exceed"),
        ("likelihood", {"quiet": -1}, "quiet must be"),
        ("context", {"bits": 0}, "bits must be"),
        ("context", {"bits": 3.0}, "bits must be"),
        ("context", {"margin": -0.1}, "margin must be"),
        ("context", {"max_contexts": 5}, "max_contexts must be"),
        ("context", {"learn": 0}, "learn must be"),
    ],
)
def test_make_detector_errors(kind: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_detector(kind, **params)


def test_make_detector_rejects_non_string_kind() -> None:
    with pytest.raises(ValueError, match="unknown detector kind"):
        make_detector(None)  # type: ignore[arg-type]


def test_zscore_hold_keeps_a_sustained_spike_anomalous() -> None:
    """Without ``hold`` a spike becomes its own baseline within a few points; with it, the
    whole spike stays anomalous (and a new level is still learnt after ``hold`` points)."""
    rng = random.Random(1)

    def flags(hold: int, spike: int) -> list[bool]:
        d = make_detector("zscore", window=120, direction="up", hold=hold)
        out = []
        for i in range(60 + spike + 140):
            x = 0.3 if 60 <= i < 60 + spike else 0.01 + rng.random() * 0.002
            out.append(d.update(float(i), x).is_anomaly)
        return out

    assert sum(flags(0, 10)[60:70]) < 5
    assert all(flags(120, 10)[60:70]) and not any(flags(120, 10)[71:])
    long_level = flags(20, 100)  # a level shift longer than hold: learnt, then quiet
    assert all(long_level[60:80]) and not any(long_level[100:160])
    with pytest.raises(ValueError, match="hold"):
        make_detector("zscore", hold=-1)


# --------------------------------------------------------------------------------------
# context


def sawtooth(n: int, seed: int, period: int = 8) -> list[float]:
    rng = random.Random(seed)
    return [float(i % period) + rng.gauss(0.0, 0.05) for i in range(n)]


def test_context_sees_a_broken_sequence_that_every_feature_misses() -> None:
    """A sawtooth that restarts early (3 -> 0 instead of 3 -> 4): every value, jump size and
    short-term mean is ordinary, only the order is new."""
    xs = [*sawtooth(3000, seed=3), 0.0, 1.0, 2.0, 3.0, *sawtooth(200, seed=4)]  # row 3004 breaks the rhythm
    fired: dict[str, list[int]] = {}
    for kind in ("context", "likelihood"):
        det = make_detector(kind, **KINDS[kind])
        fired[kind] = [i for i, x in enumerate(xs) if det.update(60.0 * i, x).is_anomaly and i > 1500]
    assert fired["context"] == [3004]
    assert fired["likelihood"] == []


def test_context_memory_is_bounded() -> None:
    det = ContextDetector(window=100, history=200, learn=50, max_contexts=300)
    model = det._model
    rng = random.Random(13)
    for i in range(6000):  # white noise: every transition is new, the worst case for the memory
        det.update(float(i), rng.random())
        assert det.contexts <= 300
    assert det.contexts > 200  # it did fill up and forget
    assert len(model._lefts) <= 300
    assert sum(len(v) for v in model._anchors.values()) + len(model._sensor_only) == len(model._lefts)
    live = {left.sid for left in model._lefts.values()}
    assert all(sid in live for posted in model._postings.values() for sid in posted)
    assert all(ctx.left.rights[ctx.right] == cid for cid, ctx in model._contexts.items())
    assert len(det._contextual.buf) == 100 and len(det._raw.buf) == 200


def test_context_is_deterministic_across_hash_seeds() -> None:
    """Same input, same scores: in this process, again, and under other hash seeds."""
    import subprocess

    code = (
        "import random\n"
        "from otel_eda.anomaly.detectors import make_detector\n"
        "d = make_detector('context', window=100, history=200, learn=50, max_contexts=200)\n"
        "rng = random.Random(5)\n"
        "out = []\n"
        "for i in range(1500):\n"
        "    out.append(d.update(float(i), (i % 24) + rng.gauss(0, 0.5)).score)\n"
        "print(repr(sum(out)), d.contexts)\n"
    )
    runs = set()
    for seed in ("0", "1", "12345"):
        env = {"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        runs.add(done.stdout)
    assert len(runs) == 1
    det = make_detector("context", window=100, history=200, learn=50, max_contexts=200)
    rng = random.Random(5)
    total = sum(det.update(float(i), (i % 24) + rng.gauss(0, 0.5)).score for i in range(1500))
    assert runs == {f"{total!r} {det.contexts}\n"}  # type: ignore[attr-defined]


def test_context_model_quantiser() -> None:
    model = ContextModel(bits=3, warmup=2, margin=0.0)
    assert model.learn(0.0) == 0.0 and not model.ready
    assert model.learn(7.0) == 0.0 and model.ready  # range [0, 7]: one level per unit
    levels = {x: model.facts(x) for x in (0.0, 1.0, 6.5, 7.0)}
    assert all(len(f) == 3 for f in levels.values())  # one fact per binary digit
    assert len(levels[0.0] & levels[1.0]) == 2  # 000 and 001 share two digits
    assert levels[6.5] == frozenset(levels[6.5]) and len(levels[6.5] & levels[7.0]) == 2  # 110, 111
    assert len(model.facts(8.0)) == 4  # beyond the range: one more digit
    assert model.facts(-3.0).isdisjoint(model.facts(3.0))  # below the range: another family
    assert model.facts(1e300) == model.facts(64.0)  # clamped at max_level
    assert 0.0 <= model.learn(3.0) <= 1.0


def test_context_defaults() -> None:
    det = make_detector("context")
    assert isinstance(det, ContextDetector)
    assert det.threshold == 0.5 and det.quiet == 150 and det.max_contexts == 2000 and det.bits == 3
