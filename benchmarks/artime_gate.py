#!/usr/bin/env python
"""How the default rules' ARTime gate was chosen: alerts on quiet synthetic series, and synthetic incidents found.

Run from the repository root::

    .venv/bin/python benchmarks/artime_gate.py            # quiet series and incidents (about 15 min)
    .venv/bin/python benchmarks/artime_gate.py --quick    # one seed, one day, no incidents

No NAB data is read: the gate of ``rules.artime_rule_detector`` was chosen on this alone,
before any NAB score was seen. Each candidate is an alert rule (``for`` 2, resolve after 3,
cooldown 60 s, as the default latency rule) whose detector is ARTime as shipped (range learnt
online) with a ``confirm`` gate, run by the anomaly engine at one value every 5 s:

- **quiet series** (none holds an incident; the requirement is at most one alert per
  simulated day): Gaussian noise; log-normal; Student-t with 3 degrees of freedom (heavy
  tails); a daily and an hourly cycle with Gaussian noise; a bounded random walk
  (reflected at its limits); a ratio of few failures (binomial, 1 % of 100). Three seeds,
  three simulated days each; printed per day.
- **synthetic incidents** on Gaussian, log-normal, daily-cycle, random-walk and
  failure-ratio backgrounds (two seeds each), from value 25,000 on: the level tripled or
  multiplied by 1.5 for 600 values, shifted up by two standard deviations for 600, a ramp
  doubling it over an hour, a 5-value spike (tripled), the noise tripled for 360 values.
  Found: an alert starts within 720 values (an hour) of the incident's start.

The candidates: ARTime unconfirmed; the previous gate (z >= 3 over the previous 120 values,
each value); and z-scores of the medians of ARTime's downsampling steps (``confirm_on="step"``)
over 120 and 240 steps at z >= 4 and over 480 steps at z >= 3, 3.5, 4, 4.5 and 5 (a first
exploration, the same series without the engine, covered 120, 240 and 480 steps at z >= 3,
3.5, 4 and 5). The rule: at most one alert on every quiet kind, seed and day, then the most
incidents found. Series run in two processes (``--jobs``); ``--only NAME`` runs the
candidates whose name contains NAME.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from otel_eda.anomaly.detectors.base import z_to_score
from otel_eda.anomaly.engine import AnomalyEngine
from otel_eda.anomaly.rules import Rule
from otel_eda.anomaly.series import SeriesPoint

DAY = 17_280  # values per simulated day at one every 5 s
KINDS = ("gauss", "lognormal", "t3", "daily", "hourly", "walk", "errors")
INCIDENT_START = 25_000


def quiet_series(kind: str, seed: int, n: int) -> list[float]:
    """A quiet series (no incident) of ``kind``, ``n`` values."""
    rng = random.Random(seed)
    out = []
    w = 0.05
    for i in range(n):
        if kind == "gauss":
            v = max(0.0, rng.gauss(0.05, 0.005))
        elif kind == "lognormal":
            v = 0.05 * math.exp(rng.gauss(0, 0.25))
        elif kind == "t3":
            chi = sum(rng.gauss(0, 1) ** 2 for _ in range(3)) / 3
            v = max(0.0, 0.05 + 0.005 * rng.gauss(0, 1) / math.sqrt(chi))
        elif kind == "daily":
            v = max(0.0, 0.05 + 0.02 * math.sin(2 * math.pi * i / DAY) + rng.gauss(0, 0.005))
        elif kind == "hourly":
            v = max(0.0, 0.05 + 0.01 * math.sin(2 * math.pi * i / 720) + rng.gauss(0, 0.005))
        elif kind == "walk":
            w += rng.gauss(0, 0.001)
            w = 0.14 - w if w > 0.07 else (0.06 - w if w < 0.03 else w)
            v = w
        elif kind == "errors":
            v = sum(1 for _ in range(100) if rng.random() < 0.01) / 100
        else:
            raise ValueError(kind)
        out.append(v)
    return out


def with_incident(base: Sequence[float], incident: str) -> list[float]:
    vals = list(base)
    sd = statistics.pstdev(base[:3000])
    level = statistics.fmean(base[INCIDENT_START - 500 : INCIDENT_START])
    for k in range(INCIDENT_START, len(vals)):
        t = k - INCIDENT_START
        if incident == "x3" and t < 600:
            vals[k] *= 3
        elif incident == "x1.5" and t < 600:
            vals[k] *= 1.5
        elif incident == "up 2 sd" and t < 600:
            vals[k] += 2 * sd
        elif incident == "ramp" and t < 1200:
            vals[k] *= 1 + min(t, 720) / 720
        elif incident == "spike" and t < 5:
            vals[k] *= 3
        elif incident == "noise x3" and t < 360:
            vals[k] += 2 * (vals[k] - level)
    return vals


INCIDENTS = ("x3", "x1.5", "up 2 sd", "ramp", "spike", "noise x3")


ONLY: list[str] = []


def candidates() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"unconfirmed": {"kind": "artime"}}
    out["values, 120, z>=3 (previous)"] = {
        "kind": "artime",
        "confirm": {"kind": "zscore", "window": 120, "direction": "up", "hold": 120, "threshold": z_to_score(3.0)},
    }
    for window, z in ((120, 4.0), (240, 4.0), (480, 3.0), (480, 3.5), (480, 4.0), (480, 4.5), (480, 5.0)):
        confirm = {"kind": "zscore", "window": window, "direction": "up", "hold": 120, "threshold": z_to_score(z)}
        out[f"steps, {window}, z>={z:g}"] = {"kind": "artime", "confirm": confirm, "confirm_on": "step"}
    return {k: v for k, v in out.items() if not ONLY or any(o in k for o in ONLY)}


def alert_starts(values: Sequence[float], specs: dict[str, dict[str, Any]]) -> dict[str, list[int]]:
    """Per candidate, the indices where its rule's alert started (the engine, one value every 5 s)."""
    rules = [
        Rule(name=name, metric="m", signal="value", detector=spec, for_evaluations=2, escalate_factor=None)
        for name, spec in specs.items()
    ]
    engine = AnomalyEngine(rules, max_series=2, idle_timeout_s=math.inf)
    starts: dict[str, list[int]] = {name: [] for name in specs}
    for i, v in enumerate(values):
        t = 5.0 * i
        for a in engine.evaluate([SeriesPoint("m", "value", (), t, v)], now=t):
            if a.state.value == "firing" and a.started_at == t:
                starts[a.rule].append(i)
    return starts


