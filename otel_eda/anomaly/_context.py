"""The contextual anomaly model behind :class:`~otel_eda.anomaly.detectors.ContextDetector`.

A streaming sequence memory in the style of the Contextual Anomaly Detector (CAD OSE) of
M. Smirnov and Y. Kotikov, written here from its published description:

- Each value is quantised into one of ``2**bits`` levels over a range learnt from the first
  points; the level's binary digits become *facts* (one per digit: position and bit), so
  neighbouring levels share facts. Values beyond the learnt range get further levels
  (more digits, and a sign), up to ``±max_level``.
- A *context* is a pair of fact sets: a left semi-context (what was true one step
  before: the previous value's facts plus the "neurons", i.e. the ids of the contexts
  that were active then) and a right semi-context (facts of the current value). Every
  step stores the whole observed transition as a *zero-level* context.
- Contexts whose left side is fully present in the previous state are *selected* (they
  predict); those whose right side is then fully present in the current value are
  *active* (their prediction came true). Active contexts, most often confirmed first,
  become the neurons of the next state, so the state carries the recent history.
- When the observed transition is new, the intersections of the current state with
  stored zero-level contexts that partly match (at most ``max_left`` left facts) are
  stored too: generalisations that can match later variants of the pattern.
- The raw anomaly of a step is ``(1 - active / selected + new / candidates) / 2``: the
  share of predictions that failed, plus the share of candidate contexts never seen
  before (0 when the transition itself was known).

Memory is bounded: at most ``max_contexts`` contexts are kept; beyond that the least
recently confirmed 10% are forgotten (with their semi-contexts once unused). The cost of
a step is proportional to the number of stored semi-contexts that share a fact with the
previous state when the transition is new, and to the number that fully match it
otherwise (found through one index entry per semi-context), so O(max_contexts) in the
worst case and far less on regular series.

Reference: M. Smirnov, Y. Kotikov, "Contextual Anomaly Detector" (CAD OSE, 2016), the
Numenta Anomaly Benchmark's ``contextOSE`` entry; A. Lavin, S. Ahmad, "Evaluating
real-time anomaly detection algorithms - the Numenta Anomaly Benchmark", ICMLA 2015.
"""

from __future__ import annotations

import math

__all__ = ["ContextModel"]

_EMPTY: frozenset[int] = frozenset()
_POSITIVE_BASE = -1_000  # sensor facts are negative ints; neurons are context ids >= 0
_NEGATIVE_BASE = -2_000


class _Left:
    """A left semi-context: sensor facts, neuron facts, and its contexts by right side."""

    __slots__ = ("key", "n", "neur", "rights", "sens", "sid")

    def __init__(self, sid: int, sens: frozenset[int], neur: frozenset[int]) -> None:
        self.sid = sid
        self.sens = sens
        self.neur = neur
        self.n = len(sens) + len(neur)
        self.key = (sens, neur)
        self.rights: dict[frozenset[int], int] = {}


class _Context:
    __slots__ = ("count", "last", "left", "right", "zero")

    def __init__(self, left: _Left, right: frozenset[int], zero: bool, now: int) -> None:
        self.count = 0
        self.zero = zero
        self.last = now
        self.left = left
        self.right = right


# (left semi-context, crossed fact count, crossed sensor facts or None when fully matched)
_Crossing = tuple[_Left, int, frozenset[int] | None]


