"""What the sensor-fault checks cost on the hot path: replay throughput with ``[faults]`` on
and off, alternated in one run (the shared machine's load moves between runs).

    python bench/fault_cost.py                      # 100 sensors x 5,000 readings, robust
    python bench/fault_cost.py --sensors 1000 --readings 1000 --rounds 5

Normal simulator data (no anomalies, seed 31) with out-of-range limits on every sensor, so
every check runs. Replay is the daemon's engine without MQTT: this isolates the worker's cost.
A script, not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulators.generate import simulate  # noqa: E402
from streamwatch.config import Config, FaultRange, FaultsConfig  # noqa: E402
from streamwatch.detectors import bundle  # noqa: E402
from streamwatch.replay import replay  # noqa: E402


def run(cfg: Config, series: dict[str, tuple], n: int) -> float:
    """Readings per second of one replay."""
    model = bundle.fresh(cfg.detector, cfg.windows.length, cfg.threshold.false_alarm_rate)
    t0 = time.perf_counter()
    replay(cfg, model, series)
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    """Print readings/s with the checks on and off, each round, and the medians."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sensors", type=int, default=100)
    ap.add_argument("--readings", type=int, default=5000, help="per sensor")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    sim = simulate(args.sensors, float(args.readings), 1.0, 31, anomalies=None)
    series = {s: sim.series(s)[:2] for s in sim.sensors}
    n = len(sim)
    limits = [FaultRange(pattern="#", min=-100.0, max=100.0)]
    on = Config(faults=FaultsConfig(ranges=limits))
    off = Config(faults=FaultsConfig(enabled=False))
    rates: dict[str, list[float]] = {"on": [], "off": []}
    for r in range(args.rounds):
        for name, cfg in (("off", off), ("on", on)) if r % 2 else (("on", on), ("off", off)):
            rates[name].append(run(cfg, series, n))
        print(f"round {r + 1}: on {rates['on'][-1]:,.0f}, off {rates['off'][-1]:,.0f} readings/s")
    med = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
    print(
        f"{args.sensors} sensors x {args.readings} readings, robust, window "
        f"{on.windows.length}: median on {med['on']:,.0f}, off {med['off']:,.0f} readings/s "
        f"(on/off {med['on'] / med['off']:.3f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
