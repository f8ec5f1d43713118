"""CAD OSE, the Contextual Anomaly Detector (Open Source Edition), reproduced step for step.

The model behind :class:`~otel_eda.anomaly.detectors.cad_ose.CadOseDetector`, written
here from the public reference implementation that produced the Numenta Anomaly
Benchmark's ``contextOSE`` results (M. Smirnov, 2016; NAB's
``nab/detectors/context_ose/cad_ose.py`` and ``context_operator.py``, Python 2). The goal
is the reference's output row for row, so the places where its output depends on
Python 2's object model are reproduced exactly:

- Contexts are ranked by ``(confirmations, hash(left facts), hash(right facts))`` when
  choosing the 15 "active neurons", where ``hash`` is CPython 2's 64-bit tuple hash of a
  tuple of ints (:func:`py2_tuple_hash`). Semi-contexts are also *identified* by that
  hash (two fact tuples with the same hash are one semi-context there, and here).
- New contexts get consecutive ids, and the order in which a step creates them follows
  the iteration order of a Python 2 ``dict`` with small int keys (right semi-context id
  to context id), which is not insertion order: :class:`Py2IntDict` keeps CPython 2.7's
  open-addressing table (8 slots, ``5 i + perturb + 1`` probing, growth to four times
  the used count at two-thirds full) and iterates by slot.
- ``newContextID`` is reset to ``False`` after each step and compared with ``!=`` to
  context ids: ``False == 0``, so context 0 never takes part in a step that stores no new
  zero-level context.
- ``(fact - 65536) / 2`` is Python 2 integer division; a quantised value of 0 encodes as
  ``bin(0).lstrip("0b")`` = ``""`` padded to ``"000"``.

What it computes (one step per value): the value is quantised into ``2**3`` levels over
``[min, max]``; the level's binary digits are the step's sensor facts. A context pairs a
left fact set (the previous step's sensor facts plus its "neurons", the ids of up to 15
contexts that were active then) with a right fact set (sensor facts). Each step stores the
observed transition as a zero-level context, updates the prediction record of the
contexts whose left side was fully present, activates those whose right side came true,
stores new generalised contexts from partial matches, and predicts the next facts. The
anomaly of a step is ``(1 - active / selected + new / candidates) / 2`` when some current
fact was not predicted (0 otherwise), and after a step scoring ``>= 0.75`` it returns 0
for ``rest_period`` steps.

Memory and cost grow with the contexts stored (the reference never forgets):
``max_contexts`` caps them. Once full, the model stores nothing more but scores every step
as the reference would with the same memory: a transition or generalised context not in
memory still counts as new (once per step), it is just not kept. Below the cap the output
is the reference's.
"""

from __future__ import annotations

from collections import Counter
from itertools import chain

__all__ = ["CadOseModel", "Py2IntDict", "py2_tuple_hash"]

_MASK64 = (1 << 64) - 1
_SIGN64 = 1 << 63
_NEURON_BASE = 2**31
_NOT_STORED = -(2**62)  # _store's answer for a new context when memory is full


def py2_tuple_hash(items: tuple[int, ...]) -> int:
    """CPython 2.7's ``hash`` of a tuple of (small, non-negative) ints, on a 64-bit build.

    >>> py2_tuple_hash(()), py2_tuple_hash((1, 2))  # Python 2.7 (and 3.7) print the same
    (3527539, 3713081631934410656)
    """
    x = 0x345678
    mult = 1000003
    n = len(items)
    for y in items:
        n -= 1
        x = ((x ^ y) * mult) & _MASK64
        mult += 82520 + n + n
    x = (x + 97531) & _MASK64
    if x & _SIGN64:
        x -= 1 << 64
    return -2 if x == -1 else x


