"""ARTime (``artime``): adaptive resonance theory on a downsampled window, reproduced from its public source.

What this reproduces, and from where: ARTime, the detector at the top of the Numenta Anomaly
Benchmark's scoreboard (74.9 standard on NAB's full corpus), by Mark Hampton (2021), as NAB
runs it: NAB's ``nab/detectors/ARTime/ARTime_detector.py`` hands the Julia package
``ARTimeNAB.jl`` (``src/ARTime.jl``, and ``src/AdaptiveResonanceCompact.jl``, a compacted
dual-vigilance fuzzy ART derived from ``AdaptiveResonance.jl``) the file's minimum, maximum
and length, then feeds it one value at a time. That code is AGPL-3.0; this module is an
independent Python implementation written from reading it (no code copied), with the
numerical details that decide its output kept, as listed below. Where the Julia output
depends on library internals (the Haar transform of ``Wavelets.jl``, Julia's ``sum`` and
``mean``, ``OnlineStats.Mean``, ``sortperm`` of floats) the same arithmetic is done here.

The algorithm, one value at a time:

1. **Probationary period.** ``p = floor(0.15 * length)`` (750 for series of 5000 points or
   more), made even. Values are downsampled by ``sstep = max(1, p // (8 * 13))`` (one
   step per ``sstep`` values); ``trend_window = p // sstep`` steps are the warm-up.
2. **Downsampling.** For each block of ``sstep`` values: a running average of block means;
   the block's maximum, or its minimum when that lies farther from the running average;
   the block mean instead when the extreme is within 10 % of it.
3. **Normalise and discretise** over ``[min, max]`` into 80 levels; a running median of the
   levels (a histogram walk) pulls values within 0.075 of it onto it.
4. **Features** (16): the last 8 discretised values, min-max scaled, Haar-transformed
   (three levels, periodic, as ``Wavelets.dwt``) and min-max scaled again, followed by
   the 8 values themselves.
5. **Dual-vigilance fuzzy ART** on the complement-coded features (32 numbers). A
   category's activation is ``fs**3 * es**2`` where ``fs = |min(x, w)|_1 / |w|_1`` and
   ``es`` is the same ratio over the newest value and its complement only. Categories at
   or above the upper vigilance ``rho_ub`` learn (fast commit ``w = min(x, w)``); if none
   does, the best one at or above ``rho_lb`` spawns a new category in its own cluster;
   below ``rho_lb`` (a *mismatch*) a new cluster is created.
6. **Warm-up in batch.** The first ``trend_window`` feature vectors are kept; at the end of
   the warm-up an initial vigilance is found (ART with vigilance 0.8 trained on those
   vectors ordered by summed cosine similarity; the mean activation of its second half)
   and all of them are replayed through the detector's ART. Scores are 0 until then.
7. **Anomaly.** A mismatch after the warm-up is an anomaly unless masked (within 12 steps
   of the previous anomaly, or after a new category until 12 steps pass without one),
   except when its activation is well below the last anomaly's (90 %, 70 % when only a
   category masks it). Its score is a confidence from the activation's distance to the
   two vigilances and from ``es``, capped at 1 and rounded to 6 decimals; every other
   value scores 0.
8. **Vigilance drift.** Every ``trend_window // 2`` steps, and 12 steps after an anomaly,
   ``rho_ub`` becomes the running mean activation (at most 0.97) and ``rho_lb`` rises
   towards the lowest recent activation, or falls by half the mean recent shortfall,
   never below the mean activation of past anomalies.

Numerical details kept from the Julia run: the Haar filter is ``0.7071067811865475``
normalised by its 2-norm (so ``0.7071067811865476``), detail coefficients are
``(-c * x[2k]) + c * x[2k+1]``; powers are ``x * x * x`` and ``x * x``; an ``es`` of 0/0
is NaN, which sorts first in ``sortperm(..., rev=true)`` and so makes the step a mismatch
with activation 0; activation ties go to the lower category index; the running mean is
``m + (1/n) * (x - m)``; the final score is ``round(s * 1e6) / 1e6`` (ties to even). Sums
of fewer than 16 numbers are sequential, as Julia's; longer ``sum``/``mean`` calls (the
warm-up's similarity sums, the vigilance updates) follow Julia's blocked order
(:func:`julia_sum`). The 32-element L1 norms of the activation come from OpenBLAS's
``dasum`` in Julia, whose order depends on the CPU's kernel; here they are summed
sequentially, left to right, on every Python version (written out, not Python's ``sum``,
which compensates rounding from Python 3.12). On NAB's 18 subset files the rows are the same to every printed digit
with sequential sums everywhere too: these orders only move last bits. NAB also reads its
CSVs with pandas' pre-1.3 float parser, which the benchmark reproduces
(``benchmarks/nab_score.py``); on ARTime's rows it makes no difference either.

Memory: the reference keeps every category for ever. ``max_categories`` bounds them here
(``None``, NAB's run, means unbounded): once full, a step that would add a category adds
none but is scored as the reference scores it (a mismatch is still a mismatch). A category
is 32 floats, its L1 norm and its group key (about 1.2 kB in CPython, measured by
``benchmarks/anomaly_speed.py``). Cost per value: O(1) for values inside a downsampling
block, O(categories) at worst for the value that closes one (in practice the categories
that survive the bound of :class:`_Art`), and one O(trend_window**2) burst (about 100 x 100
cosine similarities and a replay, 5-10 ms) when the warm-up ends.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

from otel_eda.anomaly.detectors.base import Detector, _Base, _check_window, _real

__all__ = ["ArtimeDetector", "ArtimeModel", "julia_sum", "nab_probationary_period"]

_WINDOW = 8  # values per feature window (a power of two: three Haar levels)
_WINDOWS_PER_PB = 13
_NLEVELS = 80
_CHOMP = 0.075
_INITIAL_RHO = 0.80
_MASK = 12  # int(window * 1.5): steps masked after an anomaly
#: Rebuilds at most per collection, process-wide (a collection evaluates every series at about
#: the same time; values within a second of the first rebuild's count as one collection): an
#: incident that widens many series' ranges at once rebuilds four of them per collection, the
#: others clamping their values to the old range until their turn, so one collection spends at
#: most about 4 x 40 ms on rebuilds rather than 200 x 40 ms.
REBUILDS_PER_COLLECTION = 4
_rebuilding = [-math.inf, 0.0]  # the collection's time (its first rebuild's), rebuilds in it


def _may_rebuild(t: float) -> bool:
    """Whether a rebuild may run at time ``t`` (then counted in ``t``'s collection)."""
    slot = _rebuilding
    if abs(t - slot[0]) < 1.0:
        if slot[1] >= REBUILDS_PER_COLLECTION:
            return False
        slot[1] += 1
    else:
        slot[0], slot[1] = t, 1
    return True


_UB_CAP = 0.97
_NEWEST = _WINDOW * 2 - 1  # index of the newest value among the 16 features
_DIM = _WINDOW * 2

# Wavelets.jl's Haar filter, normalised by its 2-norm as OrthoFilter does (generic_norm2 of a
# length-2 vector: the square root of a sequential sum of squares).
_H = 0.7071067811865475
_C = _H / math.sqrt(_H * _H + _H * _H)
_first = itemgetter(0)


def nab_probationary_period(length: int) -> int:
    """ARTime's probationary period for a series of ``length`` points, as NAB's run computes it.

    >>> nab_probationary_period(4032), nab_probationary_period(22695), nab_probationary_period(1882)
    (604, 750, 282)
    """
    p = math.floor(0.15 * length) if length < 5000 else 750
    return p - p % 2


def julia_sum(xs: Sequence[float]) -> float:
    """Julia's ``sum`` of a ``Vector{Float64}`` (sequential below 16 elements, ``@simd`` blocks above).

    Julia sums 16 elements or more with ``mapreduce_impl``: pairwise halving down to blocks
    of at most 1024, each block summed as ``a1 + a2`` then a ``@simd`` loop that LLVM
    vectorises into 4 accumulators of 4 lanes (AVX2) for 16 elements per iteration,
    combined lane by lane after the loop, then the remainder sequentially.

    >>> julia_sum([0.1] * 3), julia_sum([1.0] * 20)
    (0.30000000000000004, 20.0)
    """
    n = len(xs)
    if n == 0:
        return 0.0
    if n < 16:
        s = xs[0]
        for v in xs[1:]:
            s += v
        return s
    return _pairwise(xs, 0, n - 1)


def _pairwise(xs: Sequence[float], lo: int, hi: int) -> float:
    if lo + 1024 > hi:
        v = xs[lo] + xs[lo + 1]
        i = lo + 2
        if hi - i + 1 >= 16:
            acc = [0.0] * 16
            acc[0] = v
            while hi - i + 1 >= 16:
                for k in range(16):
                    acc[k] += xs[i + k]
                i += 16
            # accumulators (4 vectors of 4 lanes) added vector-wise, then the lanes pairwise
            vec = [((acc[k] + acc[4 + k]) + acc[8 + k]) + acc[12 + k] for k in range(4)]
            v = (vec[0] + vec[2]) + (vec[1] + vec[3])
        while i <= hi:
            v += xs[i]
            i += 1
        return v
    mid = (lo + hi) >> 1
    return _pairwise(xs, lo, mid) + _pairwise(xs, mid + 1, hi)


def _seq_sum(xs: Sequence[float]) -> float:
    s = 0.0
    for v in xs:
        s += v
    return s


def _haar(x: Sequence[float]) -> list[float]:
    """Three-level periodic Haar DWT of 8 values, laid out as ``Wavelets.dwt``: [a3, d3, d2, d2, d1 x 4].

    Each level maps pairs ``(a, b)`` to the approximation ``c*a + c*b`` and the detail
    ``(-c*a) + c*b`` (unrolled).
    """
    c = _C
    m = -c
    x0, x1, x2, x3, x4, x5, x6, x7 = x
    a0, a1, a2, a3 = c * x0 + c * x1, c * x2 + c * x3, c * x4 + c * x5, c * x6 + c * x7
    b0, b1 = c * a0 + c * a1, c * a2 + c * a3
    return [
        c * b0 + c * b1,
        (m * b0) + c * b1,
        (m * a0) + c * a1,
        (m * a2) + c * a3,
        (m * x0) + c * x1,
        (m * x2) + c * x3,
        (m * x4) + c * x5,
        (m * x6) + c * x7,
    ]


def _minmax_scale(v: list[float]) -> list[float]:
    lo = min(v)
    w = [x - lo for x in v]
    hi = max(w)
    if hi != 0:
        w = [x / hi for x in w]
    return w


# The 16-number halves of ART's inner loop, written out: ``sum(map(min, x, w))`` costs about
# six times as much in CPython. Sums are sequential (left to right, from ``s``) on every Python
# version (``sum`` of floats compensates rounding from Python 3.12); ``(w if w < x else x)``
# is ``min(x, w)``.


def _min_sum(x: Sequence[float], w: Sequence[float], s: float = 0.0) -> float:
    """``s + min(x[0], w[0]) + ... + min(x[15], w[15])``, summed left to right."""
    x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = x
    w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13, w14, w15 = w
    return (
        s
        + (w0 if w0 < x0 else x0)
        + (w1 if w1 < x1 else x1)
        + (w2 if w2 < x2 else x2)
        + (w3 if w3 < x3 else x3)
        + (w4 if w4 < x4 else x4)
        + (w5 if w5 < x5 else x5)
        + (w6 if w6 < x6 else x6)
        + (w7 if w7 < x7 else x7)
        + (w8 if w8 < x8 else x8)
        + (w9 if w9 < x9 else x9)
        + (w10 if w10 < x10 else x10)
        + (w11 if w11 < x11 else x11)
        + (w12 if w12 < x12 else x12)
        + (w13 if w13 < x13 else x13)
        + (w14 if w14 < x14 else x14)
        + (w15 if w15 < x15 else x15)
    )


def _min_list(x: Sequence[float], w: Sequence[float]) -> list[float]:
    """``[min(x[0], w[0]), ..., min(x[15], w[15])]``."""
    x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = x
    w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13, w14, w15 = w
    return [
        (w0 if w0 < x0 else x0),
        (w1 if w1 < x1 else x1),
        (w2 if w2 < x2 else x2),
        (w3 if w3 < x3 else x3),
        (w4 if w4 < x4 else x4),
        (w5 if w5 < x5 else x5),
        (w6 if w6 < x6 else x6),
        (w7 if w7 < x7 else x7),
        (w8 if w8 < x8 else x8),
        (w9 if w9 < x9 else x9),
        (w10 if w10 < x10 else x10),
        (w11 if w11 < x11 else x11),
        (w12 if w12 < x12 else x12),
        (w13 if w13 < x13 else x13),
        (w14 if w14 < x14 else x14),
        (w15 if w15 < x15 else x15),
    ]


def _sum16(w: Sequence[float], s: float = 0.0) -> float:
    """``s + w[0] + ... + w[15]``, summed left to right."""
    w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13, w14, w15 = w
    return s + w0 + w1 + w2 + w3 + w4 + w5 + w6 + w7 + w8 + w9 + w10 + w11 + w12 + w13 + w14 + w15


def _within(w: Sequence[float], x: Sequence[float]) -> bool:
    """``w[k] <= x[k]`` for all 16 ``k``."""
    x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = x
    w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13, w14, w15 = w
    return (
        w0 <= x0
        and w1 <= x1
        and w2 <= x2
        and w3 <= x3
        and w4 <= x4
        and w5 <= x5
        and w6 <= x6
        and w7 <= x7
        and w8 <= x8
        and w9 <= x9
        and w10 <= x10
        and w11 <= x11
        and w12 <= x12
        and w13 <= x13
        and w14 <= x14
        and w15 <= x15
    )


# Blocks of the 16 features whose sums bound a category's match (:class:`_Art`): the Haar
# features in two halves, the older levels in two; the newest level (the energy) is exact.
_BLOCKS = ((0, 4), (4, 8), (8, 12), (12, _NEWEST))


def _block_sums(wa: Sequence[float], wb: Sequence[float]) -> tuple[float, ...]:
    """Per block of ``_BLOCKS``: the sum of the box's lower corner ``wa`` and of its upper corner ``1 - wb``.

    Only bounds use them (with a margin far above rounding), so the order of the sums does not matter.
    """
    return (
        wa[0] + wa[1] + wa[2] + wa[3],
        4 - (wb[0] + wb[1] + wb[2] + wb[3]),
        wa[4] + wa[5] + wa[6] + wa[7],
        4 - (wb[4] + wb[5] + wb[6] + wb[7]),
        wa[8] + wa[9] + wa[10] + wa[11],
        4 - (wb[8] + wb[9] + wb[10] + wb[11]),
        wa[12] + wa[13] + wa[14],
        3 - (wb[12] + wb[13] + wb[14]),
    )


def _dot16(a: Sequence[float], b: Sequence[float]) -> float:
    """``a[0]*b[0] + ... + a[15]*b[15]`` left to right (Julia's ``sum`` of 16 products: sequential)."""
    a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15 = a
    b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15 = b
    return (
        a0 * b0
        + a1 * b1
        + a2 * b2
        + a3 * b3
        + a4 * b4
        + a5 * b5
        + a6 * b6
        + a7 * b7
        + a8 * b8
        + a9 * b9
        + a10 * b10
        + a11 * b11
        + a12 * b12
        + a13 * b13
        + a14 * b14
        + a15 * b15
    )


def _shortfall_limit(cut: float, es2: float) -> float:
    """The shortfall share above which a category's activation bound is below ``cut`` (with a margin).

    ``(1 - sh / ws) ** 3 * es2 < cut - 2e-9`` when ``sh > ws * limit``: a skip test with one
    multiplication. Infinite (skip nothing) when the cut is 0.
    """
    c = cut - 2e-9
    if c <= 0:
        return math.inf
    if es2 <= 0:
        return -math.inf
    return 1 - math.pow(c / es2, 1 / 3)


def _similarity(t1: Sequence[float], t2: Sequence[float], n1: float, n2: float) -> float:
    """Close to cosine similarity, as ARTime's ``similarity`` (16-element vectors; ``n1``, ``n2``: their norms)."""
    if n1 == 0.0:
        return 1 - n2
    if n2 == 0.0:
        return 1 - n1
    return _dot16(t1, t2) / (n1 * n2)


class _Art:
    """The dual-vigilance fuzzy ART of ARTime (``DVFA``), one complement-coded sample at a time.

    A category's activation is ``fs**3 * es**2`` (module docstring). The reference computes
    it for every category; the outcome only depends on the best activation and on the
    categories at or above ``rho_ub`` (which learn), so a category whose activation is
    provably below both the best found so far and ``rho_ub`` is skipped, exactly:

    - categories are grouped by their two *energy* weights (those of the newest value and of
      its complement, which take few distinct values: levels over 80); ``es`` is exact per
      group and ``fs <= 1 - (we - ne) / |w|_1`` (the energy terms' shortfall alone), so a
      group whose bound, at its largest ``|w|_1``, is below the cut is skipped whole (the
      groups whose interval holds the newest value first, then the others by decreasing
      bound);
    - each member then by its own ``|w|_1`` and its box: the shortfall ``|w|_1 - |min(x, w)|_1``
      is ``sum(max(0, w_k - x_k) + max(0, x_k - (1 - w'_k)))`` over the features (``w'``: the
      complements' weights), at least ``max(0, L - X) + max(0, X - U)`` over any block of them
      (``L``, ``U``: the sums of the box's lower and upper corners there, ``X`` of ``x``);
      four blocks (``_BLOCKS``) add to the energy term;
    - a member whose box holds ``x`` (``w <= x`` on all 32 numbers) has ``min(x, w) = w``:
      ``fs`` is exactly 1 (the cached ``|w|_1`` is the same sequential sum) and it learns
      nothing, so no sum is needed;
    - otherwise the features' half of ``sum(min(x, w))`` comes first: its shortfall bounds
      ``fs`` again before the complements' half completes the same sequential sum.

    Skipping uses a margin of 1e-9 or more, far above rounding. ``tests/test_artime.py`` checks the
    outcome against a literal transcription of the reference's loop.
    """

    __slots__ = (
        "bb",
        "clusters",
        "full",
        "groups",
        "key",
        "max_categories",
        "rho_lb",
        "rho_ub",
        "w_sum",
        "wa",
        "wa_sum",
        "wb",
    )

    def __init__(self, rho_lb: float = 0.0, rho_ub: float = 0.0, max_categories: int | None = None) -> None:
        self.rho_lb = rho_lb
        self.rho_ub = rho_ub
        # category weights, 32 each, in two halves: the features' (wa) and their complements' (wb)
        self.wa: list[list[float]] = []
        self.wb: list[list[float]] = []
        self.w_sum: list[float] = []  # |w|_1, cached (0.001 when 0, as the reference)
        self.wa_sum: list[float] = []  # |wa|_1
        self.key: list[tuple[float, float]] = []  # (w[newest], w[newest complement])
        # per block of features (_BLOCKS): the sum of the box's lower corner (wa) and of its upper one (1 - wb)
        self.bb: list[tuple[float, ...]] = []
        # key -> [member category indices, largest |w|_1 a member has had]
        self.groups: dict[tuple[float, float], list[Any]] = {}
        self.clusters = 0
        self.max_categories = max_categories
        self.full = False

    def _group(self, j: int, key: tuple[float, float], ws: float) -> None:
        g = self.groups.get(key)
        if g is None:
            self.groups[key] = [[j], ws]
        else:
            g[0].append(j)
            g[1] = max(g[1], ws)

    def _add(self, x: list[float]) -> None:
        if self.max_categories is not None and len(self.wa) >= self.max_categories:
            self.full = True
            return
        j = len(self.wa)
        half = len(x) >> 1
        wa = x[:half]
        sa = _sum16(wa)
        self.wa.append(wa)
        self.wb.append(x[half:])
        self.wa_sum.append(sa)
        s = _sum16(x[half:], sa)  # the sequential sum of all 32
        ws = s if s != 0 else 0.001
        self.w_sum.append(ws)
        key = (x[_NEWEST], x[-1])
        self.key.append(key)
        self.bb.append(_block_sums(wa, x[half:]))
        self._group(j, key, ws)

    def weights(self, j: int) -> list[float]:
        """Category ``j``'s 32 weights."""
        return [*self.wa[j], *self.wb[j]]

    def _commit(self, j: int, xa: list[float], xb: list[float], s: float) -> None:
        """Fast commit: category ``j`` learns ``min(x, w)`` (``x = xa + xb``; ``s``: the sum of that)."""
        wa, wb = self.wa[j], self.wb[j]
        if s == self.w_sum[j] and _within(wa, xa) and _within(wb, xb):
            return  # x within the category's box: nothing changes
        self.wa[j] = wa = _min_list(xa, wa)
        self.wb[j] = wb = _min_list(xb, wb)
        self.wa_sum[j] = _sum16(wa)
        self.bb[j] = _block_sums(wa, wb)
        ws = self.w_sum[j] = s if s != 0 else 0.001
        key = (wa[-1], wb[-1])
        old = self.key[j]
        if key != old:
            members = self.groups[old][0]
            members.remove(j)
            if not members:
                del self.groups[old]
            self.key[j] = key
            self._group(j, key, ws)

    def train(self, f: Sequence[float], learning: bool = True) -> tuple[bool, float, float]:
        """Present one feature vector: ``(mismatch, activation, energy similarity)``.

        ``mismatch`` is the reference's ``cat == -1``: a new cluster was created (or, when
        not learning, always).
        """
        x = [*f, *[1 - v for v in f]]
        if not self.wa:  # the first sample only creates the all-ones category
            self._add([1.0] * len(x))
            self.clusters = 1
            return False, 0.0, 0.0
        groups = self.groups
        if learning and (0.0, 0.0) in groups:
            # A category with both energy weights 0 has es = 0/0 = NaN: sortperm(rev=true) puts
            # it first, every vigilance test fails on it and the reference's loop stops there.
            self.clusters += 1
            self._add(x)
            return True, 0.0, 0.0
        xe0 = x[_NEWEST]
        xe1 = x[-1]
        # Two passes: first the groups whose interval holds the newest value (es = 1 exactly, no
        # energy shortfall, bound 1), then the others, ranked by bound, among those that the
        # cut reached in the first pass leaves in play. (The outcome does not depend on the
        # order in which categories are visited: ties go to the lower index either way.)
        ranked: list[tuple[float, float, float, float, list[int]]] = []
        outside = []
        for key, g in groups.items():
            a, b = key
            if xe0 >= a and xe1 >= b:
                if a + b != 0:  # (0/0, a NaN activation, when not learning: never the best)
                    ranked.append((1.0, 1.0, 0.0, b, g[0]))
            elif a + b != 0:  # (as above)
                outside.append((a, b, g))
        rho_ub = self.rho_ub
        wa = self.wa
        wb = self.wb
        wa_sum = self.wa_sum
        w_sum = self.w_sum
        half = len(f)
        xa = x[:half]
        xb = x[half:]
        best = -1
        best_m = 0.0
        best_e = 0.0
        resonant: list[tuple[int, float]] = []
        x1 = xa[0] + xa[1] + xa[2] + xa[3]
        x2 = xa[4] + xa[5] + xa[6] + xa[7]
        x3 = xa[8] + xa[9] + xa[10] + xa[11]
        x4 = xa[12] + xa[13] + xa[14]
        bb = self.bb
        for second in (False, True):
            if second:
                cut = best_m if best_m < rho_ub or not learning else rho_ub
                ranked = []
                for a, b, g in outside:
                    we = a + b
                    ne = (xe0 if xe0 < a else a) + (xe1 if xe1 < b else b)
                    es = ne / we
                    short = we - ne
                    fsb = 1 - short / g[1]
                    bound = fsb * fsb * fsb * (es * es) if fsb > 0 else 0.0
                    if bound + 1e-9 >= cut:
                        ranked.append((bound, es, short, b, g[0]))
                ranked.sort(key=_first, reverse=True)
            for bound, es, short, key_b, members in ranked:
                cut = best_m if best_m < rho_ub or not learning else rho_ub
                if bound + 1e-9 < cut:
                    break
                es2 = es * es
                top = xe1 if xe1 < key_b else key_b  # the complement's energy term (in wb)
                lim = _shortfall_limit(cut, es2)
                for j in members:
                    ws = w_sum[j]
                    # the shortfall per block: x's block sum below the box's lower corner's (in wa),
                    # or above its upper corner's (in wb); each a lower bound of that half's shortfall
                    l1, u1, l2, u2, l3, u3, l4, u4 = bb[j]
                    up = (
                        (x1 - u1 if x1 > u1 else 0.0)
                        + (x2 - u2 if x2 > u2 else 0.0)
                        + (x3 - u3 if x3 > u3 else 0.0)
                        + (x4 - u4 if x4 > u4 else 0.0)
                    )
                    sh = (
                        short
                        + up
                        + (l1 - x1 if l1 > x1 else 0.0)
                        + (l2 - x2 if l2 > x2 else 0.0)
                        + (l3 - x3 if l3 > x3 else 0.0)
                        + (l4 - x4 if l4 > x4 else 0.0)
                    )
                    if sh > ws * lim:
                        continue
                    wj = wa[j]
                    # (a shortfall in some block rules the box out; the sums below give the same outcome anyway)
                    if sh == 0.0 and _within(wj, xa) and _within(wb[j], xb) and (ws != 0.001 or wa_sum[j] != 0):
                        # x within the category's box: min(x, w) = w, so fs = |w| / |w| = 1 exactly
                        # (the cached |w| is the same sequential sum) and learning changes nothing
                        if es2 > best_m or (es2 == best_m and es2 > 0 and j < best):
                            best_m, best, best_e = es2, j, es
                            cut = best_m if best_m < rho_ub or not learning else rho_ub
                            lim = _shortfall_limit(cut, es2)
                        continue
                    # the features' half first: its shortfall (plus the complement energy's) bounds fs
                    num_a = _min_sum(xa, wj)
                    if (wa_sum[j] - num_a) + (key_b - top) + up > ws * lim:
                        continue
                    num = _min_sum(xb, wb[j], num_a)  # the sequential sum over all 32
                    fs = num / ws
                    m = fs * fs * fs * es2
                    if m > best_m or (m == best_m and m > 0 and j < best):
                        best_m, best, best_e = m, j, es
                        cut = best_m if best_m < rho_ub or not learning else rho_ub
                        lim = _shortfall_limit(cut, es2)
                    if learning and m >= rho_ub:
                        resonant.append((j, num))
        if not learning:
            return True, best_m, best_e
        # The reference decides on the first category in its order: the best one (category 1,
        # activation 0, when every activation is 0).
        mismatch = False
        if best_m >= rho_ub:
            for j, num in resonant:
                self._commit(j, xa, xb, num)
        elif best_m >= self.rho_lb:
            self._add(x)
        else:
            mismatch = True
            self.clusters += 1
            self._add(x)
        return mismatch, best_m, best_e

    def train_batch(self, samples: Sequence[Sequence[float]]) -> list[float]:
        """Train on each sample in turn; the activations (``A``), the first one 0 (it only initialises)."""
        return [self.train(f)[1] for f in samples]


class ArtimeModel:
    """ARTime's state machine for one series with a fixed range ``[dmin, dmax]`` (see the module docstring)."""

    def __init__(self, dmin: float, dmax: float, probationary_period: int, max_categories: int | None = None) -> None:
        self.dmin = dmin
        self.dmax = dmax
        pp = probationary_period - probationary_period % 2
        self.probationary_period = pp
        self.sstep = max(1, pp // (_WINDOW * _WINDOWS_PER_PB))
        self.trend_window = pp // self.sstep
        tw = self.trend_window
        self.art = _Art(max_categories=max_categories)
        self.i = 1
        self.dsi = 1
        self.ds_window: deque[float] = deque([0.0] * self.sstep, maxlen=self.sstep)
        self.ds_moving_average = 0.0
        self.medbin = [0] * (_NLEVELS + 1)
        self.medlevel = 0
        self.belowmed = 0
        self.abovemed = 0
        self.f_window: deque[float] = deque([0.0] * _WINDOW, maxlen=_WINDOW)
        self.warmup_features: list[list[float]] | None = []
        self.last_anomaly_i = 0
        self.last_anomaly_sim = 0.0
        self.last_rho_update_i = 0
        self.mask_after_cat = False
        self.no_new_cat_count = 0
        # The activations of past anomalies (the last one lowered while it is masked): their
        # sum but the last, how many, and the last (the reference keeps them all in a list).
        self.hist_sum = 0.0
        self.hist_n = 0
        self.hist_last = 0.0
        self.sim_diff_window: deque[float] = deque([0.0] * (tw + 1), maxlen=tw + 1)
        self.sim_window: deque[float] = deque([1.0] * (tw // 2 + 1), maxlen=tw // 2 + 1)
        self.ub_mean = 0.0
        self.ub_n = 0

    @property
    def categories(self) -> int:
        """Categories held by the ART (at most ``max_categories``)."""
        return len(self.art.wa)

    @property
    def warm(self) -> bool:
        """Whether the warm-up (the probationary period) is over: scores can be non-zero."""
        return self.warmup_features is None

    def process(self, value: float) -> float:
        """One value in, its anomaly score out (0.0 on all but ARTime's anomalies)."""
        i = self.i
        self.i = i + 1
        dsw = self.ds_window
        dsw.append(value)
        if i % self.sstep:
            return 0.0
        n = len(dsw)
        if n == 1:
            mean = dsw[0]
        else:
            s = dsw[0] + dsw[1]
            for k in range(2, n):
                s += dsw[k]
            mean = s / n
        hi = max(dsw)
        lo = min(dsw)
        dsi = self.dsi
        if dsi == 1:
            self.ds_moving_average = mean
        avg = self.ds_moving_average = (self.ds_moving_average + mean) / 2
        ds = hi
        if abs(hi - avg) < abs(lo - avg):
            ds = lo
        if abs(ds - mean) < 0.1 * mean:
            ds = mean
        ds = ds - self.dmin
        if (self.dmax - self.dmin) != 0:
            ds = ds / (self.dmax - self.dmin)
        level = self._level(ds)
        ds = level / _NLEVELS
        med = self._median(level, dsi) / _NLEVELS
        if abs(ds - med) < _CHOMP:
            ds = med
        fw = self.f_window
        fw.append(ds)
        if dsi >= _WINDOW:
            feats = _minmax_scale(_haar(_minmax_scale(list(fw))))
            feats.extend(fw)
        else:
            feats = [0.0] * _DIM
        self.dsi = dsi + 1
        return self._features(feats, dsi)

    def _level(self, ds: float) -> int:
        # NAB's range holds every value, so this is in [0, 80] there; a range learnt online
        # may not: beyond it, the nearest limit.
        ds = 0.0 if math.isnan(ds) else min(max(ds, -1.0), 2.0)  # also keeps round() finite
        level = round(ds * _NLEVELS)
        return 0 if level < 0 else (_NLEVELS if level > _NLEVELS else level)

    def _median(self, level: int, dsi: int) -> int:
        """ARTime's running median of the levels ("not strictly a running median but close enough")."""
        medbin = self.medbin
        medbin[level] += 1
        medpos = dsi // 2
        if dsi == 1:
            self.medlevel = level
        if self.medlevel > level:
            self.belowmed += 1
        elif self.medlevel < level:
            self.abovemed += 1
        if medpos < self.abovemed:
            self.belowmed += medbin[self.medlevel]
            self.medlevel += 1
            while medbin[self.medlevel] == 0:
                self.medlevel += 1
            self.abovemed -= medbin[self.medlevel]
        elif medpos < self.belowmed:
            self.abovemed += medbin[self.medlevel]
            self.medlevel -= 1
            while medbin[self.medlevel] == 0:
                self.medlevel -= 1
            self.belowmed -= medbin[self.medlevel]
        return self.medlevel

    def _features(self, f: list[float], i: int) -> float:
        buf = self.warmup_features
        if buf is None:
            return self._detect(f, i)
        buf.append(f)
        if i == self.trend_window:
            self.warmup_features = None
            rho = self._initial_rho(buf[_WINDOW - 1 : self.trend_window])
            self.art.rho_lb = self.art.rho_ub = rho
            for fi, ff in enumerate(buf, 1):
                self._detect(ff, fi)
        return 0.0

    def _initial_rho(self, xs: list[list[float]]) -> float:
        n = len(xs)
        sim = [[1.0] * n for _ in range(n)]
        norms = [math.sqrt(_dot16(x, x)) for x in xs]  # the sequential sum of squares
        for i in range(n):
            row = sim[i]
            xi = xs[i]
            ni = norms[i]
            for j in range(i):
                s = _similarity(xi, xs[j], ni, norms[j])
                row[j] = s
                sim[j][i] = s
        sums = [julia_sum(col) for col in sim]  # symmetric: row k is column k
        order = sorted(range(n), key=lambda k: sums[k])  # stable: ties by index, as sortperm
        art = _Art(_INITIAL_RHO, _INITIAL_RHO)
        a = art.train_batch([xs[k] for k in order])
        tail = a[self.trend_window // 2 - 1 :]
        return julia_sum(tail) / len(tail)

    def _detect(self, f: list[float], i: int) -> float:
        tw = self.trend_window
        since = i - self.last_anomaly_i
        update_after_anomaly = since == _MASK
        update_for_trend = (i - self.last_rho_update_i) >= tw // 2
        mask_after_anomaly = since <= _MASK
        if i > tw + _MASK and self.mask_after_cat and self.no_new_cat_count >= _MASK:
            self.mask_after_cat = False
        art = self.art
        if i < _WINDOW:
            _, a, ae = art.train(f, learning=False)
            mismatch = True
        else:
            mismatch, a, ae = art.train(f)
        self.no_new_cat_count = 0 if mismatch else self.no_new_cat_count + 1
        self.ub_n += 1
        self.ub_mean = self.ub_mean + (1 / self.ub_n) * (a - self.ub_mean)
        self.sim_window.append(a)
        self.sim_diff_window.append(art.rho_ub - a)
        if since < _MASK and self.hist_n and a < self.hist_last:
            self.hist_last = a
        masking = self.mask_after_cat or mask_after_anomaly
        below_last = a < self.last_anomaly_sim * (0.90 if mask_after_anomaly else 0.70)
        anomaly = 0.0
        if i > tw and mismatch and (not masking or below_last):
            anomaly = self._confidence(a, ae)
            if self.hist_n:
                self.hist_sum += self.hist_last
            self.hist_n += 1
            self.hist_last = a
            self.last_anomaly_sim = a
            self.last_anomaly_i = i
        self.mask_after_cat = mismatch or self.mask_after_cat
        if i > tw and (update_after_anomaly or update_for_trend):
            self._update_rho(i)
        return anomaly

    def _update_rho(self, i: int) -> None:
        art = self.art
        tw = self.trend_window
        min_sim = min(self.sim_window)
        new_ub = min(_UB_CAP, self.ub_mean)
        prev_lb = art.rho_lb
        if prev_lb <= min_sim:
            new_lb = prev_lb + (min_sim - prev_lb) * 0.19
        else:
            decr = 0.0
            if i > tw * 2:
                below = [min(0.37, d) for d in self.sim_diff_window if d > 0.05]
                if below:
                    decr = julia_sum(below) / len(below)
            decr = max(0.01, decr)
            new_lb = prev_lb - decr / 2
            if self.hist_n:
                new_lb = max((self.hist_sum + self.hist_last) / self.hist_n, new_lb)
        art.rho_lb = min(new_ub, new_lb)
        art.rho_ub = new_ub
        self.last_rho_update_i = i
        self.mask_after_cat = True

    def _confidence(self, sim: float, energy: float) -> float:
        sim = min(0.999, sim)
        d = 1 - sim
        ub = (d - (1 - self.art.rho_ub)) / d
        lb = (d - (1 - self.art.rho_lb)) / d
        s = (ub * 0.35 + lb * 0.65) + (1.0 - energy) * 1.5
        s = min(1.0, s)
        return round(s * 1e6) / 1e6


class ArtimeDetector(_Base):
    """ARTime (M. Hampton, 2021), the top of NAB's scoreboard, as NAB ran it, or with its range learnt online.

    The model is :class:`ArtimeModel` (see the module docstring for the algorithm and the
    source it reproduces). Each value is downsampled, discretised over a range, turned into
    wavelet and level features and matched against the categories of a dual-vigilance fuzzy
    ART; a value that matches no category well enough (a new cluster), outside the masking
    that follows an anomaly or a new category, scores a confidence in ``(0, 1]``; every
    other value scores 0. Scores are 0 during the probationary period (``probation``
    values), which the model learns from in one batch at its end.

    The range: with ``min_value`` and ``max_value`` (what NAB hands the detector: the whole
    file's extremes, known in advance) and ``probation`` set as NAB does
    (:func:`nab_probationary_period` of the file's length), the output is NAB's ``ARTime``
    row for row. Without them, the shipped mode, the range is learnt online: the first
    ``probation`` values are kept, and at the last of them a model over their extremes
    replays them (what the reference would have done given that range; its scores are 0
    during that period anyway) and carries on. When a later value falls outside the range
    learnt so far, the detector becomes what the reference would be given the range known
    so far: a new model over the widened range (the extremes seen so far) replays the
    retained values (the last ``history`` of them, default ``4 * probation``) and scores the
    value as the last of them (*a rebuild*). The replay's cost is bounded by ``history``, and
    rebuilds are at least ``probation`` values apart (so a trending series replays at most
    ``history / probation`` values per value it feeds, on average), and at most
    :data:`REBUILDS_PER_COLLECTION` run in one collection across the process (values within
    a second of each other); until a rebuild is due and its turn comes, values beyond the
    range count as its nearest limit (level 0 or 80), and the rebuild, once it runs, takes
    every extreme seen meanwhile. ``history=0`` keeps the first range for
    good (every later value beyond it clamped). A warm-up of one repeated value leaves a
    range of width 0, which the next different value widens. A rule can also give one
    limit (for example ``min_value=0`` for a latency): the other is learnt, and values
    beyond the given one are clamped.

    ``is_anomaly`` stays true for ``hold`` values from a value scoring ``>= threshold``
    (default: the 12 downsampled steps ARTime masks after an anomaly, ``12 * sstep``
    values), since the score is 0 on the values right after one and an alert rule's
    ``for`` counts consecutive anomalous evaluations. ``threshold`` (default ``1e-6``):
    any anomaly ARTime reports, its own decision; ``score`` is the reference's.

    ``confirm`` (a detector as a rules file writes it, for example ``{"kind": "zscore",
    "window": 120, "direction": "up", "threshold": 0.9973}``) gates the verdict, not the
    score: ``is_anomaly`` becomes true while ARTime's ``hold`` lasts *and* the confirming
    detector calls its latest input anomalous, and then stays true as long as the confirming
    detector does (ARTime says when a departure starts, the confirmation how long it
    lasts: a sustained incident is one alert, not one per ARTime flag). ARTime flags what is new in a series' shape,
    also on steady noise (about ten times a day on Gaussian noise at one value every 5 s);
    the gate asks that the series also be far from its recent level before a rule may
    alert. ``confirm_on`` says what the confirming detector is fed: ``"value"`` (default),
    every value; ``"step"``, once per ARTime downsampling step (its ``sstep`` values,
    aligned with ARTime's steps), the median of that step's values, so that one outlier
    cannot confirm a flag and a departure that lasts a step can; its verdict stands until
    the next step. ``score`` stays ARTime's own.

    Memory: at most ``max_categories`` ART categories (32 floats each; ``None``, as in NAB's
    run, means unbounded), plus the ``probation`` values and feature vectors kept during
    the warm-up, and in the online mode at most ``2 * history`` raw values (8 bytes each).
    Defaults: the reference's hyperparameters (window 8, 80 levels, 13 windows per
    probationary period, initial vigilance 0.8), ``probation=750``, NAB's probationary
    period for series of 5000 points or more, and ``history = 4 * probation`` (3000 values:
    24 kB, and a rebuild replays them in 20-30 ms), set from that cost. None was chosen by
    scoring.

    Reference: M. Hampton, ARTimeNAB.jl (github.com/markNZed/ARTimeNAB.jl, AGPL-3.0), as run
    by NAB's ``nab/detectors/ARTime`` (Numenta Anomaly Benchmark, 74.9 standard score on
    the full corpus).

    >>> d = ArtimeDetector()
    >>> flagged = []
    >>> for i in range(3000):
    ...     x = float(i % 48) + (30.0 if 2500 <= i < 2510 else 0.0)  # a sawtooth, then a jump
    ...     if d.update(600.0 * i, x).score > 0:
    ...         flagged.append(i)
    >>> flagged
    [2512]
    """

    def __init__(
        self,
        *,
        min_value: float | None = None,
        max_value: float | None = None,
        probation: int = 750,
        threshold: float = 1e-6,
        max_categories: int | None = 1000,
        hold: int | None = None,
        confirm: Mapping[str, Any] | None = None,
        confirm_on: str = "value",
        history: int | None = None,
    ) -> None:
        super().__init__(threshold)
        if confirm is not None and (not isinstance(confirm, Mapping) or not isinstance(confirm.get("kind"), str)):
            raise ValueError(f"confirm must be a mapping with a 'kind', got {confirm!r}")
        lo = None if min_value is None else _real(min_value)
        hi = None if max_value is None else _real(max_value)
        if (min_value is not None and lo is None) or (max_value is not None and hi is None):
            raise ValueError(f"min_value and max_value must be finite numbers, got {min_value!r}, {max_value!r}")
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_value {lo} is above max_value {hi}")
        self.min_value = lo
        self.max_value = hi
        self.probation = _check_window(probation, "probation", 2 * _WINDOW)
        self.max_categories = None if max_categories is None else _check_window(max_categories, "max_categories", 2)
        sstep = max(1, (self.probation - self.probation % 2) // (_WINDOW * _WINDOWS_PER_PB))
        self.hold = _MASK * sstep if hold is None else _check_window(hold, "hold", 1)
        self._sstep = sstep
        self.history = 4 * self.probation if history is None else _check_window(history, "history", 0)
        if 0 < self.history < self.probation:
            raise ValueError(f"history must be 0 or at least probation ({self.probation}), got {history}")
        self.confirm: Detector | None = None
        if confirm is not None:
            from otel_eda.anomaly.detectors.factory import make_detector  # (the factory imports this module)

            self.confirm = make_detector(**confirm)
        if confirm_on not in ("value", "step"):
            raise ValueError(f"confirm_on must be 'value' or 'step', got {confirm_on!r}")
        self.confirm_on = confirm_on
        self._held = 0
        self._reset()

    def _reset(self) -> None:
        self._held = 0
        self._confirmed = False
        self._step_values: list[float] = []  # the current downsampling step's values (confirm_on="step")
        self._lo = math.inf if self.min_value is None else self.min_value
        self._hi = -math.inf if self.max_value is None else self.max_value
        # the online mode's retained values (global index of the first), the extremes seen,
        # how many values were fed, and from which one a rebuild may run
        self._hist = array("d")
        self._hist_start = 0
        self._seen_lo = self._lo
        self._seen_hi = self._hi
        self._n = 0
        self._next_rebuild = 0
        self.rebuilds = 0
        if self.min_value is not None and self.max_value is not None:
            self._learning: list[float] | None = None
            self._model: ArtimeModel | None = self._new_model()
        else:
            self._learning = []
            self._model = None

    def _new_model(self) -> ArtimeModel:
        return ArtimeModel(self._lo, self._hi, self.probation, self.max_categories)

    @property
    def is_anomaly(self) -> bool:
        """From a value scoring ``>= threshold``, for ``hold`` values (the score rests at 0); ``confirm``: see there."""
        if self.confirm is None:
            return self._held > 0
        return self._confirmed

    @property
    def learning(self) -> bool:
        """Whether the range is still being learnt (no model yet: scores are 0)."""
        return self._learning is not None

    @property
    def warm(self) -> bool:
        """Whether the probationary period is over (scores can be non-zero)."""
        return self._model is not None and self._model.warm

    @property
    def categories(self) -> int:
        """ART categories held (at most ``max_categories``)."""
        return 0 if self._model is None else self._model.categories

    def _step(self, t: float, x: float) -> float:
        confirm = self.confirm
        if confirm is not None:
            if self.confirm_on == "value":
                confirm.update(t, x)
            else:
                step = self._step_values
                step.append(x)
                if len(step) == self._sstep:  # (values 0 .. sstep - 1, then the next: ARTime's steps)
                    step.sort()
                    confirm.update(t, step[len(step) // 2])
                    step.clear()
        n = self._n
        self._n = n + 1
        model = self._model
        if model is not None:
            online = self.history and self._learning_range()
            score = self._online(model, t, x, n) if online else model.process(x)
        else:
            learning = self._learning
            assert learning is not None
            learning.append(x)
            if self.min_value is None and x < self._lo:
                self._lo = x
            if self.max_value is None and x > self._hi:
                self._hi = x
            score = 0.0
            if len(learning) >= self.probation:
                self._learning = None
                if self._lo > self._hi:  # one limit given, every value beyond it
                    self._lo = self._hi = x
                self._seen_lo, self._seen_hi = self._lo, self._hi
                self._model = model = self._new_model()
                for v in learning:
                    score = model.process(v)
                if self.history:
                    self._hist = array("d", learning)
                    self._next_rebuild = n + 1 + self.probation
        if score >= self.threshold and score > 0:
            self._held = self.hold
        elif self._held:
            self._held -= 1
        if confirm is not None:
            self._confirmed = confirm.is_anomaly and (self._held > 0 or self._confirmed)
        return score

    def _learning_range(self) -> bool:
        return self.min_value is None or self.max_value is None

    def _online(self, model: ArtimeModel, t: float, x: float, n: int) -> float:
        """One value of the online mode after the warm-up: scored by the model, or by a rebuild."""
        hist = self._hist
        hist.append(x)
        if len(hist) > 2 * self.history:
            self._trim()
        if self.min_value is None and x < self._seen_lo:
            self._seen_lo = x
        if self.max_value is None and x > self._seen_hi:
            self._seen_hi = x
        if (self._seen_lo < self._lo or self._seen_hi > self._hi) and n >= self._next_rebuild and _may_rebuild(t):
            return self._rebuild(n)
        return model.process(x)

    def _trim(self) -> None:
        """Keep the last ``history`` values or a few more: the first kept one starts a downsampling step."""
        hist = self._hist
        drop = len(hist) - self.history
        drop += (-(self._hist_start + drop)) % self._sstep
        del hist[:drop]
        self._hist_start += drop

    def _rebuild(self, n: int) -> float:
        """A model over the range seen so far replays the retained values (the last one is ``n``'s): its score."""
        hist = self._hist
        start = max(0, len(hist) - self.history)
        start += (-(self._hist_start + start)) % self._sstep  # (the reference's downsampling phase)
        self._lo, self._hi = self._seen_lo, self._seen_hi
        self._model = model = self._new_model()
        score = 0.0
        for k in range(start, len(hist)):
            score = model.process(hist[k])
        self._next_rebuild = n + self.probation
        self.rebuilds += 1
        return score
