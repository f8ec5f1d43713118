#!/usr/bin/env python
"""Score otel-eda's streaming detectors with the NAB scoring method (issue 3, section 7).

Run from the repository root::

    .venv/bin/python benchmarks/nab_score.py                      # the shared subset
    .venv/bin/python benchmarks/nab_score.py --data /path/to/NAB  # any dir in NAB's layout
    .venv/bin/python benchmarks/nab_score.py --json nab.json      # also write the numbers

The method is the Numenta Anomaly Benchmark's (Lavin & Ahmad, "Evaluating Real-time
Anomaly Detection Algorithms -- the Numenta Anomaly Benchmark", ICMLA 2015; the scoring
as implemented by NAB v1.1's sweeper), re-implemented here from its description:

- Each labelled anomaly window ``[start, end]`` (both inclusive, row indices ``a..b``,
  width ``w = b - a + 1``) rewards its *earliest* detection at row ``i`` with
  ``A_TP * S(-(b - i + 1) / w) / S(-1)``, where ``S(y) = 2 / (1 + exp(5 y)) - 1`` is the
  scaled sigmoid (``S(y) = -1`` for ``y > 3``); the left edge earns exactly ``A_TP``.
  Later detections in the same window add nothing. A window without detection costs
  ``-A_FN``.
- Every detection outside a window is a false positive worth ``A_FP * S(y)`` with
  ``y = |i - b_prev| / (w_prev - 1)``, the distance past the end of the preceding window
  relative to that window's width (so a detection just after a window costs almost
  nothing), or ``-A_FP`` when no window precedes it.
- The first ``min(floor(0.15 * rows), 750)`` rows of each file are a probationary period:
  not scored at all (neither FP nor TP).
- Profiles (cost matrices): ``standard`` (A_TP=1, A_FP=0.11, A_FN=1),
  ``reward_low_FP_rate`` (A_FP=0.22), ``reward_low_FN_rate`` (A_FN=2).
- One threshold per detector and profile for the whole corpus: a row is a detection when
  its score is ``>=`` the threshold. The optimised threshold is found by a sweep over all
  distinct scores: the scorable rows of all files are sorted once by score (descending)
  and the corpus score is updated incrementally as the threshold is lowered past each
  distinct value. The score at the detector's own default ``threshold`` (what users get)
  is read from the same sweep.
- Normalisation: ``100 * (raw - null) / (perfect - null)`` where ``null`` is the score of
  the detector that never fires (``-A_FN`` per scorable window) and ``perfect`` is
  ``A_TP`` times the number of windows.

Detectors run online only: each sees the rows of a file one by one, in order, through
``update(t, x)`` (``t`` = epoch seconds, ``x`` = value), and its ``score`` right after
row ``i`` is row ``i``'s anomaly score. A fresh detector is made per file; all
hyperparameters are fixed in :data:`DETECTORS` below, never tuned per file.

A windowed-Gaussian reference (NAB's ``windowedGaussian`` detector: a sliding window of
the last 1000 raw values, score of the newest value = ``1 - Q(|z|)`` with Q the normal
tail probability and z taken against the window's mean and population standard
deviation, as in NAB's published ``results/windowedGaussian`` files) is scored as a check of this scorer against the
published subset number, 12.1.

API for other scripts (the default-rule-set hook)::

    corpus = load_corpus(DEFAULT_DATA)
    result = score_detector(lambda: make_detector("zscore"), corpus)
    # {"standard": {"optimised": ..., "default_threshold": ...}, ...}

or, for anything that produces one score per row without the detector interface,
``score_rows(corpus, rows_per_file, default_threshold)``.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import datetime as dt
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from otel_eda.anomaly.detectors import ArtimeDetector, CadOseDetector, make_detector
from otel_eda.anomaly.detectors.artime import nab_probationary_period

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "nab"
PROBATION_FRACTION = 0.15
PROBATION_CAP_ROWS = 5000  # NAB: min(floor(0.15 * rows), 0.15 * 5000) = at most 750 rows


@dataclasses.dataclass(frozen=True, slots=True)
class Profile:
    """An application profile: NAB's cost matrix."""

    tp: float
    fp: float
    fn: float


