"""The live page's cost on the worker thread: building one ``/api/state`` snapshot.

Usage::

    .venv/bin/python bench/live_snapshot.py [--sensors 1000] [--seconds 300]

An engine (the robust detector) takes ``--seconds`` batches of one reading per sensor, so the
recent-score ring fills (to its 200,000-row cap with the defaults); then it reports the time
the engine took for those batches (with the ring's one append per batch in it), and the best
of five snapshot builds with its JSON size and points per sensor. The worker builds one at most
once a second, and only while the page (or anything else) polls ``/api/state``.

A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from prometheus_client import CollectorRegistry

from streamwatch.config import from_mapping
from streamwatch.control.snapshot import Snapshots
from streamwatch.control.state import ControlState
from streamwatch.detectors import bundle
from streamwatch.ingest.parse import Reading
from streamwatch.outputs.metrics import Metrics
from streamwatch.pipeline.engine import Engine


def main() -> None:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sensors", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=300)
    args = ap.parse_args()
    cfg = from_mapping(
        {"learning": {"warmup": 100}, "windows": {"max_sensors": max(1000, args.sensors)}}
    )
    model = bundle.fresh(cfg.detector, cfg.windows.length, cfg.threshold.false_alarm_rate)
    engine = Engine(cfg, model, Metrics(CollectorRegistry()), lambda ev: None)
    snaps = Snapshots(engine, ControlState(None))
    rng = np.random.default_rng(0)
    names = [f"plant/s{i}" for i in range(args.sensors)]
    t = 1.7e9
    started = time.perf_counter()
    for _ in range(args.seconds):
        values = rng.normal(10.0, 1.0, args.sensors)
        batch = [Reading(n, t, float(v)) for n, v in zip(names, values, strict=True)]
        engine.process([(batch, t)], now=t)
        t += 1.0
    took = time.perf_counter() - started
    best = float("inf")
    snap: dict[str, object] = {}
    for _ in range(5):
        t0 = time.perf_counter()
        snap = snaps.build(t)
        best = min(best, time.perf_counter() - t0)
    sensors = snap["sensors"]
    assert isinstance(sensors, list)
    print(
        f"{args.sensors} sensors x {args.seconds} batches: engine {took:.2f} s; "
        f"ring {snaps.scores._rows} rows; snapshot build {best * 1000:.1f} ms (best of 5), "
        f"JSON {len(json.dumps(snap)) / 1e6:.2f} MB, {len(sensors[0]['history'])} points per sensor"
    )


if __name__ == "__main__":
    main()
