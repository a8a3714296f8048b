"""The NATS side of bench/nats_scale.py: nats-server with its MQTT listener, JetStream daemons
in subprocesses, CPU from /proc, the drain trial and the NATS-path latency trial (with its
alert-subscriber child, run as ``python bench/nats_trials.py _nats_alerts --url URL``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_live as bl

from streamwatch.embedded_broker import free_port, wait_port

P = 32
STREAM = "SENSORS"
FETCH_BATCH = 100
"""``nats.fetch_batch``'s default."""
NATS_SERVER = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
)
_CLK = os.sysconf("SC_CLK_TCK")


# -- nats-server and the JetStream daemon ------------------------------------------------


class NatsServer:
    """nats-server with JetStream, the MQTT listener, monitoring and the P-partition mapping."""

    def __init__(self, workdir: Path) -> None:
        assert NATS_SERVER is not None
        self.port, self.mqtt_port, self.http_port = free_port(), free_port(), free_port()
        conf = workdir / "nats.conf"
        conf.write_text(
            f"server_name: bench\nlisten: 127.0.0.1:{self.port}\n"
            f"http: 127.0.0.1:{self.http_port}\n"
            f'jetstream {{ store_dir: "{workdir / "js"}" }}\n'
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port} }}\n"
            "mappings = {\n"
            f'  "sensors.*": "streamwatch.in.{{{{partition({P},1)}}}}.{{{{wildcard(1)}}}}"\n'
            "}\n"
        )
        self.log = workdir / "nats.log"
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-c", str(conf)], stdout=self.log.open("w"), stderr=subprocess.STDOUT
        )
        wait_port(self.port)
        wait_port(self.mqtt_port)
        version = subprocess.run([NATS_SERVER, "--version"], capture_output=True, text=True)
        self.version = version.stdout.strip()

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def stream_messages(self) -> int:
        """Messages in the readings stream, from the monitoring port's /jsz."""
        url = f"http://127.0.0.1:{self.http_port}/jsz?streams=true"
        with urllib.request.urlopen(url, timeout=10) as r:
            doc = json.load(r)
        for acc in doc.get("account_details") or []:
            for s in acc.get("stream_detail") or []:
                if s["name"] == STREAM:
                    return int(s["state"]["messages"])
        return 0

    def stop(self) -> None:
        """Terminate it."""
        self.proc.terminate()
        self.proc.wait(10)


def create_stream(url: str) -> None:
    """The readings stream (one replica), as a daemon would create it."""
    import nats

    async def go() -> None:
        nc = await nats.connect(url)
        await nc.jetstream().add_stream(name=STREAM, subjects=["streamwatch.in.>"])
        await nc.close()

    asyncio.run(go())


class JetStreamDaemon(bl.Daemon):
    """``streamwatch run`` on the JetStream transport owning ``partitions``; unlike
    ``bench_live.Daemon`` it does not wait to be ready (call :meth:`wait_ready`), so that two
    start together."""

    def __init__(
        self,
        workdir: Path,
        url: str,
        model_dir: Path,
        partitions: str,
        tag: str,
        fetch_batch: int = FETCH_BATCH,
    ) -> None:
        self.metrics_port = free_port()
        conf = workdir / f"streamwatch-js{tag}.toml"
        conf.write_text(
            f'log_level = "WARNING"\nmodel_dir = "{model_dir}"\n'
            '[ingest]\ntransport = "jetstream"\n'
            f'[nats]\nurl = "{url}"\npartition_count = {P}\npartitions = "{partitions}"\n'
            f"fetch_batch = {fetch_batch}\n"
            f"[windows]\nlength = {bl.WINDOW}\nstride = 1\n"
            '[detector]\ntype = "gaussian"\n'
            f'[metrics]\nhost = "127.0.0.1"\nport = {self.metrics_port}\n'
        )
        self.log = workdir / f"streamwatch-js{tag}.log"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [bl.PY, "-m", "streamwatch", "run", "--config", str(conf)],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        self.startup_s = 0.0
        self.base = 0.0

    def wait_ready(self) -> float:
        """Block until ready (worker heartbeat moving); returns the wall-clock time."""
        self._ready()
        self.startup_s = time.monotonic() - self.started
        return time.time()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK


# -- the trials ---------------------------------------------------------------------------


