"""Sliding-window mean and variance, and the z statistic helpers shared by detectors."""

from __future__ import annotations

import math
from collections import deque


class _WindowMoments:
    """Mean and sum of squared deviations of the last ``window`` values.

    Welford's update to add a value, its inverse to drop one, and the single-step
    replace (both at once) when the window is full; an exact two-pass recomputation
    every ``window`` replacements removes accumulated rounding drift.
    """

    __slots__ = ("buf", "m2", "mean", "since", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.buf: deque[float] = deque()
        self.mean = 0.0
        self.m2 = 0.0
        self.since = 0

    def push(self, x: float) -> None:
        buf = self.buf
        if len(buf) < self.window:
            buf.append(x)
            n = len(buf)
            d = x - self.mean
            self.mean += d / n
            self.m2 += d * (x - self.mean)
            return
        old = buf.popleft()
        buf.append(x)
        n = self.window
        old_mean = self.mean
        self.mean = old_mean + (x - old) / n
        self.m2 += (x - old) * ((x - self.mean) + (old - old_mean))
        self.since += 1
        if self.since >= n or not math.isfinite(self.m2):
            self.recompute()
        elif self.m2 < 0.0:
            self.m2 = 0.0

    def recompute(self) -> None:
        self.since = 0
        n = len(self.buf)
        if n == 0:
            self.mean = self.m2 = 0.0
            return
        mean = math.fsum(self.buf) / n
        self.mean = mean
        self.m2 = math.fsum((v - mean) * (v - mean) for v in self.buf)

    @property
    def std(self) -> float:
        n = len(self.buf)
        return math.sqrt(self.m2 / n) if n else 0.0


_DIRECTIONS = ("both", "up", "down")


def _check_direction(direction: object) -> str:
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(_DIRECTIONS)}, got {direction!r}")
    return str(direction)


def _directed(z: float, direction: str) -> float:
    """``z`` when it deviates in the watched direction, else 0 (``up``: only rises count)."""
    if direction == "up":
        return z if z > 0 else 0.0
    if direction == "down":
        return z if z < 0 else 0.0
    return z


def _z(x: float, mean: float, std: float) -> float:
    d = x - mean
    if std > 0.0:
        return d / std
    return 0.0 if d == 0.0 else math.inf
