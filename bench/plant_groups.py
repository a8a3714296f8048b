"""The plant simulator's faults as the per-sensor detector and the group path see them, in
one run on the same data.

Usage::

    .venv/bin/python bench/plant_groups.py [--seed 7] [--pumps 4] [--hours 6] [--config F]

Replays ``simulators.plant.plant_dataset(seed)`` through the daemon's engine twice (the
``warmup`` protocol: each sensor, and each pump as a group, learns from its first 1,800
fault-free readings, label-free): once with every sensor scored alone (the default config,
the robust detector), once with ``[groups] patterns = ["plant/+/#"]`` and the default group
detector (each pump one group of 5). Counted per pump: an event (a coupling fault, or a
per-sensor fault on one member) is found when a raise on the pump (any member alone, or the
group) lies inside it; its delay is that first raise's time after the event's start. A false
alert is a raise on the pump outside every event of the pump. The third column is both at
once (either run's raises), what ``[groups] score_members_alone = true`` would publish.
Nothing is tuned on the report seed 7 (``REPORT_SEED``). A measurement, not a test: it
asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from simulators.plant import COUPLING_KINDS, PLANT_PATTERN, REPORT_SEED, plant_dataset
from streamwatch.config import Config, load
from streamwatch.evaluation.datasets import Dataset
from streamwatch.evaluation.runs import run_groups, run_streamwatch, without_groups
from streamwatch.evaluation.scoring import Event


def pump_events(ds: Dataset) -> dict[str, list[Event]]:
    """Each pump's events, once each (a coupling fault is one event per member)."""
    out: dict[str, dict[tuple[float, str], Event]] = defaultdict(dict)
    for e in ds.events:
        pump = e.sensor.rpartition("/")[0]
        out[pump].setdefault((round(e.start, 3), e.kind), Event(pump, e.start, e.end, e.kind))
    return {p: sorted(d.values(), key=lambda e: e.start) for p, d in out.items()}


def pump_raises(ds: Dataset, alerts: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every raise on each pump (any member's, or the group's copied to its members, once)."""
    assert ds.groups is not None
    out = {}
    for pump, members in ds.groups.items():
        ups = [np.asarray(alerts.get(s, ()), dtype=np.float64) for s in members]
        out[pump] = np.unique(np.concatenate(ups)) if ups else np.empty(0)
    return out


def tally(ds: Dataset, raises: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per kind: events, found, delays; and the false alerts, all kinds together."""
    events = pump_events(ds)
    start = min(float(ds.start()[s]) for s in ds.sensors)
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {"events": 0, "found": 0, "delays": []})
    false = 0
    for pump, up in raises.items():
        up = up[up >= start]
        inside = np.zeros(up.size, dtype=bool)
        for e in events.get(pump, []):
            hit = (up >= e.start) & (up <= e.end)
            inside |= hit
            k = per[e.kind]
            k["events"] += 1
            if hit.any():
                k["found"] += 1
                k["delays"].append(float(up[hit][0]) - e.start)
        false += int((~inside).sum())
    return {"kinds": per, "false": false}


def _cell(k: dict[str, Any] | None) -> str:
    if not k:
        return "-"
    delay = f"{np.mean(k['delays']):.0f} s" if k["delays"] else "-"
    return f"{k['found']}/{k['events']}, {delay}"


def main() -> None:
    """Run the measurement and print it (a markdown table)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=REPORT_SEED)
    ap.add_argument("--pumps", type=int, default=4)
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--config", type=Path, default=None, help="default: every option default")
    args = ap.parse_args()
    base = load(args.config) if args.config else Config()
    grouped = base.model_copy(
        update={"groups": base.groups.model_copy(update={"patterns": [PLANT_PATTERN]})}
    )
    ds = plant_dataset(args.seed, n_pumps=args.pumps, duration_s=args.hours * 3600.0)
    t0 = time.perf_counter()
    alone = run_streamwatch(without_groups(base), ds)
    t1 = time.perf_counter()
    groups = run_groups(grouped, ds)
    t2 = time.perf_counter()
    ra, rg = pump_raises(ds, alone.alerts), pump_raises(ds, groups.alerts)
    a, g = tally(ds, ra), tally(ds, rg)
    # Both at once, as [groups] score_members_alone = true publishes them: either run's raises.
    b = tally(ds, {p: np.union1d(ra[p], rg[p]) for p in ra})
    print(
        f"{ds.name}: {args.pumps} pumps x {args.hours:g} h, {ds.readings} readings; "
        f"per-sensor {alone.detector} {t1 - t0:.1f} s, groups {groups.detector} {t2 - t1:.1f} s"
    )
    print()
    print(
        "| fault kind | per-sensor: found, mean delay | groups: found, mean delay "
        "| both (union): found, mean delay |"
    )
    print("|---|---|---|---|")
    kinds = sorted(set(a["kinds"]) | set(g["kinds"]), key=lambda k: (k not in COUPLING_KINDS, k))
    for kind in kinds:
        tag = " (coupling)" if kind in COUPLING_KINDS else ""
        cells = " | ".join(_cell(t["kinds"].get(kind)) for t in (a, g, b))
        print(f"| {kind}{tag} | {cells} |")
    for name, sel in (("coupling", True), ("per-sensor kinds", False)):
        row = []
        for t in (a, g, b):
            ks = [v for k, v in t["kinds"].items() if (k in COUPLING_KINDS) == sel]
            row.append(f"{sum(k['found'] for k in ks)}/{sum(k['events'] for k in ks)}")
        print(f"| **all {name}** | {' | '.join(row)} |")
    false = " | ".join(str(t["false"]) for t in (a, g, b))
    print(f"| **false alerts** (outside every event of the pump) | {false} |")


if __name__ == "__main__":
    main()