def drain_trial(
    nats_server: NatsServer,
    work: Path,
    bundle: Path,
    feed: bl.Feed,
    ranges: list[str],
    tag: str,
    grace: float,
    fetch_batch: int = FETCH_BATCH,
) -> dict[str, Any]:
    """Publish ``feed`` through the MQTT listener into the stream, then let daemons owning
    ``ranges`` drain it; their rate once all are ready, CPU per reading, loss."""
    readings = feed.messages * feed.batch
    before = nats_server.stream_messages()
    pub = bl.Publisher(nats_server.mqtt_port, feed)
    pub.go()
    p = pub.result()
    deadline = time.time() + 60
    while nats_server.stream_messages() < before + feed.messages and time.time() < deadline:
        time.sleep(0.05)
    stored_at = time.time()
    stored = nats_server.stream_messages() - before
    ingest = {
        "readings_per_s_to_puback": readings / max(p["t_acked"] - p["t0"], 1e-9),
        "readings_per_s_to_stored": readings / max(stored_at - p["t0"], 1e-9),
        "stored": stored,
    }

    daemons = [
        JetStreamDaemon(work, nats_server.url, bundle, r, f"{tag}-{i}", fetch_batch)
        for i, r in enumerate(ranges)
    ]
    try:
        ready = max(d.wait_ready() for d in daemons)
        pids = [d.proc.pid for d in daemons]
        samples: list[tuple[float, float, float, float]] = []
        progress = time.time()
        while True:
            now = time.time()
            done = sum(bl.scrape(d.metrics_port)["accounted"] for d in daemons)
            cpu = sum(cpu_seconds(pid) for pid in pids)
            samples.append((now, done, cpu, cpu_seconds(nats_server.proc.pid)))
            if len(samples) > 1 and done > samples[-2][1]:
                progress = now
            if done >= readings or now - progress > grace:
                break
            if any(d.proc.poll() is not None for d in daemons):
                raise RuntimeError("a daemon died")
            time.sleep(0.5)
        ends = [bl.scrape(d.metrics_port) for d in daemons]
        shed, rejected = sum(e["shed"] for e in ends), sum(e["rejected"] for e in ends)
        inner = [s for s in samples if s[0] >= ready and 0 < s[1] < readings]
        if len(inner) < 2:  # drained too fast to see inside: from readiness to done
            inner = [s for s in samples if s[0] >= ready][:1] + samples[-1:]
        (t0, a0, c0, n0), (t1, a1, c1, n1) = inner[0], inner[-1]
        span = max(t1 - t0, 1e-9)
        measured = max(a1 - a0, 1e-9)
        return {
            "daemons": len(daemons),
            "fetch_batch": fetch_batch,
            "partitions": ranges,
            "sent": readings,
            "accounted": samples[-1][1],
            "lost": readings - samples[-1][1],
            "shed": shed,
            "rejected": rejected,
            "zero_loss": samples[-1][1] == readings and shed == 0 and rejected == 0,
            "readings_per_s": (a1 - a0) / span,
            "measured_readings": a1 - a0,
            "measured_s": span,
            "accounted_before_all_ready": next((s[1] for s in samples if s[0] >= ready), 0.0),
            "daemon_cpu_s_per_reading": (c1 - c0) / measured,
            "daemon_cpu_cores": (c1 - c0) / span,
            "nats_cpu_s_per_reading": (n1 - n0) / measured,
            "startup_s": [d.startup_s for d in daemons],
            "log_errors": [d.log.read_text().count("ERROR") for d in daemons],
            "ingest": ingest,
        }
    finally:
        for d in daemons:
            d.stop()


def nats_alerts_main(args: argparse.Namespace) -> int:
    """Child: records receipt time minus reading ts of every raised alert on the core NATS
    subjects ``streamwatch.alerts.>`` until stdin closes."""
    import nats

    lat: list[float] = []
    cleared = [0]
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def start() -> Any:
        nc = await nats.connect(args.url)

        async def on_msg(msg: Any) -> None:
            now = time.time()
            doc = json.loads(msg.data)
            if doc.get("state") == "raised":
                lat.append(now - float(doc["ts"]))
            else:
                cleared[0] += 1

        await nc.subscribe("streamwatch.alerts.>", cb=on_msg)
        await nc.flush()
        return nc

    nc = asyncio.run_coroutine_threadsafe(start(), loop).result(20)
    print("ready", flush=True)
    sys.stdin.readline()
    asyncio.run_coroutine_threadsafe(nc.close(), loop).result(20)
    print(json.dumps({"latencies": lat, "cleared": cleared[0]}), flush=True)
    return 0


def nats_latency_trial(
    d: JetStreamDaemon, nats_server: NatsServer, feed: bl.Feed, rate: float, grace: float
) -> dict[str, Any]:
    """``bench_live.latency_trial`` on the NATS path: the feed to the MQTT listener, alerts
    timed by a NATS subscriber."""
    alerts = subprocess.Popen(
        [bl.PY, str(Path(__file__).resolve()), "_nats_alerts", "--url", nats_server.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    bl._expect_line(alerts, "ready")
    hist0 = bl.latency_buckets(d.metrics_port)
    res = bl.daemon_trial(
        d, nats_server.mqtt_port, feed, rate, grace, poll=bl.POLL_LATENCY, stamp_now=True
    )
    hist1 = bl.latency_buckets(d.metrics_port)
    res["daemon_p50_ms"] = bl.bucket_quantile(hist0, hist1, 0.5) * 1000
    res["daemon_p99_ms"] = bl.bucket_quantile(hist0, hist1, 0.99) * 1000
    time.sleep(0.5)
    assert alerts.stdin is not None
    alerts.stdin.write("stop\n")
    alerts.stdin.flush()
    got = json.loads(bl._expect_line(alerts, "{", timeout=30))
    alerts.wait(10)
    res |= bl.rate_summary(got["latencies"])
    res["offered_readings_per_s"] = rate * feed.batch
    res["alerts_cleared"] = got["cleared"]
    return res


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "_nats_alerts":
    _ap = argparse.ArgumentParser()
    _ap.add_argument("--url", required=True)
    sys.exit(nats_alerts_main(_ap.parse_args(sys.argv[2:])))