class Py2IntDict:
    """A ``dict`` of non-negative int keys that iterates in CPython 2.7's slot order.

    Insert-only (``setdefault``), which is all CAD OSE does with these dicts.

    >>> d = Py2IntDict()
    >>> for k in (9, 1, 17):
    ...     _ = d.setdefault(k, k * 10)
    >>> [k for k, _ in d.items()]  # 9 takes slot 1, 1 probes to 7, 17 probes to 4
    [9, 17, 1]
    """

    __slots__ = ("_items", "_keys", "_mask", "_used", "_values")

    def __init__(self) -> None:
        self._mask = 7
        self._keys: list[int] = [-1] * 8
        self._values: list[int] = [0] * 8
        self._used = 0
        self._items: list[tuple[int, int]] | None = None  # cached: items change only on insertion

    def __len__(self) -> int:
        return self._used

    def _slot(self, key: int) -> int:
        mask = self._mask
        keys = self._keys
        i = key & mask
        k = keys[i]
        if k in (-1, key):
            return i
        perturb = key
        while True:
            i = (5 * i + perturb + 1) & _MASK64
            k = keys[i & mask]
            if k in (-1, key):
                return i & mask
            perturb >>= 5

    def get(self, key: int) -> int | None:
        """The value of ``key``, or None."""
        i = self._slot(key)
        return self._values[i] if self._keys[i] == key else None

    def setdefault(self, key: int, default: int) -> int:
        """The value of ``key``, inserting ``default`` first if it is missing."""
        i = self._slot(key)
        if self._keys[i] == key:
            return self._values[i]
        self._keys[i] = key
        self._values[i] = default
        self._used += 1
        self._items = None
        if self._used * 3 >= (self._mask + 1) * 2:  # no deletions: fill == used
            self._resize(4 * self._used)
        return default

    def _resize(self, minused: int) -> None:
        size = 8
        while size <= minused:
            size <<= 1
        old = [(k, v) for k, v in zip(self._keys, self._values, strict=True) if k != -1]
        self._mask = size - 1
        self._keys = [-1] * size
        self._values = [0] * size
        for k, v in old:
            i = self._slot(k)
            self._keys[i] = k
            self._values[i] = v

    def items(self) -> list[tuple[int, int]]:
        """``(key, value)`` pairs in slot order (the same list until the next insertion: do not modify)."""
        items = self._items
        if items is None:
            items = self._items = [(k, v) for k, v in zip(self._keys, self._values, strict=True) if k != -1]
        return items


class _Semi:
    """A semi-context: its facts (sorted) and, on the left side, its contexts by right side id."""

    __slots__ = ("facts", "lookup", "n", "rights")

    def __init__(self, facts: tuple[int, ...], left: bool) -> None:
        self.facts = facts
        self.n = len(facts)
        self.rights: Py2IntDict | None = Py2IntDict() if left else None
        self.lookup: dict[int, int] = {}  # the same pairs as ``rights``, for fast look-ups


class _Context:
    """A context: prediction record, right facts, zero-level flag, its sides' hashes."""

    __slots__ = ("active", "left_hash", "left_id", "right_hash", "zero")

    def __init__(self, left_id: int, zero: bool, left_hash: int, right_hash: int) -> None:
        self.left_id = left_id
        self.active = 0
        self.zero = zero
        self.left_hash = left_hash
        self.right_hash = right_hash


