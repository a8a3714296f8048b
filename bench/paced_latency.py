"""Reading-to-alert latency of one daemon at given offered rates (issue 15).

Usage::

    python bench/paced_latency.py --rates 16000,4000 [--detector gaussian|gmm|lstm-vae]
        [--qos 0|1] [--broker-nodelay] [--tf] [--root /path/to/an/older/checkout]

One Mosquitto (``bench_live``'s; ``--broker-nodelay`` adds ``set_tcp_nodelay true``) and one
``streamwatch run`` (1,000 sensors, primed with a full window each), then for each rate
``bench_live.latency_trial``: single-reading messages at ``--qos`` stamped with their send
time for 6 s, with spikes, a separate subscriber timing every raised alert, and the daemon's
own arrival-to-verdict histogram beside it. The LSTM-VAE bundle carries its LiteRT export
(as ``streamwatch train`` makes it) unless ``--tf``. ``--root`` runs the ``streamwatch``
package found there (e.g. an older commit unpacked with ``git archive``), for A/B runs.
A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_live as bl

_GC_HOOK = """
import atexit, gc, os, time
_start = [0.0]
_seen = {}
def _cb(phase, info):
    if phase == "start":
        _start[0] = time.perf_counter()
    else:
        _seen.setdefault(info["generation"], []).append(time.perf_counter() - _start[0])
def _dump():
    with open(os.path.join("OUT", f"gc-{os.getpid()}.txt"), "w") as f:
        for g, xs in sorted(_seen.items()):
            xs.sort()
            f.write(f"generation {g}: {len(xs)} collections, longest {xs[-1] * 1e3:.1f} ms, "
                    f"{sum(x > 0.005 for x in xs)} over 5 ms, {sum(xs) * 1e3:.0f} ms in all\\n")
gc.callbacks.append(_cb)
atexit.register(_dump)
"""
"""A ``sitecustomize`` for the daemon (``--gc-log``): times every collection, writes a
summary per generation at exit."""


def main() -> int:
    """Run the trials; print one line per rate."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rates", default="5193,3000", help="offered readings/s, comma-separated")
    ap.add_argument("--detector", default="gaussian", choices=("gaussian", "gmm", "lstm-vae"))
    ap.add_argument("--qos", type=int, default=1, choices=(0, 1))
    ap.add_argument("--broker-nodelay", action="store_true", help="set_tcp_nodelay true")
    ap.add_argument("--tf", action="store_true", help="LSTM-VAE without its LiteRT export")
    ap.add_argument("--root", type=Path, help="run the streamwatch package found here")
    ap.add_argument(
        "--gc-log",
        action="store_true",
        help="time the daemon's garbage collections (gc.callbacks) and print them at the end",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sw-paced-"))
    os.chmod(work, 0o755)  # Mosquitto, started as root, drops to its own user
    det, qos = args.detector, args.qos
    pythonpath = os.environ.get("PYTHONPATH")
    if args.gc_log:
        site = work / "gcsite"
        site.mkdir()
        (site / "sitecustomize.py").write_text(_GC_HOOK.replace("OUT", str(work)))
        os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [pythonpath])])
    bundles = bl.make_bundles(work, {det: 1000}, True, print, litert=not args.tf)
    broker = bl.Broker(work / "broker", ["set_tcp_nodelay true"] if args.broker_nodelay else [])
    d = bl.Daemon(work, broker.port, det, bundles[det], root=args.root, qos=qos)
    if args.gc_log:  # only the daemon gets the hook
        os.environ.pop("PYTHONPATH")
        if pythonpath is not None:
            os.environ["PYTHONPATH"] = pythonpath
    rounds = bl.Rounds()
    try:
        bl.daemon_trial(d, broker.port, rounds.feed(1000, 1000 * (bl.WINDOW + 5), qos=qos), 0, 30)
        for rate in (float(x) for x in args.rates.split(",")):
            feed = rounds.feed(1000, int(rate * 6), 1, max(100, int(rate / 100)), qos)
            t = bl.latency_trial(d, broker.port, feed, rate, 6.0)
            print(
                f"{det} QoS {qos} at {rate:,.0f}/s: p50 {t['p50_ms']:.1f} ms, "
                f"p99 {t['p99_ms']:.1f} ms over {t['n']} alerts; daemon arrival-to-verdict "
                f"p50 {t['daemon_p50_ms']:.1f} ms, p99 {t['daemon_p99_ms']:.1f} ms; "
                f"lost {t['lost']:.0f}",
                flush=True,
            )
    finally:
        d.stop()
        broker.stop()
    if args.gc_log:
        for f in sorted(work.glob(f"gc-{d.proc.pid}.txt")):
            print(f"daemon's collections (whole run, start-up included):\n{f.read_text()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
