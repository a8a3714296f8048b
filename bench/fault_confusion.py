"""Sensor faults apart from process anomalies on the simulator: the confusion table.

    python bench/fault_confusion.py                 # seeds 1,2,3 (tuning) and 7 (report)
    python bench/fault_confusion.py --seeds 7 --config my.toml --protocol train

Each seed's stream (8 sensors, 4 h at 1 Hz, every anomaly kind, as ``bench/detection.py``'s
simulator section) is replayed through the daemon's engine, each sensor warming up on its
first ``learning.warmup`` readings (``--protocol train``: one model fitted on those readings
first, so the sensors are scored at once and the fault checks learn from normal windows).
The first alert raised on an event's sensor within
``[start, end + window]`` is the event's verdict: ``sensor_fault/<fault>`` or ``process`` (an
alert reclassified as a sensor fault, published again with its id, counts as the fault);
none is ``missed``. Further raises within an event are ``again``; raises within no event
are ``false``, by kind. Stuck and dropout
are sensor faults; level shifts, drifts, noise bursts, spikes and frequency changes process
anomalies. Settings may be tuned on seeds 1-3 only; report seed 7. A script, not a test.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from simulators.generate import ALL_KINDS, AnomalySpec, simulate  # noqa: E402
from streamwatch.config import Config, load  # noqa: E402
from streamwatch.detectors import bundle  # noqa: E402
from streamwatch.pipeline.alerts import RAISED  # noqa: E402
from streamwatch.replay import replay  # noqa: E402
from streamwatch.training import fit_calibrated  # noqa: E402

SENSOR_FAULT_KINDS = ("stuck", "dropout")
"""Simulator kinds that are the sensor's fault; every other kind is the process's."""


def label(kind: str, fault: str | None) -> str:
    """The column an alert falls in."""
    return f"sensor_fault/{fault}" if kind == "sensor_fault" else "process"


def confusion(
    cfg: Config, seed: int, sensors: int, duration: float, trained: bool = False
) -> dict[str, Counter[str]]:
    """{true kind: Counter(alert column)}, plus ``again`` and ``false`` raises. ``trained``:
    the model is first fitted on every sensor's training readings (the ``train`` protocol),
    so the fault checks learn from normal windows instead of the warm-up."""
    window = cfg.windows.length
    n_train = max(cfg.learning.warmup, window + 20)
    sim = simulate(sensors, duration, 1.0, seed, anomalies=AnomalySpec(), warmup_s=1.2 * n_train)
    series = {s: sim.series(s)[:2] for s in sim.sensors}
    if trained:
        train = {s: (t[:n_train], v[:n_train], None) for s, (t, v) in series.items()}
        model = fit_calibrated(cfg, train, source=f"simulator seed {seed}")
    else:
        model = bundle.fresh(cfg.detector, window, cfg.threshold.false_alarm_rate)
    events = replay(cfg, model, series)
    first: dict[str, tuple[str, float, str]] = {}  # alert id -> sensor, raise time, column
    for ev in events:  # a reclassified alert is raised again with its id: the last word counts
        if ev.state == RAISED:
            sensor, ts, _ = first.get(ev.alert_id, (ev.sensor, ev.ts, ""))
            first[ev.alert_id] = (sensor, ts, label(ev.kind, ev.fault))
    raises: dict[str, list[tuple[float, str]]] = {}
    for sensor, ts, col in first.values():
        raises.setdefault(sensor, []).append((ts, col))
    used: set[tuple[str, float]] = set()
    table: dict[str, Counter[str]] = {}
    for e in sim.events:
        row = table.setdefault(e.kind, Counter())
        hit = next(
            (
                (t, col)
                for t, col in raises.get(e.sensor, [])
                if e.start <= t <= e.end + window and (e.sensor, t) not in used
            ),
            None,
        )
        if hit is None:
            row["missed"] += 1
        else:
            used.add((e.sensor, hit[0]))
            row[hit[1]] += 1
    false = table.setdefault("false", Counter())
    again = table.setdefault("again", Counter())
    for s, rs in raises.items():
        spans = [(e.start, e.end + window) for e in sim.events if e.sensor == s]
        for t, col in rs:
            if (s, t) not in used:
                inside = any(a <= t <= b for a, b in spans)
                (again if inside else false)[col] += 1
    return table


def render(seed: int, table: dict[str, Counter[str]]) -> list[str]:
    """A markdown table: true kind x alert column, with the share sorted right."""
    cols = [*sorted({c for row in table.values() for c in row if c != "missed"}), "missed"]
    lines = [
        f"| seed {seed}: true kind | events | " + " | ".join(cols) + " | sorted right |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for kind in [*ALL_KINDS, "again", "false"]:
        row = table.get(kind)
        if row is None:
            continue
        n = sum(row.values())
        if kind in ("false", "again"):
            right = "-"
        else:
            want = "sensor_fault" if kind in SENSOR_FAULT_KINDS else "process"
            ok = sum(v for c, v in row.items() if c.startswith(want))
            right = f"{ok}/{n}"
        expect = " (fault)" if kind in SENSOR_FAULT_KINDS else " (process)"
        if kind in ("false", "again"):
            expect = ""
        cells = " | ".join(str(row.get(c, 0)) for c in cols)
        lines.append(f"| {kind}{expect} | {n} | {cells} | {right} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the confusion table of each seed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, help="TOML config file (default: all defaults)")
    ap.add_argument("--seeds", default="1,2,3,7", metavar="S1,S2", help="default 1,2,3,7")
    ap.add_argument("--sensors", type=int, default=8)
    ap.add_argument("--duration", type=float, default=4 * 3600.0, help="seconds (default 4 h)")
    ap.add_argument(
        "--protocol", choices=("warmup", "train"), default="warmup", help="default warmup"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = load(args.config) if args.config else Config()
    t0 = time.perf_counter()
    for seed in (int(x) for x in args.seeds.split(",")):
        table = confusion(cfg, seed, args.sensors, args.duration, args.protocol == "train")
        print(f"protocol {args.protocol}:\n")
        print("\n".join(render(seed, table)))
        fault_ok = sum(
            v
            for k in SENSOR_FAULT_KINDS
            for c, v in table.get(k, Counter()).items()
            if c.startswith("sensor_fault")
        )
        fault_n = sum(sum(table.get(k, Counter()).values()) for k in SENSOR_FAULT_KINDS)
        proc = [k for k in ALL_KINDS if k not in SENSOR_FAULT_KINDS]
        proc_ok = sum(table.get(k, Counter())["process"] for k in proc)
        proc_n = sum(sum(table.get(k, Counter()).values()) for k in proc)
        print(
            f"\nseed {seed}: sensor-fault events as sensor_fault {fault_ok}/{fault_n}, "
            f"process events as process {proc_ok}/{proc_n}, "
            f"false raises {sum(table['false'].values())}\n"
        )
    print(f"({time.perf_counter() - t0:.1f} s; {np.__name__} {np.__version__})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
