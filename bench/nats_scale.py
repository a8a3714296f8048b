"""Scale-out on NATS JetStream (issue 16): readings/s with one and with two daemons, CPU per
reading, and reading-to-alert latency on the NATS path against the direct MQTT path.

Usage::

    python bench/nats_scale.py [--quick] [--rounds N] [--report OUT.json]
        [--write docs/scale-out.md]

One run on this machine, everything side by side (``bench_live``'s publisher, feeds, bundles,
``/metrics`` accounting and Mosquitto are reused, not copied):

1. **The NATS side.** One nats-server (JetStream on a temporary store, the partition mapping
   with P = 32, its MQTT listener) on free loopback ports; the stream is created first.
2. **Drain trials.** ``bench_live``'s QoS 1 publisher (MQTT 3.1.1, at most 20,000
   unacknowledged) sends a backlog of single-reading messages to the MQTT listener, which maps
   each into its partition of the stream: the ingest rate of that path is the readings over the
   time to the last PUBACK (and to the stream holding them all). Then ``streamwatch run``
   daemons (``ingest.transport = "jetstream"``, the Gaussian detector from a bundle made here,
   so nothing warms up) start on it: one owning partitions 0-31, or two owning 0-15 and 16-31.
   Their rate is the slope of the readings they account for (``readings + rejected + shed`` in
   ``/metrics``, summed) once every daemon is ready, until the backlog is done; every reading
   must be accounted for. CPU seconds per reading: ``utime + stime`` from ``/proc/<pid>/stat``
   of the daemon processes (and of nats-server) over the same interval. The one- and
   trials alternate (one, two, one with ``nats.fetch_batch = 1``; reversed in the next round)
   against the machine's drifting load.
3. **Latency.** A paced feed with spikes (half of the slower path's measured rate at most),
   each reading stamped with its send time; a separate subscriber takes receipt time minus
   the alert's ``ts``. NATS path: MQTT listener -> stream -> one JetStream daemon -> the alert
   on the core subject ``streamwatch.alerts.<sensor>`` -> a NATS subscriber, with the default
   ``nats.fetch_batch`` (100) and with 1 (a caught-up partition waits with a pull of one message
   and drains with pulls of ``fetch_batch``: ``streamwatch/ingest/ownership.py``). MQTT path:
   ``bench_live``'s Mosquitto -> an MQTT daemon -> ``streamwatch/alerts/<sensor>`` -> an MQTT
   subscriber (``bench_live.latency_trial``).

A benchmark, not a test: nothing here asserts a timing. Figures go in docs/scale-out.md.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_live as bl
from nats_trials import (
    FETCH_BATCH,
    NATS_SERVER,
    JetStreamDaemon,
    NatsServer,
    P,
    cpu_seconds,
    create_stream,
    drain_trial,
    nats_latency_trial,
)

BEGIN, END = "<!-- nats_scale -->", "<!-- /nats_scale -->"
DRAINS: dict[str, tuple[list[str], int]] = {
    "one": ([f"0-{P - 1}"], FETCH_BATCH),
    "two": ([f"0-{P // 2 - 1}", f"{P // 2}-{P - 1}"], FETCH_BATCH),
    "one_fetch1": ([f"0-{P - 1}"], 1),
}
"""Drain trials: the daemons' partition ranges and ``nats.fetch_batch``."""


# -- the run ------------------------------------------------------------------------------


