"""Soak test: the daemon under steady load for a long time, through a real Mosquitto.

Starts its own Mosquitto (persistence on, large queues) on a free port and ``streamwatch run``
as a subprocess, publishes readings at a steady rate at QoS 1 (counting only those the broker
acknowledged), and every ``--interval`` seconds records the daemon's RSS and CPU, readings in
(acknowledged) and out (``streamwatch_readings_total``), and the p50/p99 processing latency of
that interval from the ``streamwatch_processing_latency_seconds`` histogram. At the end it stops
publishing, waits for the daemon to drain, stops it with SIGTERM and computes the loss.

Writes ``soak.csv`` (one row per sample) and ``soak.md`` (a summary) to ``--out``.

    .venv/bin/python bench/soak.py                 # 30 minutes, 50 sensors x 10 readings/s
    .venv/bin/python bench/soak.py --minutes 5 --out /tmp/soak

Needs the ``mosquitto`` binary. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from streamwatch.embedded_broker import free_port, wait_port

CLK_TCK = os.sysconf("SC_CLK_TCK")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


# -- processes --------------------------------------------------------------------------------


def start_mosquitto(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """Mosquitto with persistence and queues large enough for a restart's worth of readings."""
    data = workdir / "mosquitto-data"
    data.mkdir()
    for d in (workdir, data):
        d.chmod(0o777)  # started as root, Mosquitto drops to its own user
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence true\n"
        f"persistence_location {data}/\n"
        "max_queued_messages 1000000\n"
        "max_inflight_messages 0\n"
        f"log_dest file {workdir / 'mosquitto.log'}\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
    )
    conf.chmod(0o644)
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)])
    wait_port(port, timeout=15.0)
    return proc


def start_daemon(
    workdir: Path, broker_port: int, metrics_port: int, warmup: int
) -> tuple[subprocess.Popen[bytes], Path]:
    conf = workdir / "streamwatch.toml"
    conf.write_text(
        f'state_dir = "{workdir / "state"}"\n'
        "[mqtt]\n"
        f'broker = "mqtt://127.0.0.1:{broker_port}"\n'
        'client_id = "streamwatch-soak"\n'
        "[detector]\n"
        'type = "gaussian"\n'
        "[learning]\n"
        f"warmup = {warmup}\n"
        "[threshold]\n"
        "false_alarm_rate = 1e-5\n"
        "[alerts]\n"
        "raise_k = 2\nraise_n = 3\nclear_m = 10\n"
        "[metrics]\n"
        'host = "127.0.0.1"\n'
        f"port = {metrics_port}\n"
    )
    log = workdir / "daemon.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamwatch", "run", "--config", str(conf)],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    return proc, log


# -- load -------------------------------------------------------------------------------------


class Load:
    """Publishes ``sensors`` x ``rate`` readings/s on a fixed schedule, at QoS 1.

    Each sensor is a sine (period 50 readings) with noise; now and then five readings in a row
    are far off (an anomaly), so the alert path is exercised too. Timestamps are the
    schedule's, strictly increasing.
    """

    def __init__(self, port: int, sensors: int, rate: float, spike_every: int, seed: int) -> None:
        import random

        self.sensors, self.rate, self.spike_every = sensors, rate, spike_every
        self.rng = random.Random(seed)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="soak-load", protocol=mqtt.MQTTv5
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.published = 0
        self.acked = 0
        self._lock = threading.Lock()
        self.client.on_publish = self._on_publish
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self.late_ticks = 0
        self._excursion = [0] * sensors

    def _on_publish(self, c: mqtt.Client, u: object, mid: int, rc: object, p: object) -> None:
        with self._lock:
            self.acked += 1

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        period = 1.0 / self.rate
        start = time.time()
        tick = 0
        while not self._stop.is_set():
            due = start + tick * period
            delay = due - time.time()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -1.0:
                self.late_ticks += 1
            for s in range(self.sensors):
                v = 10.0 + s + math.sin(2 * math.pi * tick / 50.0 + s) + self.rng.gauss(0, 0.1)
                if self.spike_every and self.rng.randrange(self.spike_every) == 0:
                    self._excursion[s] = 5  # five readings far off: one alert, then a clear
                if self._excursion[s]:
                    self._excursion[s] -= 1
                    v += 25.0
                body = json.dumps({"value": round(v, 5), "ts": round(due, 6)})
                self.client.publish(f"sensors/soak/{s:03d}", body, qos=1)
                self.published += 1
            tick += 1

    def stop(self, flush_s: float = 60.0) -> None:
        self._stop.set()
        self._thread.join(10)
        deadline = time.monotonic() + flush_s
        while self.acked < self.published and time.monotonic() < deadline:
            time.sleep(0.1)
        self.client.disconnect()
        self.client.loop_stop()