class ContextModel:
    """Contextual sequence memory over quantised values; :meth:`learn` returns the raw anomaly.

    ``bits``: quantisation levels ``2**bits`` over the learnt range. ``warmup``: points
    used to learn the range (``learn`` returns 0.0 until then). ``margin``: the range is
    widened by this fraction of its width on each side. ``max_active``: neurons carried
    to the next step. ``max_left``: largest left side of a generalised context.
    ``max_contexts``: memory bound.
    """

    def __init__(
        self,
        *,
        bits: int = 3,
        warmup: int = 600,
        margin: float = 0.1,
        max_active: int = 15,
        max_left: int = 7,
        max_contexts: int = 2000,
        max_level: int = 64,
    ) -> None:
        self.bits = bits
        self.warmup = warmup
        self.margin = margin
        self.max_active = max_active
        self.max_left = max_left
        self.max_contexts = max_contexts
        self.max_level = max_level
        self._seen = 0
        self._lo = math.inf
        self._hi = -math.inf
        self._step = 0.0  # width of one level; 0.0 while the range is being learnt
        self._lefts: dict[tuple[frozenset[int], frozenset[int]], _Left] = {}
        self._postings: dict[int, dict[int, _Left]] = {}  # neuron -> left sides that contain it
        self._anchors: dict[int, dict[int, _Left]] = {}  # neuron -> left sides indexed under it (one each)
        self._sensor_only: dict[int, _Left] = {}  # left sides without neurons
        self._contexts: dict[int, _Context] = {}
        self._next_cid = 0
        self._next_sid = 0
        self._now = 0
        self._sens: frozenset[int] = _EMPTY
        self._neur: frozenset[int] = _EMPTY
        self._started = False

    # -- quantisation ----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether the range is learnt (the model scores from then on)."""
        return self._step > 0.0

    @property
    def size(self) -> int:
        """Contexts stored (at most ``max_contexts``)."""
        return len(self._contexts)

    def _learn_range(self, x: float) -> None:
        self._seen += 1
        self._lo = min(self._lo, x)
        self._hi = max(self._hi, x)
        if self._seen < self.warmup:
            return
        width = self._hi - self._lo
        if not width > 0.0:  # flat so far: any later change is out of range
            width = abs(self._hi) * 0.1 or 1.0
        pad = width * self.margin
        self._lo -= pad
        self._step = (width + 2.0 * pad) / ((1 << self.bits) - 1)
        if not (math.isfinite(self._lo) and math.isfinite(self._step) and self._step > 0.0):
            self._step = 0.0
            self._seen = 0
            self._lo, self._hi = math.inf, -math.inf

    def facts(self, x: float) -> frozenset[int]:
        """Sensor facts of ``x``: one per binary digit of its level (``bits`` digits at least)."""
        level = (x - self._lo) / self._step
        cap = self.max_level
        lev = math.floor(cap if level > cap else -cap if level < -cap else level)
        base = _POSITIVE_BASE
        if lev < 0:
            lev, base = -lev, _NEGATIVE_BASE
        out = []
        i = 0
        while i < self.bits or lev >> i:
            out.append(base + 2 * i + ((lev >> i) & 1))
            i += 1
        return frozenset(out)

    # -- memory ----------------------------------------------------------------------

    def _left(self, sens: frozenset[int], neur: frozenset[int]) -> _Left:
        left = self._lefts.get((sens, neur))
        if left is None:
            left = _Left(self._next_sid, sens, neur)
            self._next_sid += 1
            self._lefts[left.key] = left
            if neur:
                postings, anchors = self._postings, self._anchors
                for f in neur:
                    postings.setdefault(f, {})[left.sid] = left
                anchor = min(neur, key=lambda f: (len(anchors.get(f, ())), f))
                anchors.setdefault(anchor, {})[left.sid] = left
            else:
                self._sensor_only[left.sid] = left
        return left

    def _add(self, sens: frozenset[int], neur: frozenset[int], right: frozenset[int], zero: bool) -> tuple[int, bool]:
        left = self._left(sens, neur)
        cid = left.rights.get(right)
        if cid is None:
            cid = self._next_cid
            self._next_cid += 1
            left.rights[right] = cid
            self._contexts[cid] = _Context(left, right, zero, self._now)
            return cid, True
        if zero:
            self._contexts[cid].zero = True
        return cid, False

    def _forget(self) -> None:
        """Drop the least recently confirmed contexts down to 90% of ``max_contexts``."""
        n_drop = len(self._contexts) - (self.max_contexts * 9) // 10
        if n_drop <= 0:
            return
        oldest = sorted(self._contexts.items(), key=lambda kv: (kv[1].last, kv[0]))[:n_drop]
        emptied: dict[int, _Left] = {}
        for cid, ctx in oldest:
            left = ctx.left
            del left.rights[ctx.right]
            del self._contexts[cid]
            if not left.rights:
                emptied[left.sid] = left
        for left in emptied.values():
            del self._lefts[left.key]
            if not left.neur:
                del self._sensor_only[left.sid]
                continue
            for index in (self._postings, self._anchors):
                for f in left.neur:
                    entries = index.get(f)
                    if entries is not None and entries.pop(left.sid, None) is not None and not entries:
                        del index[f]

    def _crossings(self, partial: bool) -> list[_Crossing]:
        """Left sides that share facts with the previous state (all, or only fully matched)."""
        sens, neur = self._sens, self._neur
        out: list[_Crossing] = []
        if not partial:
            for f in neur:
                anchored = self._anchors.get(f)
                if anchored:
                    for left in anchored.values():
                        if left.neur <= neur and left.sens <= sens:
                            out.append((left, left.n, None))
            for left in self._sensor_only.values():
                if left.sens <= sens:
                    out.append((left, left.n, None))
            return out
        hits: dict[int, int] = {}
        reached: dict[int, _Left] = {}
        for f in neur:
            posted = self._postings.get(f)
            if posted:
                for sid, left in posted.items():
                    hits[sid] = hits.get(sid, 0) + 1
                    reached[sid] = left
        for sid, left in reached.items():
            crossed = left.sens & sens
            out.append((left, hits[sid] + len(crossed), crossed))
        for left in self._sensor_only.values():
            crossed = left.sens & sens
            if crossed:
                out.append((left, len(crossed), crossed))
        return out

    # -- the step --------------------------------------------------------------------

    def learn(self, x: float) -> float:
        """Feed one value; return its raw anomaly in [0, 1] (0.0 while learning the range)."""
        if self._step <= 0.0:
            self._learn_range(x)
            return 0.0
        current = self.facts(x)
        self._now += 1
        now = self._now
        skip, is_new = -1, False  # skip: the context this step just created (it would predict itself)
        if self._started:
            skip, is_new = self._add(self._sens, self._neur, current, True)
            if not is_new:
                skip = -1
        contexts = self._contexts
        max_left = self.max_left
        prev_neur = self._neur
        active: list[tuple[int, int]] = []
        selected = 0
        candidates: dict[tuple[frozenset[int], frozenset[int], frozenset[int]], None] = {}
        for left, k, crossed in self._crossings(partial=is_new):
            learnable = is_new and k <= max_left
            if k == left.n:  # fully present in the previous state: its contexts predict
                for right, cid in left.rights.items():
                    if cid == skip:
                        continue
                    selected += 1
                    if right <= current:
                        ctx = contexts[cid]
                        ctx.count += 1
                        ctx.last = now
                        active.append((ctx.count, cid))
                    elif learnable and contexts[cid].zero:
                        matched = right & current
                        if matched:
                            candidates[(left.sens, left.neur, matched)] = None
            elif learnable and crossed is not None:  # partly present: generalise zero-level contexts
                for right, cid in left.rights.items():
                    if cid != skip and contexts[cid].zero:
                        matched = right & current
                        if matched:
                            candidates[(crossed, left.neur & prev_neur, matched)] = None
        if is_new:
            candidates.pop((self._sens, self._neur, current), None)
        n_candidates = len(candidates) + (1 if is_new else 0)
        added = 1 if is_new else 0
        for sens, neur, right in candidates:
            added += self._add(sens, neur, right, False)[1]
        active.sort()
        self._sens = current
        self._neur = frozenset(cid for _, cid in active[-self.max_active :])
        self._started = True
        if len(contexts) > self.max_contexts:
            self._forget()
        predicted = len(active) / selected if selected else 0.0
        novel = added / n_candidates if is_new and n_candidates else 0.0
        return (1.0 - predicted + novel) / 2.0
