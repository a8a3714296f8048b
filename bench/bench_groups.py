"""Throughput and memory of group scoring: G groups of M members through the engine's group
path (alignment, batched Mahalanobis scoring, alert state), with a trained group model.

    python bench/bench_groups.py --groups 1000 --members 8 --steps 120

Prints readings/s, group windows scored/s and the process's peak RSS. Not a test.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from prometheus_client import CollectorRegistry

from streamwatch.config import from_mapping
from streamwatch.detectors import bundle
from streamwatch.ingest.parse import Reading
from streamwatch.outputs.metrics import Metrics
from streamwatch.pipeline.engine import Engine

T0 = 1_700_000_000.0


def main() -> None:
    """Train G groups on synthetic steps, then time the readings of ``--steps`` grid steps."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--chunk", type=int, default=8000, help="readings per engine batch")
    args = ap.parse_args()
    cfg = from_mapping(
        {
            "groups": {"patterns": ["plant/+/#"], "max_groups": args.groups},
            "metrics": {"max_sensor_labels": args.groups},
        }
    )
    g = cfg.groups
    rng = np.random.default_rng(0)
    model = bundle.fresh(g.detector, g.window, g.threshold.false_alarm_rate)
    names = [f"m{j}" for j in range(args.members)]
    mix = rng.normal(size=(args.members, args.members))
    started = time.perf_counter()
    for i in range(args.groups):
        gid = f"plant/g{i}"
        steps = rng.normal(size=(200, args.members)) @ mix
        model.detector.adapt(gid, steps)
        model.thresholds.per_sensor[gid] = 3.0
        model.trained_on.setdefault("groups", {})[gid] = {"members": names, "period_s": 1.0}
    fit_s = time.perf_counter() - started
    events: list[object] = []
    engine = Engine(
        cfg,
        bundle.fresh(cfg.detector, 20, 1e-5),
        Metrics(CollectorRegistry()),
        events.append,
        group_model=model,
    )
    readings = [
        Reading(f"plant/g{i}/{m}", T0 + k, float(v))
        for k in range(args.steps)
        for i in range(args.groups)
        for m, v in zip(names, rng.normal(size=args.members) @ mix, strict=True)
    ]
    started = time.perf_counter()
    for c in range(0, len(readings), args.chunk):
        part = readings[c : c + args.chunk]
        engine.process([(part, part[-1].ts)], now=part[-1].ts)
    took = time.perf_counter() - started
    assert engine.groups is not None
    scored = engine.groups.scored
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.groups} groups x {args.members} members, {args.steps} steps: "
        f"{len(readings)} readings in {took:.2f} s = {len(readings) / took:,.0f} readings/s; "
        f"{scored} group windows scored = {scored / took:,.0f} windows/s "
        f"({scored / took / args.groups:.1f} per group per s); fit {fit_s:.1f} s; "
        f"{len(events)} alert transitions; peak RSS {rss_mib:.0f} MiB"
    )


if __name__ == "__main__":
    main()
