"""Live throughput, acknowledge-after-scoring against acknowledge-on-receipt, in one run.

Usage::

    python bench/ack_compare.py [--before 39f8795^] [--rounds 2] [--single 20000]
        [--batched 2000] [--report OUT.json] [--write docs/performance.md]

Issue 12 made the daemon acknowledge a QoS 1 message only once its readings are scored and
their alerts are in the outbox (MQTT 5 Receive Maximum 1,000 as the backpressure); before,
paho acknowledged each message as it arrived. This runs the same live workload through both:
the code before that change (``--before``, default the parent of commit 39f8795, unpacked
with ``git archive`` into a temporary folder, so the repository and its worktrees are not
touched) and this checkout, as ``streamwatch run`` subprocesses against one Mosquitto
(``bench_live.Broker``: persistence on, ``max_inflight_messages 0``), alternating
before/after (then after/before in the next round) so that the machine's drifting load hits
both alike. Each daemon is checked to be the code it should be (``/metrics`` has
``streamwatch_message_errors_total`` only after the change).

Workload per daemon (``bench_live``'s flood trials: the publisher offers everything at once
with at most 20,000 unacknowledged, the daemon's rate is the slope of its accounted readings):
10 sensors, ``--single`` single-reading JSON messages, then ``--batched`` 50-reading batches,
after a priming feed of a full window per sensor; for the ``gaussian`` and the ``robust``
(default) detector from bundles made here. Every reading must be accounted for (scored,
rejected or shed) with zero loss. Beside them, the bare paho subscriber's rate (the ingest
ceiling) at the start and the end. A benchmark, not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_live as bl

SENSORS = 10
DETECTORS = ("gaussian", "robust")
MARK = "streamwatch_message_errors_total"
"""A metric that only the code after the change has: tells the two daemons apart."""
BEGIN, END = "<!-- ack_compare -->", "<!-- /ack_compare -->"
FINDINGS = """Each cell: the median of the rounds (the rounds in brackets); readings/s of a flood
trial with zero loss. On the shared 2-core machine (other engineers' jobs: load average 5-9
during the runs so far) the same daemon's rate varies 2-3x between rounds, and the bare
subscriber's ceiling as much, so only a large difference would show. None did: the
after/before ratios scatter on both sides of 1. What acknowledging after scoring adds per
message is small: the same PUBACK, sent from the worker after its slice instead of from paho's
thread on arrival, an outbox flush per slice (a no-op without alerts), and the broker's
in-flight window (Receive Maximum 1,000 messages) which stays far ahead of a daemon that keeps
up."""


def unpack(commit: str, dest: Path) -> str:
    """The ``streamwatch`` package as of ``commit`` under ``dest``; returns the short hash."""
    short = subprocess.run(
        ["git", "rev-parse", "--short", commit], cwd=bl.ROOT, capture_output=True, text=True
    ).stdout.strip()
    if not short:
        raise SystemExit(f"no such commit: {commit}")
    tar = subprocess.run(
        ["git", "archive", "--format=tar", short, "streamwatch"], cwd=bl.ROOT, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(dest, filter="data")
    return short


def has_metric(port: int, name: str) -> bool:
    """Whether ``/metrics`` exposes ``name``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return f"\n{name} " in r.read().decode()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both daemons, alternately; returns the report."""
    started = time.time()
    log_lines: list[str] = []

    def log(msg: str) -> None:
        line = f"[{time.time() - started:6.1f}s load {os.getloadavg()[0]:.2f}] {msg}"
        log_lines.append(line)
        print(line, flush=True)

    work = Path(tempfile.mkdtemp(prefix="sw-ack-"))
    before_root = work / "before"
    before_root.mkdir()
    before = unpack(args.before, before_root)
    roots = {"before": before_root, "after": bl.ROOT}
    report: dict[str, Any] = {
        "machine": bl.machine_info(),
        "before_commit": before,
        "load_before": list(os.getloadavg()),
        "plan": {"sensors": SENSORS, "single": args.single, "batched": args.batched},
    }
    log(f"before = {before} (acknowledge on receipt), after = this checkout")
    os.environ["TF_NUM_INTRAOP_THREADS"] = "1"
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    bundles = bl.make_bundles(work, dict.fromkeys(DETECTORS, SENSORS), False, log)
    broker = bl.Broker(work)
    rounds = bl.Rounds()
    grace = 6.0
    results: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {
        v: {d: {"single": [], "batched": []} for d in DETECTORS} for v in roots
    }
    ceiling: dict[str, list[float]] = {"single": [], "batched": []}

    def ceilings() -> None:
        for kind, msgs, batch in (("single", args.single, 1), ("batched", args.batched, bl.BATCH)):
            c = bl.ceiling_trial(broker.port, rounds.feed(SENSORS, msgs, batch), 0, 3.0)
            ceiling[kind].append(c["readings_per_s"])
            log(f"ceiling {kind}: {c['readings_per_s']:,.0f} readings/s, lost {c['lost']}")

    try:
        ceilings()
        for r in range(args.rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for det in DETECTORS:
                for version in order:
                    d = bl.Daemon(
                        work, broker.port, det, bundles[det], (1, 1), f"-{version}-{r}",
                        root=roots[version],
                    )  # fmt: skip
                    try:
                        if has_metric(d.metrics_port, MARK) != (version == "after"):
                            raise SystemExit(f"the {version} daemon runs the wrong code")
                        bl.daemon_trial(
                            d, broker.port, rounds.feed(SENSORS, SENSORS * (bl.WINDOW + 5)), 0, 6
                        )
                        for kind, msgs, batch in (
                            ("single", args.single, 1),
                            ("batched", args.batched, bl.BATCH),
                        ):
                            t = bl.daemon_trial(
                                d, broker.port, rounds.feed(SENSORS, msgs, batch), 0, grace
                            )
                            results[version][det][kind].append(t)
                            log(
                                f"round {r} {version:6} {det:8} {kind:7}: "
                                f"{t['readings_per_s']:,.0f} readings/s, lost {t['lost']:.0f}, "
                                f"shed {t['shed']:.0f}, rejected {t['rejected']:.0f}"
                            )
                    finally:
                        d.stop()
        ceilings()
    finally:
        broker.stop()
    report["ceiling"] = ceiling
    report["results"] = results
    report["load_after"] = list(os.getloadavg())
    report["wall_s"] = time.time() - started
    report["log"] = log_lines
    return report


def table(report: dict[str, Any]) -> list[str]:
    """Markdown rows: per detector and message shape, median readings/s before and after."""
    rows = [
        "| workload | acknowledge on receipt (before) | after scoring (after) | after / before "
        "| zero loss |",
        "|---|---:|---:|---:|---|",
    ]
    res = report["results"]
    for det in DETECTORS:
        for kind in ("single", "batched"):
            b = [t["readings_per_s"] for t in res["before"][det][kind]]
            a = [t["readings_per_s"] for t in res["after"][det][kind]]
            ok = all(t["zero_loss"] for v in ("before", "after") for t in res[v][det][kind])
            shape = "1 reading/message" if kind == "single" else f"{bl.BATCH} readings/message"
            mb, ma = statistics.median(b), statistics.median(a)
            runs = " / ".join(f"{x:,.0f}" for x in b), " / ".join(f"{x:,.0f}" for x in a)
            rows.append(
                f"| {det}, {shape} | {mb:,.0f} ({runs[0]}) | {ma:,.0f} ({runs[1]}) "
                f"| {ma / mb:.2f} | {'yes' if ok else 'NO'} |"
            )
    pairs = [
        a["readings_per_s"] / b["readings_per_s"]
        for det in DETECTORS
        for kind in ("single", "batched")
        for a, b in zip(res["after"][det][kind], res["before"][det][kind], strict=True)
    ]
    gm = math.exp(statistics.fmean(math.log(x) for x in pairs))
    rows.append(
        f"| all of the above, after / before of the same round (geometric mean of {len(pairs)}; "
        f"range {min(pairs):.2f}-{max(pairs):.2f}) | | | {gm:.2f} | |"
    )
    for kind in ("single", "batched"):
        c = report["ceiling"][kind]
        shape = "1 reading/message" if kind == "single" else f"{bl.BATCH} readings/message"
        rows.append(
            f"| bare paho subscriber (ceiling), {shape} | {statistics.median(c):,.0f} "
            f"({' / '.join(f'{x:,.0f}' for x in c)}) | | | |"
        )
    return rows


def main() -> int:
    """Parse arguments, run, print (and optionally write) the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--before", default="39f8795^", help="the acknowledge-on-receipt commit")
    ap.add_argument("--rounds", type=int, default=2, help="before/after alternations")
    ap.add_argument("--single", type=int, default=20_000, help="single-reading messages")
    ap.add_argument("--batched", type=int, default=2_000, help="50-reading messages")
    ap.add_argument("--report", type=Path, help="write the full report as JSON here")
    ap.add_argument("--write", type=Path, help="replace the marked section of this Markdown file")
    ap.add_argument("--render", type=Path, help="no run: write the table of this --report file")
    args = ap.parse_args()
    if args.render:
        report = json.loads(args.render.read_text(encoding="utf-8"))
    else:
        report = run(args)
        report["command"] = " ".join(["python", "bench/ack_compare.py", *sys.argv[1:]])
    rows = table(report)
    print("\n".join(rows))
    if args.report and not args.render:
        args.report.write_text(json.dumps(report, indent=2, default=float))
    if args.write:
        text = args.write.read_text(encoding="utf-8")
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            tail = rest.split(END, 1)[1]
            m = report["machine"]
            body = [
                "",
                "## Acknowledge after scoring against acknowledge on receipt (issue 12)",
                "",
                f"Command: `{report['command']}` (written by it; see its docstring).",
                "",
                f"Measured against {report['before_commit']} (before) and commit "
                f"{m['commit']}{' (with uncommitted changes)' if m['dirty'] else ''} (after); "
                f"load average (1 min) {report['load_before'][0]:.2f} before, "
                f"{report['load_after'][0]:.2f} after; wall time {report['wall_s']:.0f} s.",
                "",
                *rows,
                "",
                FINDINGS,
                "",
            ]
            args.write.write_text(head + BEGIN + "\n".join(body) + END + tail, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
