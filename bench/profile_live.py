"""Where a live daemon's time goes: py-spy samples of ``streamwatch run`` (gaussian, 1,000
sensors) while a publisher floods it with single-reading QoS 1 messages through Mosquitto.

Usage::

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile_live.py [--seconds 12] [--out /tmp/prof_raw.txt]

Prints the share of samples per thread and the top functions (self and inclusive). A
benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench_live import WINDOW, Broker, Daemon, Feed, daemon_trial, make_bundles


def summary(raw: Path, top: int) -> str:
    """Thread shares and the top functions of a py-spy raw (collapsed) profile."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        total += int(n)
        threads[frames[0]] += int(n)
        own[frames[-1]] += int(n)
        for f in set(frames):
            incl[f] += int(n)
    out = [f"{total} samples"]
    out += [f"{n / total:6.1%} {t}" for t, n in threads.most_common(6)]
    out += ["-- self"] + [f"{n / total:6.1%} {f}" for f, n in own.most_common(top)]
    out += ["-- inclusive"] + [f"{n / total:6.1%} {f}" for f, n in incl.most_common(top)]
    return "\n".join(out)


def main() -> int:
    """Start a broker and a daemon, profile it under a flood, print the summary."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=12)
    ap.add_argument("--out", type=Path, default=Path("/tmp/prof_raw.txt"))
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--batch", type=int, default=1, help="readings per message")
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    work = Path(tempfile.mkdtemp())
    bundles = make_bundles(work, {"gaussian": 1000}, True, print)
    broker = Broker(work / "broker")
    d = Daemon(work, broker.port, "gaussian", bundles["gaussian"])
    try:
        daemon_trial(d, broker.port, Feed(1000, 1000 * (WINDOW + 1), 1, 0, time.time()), 0, 30.0)
        rec = subprocess.Popen(
            [spy, "record", "-p", str(d.proc.pid), "-d", str(args.seconds), "-r", "200",
             "-f", "raw", "-o", str(args.out), "--threads", "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        msgs = 200_000 // args.batch
        feed = Feed(1000, msgs, args.batch, 100, time.time(), seed=2)
        r = daemon_trial(d, broker.port, feed, 0, 30)
        print(f"{r['readings_per_s']:,.0f} readings/s, lost {r['lost']:.0f}")
        rec.wait(args.seconds + 60)
    finally:
        d.stop()
        broker.stop()
    print(summary(args.out, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
