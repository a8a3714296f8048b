"""Reading-to-alert latency of a Gaussian daemon at given offered rates (issue 15).

Usage::

    python bench/paced_latency.py --rates 5193,3000 [--root /path/to/an/older/checkout]

One Mosquitto and one ``streamwatch run`` (``bench_live``'s, 1,000 sensors, primed with a
full window each), then for each rate ``bench_live.latency_trial``: single-reading QoS 1
messages stamped with their send time for 6 s, with spikes, a separate subscriber timing
every raised alert, and the daemon's own arrival-to-verdict histogram beside it. ``--root``
runs the ``streamwatch`` package found there (e.g. an older commit unpacked with
``git archive``). A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_live as bl


def main() -> int:
    """Run the trials; print one line per rate."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rates", default="5193,3000", help="offered readings/s, comma-separated")
    ap.add_argument("--root", type=Path, help="run the streamwatch package found here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sw-paced-"))
    os.chmod(work, 0o755)  # Mosquitto, started as root, drops to its own user
    bundles = bl.make_bundles(work, {"gaussian": 1000}, True, print)
    broker = bl.Broker(work / "broker")
    d = bl.Daemon(work, broker.port, "gaussian", bundles["gaussian"], root=args.root)
    rounds = bl.Rounds()
    try:
        bl.daemon_trial(d, broker.port, rounds.feed(1000, 1000 * (bl.WINDOW + 5)), 0, 30.0)
        for rate in (float(x) for x in args.rates.split(",")):
            feed = rounds.feed(1000, int(rate * 6), 1, max(100, int(rate / 100)))
            t = bl.latency_trial(d, broker.port, feed, rate, 6.0)
            print(
                f"rate {rate:,.0f}/s: p50 {t['p50_ms']:.1f} ms, p99 {t['p99_ms']:.1f} ms over "
                f"{t['n']} alerts; daemon arrival-to-verdict p50 {t['daemon_p50_ms']:.1f} ms, "
                f"p99 {t['daemon_p99_ms']:.1f} ms; lost {t['lost']:.0f}",
                flush=True,
            )
    finally:
        d.stop()
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