PROFILES: dict[str, Profile] = {
    "standard": Profile(tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": Profile(tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": Profile(tp=1.0, fp=0.11, fn=2.0),
}


class ScoredDetector(Protocol):
    """What the scorer needs from a detector (``otel_eda.anomaly.detectors.Detector`` fits)."""

    def update(self, t: float, x: float) -> object: ...

    @property
    def score(self) -> float: ...


def scaled_sigmoid(y: float) -> float:
    """NAB's scaled sigmoid ``2 / (1 + exp(5 y)) - 1``; ``-1`` for ``y > 3``.

    >>> round(scaled_sigmoid(-1.0), 5), scaled_sigmoid(0.0), round(scaled_sigmoid(1.0), 5)
    (0.98661, 0.0, -0.98661)
    """
    if y > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def probation_length(rows: int) -> int:
    """Rows not scored at the start of a file: ``min(floor(0.15 * rows), 750)``.

    >>> probation_length(4032), probation_length(22695)
    (604, 750)
    """
    return int(min(math.floor(PROBATION_FRACTION * rows), PROBATION_FRACTION * PROBATION_CAP_ROWS))


@dataclasses.dataclass(slots=True)
class DataFile:
    """One NAB data file with its windows as inclusive row-index pairs."""

    name: str
    times: list[float]
    values: list[float]
    windows: list[tuple[int, int]]


@dataclasses.dataclass(slots=True)
class Corpus:
    """A NAB corpus: files plus, per scorable row, its unweighted NAB contribution."""

    files: list[DataFile]
    # Per file: rows[i] = (window id or -1, unweighted sigmoid value), None for probation.
    row_info: list[list[tuple[int, float] | None]]
    n_windows: int  # all labelled windows of the files present ("perfect" counts these)
    scorable_windows: int  # windows with at least one row after the probation period


def _parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.strip()).replace(tzinfo=dt.UTC).timestamp()


def load_corpus(data_dir: Path) -> Corpus:
    """Read ``data_dir/data/<category>/<file>.csv`` and ``data_dir/labels/combined_windows.json``."""
    labels: dict[str, list[list[str]]] = json.loads((data_dir / "labels" / "combined_windows.json").read_text())
    files: list[DataFile] = []
    for name in sorted(labels):
        path = data_dir / "data" / name
        if not path.exists():
            continue
        times: list[float] = []
        values: list[float] = []
        with path.open() as fh:
            header = fh.readline().strip().split(",")
            if header[:2] != ["timestamp", "value"]:
                raise ValueError(f"{path}: expected header timestamp,value, got {header}")
            for line in fh:
                if not line.strip():
                    continue
                stamp, value = line.rstrip("\n").split(",")[:2]
                times.append(_parse_time(stamp))
                values.append(float(value))
        index = {t: i for i, t in enumerate(times)}
        windows = []
        for start, end in labels[name]:
            try:
                windows.append((index[_parse_time(start)], index[_parse_time(end)]))
            except KeyError as exc:
                raise ValueError(f"{name}: window limit {exc} is not a timestamp of the file") from None
        windows.sort()
        files.append(DataFile(name, times, values, windows))
    if not files:
        raise ValueError(f"no labelled data files under {data_dir}/data")
    row_info: list[list[tuple[int, float] | None]] = []
    next_id = 0
    scorable: set[int] = set()
    for f in files:
        info: list[tuple[int, float] | None] = []
        probation = probation_length(len(f.times))
        max_tp = scaled_sigmoid(-1.0)
        window_of = [-1] * len(f.times)
        for k, (a, b) in enumerate(f.windows):
            for i in range(a, b + 1):
                window_of[i] = next_id + k
        prev: tuple[int, int] | None = None  # (right index, width) of the preceding window
        bounds = dict(enumerate(f.windows))
        for i in range(len(f.times)):
            wid = window_of[i]
            if wid >= 0:
                a, b = bounds[wid - next_id]
                width = b - a + 1
                contrib = scaled_sigmoid(-(b - i + 1) / width) / max_tp
            elif prev is None:
                contrib = -1.0
            else:
                right, width = prev
                contrib = scaled_sigmoid(abs(i - right) / (width - 1)) if width > 1 else -1.0
            info.append(None if i < probation else (wid, contrib))
            if i >= probation and wid >= 0:
                scorable.add(wid)
            if wid >= 0 and i == bounds[wid - next_id][1]:
                a, b = bounds[wid - next_id]
                prev = (b, b - a + 1)
        next_id += len(f.windows)
        row_info.append(info)
    return Corpus(files, row_info, next_id, len(scorable))


