"""What the per-sensor detector sees of the plant simulator's faults (a baseline for groups).

Usage::

    .venv/bin/python bench/plant_per_sensor.py [--seed 7] [--pumps 4] [--hours 6]

Replays ``simulators.plant.plant_dataset(seed)`` through the daemon's engine with the default
config (the ``warmup`` protocol: each sensor learns from its first 1,800 fault-free readings)
and prints, per fault kind, the member events found and the pump-level events found (any
member of the pump raising inside the fault). Nothing is tuned here; seed 7 is the plant's
report seed (``REPORT_SEED``). A measurement, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np

from simulators.plant import REPORT_SEED, plant_dataset
from streamwatch.config import Config
from streamwatch.evaluation.runs import run_streamwatch
from streamwatch.evaluation.scoring import event_scores


def main() -> None:
    """Run the measurement and print it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=REPORT_SEED)
    ap.add_argument("--pumps", type=int, default=4)
    ap.add_argument("--hours", type=float, default=6.0)
    args = ap.parse_args()
    ds = plant_dataset(args.seed, n_pumps=args.pumps, duration_s=args.hours * 3600.0)
    started = time.perf_counter()
    run = run_streamwatch(Config(), ds)
    sc = event_scores(ds.events, run.alerts, ds.ts, ds.label, None, ds.start(), ds.tolerance_s)
    print(
        f"{ds.name}: {ds.readings} readings, {run.detector}, {time.perf_counter() - started:.1f} s"
    )
    print(
        f"member events {sc.events}, found {sc.detected}, false alerts {sc.false_alerts} "
        "(raises outside every event of their sensor)"
    )
    assert ds.groups is not None
    total: Counter[str] = Counter()
    found: Counter[str] = Counter()
    seen: set[tuple[str, float, str]] = set()
    for e in ds.events:
        pump = e.sensor.rpartition("/")[0]
        key = (pump, round(e.start), e.kind)
        if key in seen:
            continue  # a coupling fault is one event per member: count the pump once
        seen.add(key)
        total[e.kind] += 1
        found[e.kind] += any(
            bool(((run.alerts[s] >= e.start) & (run.alerts[s] <= e.end)).any())
            for s in ds.groups[pump]
            if s in run.alerts and np.size(run.alerts[s])
        )
    print(f"{'kind':14s} {'member events':>14s} {'pump events':>12s}")
    for kind in sorted(total):
        k = sc.per_kind.get(kind)
        members = f"{k.detected}/{k.events}" if k else "-"
        print(f"{kind:14s} {members:>14s} {found[kind]:>6d}/{total[kind]:<5d}")


if __name__ == "__main__":
    main()