def _quiet_job(job: tuple[str, int, int, list[str]]) -> tuple[str, int, dict[str, list[int]]]:
    kind, seed, days, only = job
    ONLY[:] = only
    logging.disable(logging.WARNING)
    return kind, seed, alert_starts(quiet_series(kind, seed, days * DAY), candidates())


def _incident_job(job: tuple[str, int, str, list[str]]) -> tuple[str, int, str, dict[str, list[int]]]:
    bg, seed, incident, only = job
    ONLY[:] = only
    logging.disable(logging.WARNING)
    return bg, seed, incident, alert_starts(with_incident(quiet_series(bg, seed, 27_000), incident), candidates())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, one day, no incidents")
    parser.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--only", action="append", default=[], help="candidates whose name contains this")
    args = parser.parse_args(argv)
    ONLY[:] = args.only
    logging.disable(logging.WARNING)  # (the engine logs every alert)
    started = time.perf_counter()
    specs = candidates()
    seeds = (1,) if args.quick else (1, 2, 3)
    days = 1 if args.quick else 3
    worst = dict.fromkeys(specs, 0)
    total = dict.fromkeys(specs, 0)
    print(f"quiet series: alerts per simulated day ({days} days, seeds {seeds})")
    jobs = [(kind, seed, days, args.only) for kind in KINDS for seed in seeds]
    with multiprocessing.Pool(args.jobs) as pool:
        for kind, seed, starts in pool.imap(_quiet_job, jobs):
            cells = []
            for name, s in starts.items():
                per_day = [sum(1 for i in s if d * DAY <= i < (d + 1) * DAY) for d in range(days)]
                worst[name] = max(worst[name], *per_day)
                total[name] += len(s)
                cells.append(f"{name}: {per_day}")
            print(f"  {kind:9} seed {seed}: " + "; ".join(cells), flush=True)
        series_days = len(KINDS) * len(seeds) * days
        found = dict.fromkeys(specs, 0)
        tried = 0
        if not args.quick:
            print("synthetic incidents: values from the incident's start to the alert's (-: none within 720)")
            jobs2 = [
                (bg, seed, inc, args.only)
                for bg in ("gauss", "lognormal", "daily", "walk", "errors")
                for seed in (7, 8)
                for inc in INCIDENTS
            ]
            for bg, seed, incident, starts in pool.imap(_incident_job, jobs2):
                tried += 1
                cells = []
                for name, s in starts.items():
                    hit = [i - INCIDENT_START for i in s if INCIDENT_START <= i < INCIDENT_START + 720]
                    found[name] += bool(hit)
                    cells.append(f"{name}: {hit[0] if hit else '-'}")
                print(f"  {incident:8} on {bg:9} seed {seed}: " + "; ".join(cells), flush=True)
    print("summary (quiet: worst day, mean per day; incidents found)")
    for name in specs:
        print(
            f"  {name:32} quiet: worst day {worst[name]:2d}, mean {total[name] / series_days:5.2f} a day"
            + (f"; incidents found {found[name]} of {tried}" if tried else "")
        )
    print(f"elapsed {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