@dataclasses.dataclass(slots=True)
class Sweep:
    """Corpus scores for every distinct threshold (descending), raw (unnormalised)."""

    thresholds: list[float]  # descending; index 0 is +inf (no detection at all)
    raw: list[float]


def sweep(corpus: Corpus, scores: Sequence[Sequence[float]], profile: Profile) -> Sweep:
    """Raw corpus score for every distinct threshold, in one pass over the sorted scores."""
    rows: list[tuple[float, int, float]] = []
    for info, file_scores in zip(corpus.row_info, scores, strict=True):
        if len(info) != len(file_scores):
            raise ValueError("one score per row is needed")
        for ri, s in zip(info, file_scores, strict=True):
            if ri is not None:
                rows.append((s, ri[0], ri[1]))
    rows.sort(key=lambda r: r[0], reverse=True)
    total = -profile.fn * corpus.scorable_windows
    best_in_window: dict[int, float] = {}
    thresholds = [math.inf]
    raw = [total]
    n = len(rows)
    k = 0
    while k < n:
        s = rows[k][0]
        while k < n and rows[k][0] == s:
            _, wid, value = rows[k]
            if wid < 0:
                total += profile.fp * value
            else:
                gain = profile.tp * value
                old = best_in_window.get(wid)
                if old is None:
                    total += profile.fn + gain
                    best_in_window[wid] = gain
                elif gain > old:
                    total += gain - old
                    best_in_window[wid] = gain
            k += 1
        thresholds.append(s)
        raw.append(total)
    return Sweep(thresholds, raw)


def normalise(corpus: Corpus, raw: float, profile: Profile) -> float:
    """``100 * (raw - null) / (perfect - null)``."""
    null = -profile.fn * corpus.scorable_windows
    perfect = profile.tp * corpus.n_windows
    return 100.0 * (raw - null) / (perfect - null)


def score_rows(
    corpus: Corpus,
    scores: Sequence[Sequence[float]],
    default_threshold: float | None,
    profiles: Mapping[str, Profile] = PROFILES,
) -> dict[str, dict[str, float]]:
    """Normalised NAB scores of per-row anomaly scores (one list per file of ``corpus``).

    Returns ``{profile: {"optimised": best over all thresholds, "default_threshold": score
    when detections are the rows with score >= default_threshold}}`` (``default_threshold``
    None: never fires, i.e. 0.0).
    """
    out: dict[str, dict[str, float]] = {}
    for name, profile in profiles.items():
        sw = sweep(corpus, scores, profile)
        best = max(sw.raw)
        if default_threshold is None:
            at_default = sw.raw[0]
        else:
            # thresholds are descending: the last entry >= default_threshold
            neg = [-t for t in sw.thresholds]
            at_default = sw.raw[bisect.bisect_right(neg, -default_threshold) - 1]
        out[name] = {
            "optimised": normalise(corpus, best, profile),
            "default_threshold": normalise(corpus, at_default, profile),
        }
    return out


