"""Break down SKAB false raises by sensor and cause (warm-up protocol, shipped defaults).

    python bench/skab_false_raises.py [--split all] [--config my.toml] [-v]

A raise is false when it lies outside every labelled anomaly of its experiment. Each one is
attributed to the column it fired on and to its cause: ``gap`` (the reading came after a
logger silence, the dropout verdict) or the robust detector part that weighed most in its
payload (point, level, spread, jump). This is a script, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from streamwatch.config import Config, load, override  # noqa: E402
from streamwatch.detectors import bundle  # noqa: E402
from streamwatch.evaluation.datasets import Dataset, from_skab  # noqa: E402
from streamwatch.pipeline.alerts import AlertEvent  # noqa: E402
from streamwatch.replay import replay  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "skab"


def _cause(parts: dict[str, float] | None) -> str:
    if not parts:
        return "?"
    if parts.get("gap"):
        return "gap"
    return max(parts, key=lambda k: parts[k])


def experiment_raises(
    cfg: Config, ds: Dataset, sensors: list[str]
) -> tuple[int, int, list[AlertEvent]]:
    """One SKAB experiment's sensors through the warm-up protocol (each warms up on the
    experiment's training rows): (labelled events found, labelled events, the raises outside
    every event)."""
    n = ds.n_train[sensors[0]]
    learning = cfg.learning.model_copy(update={"warmup": max(10, n)})
    c = cfg.model_copy(update={"learning": learning})
    model = bundle.fresh(c.detector, c.windows.length, c.threshold.false_alarm_rate)
    events = replay(c, model, {s: (ds.ts[s], ds.value[s]) for s in sensors})
    spans = [(e.start, e.end) for e in ds.events if e.sensor == sensors[0]]
    hit = [False] * len(spans)
    false = []
    for ev in events:
        if ev.state != "raised":
            continue
        inside = [a <= ev.ts <= b for a, b in spans]
        hit = [h or i for h, i in zip(hit, inside, strict=True)]
        if not any(inside):
            false.append(ev)
    return sum(hit), len(spans), false


def main(argv: list[str] | None = None) -> int:
    """Print false raises per column, per cause and per experiment."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skab", type=Path, default=DATA)
    ap.add_argument("--split", default="all")
    ap.add_argument("--config", type=Path)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every false raise")
    args = ap.parse_args(argv)
    cfg = load(args.config)
    if args.set:
        cfg = override(cfg, {k: json.loads(v) for k, v in (x.split("=", 1) for x in args.set)})
    ds = from_skab(args.skab, args.split)
    by_col: Counter[str] = Counter()
    by_cause: Counter[str] = Counter()
    by_exp: Counter[str] = Counter()
    by_pair: Counter[tuple[str, str]] = Counter()
    found = total = 0
    for g, sensors in sorted(ds.groups.items()) if ds.groups else ():
        hit, spans, false = experiment_raises(cfg, ds, sensors)
        for ev in false:
            col = ev.sensor.rsplit("/", 1)[1]
            cause = _cause(ev.parts)
            by_col[col] += 1
            by_cause[cause] += 1
            by_exp[g] += 1
            by_pair[(col, cause)] += 1
            if args.verbose:
                t = ds.ts[ev.sensor]
                row = int(np.searchsorted(t, ev.ts))
                dt = float(t[row] - t[row - 1]) if row > 0 else 0.0
                print(f"{g} {col:22s} row {row:5d} dt {dt:5.1f}s {cause:7s} {ev.parts}")
        found += hit
        total += spans
    print(f"events found {found}/{total}; false raises {sum(by_col.values())}")
    print("by column:", dict(by_col.most_common()))
    print("by cause: ", dict(by_cause.most_common()))
    print("by column and cause:", {f"{a}/{b}": n for (a, b), n in by_pair.most_common()})
    print("by experiment:", dict(sorted(by_exp.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
