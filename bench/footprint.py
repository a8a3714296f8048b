"""Edge footprint: disk, memory and cold start of the two installs, side by side in one run.

Usage::

    .venv/bin/python bench/footprint.py --lean-python /tmp/lean/bin/python [--sensors 1000]
        [--write docs/performance-footprint.md]

``--lean-python`` is the interpreter of an install made without the ``train`` extra, e.g.
``python3 -m venv /tmp/lean && /tmp/lean/bin/pip install '.[litert]'``. For each
configuration below a Mosquitto started here feeds ``streamwatch run`` (a subprocess) a full
window for every one of ``--sensors`` sensors, from a trained LSTM-VAE (or robust) bundle with
every sensor in it:

* the full install, LSTM-VAE scored by TensorFlow (``engine.inference = "tensorflow"``);
* the full install, the same bundle scored by numpy (``inference = "numpy"``);
* the full install, ``auto``: the bundle's LiteRT models, TensorFlow never imported;
* the lean install (no TensorFlow), the same bundle scored by its LiteRT models (``auto``,
  with ``ai-edge-litert`` installed);
* the lean install, the same bundle scored by numpy (``inference = "numpy"``: what ``auto``
  falls back to without ``ai-edge-litert``);
* the lean install, the robust detector (the default).

The bundle is trained with its LiteRT export (``streamwatch train``'s). An install without the
``litert`` extra is smaller on disk by what ``ai-edge-litert`` takes; the numpy row's memory is
what it would use (``ai_edge_litert`` is never imported there).

Reported: the install's size on disk (its ``sys.prefix``), the process's RSS and peak RSS once
every sensor has been scored, cold start (process spawned to ``/readyz`` with the worker
turning, the model loaded and warmed up), and the first feed's time to the last verdict.

A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_live import PY, WINDOW, Broker, Daemon, Feed, daemon_trial, make_bundles


def prefix_mib(python: str) -> float:
    """Size on disk (MiB) of the environment an interpreter runs in (its ``sys.prefix``)."""
    prefix = subprocess.run(
        [python, "-c", "import sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    out = subprocess.run(["du", "-sm", prefix], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[0])


def trial(
    workdir: Path,
    broker: Broker,
    label: str,
    python: str,
    detector: str,
    model: Path,
    inference: str,
    sensors: int,
    first_round: int,
) -> dict[str, Any]:
    """One daemon: cold start, a full window per sensor, then its memory."""
    d = Daemon(
        workdir, broker.port, detector, model, tag=f"-{len(label)}-{inference}",
        python=python, inference=inference,
    )  # fmt: skip
    try:
        feed = Feed(sensors, sensors * (WINDOW + 1), 1, first_round, time.time() + 1, seed=1)
        m = daemon_trial(d, broker.port, feed, 0, grace=60.0)
        time.sleep(1.0)
        rss, hwm = d.rss_mib()
    finally:
        d.stop()
    return {
        "config": label,
        "disk_mib": prefix_mib(python),
        "rss_mib": rss,
        "peak_rss_mib": hwm,
        "cold_start_s": d.startup_s,
        "first_feed_s": m["seconds"],
        "readings": m["accounted"],
        "lost": m["lost"],
        "rounds": feed.rounds,
    }


def markdown(rows: list[dict[str, Any]], command: str, sensors: int) -> str:
    """The results as a Markdown page."""
    base = rows[0]
    lines = [
        "# Edge footprint",
        "",
        f"Written by `bench/footprint.py`, one run: `{command}`.",
        "",
        f"Each row: `streamwatch run` from a bundle holding {sensors:,} sensors (window "
        f"{WINDOW}), fed a full window for every sensor through a local Mosquitto. Ratios are "
        "to the first row.",
        "",
        "| configuration | install on disk (MiB) | RSS (MiB) | peak RSS (MiB) | RSS ratio | "
        "cold start to ready (s) | first feed scored (s) | lost |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['disk_mib']:,.0f} | {r['rss_mib']:,.0f} | "
            f"{r['peak_rss_mib']:,.0f} | {r['rss_mib'] / base['rss_mib']:.2f} | "
            f"{r['cold_start_s']:.1f} | {r['first_feed_s']:.1f} | {r['lost']:,.0f} |"
        )
    lines += [
        "",
        "Cold start is from the process being spawned to `/readyz` answering 200 with the "
        "worker loop turning: the config read, the bundle loaded and verified, the scorer "
        "warmed up (XLA compiles with TensorFlow), the broker connected. *First feed scored* is "
        f"the time from the first of {sensors * (WINDOW + 1):,} single-reading messages being "
        "published to the last of them being scored.",
        "",
        "The lean install has the `litert` extra (`pip install '.[litert]'`); the LSTM-VAE "
        "bundle holds LiteRT models (`streamwatch train`'s export), which the lean install's "
        '`auto` scores with, and `inference = "numpy"` leaves unused (`ai_edge_litert` is '
        "never imported then). Times come from a machine shared with other jobs and vary "
        "from run to run.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    """Run every configuration, print the table, optionally write it."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lean-python", required=True, help="python of an install without [train]")
    ap.add_argument("--sensors", type=int, default=1000)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    probe = subprocess.run(
        [args.lean_python, "-c", "import importlib.util as u; print(u.find_spec('tensorflow'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    if probe.stdout.strip() != "None":
        ap.error(f"{args.lean_python} has TensorFlow installed: not a lean install")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundles = make_bundles(
            work, {"lstm-vae": args.sensors, "robust": args.sensors}, True, print, litert=True
        )
        broker = Broker(work / "broker")
        try:
            plan = [
                ("full install, LSTM-VAE, TensorFlow", PY, "lstm-vae", "tensorflow"),
                ("full install, LSTM-VAE, numpy", PY, "lstm-vae", "numpy"),
                ("full install, LSTM-VAE, auto (LiteRT)", PY, "lstm-vae", "auto"),
                ("lean install, LSTM-VAE (LiteRT)", args.lean_python, "lstm-vae", "auto"),
                ("lean install, LSTM-VAE (numpy)", args.lean_python, "lstm-vae", "numpy"),
                ("lean install, robust", args.lean_python, "robust", "auto"),
            ]
            first = 0
            for label, python, det, inference in plan:
                r = trial(
                    work, broker, label, python, det, bundles[det], inference, args.sensors,
                    first,
                )  # fmt: skip
                first += r["rounds"] + 10
                rows.append(r)
                print(json.dumps(r), flush=True)
        finally:
            broker.stop()
    text = markdown(rows, " ".join([".venv/bin/python", *sys.argv]), args.sensors)
    print(text)
    if args.write:
        args.write.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