def run(quick: bool, rounds_n: int) -> dict[str, Any]:
    """Everything, in order; returns the report."""
    started = time.time()
    lines: list[str] = []

    def log(msg: str) -> None:
        line = f"[{time.time() - started:6.1f}s load {os.getloadavg()[0]:.2f}] {msg}"
        lines.append(line)
        print(line, flush=True)

    sensors = 100 if quick else 500
    messages = 12_000 if quick else 60_000
    latency_rate, latency_s = (400.0, 4.0) if quick else (1000.0, 10.0)
    grace = 6.0
    work = Path(tempfile.mkdtemp(prefix="sw-nats-bench-"))
    report: dict[str, Any] = {
        "machine": bl.machine_info(),
        "quick": quick,
        "plan": {"sensors": sensors, "messages": messages, "partitions": P, "rounds": rounds_n},
        "load_before": list(os.getloadavg()),
    }
    nats_server: NatsServer | None = None
    broker: bl.Broker | None = None
    try:
        bundle = bl.make_bundles(work, {"gaussian": sensors}, quick, log)["gaussian"]
        nats_server = NatsServer(work)
        report["machine"]["versions"]["nats-server"] = nats_server.version
        create_stream(nats_server.url)
        rounds = bl.Rounds()
        trials: dict[str, list[dict[str, Any]]] = {k: [] for k in DRAINS}
        for r in range(rounds_n):
            order = list(DRAINS) if r % 2 == 0 else list(reversed(DRAINS))
            for kind in order:
                ranges, fetch_batch = DRAINS[kind]
                t = drain_trial(
                    nats_server,
                    work,
                    bundle,
                    rounds.feed(sensors, messages),
                    ranges,
                    f"{kind}{r}",
                    grace,
                    fetch_batch,
                )
                trials[kind].append(t)
                log(
                    f"round {r} {kind}: {t['readings_per_s']:,.0f} readings/s, "
                    f"daemon CPU {t['daemon_cpu_s_per_reading'] * 1e6:.0f} µs/reading "
                    f"({t['daemon_cpu_cores']:.2f} cores), nats-server "
                    f"{t['nats_cpu_s_per_reading'] * 1e6:.0f} µs/reading, lost {t['lost']:.0f}; "
                    f"MQTT listener in: {t['ingest']['readings_per_s_to_stored']:,.0f} readings/s"
                )
        report["drain"] = trials

        # Latency, NATS path then MQTT path, at the same offered rate.
        lat: dict[str, Any] = {}
        msgs = int(latency_rate * latency_s)
        spike = max(100, int(latency_rate / 100))
        for key, fetch_batch in (("nats", FETCH_BATCH), ("nats_fetch1", 1)):
            d = JetStreamDaemon(
                work, nats_server.url, bundle, f"0-{P - 1}", f"-latency-{key}", fetch_batch
            )
            d.wait_ready()
            try:
                prime = rounds.feed(sensors, sensors * 25)
                bl.daemon_trial(d, nats_server.mqtt_port, prime, 0, grace)
                c0 = cpu_seconds(d.proc.pid)
                lat[key] = nats_latency_trial(
                    d, nats_server, rounds.feed(sensors, msgs, 1, spike), latency_rate, grace
                )
                lat[key]["daemon_cpu_s_per_reading"] = (cpu_seconds(d.proc.pid) - c0) / msgs
            finally:
                d.stop()
        nats_server.stop()
        nats_server = None
        broker = bl.Broker(work)
        m = bl.Daemon(work, broker.port, "gaussian", bundle, (1, 1), "-mqtt-latency")
        try:
            bl.daemon_trial(m, broker.port, rounds.feed(sensors, sensors * 25), 0, grace)
            c0 = cpu_seconds(m.proc.pid)
            lat["mqtt"] = bl.latency_trial(
                m, broker.port, rounds.feed(sensors, msgs, 1, spike), latency_rate, grace
            )
            lat["mqtt"]["daemon_cpu_s_per_reading"] = (cpu_seconds(m.proc.pid) - c0) / msgs
        finally:
            m.stop()
        for path, t in lat.items():
            log(
                f"latency {path} at {latency_rate:,.0f} readings/s: p50 {t['p50_ms']:.1f} ms, "
                f"p99 {t['p99_ms']:.1f} ms over {t['n']} alerts, lost {t['lost']:.0f}; daemon "
                f"arrival-to-verdict p50 {t['daemon_p50_ms']:.1f} ms, p99 "
                f"{t['daemon_p99_ms']:.1f} ms; daemon CPU "
                f"{t['daemon_cpu_s_per_reading'] * 1e6:.0f} µs/reading"
            )
        report["latency"] = lat
    finally:
        if nats_server is not None:
            nats_server.stop()
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    report["load_after"] = list(os.getloadavg())
    report["wall_s"] = time.time() - started
    report["log"] = lines
    return report


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def markdown(r: dict[str, Any], command: str) -> str:
    """The section written into docs/scale-out.md between the markers."""
    m = r["machine"]
    out = [
        BEGIN,
        "",
        f"Measured with `{command}` (commit {m['commit']}"
        + (", uncommitted changes" if m["dirty"] else "")
        + f"; {m['cpu']}, {m['cores']} cores, {m['versions']['nats-server']}, "
        f"load average {r['load_before'][0]:.1f} before and {r['load_after'][0]:.1f} after, "
        f"{r['wall_s']:.0f} s). {r['plan']['sensors']} sensors, single-reading JSON messages, "
        f"P = {P}, Gaussian detector from a bundle; each cell is the median over the rounds "
        "(all rounds in brackets).",
        "",
        "| | one daemon (0-31) | two daemons (0-15, 16-31) | one daemon, fetch_batch 1 |",
        "|---|---|---|---|",
    ]

    def row(name: str, key: Callable[[dict[str, Any]], float], fmt: str) -> str:
        cells = []
        for kind in DRAINS:
            xs = [key(t) for t in r["drain"][kind]]
            runs = ", ".join(fmt.format(x) for x in xs)
            cells.append(f"{fmt.format(_median(xs))} ({runs})")
        return f"| {name} | " + " | ".join(cells) + " |"

    out += [
        row("readings/s drained from the stream", lambda t: t["readings_per_s"], "{:,.0f}"),
        row(
            "daemon CPU µs per reading (all daemons)",
            lambda t: t["daemon_cpu_s_per_reading"] * 1e6,
            "{:.0f}",
        ),
        row("daemon CPU, cores busy", lambda t: t["daemon_cpu_cores"], "{:.2f}"),
        row(
            "nats-server CPU µs per reading (serving the pulls)",
            lambda t: t["nats_cpu_s_per_reading"] * 1e6,
            "{:.0f}",
        ),
        row(
            "MQTT listener into the stream, readings/s (before the daemons start)",
            lambda t: t["ingest"]["readings_per_s_to_stored"],
            "{:,.0f}",
        ),
        row("readings lost", lambda t: t["lost"], "{:.0f}"),
        "",
        "Reading-to-alert latency (receipt of the alert minus the send time of the reading "
        "that raised it), one daemon, same feed and offered rate:",
        "",
        "| path | offered readings/s | alerts | p50 ms | p99 ms | daemon arrival-to-verdict "
        "p50 / p99 ms | daemon CPU µs per reading | lost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "nats": "MQTT listener -> JetStream -> daemon -> core NATS alert",
        "nats_fetch1": "the same, nats.fetch_batch = 1",
        "mqtt": "Mosquitto -> daemon -> MQTT alert",
    }
    for path, t in r["latency"].items():
        out.append(
            f"| {names[path]} | {t['offered_readings_per_s']:,.0f} | {t['n']} | "
            f"{t['p50_ms']:.1f} | {t['p99_ms']:.1f} | {t['daemon_p50_ms']:.1f} / "
            f"{t['daemon_p99_ms']:.1f} | {t['daemon_cpu_s_per_reading'] * 1e6:.0f} | "
            f"{t['lost']:.0f} |"
        )
    out += ["", END]
    return "\n".join(out)


def main() -> int:
    """Parse arguments; run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a run of about a minute")
    ap.add_argument("--rounds", type=int, default=0, help="drain rounds (default 1 quick, 2 full)")
    ap.add_argument("--report", type=Path, help="write the full report as JSON here")
    ap.add_argument("--write", type=Path, help="replace the marked section of this Markdown file")
    args = ap.parse_args()
    if NATS_SERVER is None:
        print("nats-server not found (apt-get install nats-server)", file=sys.stderr)
        return 2
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        print("mosquitto not found (apt-get install mosquitto)", file=sys.stderr)
        return 2
    rounds_n = args.rounds or (1 if args.quick else 2)
    report = run(args.quick, rounds_n)
    command = " ".join(["python", "bench/nats_scale.py", *sys.argv[1:]])
    report["command"] = command
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2, default=float))
    text = markdown(report, command)
    if args.write:
        old = args.write.read_text(encoding="utf-8") if args.write.exists() else ""
        if BEGIN in old and END in old:
            new = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END) :]
        else:
            new = old.rstrip("\n") + "\n\n" + text + "\n"
        args.write.write_text(new, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