class CadOseModel:
    """CAD OSE over a fixed value range ``[min_value, max_value]``; :meth:`score` per value.

    ``rest_period``: steps after a raw score ``>= base_threshold`` during which the
    returned score is 0 (NAB passes its probationary period / 5). ``max_contexts``: stop
    storing contexts beyond this many (None: never, as the reference).
    """

    def __init__(
        self,
        min_value: float,
        max_value: float,
        *,
        rest_period: float = 30,
        base_threshold: float = 0.75,
        max_left: int = 7,
        max_active: int = 15,
        bits: int = 3,
        max_contexts: int | None = None,
    ) -> None:
        self.rest_period = int(rest_period)
        self.base_threshold = base_threshold
        self.max_left = max_left
        self.max_active = max_active
        self.bits = bits
        self.max_contexts = max_contexts
        self.max_bin = 2.0**bits - 1.0
        self.set_range(min_value, max_value)
        self._left_group: tuple[int, ...] = ()
        # fact -> ids of the semi-contexts holding it, per side (0: left, 1: right)
        self._facts: tuple[dict[int, list[int]], dict[int, list[int]]] = ({}, {})
        self._semi_ids: tuple[dict[int, int], dict[int, int]] = ({}, {})  # tuple hash -> id
        self._semis: tuple[list[_Semi], list[_Semi]] = ([], [])
        # The last crossing of each side: (semi-context id, facts of it present) in id order,
        # and the facts crossed (the reference keeps the crossed facts in each semi-context).
        self._crossed: tuple[list[tuple[int, int]], list[tuple[int, int]]] = ([], [])
        self._crossed_facts: tuple[frozenset[int], frozenset[int]] = (frozenset(), frozenset())
        self.contexts: list[_Context] = []
        self._new_context_id = 0  # the reference's False, which equals context id 0
        self._since_high = 0  # raw scores since the last one >= base_threshold (the first counts)
        self.full = False
        self._unstored: set[tuple[int, int]] = set()  # this step's new contexts not kept (full)

    @property
    def range(self) -> tuple[float, float]:
        """``(min_value, max_value)`` of the quantisation."""
        return self.min_value, self.max_value

    def set_range(self, min_value: float, max_value: float) -> None:
        """Quantise over ``[min_value, max_value]`` from now on."""
        self.min_value = float(min_value)
        self.max_value = float(max_value)
        full_range = self.max_value - self.min_value
        if full_range == 0.0:
            full_range = self.max_bin
        self.step_size = full_range / self.max_bin

    # -- the reference's getAnomalyScore ------------------------------------------------

    def sensor_facts(self, value: float) -> set[int]:
        """The facts encoding ``value``: one per binary digit of its level (position, bit)."""
        level = int((value - self.min_value) / self.step_size)
        digits = bin(level).lstrip("0b").rjust(self.bits, "0")
        return {i * 2 + (1 if c == "1" else 0) for i, c in enumerate(reversed(digits))}

    def score(self, value: float) -> float:
        """Learn ``value``; return its anomaly score in [0, 1] (0 during a rest period)."""
        selected_active, added_new = self._step(self.sensor_facts(value))
        current = (1.0 - selected_active + added_new) / 2.0
        # The reference returns 0 unless max(history[-rest_period:]) < base_threshold, where
        # history starts as [1.0] and gets every raw score: count the steps since a high one.
        quiet = self._since_high < self.rest_period or self.rest_period <= 0
        if current >= self.base_threshold:
            self._since_high = 0
        else:
            self._since_high += 1
        return 0.0 if quiet else current

    # -- the reference's step --------------------------------------------------------------

    def _step(self, facts: set[int]) -> tuple[float, float]:
        sens = tuple(sorted(facts))
        unique_candidates: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
        if self._left_group and sens:
            zero = (self._left_group, sens)
            unique_candidates.add(zero)
            new_zero = self._store_zero_level(zero)
        else:
            new_zero = False
        active, n_selected, candidates = self._cross_right(sens, new_zero)
        unique_candidates.update(candidates)
        share_active = len(active) / float(n_selected) if n_selected > 0 else 0.0
        active.sort()
        neurons = {_NEURON_BASE + a[3] for a in active[-self.max_active :]}
        self._left_group = tuple(sorted(facts | neurons))
        n_new = self._cross_left(self._left_group, candidates)
        if new_zero:
            n_new += 1
        share_new = n_new / float(len(unique_candidates)) if new_zero and unique_candidates else 0.0
        return share_active, share_new

    # -- the reference's ContextOperator ----------------------------------------------------

    def _semi(self, side: int, facts: tuple[int, ...], h: int) -> _Semi:
        ids = self._semi_ids[side]
        sid = ids.get(h)
        if sid is not None:
            return self._semis[side][sid]
        sid = len(ids)
        ids[h] = sid
        semi = _Semi(facts, side == 0)
        self._semis[side].append(semi)
        index = self._facts[side]
        for fact in facts:
            lst = index.get(fact)
            if lst is None:
                index[fact] = [sid]
            else:
                lst.append(sid)
        return semi

    def _store(self, left: tuple[int, ...], right: tuple[int, ...], zero: bool) -> int:
        """Store one context; its id if it is new, ``-1 - id`` if known, :data:`_NOT_STORED`.

        :data:`_NOT_STORED`: the context is new but the memory is full, so it is not kept;
        the step still counts it as new, once (as the reference would have).
        """
        lh = py2_tuple_hash(left)
        rh = py2_tuple_hash(right)
        if self.full:
            lsid = self._semi_ids[0].get(lh)
            rsid = self._semi_ids[1].get(rh)
            cid = None if lsid is None or rsid is None else self._semis[0][lsid].rights.get(rsid)  # type: ignore[union-attr]
            if cid is None:
                key = (lh, rh)
                if key in self._unstored:
                    return -1 - 2**62  # counted once already this step, like a stored one
                self._unstored.add(key)
                return _NOT_STORED
            if zero:
                self.contexts[cid].zero = True
            return -1 - cid
        lsemi = self._semi(0, left, lh)
        rsid = self._semi_ids[1].get(rh)
        if rsid is None:
            rsid = len(self._semis[1])
            self._semi(1, right, rh)
        contexts = self.contexts
        assert lsemi.rights is not None
        nxt = len(contexts)
        cid = lsemi.rights.setdefault(rsid, nxt)
        if cid == nxt:
            lsemi.lookup[rsid] = cid
            contexts.append(_Context(self._semi_ids[0][lh], zero, lh, rh))
            if self.max_contexts is not None and len(contexts) >= self.max_contexts:
                self.full = True
            return cid
        if zero:
            contexts[cid].zero = True
        return -1 - cid

    def _store_zero_level(self, zero: tuple[tuple[int, ...], tuple[int, ...]]) -> bool:
        cid = self._store(zero[0], zero[1], True)
        if cid >= 0:
            self._new_context_id = cid
            return True
        if cid == _NOT_STORED:
            self._new_context_id = -1  # a new id, equal to no stored context
            return True
        return False

    def _cross(self, side: int, facts: tuple[int, ...]) -> list[tuple[int, int]]:
        """Which semi-contexts of ``side`` hold some of ``facts``, and how many: (id, count) by id."""
        index = self._facts[side]
        counts = Counter(chain.from_iterable([index[f] for f in facts if f in index]))
        crossed = sorted(counts.items())
        self._crossed[side][:] = crossed
        self._crossed_facts = (
            (frozenset(facts), self._crossed_facts[1]) if side == 0 else (self._crossed_facts[0], frozenset(facts))
        )
        return crossed

    def _cross_left(self, facts: tuple[int, ...], candidates: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> int:
        n_new = 0
        for left, right in candidates:
            cid = self._store(left, right, False)
            if cid >= 0 or cid == _NOT_STORED:
                n_new += 1
        self._unstored.clear()
        self._cross(0, facts)
        return n_new

    def _cross_right(
        self, facts: tuple[int, ...], new_zero: bool
    ) -> tuple[list[tuple[int, int, int, int]], int, list[tuple[tuple[int, ...], tuple[int, ...]]]]:
        rights = self._semis[1]
        right_counts = [0] * len(rights)
        complete_rights = []
        for rsid, count in self._cross(1, facts):
            right_counts[rsid] = count
            if rights[rsid].n == count:
                complete_rights.append(rsid)
        lefts = self._semis[0]
        contexts = self.contexts
        active: list[tuple[int, int, int, int]] = []
        n_selected = 0
        candidates: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        max_left = self.max_left
        skip = self._new_context_id
        skip_left = contexts[skip].left_id if 0 <= skip < len(contexts) else -1
        left_present = self._crossed_facts[0]
        right_present = self._crossed_facts[1]
        # The reference visits every (left, right) pair of the left semi-contexts crossed at
        # the previous step, in Python 2 dict order. Activation and the selected count do not
        # depend on that order (active contexts are sorted afterwards), so they are looked up
        # directly; only the candidates, whose order decides new context ids, need the walk.
        for lsid, lcount in self._crossed[0]:  # the left crossing of the previous step
            lsemi = lefts[lsid]
            complete = lsemi.n == lcount
            generalise = new_zero and lcount <= max_left
            if complete:
                lookup = lsemi.lookup
                n_selected += len(lookup) - (lsid == skip_left)
                for rsid in complete_rights:
                    cid = lookup.get(rsid)
                    if cid is not None and cid != skip:
                        c = contexts[cid]
                        c.active += 1
                        active.append((c.active, c.left_hash, c.right_hash, cid))
            if not generalise:
                continue
            assert lsemi.rights is not None
            for rsid, cid in lsemi.rights.items():
                rcount = right_counts[rsid]
                if rcount and cid != skip and contexts[cid].zero and not (complete and rcount == rights[rsid].n):
                    left_facts = lsemi.facts if complete else tuple(f for f in lsemi.facts if f in left_present)
                    candidates.append((left_facts, tuple(f for f in rights[rsid].facts if f in right_present)))
        self._new_context_id = 0
        return active, n_selected, candidates