def run_detector(factory: Callable[[], ScoredDetector], corpus: Corpus) -> list[list[float]]:
    """Feed each file, row by row, to a fresh detector; collect its score after each row."""
    result: list[list[float]] = []
    for f in corpus.files:
        det = factory()
        update = det.update
        file_scores: list[float] = []
        append = file_scores.append
        for t, x in zip(f.times, f.values, strict=True):
            update(t, x)
            append(det.score)
        result.append(file_scores)
    return result


def score_detector(
    factory: Callable[[], ScoredDetector],
    corpus: Corpus | Path,
    profiles: Mapping[str, Profile] = PROFILES,
    default_threshold: float | None = None,
) -> dict[str, dict[str, float]]:
    """Run ``factory()``'s detectors online over ``corpus`` and score them.

    ``default_threshold`` defaults to the detector's own ``threshold`` attribute.
    """
    if isinstance(corpus, Path):
        corpus = load_corpus(corpus)
    if default_threshold is None:
        default_threshold = getattr(factory(), "threshold", None)
    return score_rows(corpus, run_detector(factory, corpus), default_threshold, profiles)


# --- reference detectors --------------------------------------------------------------


class NullDetector:
    """Never alerts (score 0.0): NAB's baseline, scores 0 by construction."""

    threshold = 0.5
    score = 0.0

    def update(self, t: float, x: float) -> NullDetector:
        return self


class WindowedGaussian:
    """NAB's ``windowedGaussian`` reference, reproduced.

    Window of the last 1000 raw values (step 1); the score of a value is computed *before*
    it enters the window: ``1 - Q(|z|) = 1 - erfc(|z| / 1.4142) / 2`` with z against the
    window's mean and population standard deviation (0 replaced by 1e-6), so scores range
    from 0.5 (at the mean) to 1; 0.0 on the first row. Checked against NAB's published
    ``results/windowedGaussian`` files (for example 0.951253 on the third row of
    ``art_daily_jumpsdown``).
    Recomputes mean/std per row (O(w)), like the original; a reference, not for use.
    """

    threshold = 0.5

    def __init__(self, window: int = 1000) -> None:
        self.window = window
        self.data: list[float] = []
        self.mean = 0.0
        self.std = 1.0
        self.score = 0.0

    def update(self, t: float, x: float) -> WindowedGaussian:
        if self.data:
            z = abs(x - self.mean) / self.std
            self.score = 1.0 - 0.5 * math.erfc(z / 1.4142)
        self.data.append(x)
        if len(self.data) > self.window:
            del self.data[0]
        n = len(self.data)
        self.mean = sum(self.data) / n
        self.std = math.sqrt(sum((v - self.mean) ** 2 for v in self.data) / n) or 0.000001
        return self


class Oracle:
    """Fires exactly on the given timestamps: each window's first row of one file (a perfect detector)."""

    threshold = 0.5

    def __init__(self, starts: set[float]) -> None:
        self.starts = starts
        self.score = 0.0

    def update(self, t: float, x: float) -> Oracle:
        self.score = 1.0 if t in self.starts else 0.0
        return self


# --- the benchmark --------------------------------------------------------------------

# Hyperparameters fixed here, before scoring; never tuned per file.
DETECTORS: dict[str, Callable[[], ScoredDetector]] = {
    "zscore w=1000": lambda: make_detector("zscore", window=1000),
    "ewma a=0.01": lambda: make_detector("ewma", alpha=0.01),
    "trend w=60": lambda: make_detector("trend", window=60),
    "robust w=1000": lambda: make_detector("robust", window=1000),
    "likelihood": lambda: make_detector("likelihood"),
    "context": lambda: make_detector("context"),
    "cad_ose (online range)": lambda: make_detector("cad_ose"),
    "artime (online range)": lambda: make_detector("artime"),
}

PUBLISHED_WINDOWED_GAUSSIAN_SUBSET = 12.1