# -- sampling ---------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, list[tuple[str, float]]]:
    """/metrics as {name: [(labels, value), ...]}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out.setdefault(m.group(1), []).append((m.group(2) or "", float(m.group(3))))
    return out


def total(metrics: dict[str, list[tuple[str, float]]], name: str) -> float:
    return sum(v for _, v in metrics.get(name, []))


def buckets(metrics: dict[str, list[tuple[str, float]]], name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) of a label-less histogram."""
    out = []
    for labels, v in metrics.get(name + "_bucket", []):
        le = re.search(r'le="([^"]+)"', labels)
        if le:
            out.append((math.inf if le.group(1) == "+Inf" else float(le.group(1)), v))
    return sorted(out)


def quantile(q: float, cum: list[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile: linear within the bucket that holds the rank."""
    if not cum or cum[-1][1] <= 0:
        return math.nan
    rank = q * cum[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in cum:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return cum[-1][0]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return math.nan


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Sample:
    t_s: float
    rss_mib: float
    cpu_pct: float
    published: int
    acked: int
    scored: float
    rejected: float
    shed: float
    alerts_raised: float
    queue: float
    p50_ms: float
    p99_ms: float
    extra: dict[str, float] = field(default_factory=dict)


# -- the run ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    ap.add_argument("--sensors", type=int, default=50, help="simulated sensors (default 50)")
    ap.add_argument("--rate", type=float, default=10.0, help="readings/s per sensor (default 10)")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--warmup", type=int, default=500, help="detector.warmup (default 500)")
    ap.add_argument(
        "--spike-every", type=int, default=20000, help="1 in N readings starts an anomaly"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("bench/results/soak"), help="output folder")
    args = ap.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="sw-soak-"))
    broker_port, metrics_port = free_port(), free_port()
    broker = start_mosquitto(workdir, broker_port)
    daemon, daemon_log = start_daemon(workdir, broker_port, metrics_port, args.warmup)
    load: Load | None = None
    samples: list[Sample] = []
    exit_code: int | None = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{metrics_port}/readyz", timeout=2
                ) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit(f"daemon did not become ready; see {daemon_log}")
            time.sleep(0.2)
        load = Load(broker_port, args.sensors, args.rate, args.spike_every, args.seed)
        t0 = time.monotonic()
        load.start()
        print(
            f"soak: {args.sensors} sensors x {args.rate:g}/s for {args.minutes:g} min; "
            f"daemon pid {daemon.pid}, metrics :{metrics_port}, broker :{broker_port}",
            flush=True,
        )
        prev_cum: list[tuple[float, float]] = []
        prev_cpu, prev_t = cpu_s(daemon.pid), time.monotonic()
        end = t0 + args.minutes * 60.0
        while (now := time.monotonic()) < end:
            time.sleep(min(args.interval, max(0.0, end - now)))
            if daemon.poll() is not None:
                raise SystemExit(f"daemon exited with {daemon.returncode}; see {daemon_log}")
            m = scrape(metrics_port)
            cum = buckets(m, "streamwatch_processing_latency_seconds")
            delta = [(b, c - (prev_cum[i][1] if prev_cum else 0.0)) for i, (b, c) in enumerate(cum)]
            prev_cum = cum
            cpu, t = cpu_s(daemon.pid), time.monotonic()
            s = Sample(
                t_s=round(t - t0, 1),
                rss_mib=round(rss_mib(daemon.pid), 1),
                cpu_pct=round(100.0 * (cpu - prev_cpu) / (t - prev_t), 1),
                published=load.published,
                acked=load.acked,
                scored=total(m, "streamwatch_readings_total"),
                rejected=total(m, "streamwatch_rejected_total"),
                shed=total(m, "streamwatch_readings_shed_total"),
                alerts_raised=total(m, "streamwatch_alerts_raised_total"),
                queue=total(m, "streamwatch_queue_readings"),
                p50_ms=round(1000 * quantile(0.50, delta), 3),
                p99_ms=round(1000 * quantile(0.99, delta), 3),
            )
            prev_cpu, prev_t = cpu, t
            samples.append(s)
            print(
                f"  t={s.t_s:7.0f}s rss={s.rss_mib:6.1f} MiB cpu={s.cpu_pct:5.1f}% "
                f"acked={s.acked} scored={s.scored:.0f} p99={s.p99_ms:.2f} ms",
                flush=True,
            )
        load.stop()
        # Drain: everything the broker acknowledged must come out as a scored reading.
        deadline = time.monotonic() + 120
        scored = 0.0
        while time.monotonic() < deadline:
            scored = total(scrape(metrics_port), "streamwatch_readings_total")
            if scored >= load.acked:
                break
            time.sleep(0.5)
        final = scrape(metrics_port)
        ran_s = time.monotonic() - t0
        daemon.send_signal(signal.SIGTERM)
        exit_code = daemon.wait(60)
    finally:
        if load is not None and not load._stop.is_set():
            load.stop(flush_s=5)
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
        broker.terminate()
        broker.wait(10)

    write_csv(args.out / "soak.csv", samples)
    summary = summarise(args, samples, final, load, ran_s, exit_code, daemon_log)
    (args.out / "soak.md").write_text(summary)
    shutil.copy(daemon_log, args.out / "daemon.log")
    print(summary)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def write_csv(path: Path, samples: list[Sample]) -> None:
    cols = [f for f in Sample.__dataclass_fields__ if f != "extra"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for s in samples:
            w.writerow([getattr(s, c) for c in cols])


def _slope_per_hour(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2:
        return math.nan
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 3600.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def summarise(
    args: argparse.Namespace,
    samples: list[Sample],
    final: dict[str, list[tuple[str, float]]],
    load: Load | None,
    ran_s: float,
    exit_code: int | None,
    daemon_log: Path,
) -> str:
    assert load is not None and samples
    scored = total(final, "streamwatch_readings_total")
    rss = [s.rss_mib for s in samples]
    tail = samples[len(samples) // 5 :] or samples  # after the first fifth (warm-up, imports)
    p99 = [s.p99_ms for s in samples if not math.isnan(s.p99_ms)] or [math.nan]
    p50 = [s.p50_ms for s in samples if not math.isnan(s.p50_ms)] or [math.nan]
    cpu = [s.cpu_pct for s in samples]
    cum = buckets(final, "streamwatch_processing_latency_seconds")
    log_text = daemon_log.read_text(errors="replace")
    warnings = sum(" WARNING " in ln for ln in log_text.splitlines())
    errors = sum(" ERROR " in ln for ln in log_text.splitlines())
    lines = [
        "# streamwatch soak",
        "",
        f"- ran: {ran_s / 60:.1f} min (asked {args.minutes:g}), sampled every {args.interval:g} s",
        f"- load: {args.sensors} sensors x {args.rate:g} readings/s = "
        f"{args.sensors * args.rate:g} readings/s, QoS 1, one JSON reading per message; "
        f"1 in {args.spike_every} readings starts a 5-reading excursion",
        f"- detector: gaussian, warmup {args.warmup}; daemon exit code on SIGTERM: {exit_code}",
        "",
        "| figure | value |",
        "|---|---|",
        f"| readings published | {load.published} |",
        f"| acknowledged by the broker | {load.acked} |",
        f"| scored (`streamwatch_readings_total`) | {scored:.0f} |",
        f"| lost (acknowledged - scored) | {load.acked - scored:.0f} |",
        f"| rejected / shed | {total(final, 'streamwatch_rejected_total'):.0f} / "
        f"{total(final, 'streamwatch_readings_shed_total'):.0f} |",
        f"| alerts raised / cleared | {total(final, 'streamwatch_alerts_raised_total'):.0f} / "
        f"{total(final, 'streamwatch_alerts_cleared_total'):.0f} |",
        f"| RSS first sample / after first fifth / last / max | {rss[0]:.1f} / "
        f"{tail[0].rss_mib:.1f} / {rss[-1]:.1f} / {max(rss):.1f} MiB |",
        f"| RSS trend after the first fifth | "
        f"{_slope_per_hour([s.t_s for s in tail], [s.rss_mib for s in tail]):+.2f} MiB/h |",
        f"| daemon CPU (median of samples) | {statistics.median(cpu):.1f}% |",
        f"| p99 latency per interval: min / median / max | {min(p99):.2f} / "
        f"{statistics.median(p99):.2f} / {max(p99):.2f} ms |",
        f"| p50 latency per interval: median | {statistics.median(p50):.2f} ms |",
        f"| p99 over the whole run | {1000 * quantile(0.99, cum):.2f} ms |",
        f"| daemon log lines at WARNING / ERROR | {warnings} / {errors} |",
        f"| publisher ticks more than 1 s late | {load.late_ticks} |",
        "",
        "Latency is reading arrival (paho callback) to verdict, from the "
        "`streamwatch_processing_latency_seconds` histogram; quantiles are interpolated within "
        "its buckets as Prometheus's `histogram_quantile` does.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
