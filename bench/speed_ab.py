"""The daemon's CPU per message, an older commit against this checkout, in one run (issue 15).

Usage::

    BENCH_FULL_SCRAPE=1 python bench/speed_ab.py [--before 8799a3b] [--detectors gaussian,lstm-vae]
        [--rounds 1] [--single 20000] [--batched 2000]

``--before`` is unpacked with ``git archive`` into a temporary folder (the repository and its
worktrees are not touched). Against one Mosquitto (``bench_live.Broker``), 1,000 sensors, each
round runs the bare paho subscriber (the ingest ceiling, with its own CPU per message), then
for each detector both daemons (before/after, then after/before in the next round), each
primed with a full window per sensor, then flooded with ``--single`` single-reading and
``--batched`` 50-reading QoS 1 messages (``bench_live.daemon_trial``). Beside each rate it
prints the daemon process's CPU time (user + system, from ``/proc``) per message: on a shared
machine whose load moves the rates two- or threefold within minutes, CPU per message moves
much less. ``BENCH_FULL_SCRAPE=1`` makes ``bench_live`` scrape both daemons whole, so that
the figures compare the daemons alone. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_live as bl
from ack_compare import unpack

SENSORS = 1000


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    """Run the rounds; print one line per trial and a JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--before", default="8799a3b", help="the commit to compare against")
    ap.add_argument("--detectors", default="gaussian,lstm-vae")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--single", type=int, default=20_000, help="single-reading messages")
    ap.add_argument("--batched", type=int, default=2_000, help="50-reading messages")
    args = ap.parse_args()
    dets = args.detectors.split(",")
    work = Path(tempfile.mkdtemp(prefix="sw-speed-ab-"))
    roots = {"before": work / "before", "after": bl.ROOT}
    short = unpack(args.before, roots["before"])

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}", flush=True)

    log(f"before = {short}, after = this checkout")
    bundles = bl.make_bundles(work, dict.fromkeys(dets, SENSORS), True, log)
    broker = bl.Broker(work / "broker")
    rounds = bl.Rounds()
    res: dict[str, list[float]] = {}
    try:
        for r in range(args.rounds):
            c = bl.ceiling_trial(broker.port, rounds.feed(SENSORS, args.single), 0, 3.0)
            res.setdefault("ceiling single", []).append(c["readings_per_s"])
            res.setdefault("ceiling single cpu_us", []).append(c["cpu_us_per_message"])
            log(
                f"ceiling single {c['readings_per_s']:,.0f}/s; subscriber CPU "
                f"{c['cpu_us_per_message']:.0f} us/message"
            )
            for det in dets:
                for who in ("before", "after") if r % 2 == 0 else ("after", "before"):
                    d = bl.Daemon(
                        work, broker.port, det, bundles[det], tag=f"-{who}{r}", root=roots[who]
                    )
                    try:
                        prime = rounds.feed(SENSORS, SENSORS * (bl.WINDOW + 5))
                        bl.daemon_trial(d, broker.port, prime, 0, 6.0)
                        for kind, msgs, batch in (
                            ("single", args.single, 1),
                            ("batched", args.batched, bl.BATCH),
                        ):
                            c0 = cpu_s(d.proc.pid)
                            feed = rounds.feed(SENSORS, msgs, batch)
                            t = bl.daemon_trial(d, broker.port, feed, 0, 6.0)
                            us = (cpu_s(d.proc.pid) - c0) / msgs * 1e6
                            res.setdefault(f"{det} {kind} {who}", []).append(t["readings_per_s"])
                            res.setdefault(f"{det} {kind} {who} cpu_us", []).append(us)
                            log(
                                f"{det} {kind} {who}: {t['readings_per_s']:,.0f} readings/s, "
                                f"zero loss {t['zero_loss']}; daemon CPU {us:.0f} us/message"
                            )
                    finally:
                        d.stop()
    finally:
        broker.stop()
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