def rule_alert_rows(rule: Any, corpus: Corpus) -> list[list[float]]:
    """Per row, 1.0 where ``rule`` (run by the anomaly engine, online) raised an alert.

    The rule's whole lifecycle applies — its detector, ``for``, hysteresis, cooldown (in the
    file's own seconds) — so this is what a user of the rule would have been paged for.
    """
    import dataclasses as dc
    import itertools

    from otel_eda.anomaly.detectors import fallback as fallback_module
    from otel_eda.anomaly.engine import AnomalyEngine
    from otel_eda.anomaly.series import SeriesPoint

    watched = dc.replace(rule, metric="nab", signal="value", match={}, labels=())
    # a staggered start (stagger=750: offsets 0, 1, 2, ... in creation order) counted from 0
    # for each rule, so that a rule's score does not depend on which others ran before it
    fallback_module._started = itertools.count()
    out: list[list[float]] = []
    for f in corpus.files:
        engine = AnomalyEngine([watched], max_series=2, idle_timeout_s=math.inf)
        rows = []
        for t, x in zip(f.times, f.values, strict=True):
            fired = engine.evaluate([SeriesPoint("nab", "value", (), t, x)], now=t)
            rows.append(1.0 if any(a.state.value == "firing" and a.ended_at is None for a in fired) else 0.0)
        out.append(rows)
    return out


def _adapts_to_any_series(spec: Mapping[str, Any] | None) -> bool:
    """Whether a detector spec adapts to any series (fixed limits and ranges are unit-bound; None: silent)."""
    if spec is None:
        return True
    if spec["kind"] == "fallback":
        return _adapts_to_any_series(spec["detector"]) and _adapts_to_any_series(
            spec.get("fallback", {"kind": "zscore"})
        )
    if spec["kind"] == "artime" and not _adapts_to_any_series(spec.get("confirm")):
        return False
    return spec["kind"] != "threshold" and "min_value" not in spec and "max_value" not in spec


def default_rule_set_entries() -> dict[str, Any]:
    """The default rules whose detector adapts to any series (thresholds and fixed ranges are unit-bound)."""
    from otel_eda.anomaly.rules import default_rules

    def kind(spec: Mapping[str, Any] | None) -> str:
        if spec is None:
            return "silent"
        if spec["kind"] == "fallback":
            before = kind(spec.get("fallback", {"kind": "zscore"}))
            stagger = f" (+0-{spec['stagger']})" if spec.get("stagger") else ""
            return f"{kind(spec['detector'])} after {spec.get('warmup', 600)}{stagger}, {before} before"
        if spec.get("confirm") is not None:
            over = " of step medians" if spec.get("confirm_on") == "step" else ""
            return f"{spec['kind']} confirmed by {kind(spec['confirm'])}{over}"
        return str(spec["kind"])

    entries = {
        f"default rule {r.name} ({kind(r.detector)})": r for r in default_rules() if _adapts_to_any_series(r.detector)
    }
    # Not shipped, scored for comparison: the latency rule with its z-score detector alone
    # (the shipped rule before ARTime), with CAD OSE after 600 points (a steady noisy series
    # makes it alert ~40 times a day), and with ARTime unconfirmed (about 10 a day).
    latency = next(r for r in default_rules() if r.name == "processing-latency")
    before = dict(latency.detector["fallback"])
    entries[f"rule {latency.name} with {kind(before)} alone (not shipped)"] = dataclasses.replace(
        latency, detector=before
    )
    candidate = {"kind": "fallback", "detector": {"kind": "cad_ose"}, "fallback": before, "warmup": 600}
    entries[f"rule {latency.name} with {kind(candidate)} (not shipped)"] = dataclasses.replace(
        latency, detector=candidate
    )
    candidate = {"kind": "fallback", "detector": {"kind": "artime"}, "fallback": before, "warmup": 750}
    entries[f"rule {latency.name} with {kind(candidate)} (not shipped)"] = dataclasses.replace(
        latency, detector=candidate
    )
    return entries


# --- fidelity to a published detector's own rows ------------------------------------------------

REFERENCE_DIR = "reference"
AGREEMENT_TOLERANCE = 0.01


def pandas_legacy_float(text: str) -> float:
    """``text`` parsed as pandas' C parser did before pandas 1.3 (``xstrtod``, not correctly rounded).

    NAB read its CSVs with that parser, so the minimum, maximum and values its detectors saw
    can be one unit in the last place away from ``float(text)``; at a quantisation boundary
    that changes a level (``ec2_request_latency_system_failure``'s maximum, 99.24799999999999,
    is read as 99.248). Digits accumulate in a double, then the power of ten is applied by
    repeated squaring, dividing for negative exponents.

    >>> pandas_legacy_float("99.24799999999999"), float("99.24799999999999")
    (99.248, 99.24799999999999)
    >>> pandas_legacy_float("-1.0574e-05")
    -1.0574e-05
    """
    s = text.strip()
    negative = s.startswith("-")
    if s[:1] in "+-":
        s = s[1:]
    mantissa, _, exp_text = s.lower().partition("e")
    exponent = int(exp_text) if exp_text else 0
    whole, _, decimals = mantissa.partition(".")
    number = 0.0
    for ch in whole:
        number = number * 10.0 + (ord(ch) - 48)
    for ch in decimals:
        number = number * 10.0 + (ord(ch) - 48)
        exponent -= 1
    p10 = 10.0
    n = abs(exponent)
    while n:
        if n & 1:
            number = number / p10 if exponent < 0 else number * p10
        n >>= 1
        p10 *= p10
    return -number if negative else number


def nab_input_values(data_dir: Path, corpus: Corpus) -> list[list[float]]:
    """Each file's values as NAB's detectors received them (:func:`pandas_legacy_float`)."""
    out: list[list[float]] = []
    for f in corpus.files:
        with (data_dir / "data" / f.name).open() as fh:
            fh.readline()
            out.append([pandas_legacy_float(line.split(",")[1]) for line in fh if line.strip()])
    return out


def load_reference(data_dir: Path, corpus: Corpus, detector: str) -> list[list[float]] | None:
    """The published detector's per-row scores for each file of ``corpus``, or None if any is missing.

    ``<data_dir>/reference/<detector>/<category>/<detector>_<file>.csv`` (timestamp, value,
    anomaly_score), row for row with the data file.
    """
    out: list[list[float]] = []
    for f in corpus.files:
        category, _, name = f.name.partition("/")
        path = data_dir / REFERENCE_DIR / detector / category / f"{detector}_{name}"
        if not path.exists():
            return None
        with path.open() as fh:
            header = fh.readline().strip().split(",")
            col = header.index("anomaly_score")
            rows = [float(line.rstrip("\n").split(",")[col]) for line in fh if line.strip()]
        if len(rows) != len(f.values):
            raise ValueError(f"{path}: {len(rows)} rows, the data file has {len(f.values)}")
        out.append(rows)
    return out


def agreement(corpus: Corpus, mine: Sequence[Sequence[float]], reference: Sequence[Sequence[float]]) -> list[float]:
    """Per file, the share of scored rows (after probation) where the two scores differ by <= 0.01."""
    shares: list[float] = []
    for f, a, b in zip(corpus.files, mine, reference, strict=True):
        start = probation_length(len(f.values))
        n = len(f.values) - start
        same = sum(1 for x, y in zip(a[start:], b[start:], strict=True) if abs(x - y) <= AGREEMENT_TOLERANCE)
        shares.append(same / n if n else 1.0)
    return shares


def cad_ose_nab_inputs(data_dir: Path, corpus: Corpus, max_contexts: int | None = None) -> list[list[float]]:
    """CAD OSE run as NAB ran ``contextOSE``: the file's min and max, rest period = probation / 5."""
    out: list[list[float]] = []
    for values in nab_input_values(data_dir, corpus):
        det = CadOseDetector(
            min_value=min(values),
            max_value=max(values),
            rest_period=int(probation_length(len(values)) / 5.0),
            max_contexts=max_contexts,
        )
        out.append([det.update(float(i), x).score for i, x in enumerate(values)])
    return out


def artime_nab_inputs(data_dir: Path, corpus: Corpus, max_categories: int | None = None) -> list[list[float]]:
    """ARTime run as NAB ran it: the file's min, max and length (its probationary period)."""
    out: list[list[float]] = []
    for values in nab_input_values(data_dir, corpus):
        det = ArtimeDetector(
            min_value=min(values),
            max_value=max(values),
            probation=nab_probationary_period(len(values)),
            max_categories=max_categories,
        )
        out.append([det.update(float(i), x).score for i, x in enumerate(values)])
    return out


def artime_fidelity_report(data_dir: Path, corpus: Corpus) -> dict[str, Any]:
    """ARTime against NAB's published ARTime rows: per-file agreement and subset scores.

    Four runs: NAB's inputs with unbounded memory (the reproduction), NAB's inputs with
    the shipped category cap, the online range frozen after the first ``probation`` values
    (the previous shipped version), and the shipped detector (range of the first
    ``probation`` values, widened by a rebuild when later values fall outside it;
    probationary period 750 whatever the length) as users get it.
    """
    reference = load_reference(data_dir, corpus, "ARTime")
    if reference is None:
        raise ValueError(f"no {REFERENCE_DIR}/ARTime rows under {data_dir}")
    shipped = ArtimeDetector()
    runs = {
        "NAB inputs": artime_nab_inputs(data_dir, corpus),
        f"NAB inputs, max_categories={shipped.max_categories}": artime_nab_inputs(
            data_dir, corpus, shipped.max_categories
        ),
        f"online: range of the first {shipped.probation} values, frozen (history=0)": run_detector(
            lambda: ArtimeDetector(history=0), corpus
        ),
        f"online (shipped): range widened by rebuilds (history={shipped.history})": run_detector(
            ArtimeDetector, corpus
        ),
    }
    report: dict[str, Any] = {"detector": "ARTime", "threshold": shipped.threshold}
    report["files"] = [f.name for f in corpus.files]
    report["reference"] = score_rows(corpus, reference, shipped.threshold)
    report["runs"] = {}
    for name, rows in runs.items():
        report["runs"][name] = {
            "agreement": agreement(corpus, rows, reference),
            "scores": score_rows(corpus, rows, shipped.threshold),
        }
    return report


def fidelity_report(data_dir: Path, corpus: Corpus) -> dict[str, Any]:
    """CAD OSE against NAB's published contextOSE rows: per-file agreement and subset scores.

    Four runs: NAB's inputs with unbounded memory (the reproduction), NAB's inputs with
    the shipped memory cap, the range learnt as the running extremes, and the shipped
    detector (range of the first ``learn`` points, then replayed; cap; fixed rest period)
    as users get it.
    """
    reference = load_reference(data_dir, corpus, "contextOSE")
    if reference is None:
        raise ValueError(f"no {REFERENCE_DIR}/contextOSE rows under {data_dir}")
    shipped = CadOseDetector()
    runs = {
        "NAB inputs": cad_ose_nab_inputs(data_dir, corpus),
        f"NAB inputs, max_contexts={shipped.max_contexts}": cad_ose_nab_inputs(data_dir, corpus, shipped.max_contexts),
        "online, running extremes (learn=0)": run_detector(lambda: CadOseDetector(learn=0), corpus),
        f"online (shipped): range of the first {shipped.learn} points": run_detector(CadOseDetector, corpus),
    }
    report: dict[str, Any] = {"files": [f.name for f in corpus.files], "runs": {}}
    report["detector"] = "contextOSE"
    report["threshold"] = shipped.threshold
    report["reference"] = score_rows(corpus, reference, shipped.threshold)
    for name, rows in runs.items():
        report["runs"][name] = {
            "agreement": agreement(corpus, rows, reference),
            "scores": score_rows(corpus, rows, shipped.threshold),
        }
    return report


def print_fidelity(report: Mapping[str, Any]) -> None:
    """The fidelity table: agreement per file per run, then subset scores (standard profile)."""
    names = list(report["runs"])
    print(f"fidelity to NAB's {report['detector']} rows (share of scored rows within {AGREEMENT_TOLERANCE})")
    print(f"{'file':52} " + " ".join(f"{n[:26]:>26}" for n in names))
    for i, f in enumerate(report["files"]):
        print(f"{f:52} " + " ".join(f"{report['runs'][n]['agreement'][i]:26.4f}" for n in names))
    ref = report["reference"]
    print(f"NAB subset score (optimised / at threshold {report['threshold']:g}):")
    for profile in PROFILES:
        cells = [f"reference {ref[profile]['optimised']:5.1f} /{ref[profile]['default_threshold']:5.1f}"]
        for n in names:
            sc = report["runs"][n]["scores"][profile]
            cells.append(f"{n} {sc['optimised']:5.1f} /{sc['default_threshold']:5.1f}")
        print(f"  {profile:20} " + " | ".join(cells))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="NAB-layout directory (data/ + labels/)")
    parser.add_argument("--json", type=Path, help="write {detector: {profile: {optimised, default_threshold}}}")
    parser.add_argument("--only", action="append", help="score only detectors whose name contains this")
    parser.add_argument(
        "--fidelity",
        nargs="?",
        const="cad_ose",
        choices=["cad_ose", "artime"],
        help="compare CAD OSE (default) or ARTime with NAB's published rows (contextOSE, ARTime), then stop",
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    corpus = load_corpus(args.data)
    rows = sum(len(f.times) for f in corpus.files)
    print(
        f"NAB corpus {args.data}: {len(corpus.files)} files, {rows} rows, {corpus.n_windows} windows "
        f"({corpus.scorable_windows} after probation)"
    )
    if args.fidelity:
        report = (artime_fidelity_report if args.fidelity == "artime" else fidelity_report)(args.data, corpus)
        print_fidelity(report)
        print(f"elapsed {time.perf_counter() - started:.1f} s")
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        return 0
    entries: dict[str, Callable[[], ScoredDetector]] = {
        "null (never alerts)": NullDetector,
        "windowedGaussian (NAB reference)": WindowedGaussian,
        **DETECTORS,
    }
    if args.only:
        entries = {k: v for k, v in entries.items() if any(o in k for o in args.only)}
    results: dict[str, dict[str, dict[str, float]]] = {}
    header = f"{'detector':34} {'standard':>17} {'reward_low_FP':>17} {'reward_low_FN':>17} {'secs':>6}"
    print("scores: optimised threshold / detector's default threshold")
    print(header)
    print("-" * len(header))
    for name, factory in entries.items():
        t0 = time.perf_counter()
        res = score_detector(factory, corpus)
        results[name] = res
        cells = " ".join(f"{res[p]['optimised']:8.1f} /{res[p]['default_threshold']:7.1f}" for p in PROFILES)
        print(f"{name:34} {cells} {time.perf_counter() - t0:6.1f}", flush=True)
    for name, rule in default_rule_set_entries().items():
        if args.only and not any(o in name for o in args.only):
            continue
        t0 = time.perf_counter()
        res = score_rows(corpus, rule_alert_rows(rule, corpus), default_threshold=1.0)
        results[name] = res
        cells = " ".join(f"{res[p]['optimised']:8.1f} /{res[p]['default_threshold']:7.1f}" for p in PROFILES)
        print(f"{name}\n{'':34} {cells} {time.perf_counter() - t0:6.1f}", flush=True)
    if "windowedGaussian (NAB reference)" in results:
        wg = results["windowedGaussian (NAB reference)"]["standard"]["optimised"]
        print(
            f"check: windowedGaussian standard = {wg:.1f} here, {PUBLISHED_WINDOWED_GAUSSIAN_SUBSET} published "
            "(NAB's own results scored on the subset)"
        )
    print(f"elapsed {time.perf_counter() - started:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
