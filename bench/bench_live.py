"""Live end-to-end yardstick (issue 7) and replay throughput (issue 3), in one run.

Usage::

    .venv/bin/python bench/bench_live.py [--quick] [--report OUT.json] [--write docs/performance.md]

One run on this machine, everything side by side:

1. **Ingest ceiling.** A Mosquitto started here (free port, ``max_queued_messages`` high,
   ``max_inflight_messages 0``, persistence on), a fast publisher and a bare paho-mqtt
   subscriber (QoS 1, MQTT 5) that only ``json.loads`` each payload, in separate processes.
2. **streamwatch live.** The same feed through ``streamwatch run`` (a subprocess) for the
   ``gaussian``, ``gmm`` and ``lstm-vae`` detectors (window 20, stride 1) on 1,000 sensors. Every
   reading is accounted for from ``/metrics``: ``readings_total + rejected_total + shed_total``
   must equal the readings sent. Then reading-to-alert latency at half the sustained rate:
   spikes are injected, a separate subscriber receives the alerts and takes
   ``receipt time - alert ts`` (the ``ts`` of the reading that raised it, which the publisher set
   to its clock when it sent the message).
3. **Batched payloads.** The same with 50 readings per message (a JSON array).
4. **Memory.** The LSTM-VAE daemon's RSS once 10,000 sensors have full windows.
5. **Replay.** ``streamwatch.replay.replay`` on the LSTM-VAE (window 20, stride 1) against the
   raw batched model call on the same windows; the Gaussian replay in readings/s; a naive
   per-window model call.

The publisher. ``mosquitto_pub -l`` publishes every line to one topic, but a sensor is a topic,
so the publisher here is a small Python process that writes pre-encoded MQTT 3.1.1 QoS 1
PUBLISH packets (one topic per sensor) straight to a socket and counts the PUBACKs; at most
``_WINDOW`` messages are unacknowledged. It is faster than any consumer measured here, so the
broker queues and the consumer runs flat out. Flood trials (everything offered at once) give
the flood rate of the consumer with zero loss. A flood drains a queued backlog in large, cheap
batches; paced arrivals come a few at a time, so the **sustained rate** is searched for with
paced trials: from 90% of the flood rate down by 15% per step, the first rate the daemon
keeps up with (zero loss; at every poll while the feed is on, at most ``KEEP_UP_S`` of the
feed behind its schedule, and its last reading accounted for within ``DONE_S`` of the last
send). Latency trials (three at each rate; p50 and p99 over all their alerts pooled) run at
half the sustained rate, pace the publisher and stamp each reading with its send time.

**QoS 0.** The same single-reading flood, sustained search and latency trial once more at QoS 0
(the publisher sends QoS 0 PUBLISH packets, nothing is acknowledged, TCP paces a flood), against
the bare subscriber's own ceiling subscribed at QoS 0, with a daemon subscribed at QoS 0.

Warm-up is kept out of the figures: every detector runs from a bundle made here (a few seconds
of training on sine data; the one fitted sensor's state is copied to every sensor name, which is
what ``adapt`` would give each sine sensor), so no sensor warms up or fits online, and the
LSTM-VAE's ``warm_up()`` (XLA compiles) finishes before the first reading is sent. Every daemon
is primed with a full window per sensor before the first trial.

A benchmark, not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from streamwatch.embedded_broker import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
WINDOW = 20
BATCH = 50
_WINDOW = 20_000
"""Most unacknowledged QoS 1 messages the publisher keeps in flight (< 65535 packet ids)."""
POLL_LATENCY = float(os.environ.get("BENCH_POLL", "1.0"))
"""Seconds between scrapes of /metrics in latency trials (a scrape of 1,000 sensors takes
the GIL for tens of milliseconds)."""
PERIOD = 50.0
"""Readings per sine period of the simulated sensors."""
DT_PAST = 1e-4
"""Seconds between a sensor's consecutive readings in flood trials (timestamps in the past)."""

TARGETS = {
    "lstm_ratio": 0.80,
    "gaussian_ratio": 0.90,
    "p99_ms": 50.0,
    "batch_gain": 5.0,
    "rss_mib": 1024.0,
    "replay_ratio": 0.6,
    "replay_windows_s": 40_000.0,
    "gaussian_replay": 300_000.0,
}


# -- the simulated feed ------------------------------------------------------------------


def values(sensors: np.ndarray, rounds: np.ndarray, seed: int) -> np.ndarray:
    """Sine plus noise: the readings of ``sensors`` at (global) round indices ``rounds``."""
    rng = np.random.default_rng(seed)
    phase = 0.7 * sensors.astype(np.float64)
    return np.sin(2 * np.pi * rounds / PERIOD + phase) + rng.normal(0.0, 0.1, rounds.shape)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _publish_packet(topic: bytes, pid: int, payload: bytes, qos: int = 1) -> bytes:
    if qos == 0:
        head = struct.pack("!H", len(topic)) + topic
        return b"\x30" + _varint(len(head) + len(payload)) + head + payload
    head = struct.pack("!H", len(topic)) + topic + struct.pack("!H", pid)
    return b"\x32" + _varint(len(head) + len(payload)) + head + payload


def _one(v: float, ts: float) -> str:
    return f'{{"value": {v:.5f}, "ts": {ts:.6f}}}'


@dataclass
class Feed:
    """Which messages a publisher run sends: message ``i`` goes to sensor ``i % sensors``."""

    sensors: int
    messages: int
    batch: int = 1
    first_round: int = 0
    ts0: float = 0.0
    """Flood trials: a reading of round g has ts = ts0 + (g - first_round) * DT_PAST."""
    spike_period: int = 0
    """Paced trials: sensor s spikes (+8) at rounds g with (g + 37 s) % spike_period == 0."""
    seed: int = 0
    qos: int = 1
    """1: PUBLISH at QoS 1, PUBACKs counted; 0: QoS 0, nothing comes back."""

    @property
    def rounds(self) -> int:
        """Rounds of readings (one per sensor each) this feed covers."""
        return -(-self.messages // self.sensors) * self.batch

    def encode(
        self, start: int, stop: int, t0: float | None = None, rate: float = 0.0
    ) -> list[bytes]:
        """PUBLISH packets for messages [start, stop). With ``t0``, message ``i`` is stamped with
        its scheduled send time ``t0 + i / rate`` (paced trials), else with past timestamps."""
        idx = np.arange(start, stop)
        sensor = idx % self.sensors
        block = idx // self.sensors
        g = self.first_round + block[:, None] * self.batch + np.arange(self.batch)[None, :]
        v = values(np.repeat(sensor[:, None], self.batch, axis=1), g, self.seed + start)
        if self.spike_period and t0 is not None:
            hit = ((g + 37 * sensor[:, None]) % self.spike_period == 0) & (
                g >= self.first_round + 5
            )
            v = v + 8.0 * hit
        if t0 is None:
            ts = self.ts0 + (g - self.first_round) * DT_PAST
        else:
            # Readings of one message 10 µs apart, the last at the scheduled send time.
            sched = t0 + idx / rate
            ts = sched[:, None] - (self.batch - 1 - np.arange(self.batch))[None, :] * 1e-5
        out = []
        for j, i in enumerate(idx.tolist()):
            s = int(sensor[j])
            if self.batch == 1:
                body = _one(float(v[j, 0]), float(ts[j, 0]))
            else:
                body = "[" + ", ".join(_one(a, b) for a, b in zip(v[j], ts[j], strict=True)) + "]"
            out.append(
                _publish_packet(f"sensors/s{s}".encode(), i % 65535 + 1, body.encode(), self.qos)
            )
        return out


def publisher_main(args: argparse.Namespace) -> int:
    """The publisher process: connect, send the feed (flood or paced), wait for every PUBACK."""
    feed = Feed(**json.loads(args.feed))
    # QoS 0: nothing is acknowledged; TCP's own flow control paces a flood.
    window = _WINDOW if feed.qos else 1 << 62
    rate = float(args.rate)
    paced_now = bool(args.stamp_now)
    sock = socket.create_connection(("127.0.0.1", args.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cid = f"bench-pub-{os.getpid()}".encode()
    var = b"\x00\x04MQTT\x04\x02\x00\x3c"
    sock.sendall(
        b"\x10" + _varint(len(var) + 2 + len(cid)) + var + struct.pack("!H", len(cid)) + cid
    )
    if sock.recv(4)[:1] != b"\x20":
        print(json.dumps({"error": "no CONNACK"}), flush=True)
        return 1
    acked = [0]
    ack_cond = threading.Condition()

    def reader() -> None:
        got = 0
        while True:
            try:
                data = sock.recv(65536)
            except OSError:  # the socket closed under us once every PUBACK was in
                return
            if not data:
                return
            got += len(data)
            with ack_cond:
                acked[0] = got // 4  # only 4-byte PUBACKs come back
                ack_cond.notify_all()

    threading.Thread(target=reader, daemon=True).start()
    packets: list[bytes] = [] if paced_now else feed.encode(0, feed.messages)
    print("encoded", flush=True)
    sys.stdin.readline()  # the parent says go
    t0 = time.perf_counter()
    wall0 = time.time()
    sent = 0
    n = feed.messages
    lags: list[float] = []
    while sent < n:
        due = n if rate <= 0 else min(n, int((time.perf_counter() - t0) * rate) + 1)
        if due <= sent:
            time.sleep(0.0005)
            continue
        limit = sent
        with ack_cond:
            ack_cond.wait_for(lambda: limit - acked[0] < window)  # noqa: B023  (used at once)
        stop = min(due, sent + 2000, acked[0] + window)
        chunk = feed.encode(sent, stop, wall0, rate) if paced_now else packets[sent:stop]
        sock.sendall(b"".join(chunk))
        if rate > 0:
            lags.append(time.time() - (wall0 + sent / rate))  # the chunk's first message
        sent = stop
    t_sent = time.time()
    if not feed.qos:
        acked[0] = n
    with ack_cond:
        ok = ack_cond.wait_for(lambda: acked[0] >= n, timeout=120)
    t_acked = time.time()
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    doc = {
        "sent": n,
        "acked": acked[0],
        "ok": ok,
        "t0": wall0,
        "t_sent": t_sent,
        "t_acked": t_acked,
        "send_lag_p99_ms": float(np.percentile(lags, 99)) * 1000 if lags else 0.0,
    }
    print(json.dumps(doc), flush=True)
    return 0


# -- the bare subscriber and the alert subscriber (separate processes) --------------------


def subscriber_main(args: argparse.Namespace) -> int:
    """The ingest ceiling: a bare paho subscriber that only decodes each JSON payload."""
    import paho.mqtt.client as mqtt

    expect = int(args.expect)
    lags: list[float] = []
    count = [0]
    first = [0.0]
    last = [0.0]
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    loads = json.loads

    def on_connect(c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        c.subscribe("sensors/#", qos=int(args.qos))

    def on_subscribe(c: mqtt.Client, u: Any, mid: int, codes: Any, p: Any) -> None:
        subscribed.set()

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        doc = loads(msg.payload)
        now = time.time()
        if doc.__class__ is list:
            count[0] += len(doc)
            lags.append(now - doc[-1]["ts"])
        else:
            count[0] += 1
            lags.append(now - doc["ts"])
        if not first[0]:
            first[0] = now
        last[0] = now

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", int(args.port))
    client.loop_start()
    if not subscribed.wait(10):
        return 1
    print("ready", flush=True)
    cpu0 = time.process_time()
    idle_limit = float(args.idle)
    while count[0] < expect:
        time.sleep(0.05)
        if first[0] and time.time() - last[0] > idle_limit:
            break
    lag = np.percentile(lags, [50, 99]) * 1000 if lags else [math.nan, math.nan]
    doc = {
        "count": count[0],
        "t_first": first[0],
        "t_last": last[0],
        "lag_ms": list(lag),
        "cpu_s": time.process_time() - cpu0,
    }
    print(json.dumps(doc), flush=True)
    client.disconnect()
    client.loop_stop()
    return 0


def alerts_main(args: argparse.Namespace) -> int:
    """Records receipt time minus reading ts of every raised alert until stdin closes."""
    import paho.mqtt.client as mqtt

    lat: list[float] = []
    events: list[tuple[str, float, float]] = []
    cleared = [0]
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_connect(c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        c.subscribe("streamwatch/alerts/#", qos=1)

    def on_subscribe(c: mqtt.Client, u: Any, mid: int, codes: Any, p: Any) -> None:
        subscribed.set()

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        doc = json.loads(msg.payload)
        if doc.get("state") == "raised":
            lat.append(now - float(doc["ts"]))
            events.append((doc["sensor"], float(doc["ts"]), now))
        else:
            cleared[0] += 1

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", int(args.port))
    client.loop_start()
    if not subscribed.wait(10):
        return 1
    print("ready", flush=True)
    sys.stdin.readline()
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"latencies": lat, "cleared": cleared[0], "events": events}), flush=True)
    return 0


# -- orchestration helpers ---------------------------------------------------------------


class Broker:
    """A Mosquitto of our own: free port, persistence, large queues, unlimited in-flight."""

    def __init__(self, workdir: Path, extra: list[str] | None = None) -> None:
        """``extra``: more lines for ``mosquitto.conf``."""
        self.port = free_port()
        data = workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o777)  # Mosquitto started as root drops to its own user
        os.chmod(data, 0o777)
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {data}/\nautosave_interval 600\n"
            "max_queued_messages 10000000\nmax_queued_bytes 0\nmax_inflight_messages 0\n"
            f"log_dest file {workdir / 'mosquitto.log'}\nlog_type error\nlog_type warning\n"
            + "".join(f"{line}\n" for line in extra or [])
        )
        os.chmod(conf, 0o644)
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(conf)])
        wait_port(self.port)

    def stop(self) -> None:
        """Terminate the broker."""
        self.proc.terminate()
        self.proc.wait(10)


def _child(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PY, str(Path(__file__).resolve()), *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _expect_line(proc: subprocess.Popen[str], want: str, timeout: float = 60.0) -> str:
    assert proc.stdout is not None
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    t.start()
    t.join(timeout)
    if not box or not box[0].startswith(want):
        proc.kill()
        raise RuntimeError(f"child did not say {want!r} (got {box[:1]!r})")
    return box[0]


class Publisher:
    """One publisher run in its own process; ``go()`` starts it, ``result()`` waits for it."""

    def __init__(self, port: int, feed: Feed, rate: float = 0.0, stamp_now: bool = False) -> None:
        self.proc = _child(
            "_publish",
            "--port",
            str(port),
            "--feed",
            json.dumps(feed.__dict__),
            "--rate",
            str(rate),
            *(["--stamp-now"] if stamp_now else []),
        )
        _expect_line(self.proc, "encoded", timeout=300)

    def go(self) -> float:
        """Start sending; returns the wall-clock time it was told to."""
        assert self.proc.stdin is not None
        t = time.time()
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return t

    def result(self, timeout: float = 600.0) -> dict[str, Any]:
        """The publisher's summary once every PUBACK is in."""
        out, _ = self.proc.communicate(timeout=timeout)
        return dict(json.loads(out.strip().splitlines()[-1]))


def rate_summary(xs: list[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds."""
    if not xs:
        return {"n": 0, "p50_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan}
    a = np.asarray(xs) * 1000.0
    return {
        "n": len(xs),
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
    }


# -- the ingest ceiling --------------------------------------------------------------------


def ceiling_trial(port: int, feed: Feed, rate: float, idle: float) -> dict[str, Any]:
    """One run of the bare subscriber against one feed: readings/s and loss."""
    readings = feed.messages * feed.batch
    sub = _child(
        "_subscribe",
        "--port",
        str(port),
        "--expect",
        str(readings),
        "--idle",
        str(idle),
        "--qos",
        str(feed.qos),
    )
    _expect_line(sub, "ready")
    pub = Publisher(port, feed, rate)
    t_go = pub.go()
    p = pub.result()
    line = _expect_line(sub, "{", timeout=600)
    sub.wait(10)
    s = json.loads(line)
    span = max(s["t_last"] - s["t_first"], 1e-9)
    return {
        "sent": readings,
        "received": s["count"],
        "lost": readings - s["count"],
        "readings_per_s": s["count"] / span
        if rate <= 0
        else readings / max(s["t_last"] - t_go, 1e-9),
        "seconds": span,
        "publish_s": p["t_sent"] - p["t0"],
        "kept_up_s": s["t_last"] - p["t_sent"],
        "cpu_us_per_message": s["cpu_s"] / max(feed.messages, 1) * 1e6,
    }


# -- the daemon ----------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+|NaN|[+-]Inf)$")


_SCRAPED = (
    "streamwatch_readings_total",
    "streamwatch_rejected_total",
    "streamwatch_readings_shed_total",
    "streamwatch_windows_scored_total",
    "streamwatch_queue_readings",
    "streamwatch_worker_heartbeat_timestamp_seconds",
    "streamwatch_alerts_raised_total",
)
_SCRAPE_QUERY = "&".join(f"name[]={n}" for n in _SCRAPED)


_FULL_SCRAPE: set[int] = set()
"""Metrics ports of daemons that need full scrapes (BENCH_FULL_SCRAPE=1: every daemon)."""


def _metrics_text(port: int, query: str, must: str) -> str:
    """``/metrics`` restricted by ``query``; the whole of it where that lacks ``must`` (a
    daemon from before its per-sensor families described themselves: a restricted scrape
    leaves them out there)."""
    full = port in _FULL_SCRAPE or os.environ.get("BENCH_FULL_SCRAPE") == "1"
    url = f"http://127.0.0.1:{port}/metrics" + ("" if full else f"?{query}")
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    if not full and must not in text:
        _FULL_SCRAPE.add(port)
        return _metrics_text(port, query, must)
    return text


def scrape(port: int) -> dict[str, float]:
    """Sums of the daemon's counters that account for every reading, plus a few gauges.

    Only these families are asked for (``?name[]=``): a full scrape of 1,000 sensors takes
    the daemon's GIL for about 100 ms of CPU here, which at two polls a second taxed the
    daemon (and not the bare subscriber it is compared with) by a fifth of its time."""
    text = _metrics_text(port, _SCRAPE_QUERY, "streamwatch_worker_heartbeat_timestamp_seconds")
    out = {
        "readings": 0.0,
        "rejected": 0.0,
        "shed": 0.0,
        "scored": 0.0,
        "queue": 0.0,
        "heartbeat": 0.0,
        "raised": 0.0,
    }
    names = {
        "streamwatch_readings_total": "readings",
        "streamwatch_rejected_total": "rejected",
        "streamwatch_readings_shed_total": "shed",
        "streamwatch_windows_scored_total": "scored",
        "streamwatch_queue_readings": "queue",
        "streamwatch_worker_heartbeat_timestamp_seconds": "heartbeat",
        "streamwatch_alerts_raised_total": "raised",
    }
    for line in text.splitlines():
        if not line.startswith("streamwatch_"):
            continue
        m = _SAMPLE.match(line)
        if m and m.group(1) in names:
            out[names[m.group(1)]] += float(m.group(3))
    out["accounted"] = out["readings"] + out["rejected"] + out["shed"]
    return out


_BUCKET = re.compile(r'^streamwatch_processing_latency_seconds_bucket\{le="([^"]+)"\} (\S+)$')


def latency_buckets(port: int) -> list[tuple[float, float]]:
    """The daemon's reading-arrival-to-verdict histogram: cumulative (le, count) pairs."""
    text = _metrics_text(
        port,
        "name[]=streamwatch_processing_latency_seconds_bucket",
        "streamwatch_processing_latency_seconds_bucket",
    )
    out = []
    for line in text.splitlines():
        m = _BUCKET.match(line)
        if m:
            out.append((float(m.group(1)), float(m.group(2))))
    return out


def bucket_quantile(
    before: list[tuple[float, float]], after: list[tuple[float, float]], q: float
) -> float:
    """Quantile ``q`` of the observations between two scrapes (linear within a bucket)."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return math.nan
    rank = q * total
    lo, prev = 0.0, 0.0
    for le, c in counts:
        if c >= rank:
            if math.isinf(le):
                return lo
            return lo + (le - lo) * (rank - prev) / max(c - prev, 1e-9)
        lo, prev = le, c
    return lo


class Daemon:
    """``streamwatch run`` in a subprocess, with its config, metrics port and log."""

    def __init__(
        self,
        workdir: Path,
        broker_port: int,
        detector: str,
        model_dir: Path,
        tf_threads: tuple[int, int] = (2, 1),
        tag: str = "",
        python: str = PY,
        inference: str = "auto",
        root: Path | None = None,
        qos: int = 1,
    ) -> None:
        """``qos``: the daemon's subscription QoS; ``python``: the interpreter (another install);
        ``inference``: ``engine.inference``
        (written only when not "auto", so an older checkout still reads the config);
        ``root``: run the ``streamwatch`` package found there (an older checkout) instead of
        this one."""
        self.metrics_port = free_port()
        name = f"{detector}{tag}"
        conf = workdir / f"streamwatch-{name}.toml"
        conf.write_text(
            f'log_level = "WARNING"\nmodel_dir = "{model_dir}"\n'
            f'[mqtt]\nbroker = "mqtt://127.0.0.1:{broker_port}"\nclient_id = "bench-{name}"\n'
            f'topics = ["sensors/#"]\nsession_expiry_s = 0\nqos = {qos}\n'
            f"[windows]\nlength = {WINDOW}\nstride = 1\n"
            f'[detector]\ntype = "{detector}"\n'
            f"[engine]\ntf_intra_threads = {tf_threads[0]}\ntf_inter_threads = {tf_threads[1]}\n"
            + (f'inference = "{inference}"\n' if inference != "auto" else "")
            + f'[metrics]\nhost = "127.0.0.1"\nport = {self.metrics_port}\n'
        )
        self.log = workdir / f"streamwatch-{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TF_NUM_")}
        if root is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [python, "-m", "streamwatch", "run", "--config", str(conf)],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
        )
        self._ready()
        self.startup_s = time.monotonic() - self.started
        self.base = scrape(self.metrics_port)["accounted"]

    def _ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        ready_at = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200 and ready_at is None:
                        ready_at = time.time()
            except OSError:
                pass
            # The worker's heartbeat moves once warm_up() (XLA compiles) is done.
            if ready_at is not None and scrape(self.metrics_port)["heartbeat"] > ready_at:
                return
            time.sleep(0.2)
        raise TimeoutError(f"daemon not ready: {self.log.read_text()[-2000:]}")

    def rss_mib(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) of the daemon process in MiB."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                fields[k] = int(v.split()[0]) / 1024.0
        return fields["VmRSS"], fields["VmHWM"]

    def stop(self) -> None:
        """SIGTERM, then wait."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def daemon_trial(
    d: Daemon,
    port: int,
    feed: Feed,
    rate: float,
    grace: float,
    poll: float = 0.5,
    stamp_now: bool = False,
) -> dict[str, Any]:
    """Send one feed through the daemon; follow /metrics until every reading is accounted."""
    readings = feed.messages * feed.batch
    start = scrape(d.metrics_port)
    pub = Publisher(port, feed, rate, stamp_now=stamp_now)
    t_go = pub.go()
    samples: list[tuple[float, float]] = [(t_go, 0.0)]
    published: dict[str, Any] | None = None
    last = start
    progress = time.time()
    while True:
        time.sleep(poll)
        last = scrape(d.metrics_port)
        now = time.time()
        samples.append((now, last["accounted"] - start["accounted"]))
        if samples[-1][1] > samples[-2][1]:
            progress = now
        if published is None and pub.proc.poll() is not None:
            published = pub.result()
        if samples[-1][1] >= readings:
            break
        if published is not None and now - progress > grace:
            break  # no progress for a while: the rest is lost
        if d.proc.poll() is not None:
            raise RuntimeError("daemon died")
    if published is None:
        published = pub.result()
    done = samples[-1][1]
    delta = {k: last[k] - start[k] for k in ("readings", "rejected", "shed", "scored")}
    # Sustained rate: the slope between the first and last samples strictly inside the run.
    inner = [(t, a) for t, a in samples if 0 < a < readings]
    t_end = _interpolate_done(samples, readings)
    if rate <= 0 and len(inner) >= 2 and inner[-1][0] > inner[0][0]:
        rps = (inner[-1][1] - inner[0][1]) / (inner[-1][0] - inner[0][0])
    else:
        rps = readings / max(t_end - t_go, 1e-9)
    # How far behind the schedule the daemon fell while the feed was on (paced trials): the
    # readings due by each poll that were not accounted for yet, in seconds of the feed.
    max_lag_s = 0.0
    if rate > 0:
        per_s = rate * feed.batch
        t0, t_sent = published["t0"], published["t_sent"]
        for t, a in samples:
            if t0 < t <= t_sent:
                max_lag_s = max(max_lag_s, (min(readings, (t - t0) * per_s) - a) / per_s)
    return {
        "sent": readings,
        "accounted": done,
        "lost": readings - done,
        "max_lag_s": max_lag_s,
        **delta,
        "readings_per_s": rps,
        "seconds": t_end - t_go,
        "publish_s": published["t_sent"] - published["t0"],
        "kept_up_s": t_end - published["t_sent"],
        "send_lag_p99_ms": published["send_lag_p99_ms"],
        "zero_loss": done == readings and delta["shed"] == 0 and delta["rejected"] == 0,
    }


def _interpolate_done(samples: list[tuple[float, float]], total: float) -> float:
    for (t0, a0), (t1, a1) in itertools.pairwise(samples):
        if a1 >= total:
            return t0 + (t1 - t0) * (total - a0) / max(a1 - a0, 1e-9)
    return samples[-1][0]


def latency_trial(d: Daemon, port: int, feed: Feed, rate: float, grace: float) -> dict[str, Any]:
    """Paced feed with spikes; a separate subscriber times every raised alert."""
    alerts = _child("_alerts", "--port", str(port))
    _expect_line(alerts, "ready")
    hist0 = latency_buckets(d.metrics_port)
    res = daemon_trial(d, port, feed, rate, grace, poll=POLL_LATENCY, stamp_now=True)
    hist1 = latency_buckets(d.metrics_port)
    # Where the time goes: the daemon's own arrival-to-verdict histogram, and how far the
    # publisher fell behind its schedule (both are inside the end-to-end figure).
    res["daemon_p50_ms"] = bucket_quantile(hist0, hist1, 0.5) * 1000
    res["daemon_p99_ms"] = bucket_quantile(hist0, hist1, 0.99) * 1000
    time.sleep(0.5)
    assert alerts.stdin is not None
    alerts.stdin.write("stop\n")
    alerts.stdin.flush()
    got = json.loads(_expect_line(alerts, "{", timeout=30))
    alerts.wait(10)
    res |= rate_summary(got["latencies"])
    res["latencies_s"] = got["latencies"]
    res["offered_readings_per_s"] = rate * feed.batch
    res["alerts_cleared"] = got["cleared"]
    return res


KEEP_UP_S = 0.5
"""A paced trial keeps up when, at every poll (0.5 s apart) while the feed is on, the daemon
is at most this many seconds of the feed behind its schedule, and its last reading is
accounted for within ``DONE_S`` of the last send. The end alone is not enough: a backlog built
up in small paced batches drains in large cheap ones, so a daemon that fell seconds behind
could still finish within a second of the last send."""
DONE_S = 1.0
"""See ``KEEP_UP_S`` (the end is interpolated between polls 0.5 s apart)."""


@dataclass
class Pacing:
    """What one daemon's paced trials share: the daemon, where to publish, the plan and the
    log, and the form of the messages (``batch`` readings each, at ``qos``)."""

    d: Daemon
    port: int
    rounds: Rounds
    plan: Plan
    grace: float
    log: Callable[[str], None]
    label: str
    batch: int = 1
    qos: int = 1


def paced(p: Pacing, flood: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sustained rate (:func:`sustained_search`), then latency at half of it
    (:func:`latency_at`)."""
    sus = sustained_search(p, flood)
    return sus, latency_at(p, 0.5 * sus["readings_per_s"])


def sustained_search(p: Pacing, flood: float) -> dict[str, Any]:
    """The sustained rate: the highest paced rate (readings/s) tried that the daemon kept up
    with (see ``KEEP_UP_S``) at zero loss, from 90% of the flood rate down by 15% per step (at
    most 8 steps).
    A flood drains a queued backlog in large cheap batches; paced arrivals come in small ones,
    so the paced rate is the one to halve for the latency trials. ``plan.confirm_s == 0``
    (``--quick``): no search, the flood rate is taken."""
    plan, S, batch = p.plan, p.plan.sensors, p.batch
    if not plan.confirm_s:
        return {"readings_per_s": flood, "found": None, "tried": []}
    tried: list[dict[str, Any]] = []
    r = 0.9 * flood
    for _ in range(8):
        msgs = max(int(r / batch * plan.confirm_s), S)
        feed = p.rounds.feed(S, msgs, batch, qos=p.qos)
        t = daemon_trial(p.d, p.port, feed, r / batch, p.grace)
        ok = bool(t["zero_loss"]) and t["max_lag_s"] <= KEEP_UP_S and t["kept_up_s"] <= DONE_S
        tried.append({"offered_readings_per_s": r, "kept_up_s": t["kept_up_s"], "ok": ok} | t)
        p.log(
            f"{p.label} paced at {r:,.0f}/s: lost {t['lost']:.0f}, at most "
            f"{t['max_lag_s']:.2f}s behind while sending, done {t['kept_up_s']:.2f}s after the "
            f"last send: {'kept up' if ok else 'fell behind'}"
        )
        if ok:
            return {"readings_per_s": r, "found": True, "tried": tried}
        r *= 0.85
    return {"readings_per_s": r / 0.85, "found": False, "tried": tried}


def latency_at(p: Pacing, rate: float) -> dict[str, Any]:
    """``latency_trial`` at ``rate`` readings/s, ``plan.latency_trials`` times (logged); the
    figures are over every alert of every trial pooled, each trial's p99 beside them. One
    hiccup of the shared machine moves a single trial's p99 (the 5th-worst of some 500 alerts)
    by tens of milliseconds, and a later trial raises fewer alerts (sensors raised by the one
    before have not cleared yet), so one trial is no figure."""
    plan, S = p.plan, p.plan.sensors
    r = rate / p.batch
    msgs = max(int(r * plan.latency_s), S)
    spike = max(100, int(rate / 100))
    runs = []
    for _ in range(plan.latency_trials):
        feed = p.rounds.feed(S, msgs, p.batch, spike, p.qos)
        t = latency_trial(p.d, p.port, feed, r, p.grace)
        p.log(
            f"{p.label} latency at {rate:,.0f} readings/s: p50 {t['p50_ms']:.1f} ms, "
            f"p99 {t['p99_ms']:.1f} ms over {t['n']} alerts, lost {t['lost']:.0f}; "
            f"daemon arrival-to-verdict p50 {t['daemon_p50_ms']:.1f} ms, p99 "
            f"{t['daemon_p99_ms']:.1f} ms; publisher behind schedule p99 "
            f"{t['send_lag_p99_ms']:.1f} ms"
        )
        runs.append(t)
    out = dict(runs[0])
    pooled = [x for t in runs for x in t.pop("latencies_s")]
    out |= rate_summary(pooled)
    for key in ("daemon_p50_ms", "daemon_p99_ms", "send_lag_p99_ms"):  # the worst trial's
        out[key] = max(t[key] for t in runs)
    out["trials_p99_ms"] = [t["p99_ms"] for t in runs]
    out["trials_n"] = [t["n"] for t in runs]
    out["trials_p50_ms"] = [t["p50_ms"] for t in runs]
    out["lost"] = sum(t["lost"] for t in runs)
    return out


def qos0_trials(
    work: Path,
    port: int,
    det: str,
    model_dir: Path,
    tf_threads: tuple[int, int],
    rounds: Rounds,
    plan: Plan,
    grace: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Single-reading QoS 0: the bare subscriber's own QoS 0 ceiling, then a daemon of its own
    subscribed at QoS 0 (primed, flooded, its sustained rate, latency at half of it)."""
    S = plan.sensors
    out: dict[str, Any] = {}
    out["ceiling"] = c = ceiling_trial(port, rounds.feed(S, plan.single_msgs, qos=0), 0, 3.0)
    log(f"ceiling single, QoS 0: {c['readings_per_s']:,.0f} readings/s, lost {c['lost']}")
    d = Daemon(work, port, det, model_dir, tf_threads, tag="-qos0", qos=0)
    try:
        daemon_trial(d, port, rounds.feed(S, S * (WINDOW + 5), qos=0), 0, grace)
        out["single"] = t = daemon_trial(d, port, rounds.feed(S, plan.single_msgs, qos=0), 0, grace)
        log(
            f"{det} single, QoS 0: {t['readings_per_s']:,.0f} readings/s, lost {t['lost']:.0f}, "
            f"shed {t['shed']:.0f}, rejected {t['rejected']:.0f}"
        )
        pacing = Pacing(d, port, rounds, plan, grace, log, f"{det} single, QoS 0,", qos=0)
        out["single_sustained"], out["single_latency"] = paced(pacing, t["readings_per_s"])
    finally:
        d.stop()
    return out


# -- bundles -------------------------------------------------------------------------------


def make_bundles(
    workdir: Path,
    names: dict[str, int],
    quick: bool,
    log: Callable[[str], None],
    litert: bool = False,
) -> dict[str, Path]:
    """A trained bundle per detector, its one sensor's state copied to ``names[det]`` sensors
    (``litert``: with the LiteRT export, as ``streamwatch train`` makes it)."""
    from streamwatch.config import Config, LSTMVAEConfig
    from streamwatch.detectors import bundle
    from streamwatch.training import fit_calibrated

    out = {}
    g = np.arange(3000 if quick else 6000)
    data = {"s0": (g * DT_PAST, values(np.zeros(g.size, int), g, 1), None)}
    for det, n in names.items():
        t0 = time.perf_counter()
        detector: dict[str, Any] = {"type": det}
        if det == "lstm-vae":
            detector |= {"epochs": 2 if quick else 4}
            if "min_steps" in LSTMVAEConfig.model_fields:
                detector["min_steps"] = 20 if quick else 200
        if det == "gmm":
            detector |= {"steps": 100 if quick else 300}
        cfg = Config.model_validate({"detector": detector, "windows": {"length": WINDOW}})
        model = fit_calibrated(cfg, data, source="bench_live", litert=litert)
        state = model.detector._sensor_state()["s0"]
        model.detector._restore_sensor_state({f"s{i}": state for i in range(n)})
        thr = model.thresholds.per_sensor["s0"]
        model.thresholds.per_sensor = {f"s{i}": thr for i in range(n)}
        path = workdir / f"bundle-{det}"
        bundle.save(model, path)
        out[det] = path
        log(f"bundle {det}: {n} sensors, threshold {thr:.2f}, {time.perf_counter() - t0:.1f}s")
    return out


# -- replay (issue 3) ----------------------------------------------------------------------


def bench_replay(bundle: Path, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """LSTM-VAE replay vs the raw batched model call; Gaussian replay; naive per-window calls."""
    from streamwatch.config import Config
    from streamwatch.detectors import bundle as bundles
    from streamwatch.replay import replay
    from streamwatch.training import fit_calibrated

    res: dict[str, Any] = {}
    n_sens, n_read = (20, 300) if quick else (200, 1000)
    model = bundles.load(bundle, inference="tensorflow")  # the raw call below is TensorFlow's
    det: Any = model.detector
    det.warm_up()
    cfg = Config.model_validate(
        {"detector": det.config.model_dump(), "windows": {"length": WINDOW, "stride": 1}}
    )
    g = np.arange(n_read)
    series = {f"s{i}": (1.7e9 + g * 1.0, values(np.full(n_read, i), g, i)) for i in range(n_sens)}
    windows = n_sens * (n_read - WINDOW + 1)
    # The raw batched call on the same windows: standardised up front, chunks of max_batch.
    x = np.concatenate([det.windows_of(v) for _, v in series.values()])
    names = [s for s, (_, v) in series.items() for _ in range(len(v) - WINDOW + 1)]
    z = det._standardise(names, x)
    fn = det._nets["shared"].scorer(False)
    cap = det.max_batch
    chunks = [z[i : i + cap] for i in range(0, len(z), cap)]
    chunks[-1] = np.concatenate([chunks[-1], np.zeros((cap - len(chunks[-1]), WINDOW), np.float32)])

    def raw() -> None:
        for c in chunks:
            fn(c)[0].numpy()

    def rep() -> None:
        replay(cfg, model, series)

    raw()
    reps = 1 if quick else 3
    t_raw, t_rep = [], []
    for _ in range(reps):  # interleaved, so load from other processes hits both alike
        t0 = time.perf_counter()
        raw()
        t_raw.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rep()
        t_rep.append(time.perf_counter() - t0)
    raw_wps = windows / statistics.median(t_raw)
    rep_wps = windows / statistics.median(t_rep)
    res["lstm_replay_windows_per_s"] = rep_wps
    res["lstm_raw_windows_per_s"] = raw_wps
    res["lstm_replay_ratio"] = rep_wps / raw_wps
    res["windows"] = windows
    log(
        f"replay lstm-vae: {rep_wps:,.0f} windows/s vs raw {raw_wps:,.0f} ({rep_wps / raw_wps:.2f})"
    )

    # Naive: the bare Keras model, one eager call per window.
    vae = det._nets["shared"].vae
    few = z[: 8 if quick else 32, :, None]
    vae(few[:1])
    t0 = time.perf_counter()
    for i in range(len(few)):
        vae(few[i : i + 1])
    naive = len(few) / (time.perf_counter() - t0)
    res["naive_windows_per_s"] = naive
    res["naive_ratio"] = naive / raw_wps
    log(f"naive per-window eager call: {naive:,.0f} windows/s ({naive / raw_wps:.4f} of raw)")

    # Gaussian replay: fitted and calibrated on the same series, then replayed.
    n_g = (100, 1000) if quick else (1000, 1000)
    g = np.arange(n_g[1])
    gseries = {f"s{i}": (1.7e9 + g * 1.0, values(np.full(g.size, i), g, i)) for i in range(n_g[0])}
    gcfg = Config.model_validate({"detector": {"type": "gaussian"}})
    gdet = fit_calibrated(gcfg, {s: (t, v, None) for s, (t, v) in gseries.items()})
    t_g = []
    for _ in range(reps):
        t0 = time.perf_counter()
        replay(gcfg, gdet, gseries)
        t_g.append(time.perf_counter() - t0)
    res["gaussian_replay_readings_per_s"] = n_g[0] * n_g[1] / statistics.median(t_g)
    log(f"replay gaussian: {res['gaussian_replay_readings_per_s']:,.0f} readings/s")
    return res


# -- the whole run -------------------------------------------------------------------------


@dataclass
class Plan:
    """Sizes of one run (full, or ``--quick`` for CI)."""

    quick: bool
    sensors: int = 1000
    single_msgs: int = 60_000
    batched_msgs: int = 6_000
    latency_s: float = 6.0
    latency_trials: int = 3
    confirm_s: float = 6.0
    mem_sensors: int = 10_000
    detectors: tuple[str, ...] = ("gaussian", "gmm", "lstm-vae")
    qos0: tuple[str, ...] = ("gaussian", "gmm", "lstm-vae")
    """Detectors also measured with single-reading QoS 0 messages (a daemon of their own)."""
    log: list[str] = field(default_factory=list)

    @classmethod
    def make(cls, quick: bool) -> Plan:
        """The full plan, or a seconds-long one."""
        if not quick:
            return cls(quick)
        return cls(
            quick,
            sensors=50,
            single_msgs=3000,
            batched_msgs=200,
            latency_s=1.0,
            latency_trials=1,
            confirm_s=0.0,
            mem_sensors=200,
            detectors=("gaussian", "lstm-vae"),
            qos0=("gaussian",),
        )


class Rounds:
    """Hands out global round numbers and timestamps, so that each sensor's timestamps only ever
    increase, flood trials' just before the trial and paced trials' at the send time (no
    gap long enough to restart a window)."""

    def __init__(self) -> None:
        self.next = 0
        self.last_ts = 0.0

    def feed(
        self, sensors: int, messages: int, batch: int = 1, spike: int = 0, qos: int = 1
    ) -> Feed:
        """A feed after every earlier one."""
        f = Feed(sensors, messages, batch, self.next, 0.0, spike, seed=self.next, qos=qos)
        now = time.time()
        f.ts0 = max(now - f.rounds * DT_PAST, self.last_ts + DT_PAST)
        self.last_ts = max(now, f.ts0 + f.rounds * DT_PAST)
        self.next += f.rounds
        return f


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, versions, commit, load."""
    from importlib.metadata import version

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass

    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except OSError:
            return "unknown"

    mosq = subprocess.run(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"], capture_output=True, text=True
    ).stdout.splitlines()
    versions = {"python": platform.python_version()}
    for pkg in ("paho-mqtt", "numpy", "tensorflow", "prometheus-client", "streamwatch"):
        try:
            versions[pkg] = version(pkg)
        except Exception:
            versions[pkg] = "missing"
    versions["mosquitto"] = mosq[0] if mosq else "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "platform": platform.platform(),
        "versions": versions,
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def run(
    plan: Plan, tf_threads: tuple[int, int], only: set[str] | None, litert: bool = True
) -> dict[str, Any]:
    """Everything, in order; returns the report."""
    started = time.time()

    def log(msg: str) -> None:
        line = f"[{time.time() - started:6.1f}s load {os.getloadavg()[0]:.2f}] {msg}"
        plan.log.append(line)
        print(line, flush=True)

    report: dict[str, Any] = {
        "machine": machine_info(),
        "quick": plan.quick,
        "plan": {
            "sensors": plan.sensors,
            "single_messages": plan.single_msgs,
            "batched_messages": plan.batched_msgs,
            "batch": BATCH,
            "window": WINDOW,
            "tf_threads": list(tf_threads),
            "litert": litert,
        },
        "load_before": list(os.getloadavg()),
    }
    # This process's TensorFlow (training, replay) uses the daemon's thread settings.
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(tf_threads[0])
    os.environ["TF_NUM_INTEROP_THREADS"] = str(tf_threads[1])
    work = Path(tempfile.mkdtemp(prefix="sw-bench-"))
    broker = None
    try:
        detectors = (
            [d for d in ("gaussian", "gmm", "lstm-vae") if d in only] if only else plan.detectors
        )
        need = {d: plan.sensors for d in detectors}
        if "lstm-vae" in need:
            need["lstm-vae"] = max(plan.sensors, plan.mem_sensors)
        bundles = make_bundles(work, need, plan.quick, log, litert=litert)
        broker = Broker(work)
        rounds = Rounds()
        S = plan.sensors
        grace = 3.0 if plan.quick else 6.0  # seconds without progress: the rest is lost

        # 1. The ceiling.
        ceil: dict[str, Any] = {}
        ceil["single"] = ceiling_trial(broker.port, rounds.feed(S, plan.single_msgs), 0, 3.0)
        log(
            f"ceiling single: {ceil['single']['readings_per_s']:,.0f} readings/s, "
            f"lost {ceil['single']['lost']}"
        )
        ceil["batched"] = ceiling_trial(
            broker.port, rounds.feed(S, plan.batched_msgs, BATCH), 0, 3.0
        )
        log(
            f"ceiling batched: {ceil['batched']['readings_per_s']:,.0f} readings/s, "
            f"lost {ceil['batched']['lost']}"
        )
        if plan.confirm_s:
            r = 0.9 * ceil["single"]["readings_per_s"]
            ceil["single_confirm"] = ceiling_trial(
                broker.port, rounds.feed(S, int(r * plan.confirm_s)), r, 3.0
            ) | {"offered_readings_per_s": r}
            log(
                f"ceiling paced at {r:,.0f}/s: lost {ceil['single_confirm']['lost']}, "
                f"last reading {ceil['single_confirm']['kept_up_s']:.2f}s after the last send"
            )
        ceil["single_runs"] = [ceil["single"]["readings_per_s"]]
        report["ceiling"] = ceil

        # 2-4. The daemon, per detector.
        live: dict[str, Any] = {}
        for det in detectors:
            res: dict[str, Any] = {}
            if not plan.quick:
                # The ceiling again beside each detector: the machine's load drifts.
                c = ceiling_trial(broker.port, rounds.feed(S, plan.single_msgs), 0, 3.0)
                ceil["single_runs"].append(c["readings_per_s"])
                log(
                    f"ceiling single again: {c['readings_per_s']:,.0f} readings/s, lost {c['lost']}"
                )
            d = Daemon(work, broker.port, det, bundles[det], tf_threads)
            res["startup_s"] = d.startup_s
            log(f"{det}: daemon ready in {d.startup_s:.1f}s")
            try:
                prime = daemon_trial(d, broker.port, rounds.feed(S, S * (WINDOW + 5)), 0, grace)
                log(f"{det}: primed ({prime['accounted']:.0f} readings)")
                for kind, msgs, batch in (
                    ("single", plan.single_msgs, 1),
                    ("batched", plan.batched_msgs, BATCH),
                ):
                    t = daemon_trial(d, broker.port, rounds.feed(S, msgs, batch), 0, grace)
                    res[kind] = t
                    log(
                        f"{det} {kind}: {t['readings_per_s']:,.0f} readings/s, "
                        f"lost {t['lost']:.0f}, "
                        f"shed {t['shed']:.0f}, rejected {t['rejected']:.0f}"
                    )
                for kind, batch in (("single", 1), ("batched", BATCH)):
                    pacing = Pacing(
                        d, broker.port, rounds, plan, grace, log, f"{det} {kind}", batch
                    )
                    res[f"{kind}_sustained"], res[f"{kind}_latency"] = paced(
                        pacing, res[kind]["readings_per_s"]
                    )
                if det == "lstm-vae":
                    n = plan.mem_sensors
                    feed = Feed(n, n * (WINDOW + 1), 1, rounds.next, time.time() + 1, seed=1)
                    rounds.next += feed.rounds
                    rounds.last_ts = feed.ts0 + feed.rounds * DT_PAST
                    m = daemon_trial(d, broker.port, feed, 0, grace)
                    time.sleep(1.0)
                    rss, hwm = d.rss_mib()
                    report["memory"] = {
                        "sensors": n,
                        "rss_mib": rss,
                        "peak_rss_mib": hwm,
                        "readings": m["accounted"],
                        "lost": m["lost"],
                    }
                    log(f"memory: {n} sensors, RSS {rss:.0f} MiB (peak {hwm:.0f} MiB)")
            finally:
                d.stop()
            if det in plan.qos0:
                res["qos0"] = qos0_trials(
                    work, broker.port, det, bundles[det], tf_threads, rounds, plan, grace, log
                )
            live[det] = res
        report["live"] = live
        broker.stop()
        broker = None

        # 5. Replay.
        if "lstm-vae" in bundles:
            report["replay"] = bench_replay(bundles["lstm-vae"], plan.quick, log)
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    report["load_after"] = list(os.getloadavg())
    report["wall_s"] = time.time() - started
    report["log"] = plan.log
    report["figures"] = figures(report)
    return report


FINDINGS = """## Where the time goes (py-spy profile taken before commit 2cb0f64)

- **Every single-reading path is paho-bound.** py-spy (`record --idle --threads`) on the Gaussian
  daemon under a flood: paho's network thread is busy all the time, the worker waits in
  `Handoff.drain` most of it. Inside `MQTTLink._on_message`: `client.ack` 59% (a PUBACK is queued
  with a write to paho's socketpair, then sent by the next loop turn), `Handoff.put` 20%,
  `parse` 15%. Outside it, paho's own loop does one `select()` and several `recv()` per packet;
  each syscall drops and retakes the GIL. The bare subscriber pays the same, which is why the
  ceiling itself is only ~13,000 messages/s here and why batching (50 readings per message) is
  12-25x faster for Gaussian/GMM.
- **Fixed: one worker wake-up per message.** Every `put` notified the worker, which took the GIL
  from paho and scored a one-row batch. The worker now lingers up to 2 ms (ended at 256 readings)
  and `put` wakes it only when it waits idle or the hint is reached: Gaussian flood 5,298 / 6,617
  -> 8,932 / 9,085 readings/s (A/B in one run), zero loss throughout (commit 2cb0f64).
- **LSTM-VAE** (stride 1: one window per reading) is CPU-bound on 2 cores: TensorFlow's two
  intra-op threads, paho's thread, Mosquitto and the publisher share them. The worker's Python
  per window (window and timestamp copies, numpy standardisation, bucket padding) also takes the
  GIL from paho. Batching payloads does not help much there, because the model cost is per window.
- **Latency.** The daemon's own arrival-to-verdict histogram stays low (Gaussian p99 ~12-15 ms;
  LSTM-VAE 65-100 ms including the `explain` call for raised alerts); the publisher keeps to its
  schedule (p99 3-8 ms). Most of the end-to-end tail is before `on_message`: readings wait in the
  socket while paho's thread is behind (GIL held by the worker or by a `/metrics` scrape, which
  builds 8 families x 1,000 sensors). It moves a lot with the machine's load: the same Gaussian
  trial gave p99 64-950 ms at load 2-4 in A/B runs.
"""


# -- the table -----------------------------------------------------------------------------


def _latency_row(
    add: Callable[[str, str, float, str, float | None, bool | None], None],
    det: str,
    kind: str,
    res: dict[str, Any],
    qos: str = "",
) -> None:
    lat = res.get(f"{kind}_latency", {})
    sus = res.get(f"{kind}_sustained", {})
    p99 = lat.get("p99_ms", math.nan)
    trials = zip(lat.get("trials_p99_ms", []), lat.get("trials_n", []), strict=False)
    found = sus.get("found")
    how = {True: "", False: ", none kept up: the slowest tried"}.get(found, ": the flood rate")
    add(
        f"{det}, {qos}p99 reading-to-alert, {kind} at 50% of sustained "
        f"({lat.get('offered_readings_per_s', math.nan):,.0f}/s of "
        f"{sus.get('readings_per_s', math.nan):,.0f}/s{how}; "
        f"p50 {lat.get('p50_ms', math.nan):.1f} ms over {lat.get('n', 0)} alerts pooled; "
        "trials' p99 " + ", ".join(f"{p:.0f} ms of {n}" for p, n in trials) + " alerts)",
        f"≤ {TARGETS['p99_ms']:.0f} ms",
        p99,
        "ms",
        p99 / TARGETS["p99_ms"],
        p99 <= TARGETS["p99_ms"],
    )


def figures(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of figure, target, measured, ratio, met."""
    rows: list[dict[str, Any]] = []

    def add(
        name: str, target: str, measured: float, unit: str, ratio: float | None, met: bool | None
    ) -> None:
        rows.append(
            {
                "figure": name,
                "target": target,
                "measured": measured,
                "unit": unit,
                "ratio": ratio,
                "met": met,
            }
        )

    ceil = r.get("ceiling", {})
    runs = ceil.get("single_runs") or [ceil.get("single", {}).get("readings_per_s", math.nan)]
    c1 = statistics.median(runs)
    cb = ceil.get("batched", {}).get("readings_per_s", math.nan)
    add(
        f"Ingest ceiling, 1 reading/message (median of {len(runs)} runs: "
        + ", ".join(f"{x:,.0f}" for x in runs)
        + ")",
        "(yardstick)",
        c1,
        "readings/s",
        None,
        None,
    )
    add("Ingest ceiling, 50 readings/message", "(yardstick)", cb, "readings/s", None, None)
    for det, res in r.get("live", {}).items():
        s = res.get("single", {})
        b = res.get("batched", {})
        rs = s.get("readings_per_s", math.nan)
        rb = b.get("readings_per_s", math.nan)
        need = {"lstm-vae": TARGETS["lstm_ratio"], "gaussian": TARGETS["gaussian_ratio"]}.get(det)
        zl = bool(s.get("zero_loss"))
        add(
            f"{det}, 1 reading/message (zero loss: {'yes' if zl else 'NO'})",
            f"≥ {need:.0%} of ceiling" if need else "(reported)",
            rs,
            "readings/s",
            rs / c1,
            (rs / c1 >= need and zl) if need else None,
        )
        zb = bool(b.get("zero_loss"))
        add(
            f"{det}, 50 readings/message (zero loss: {'yes' if zb else 'NO'})",
            f"≥ {TARGETS['batch_gain']:.0f}× its single-reading rate",
            rb,
            "readings/s",
            rb / rs,
            rb / rs >= TARGETS["batch_gain"] and zb,
        )
        for kind in ("single", "batched"):
            _latency_row(add, det, kind, res)
        q0 = res.get("qos0")
        if q0:
            c0 = q0["ceiling"]["readings_per_s"]
            s0 = q0["single"]
            r0 = s0["readings_per_s"]
            z0 = bool(s0.get("zero_loss"))
            add(
                f"{det}, QoS 0, 1 reading/message (zero loss: {'yes' if z0 else 'NO'}; "
                f"QoS 0 ceiling {c0:,.0f})",
                f"≥ {need:.0%} of QoS 0 ceiling" if need else "(reported)",
                r0,
                "readings/s",
                r0 / c0,
                (r0 / c0 >= need and z0) if need else None,
            )
            _latency_row(add, det, "single", q0, "QoS 0, ")
    mem = r.get("memory")
    if mem:
        add(
            f"RSS, LSTM-VAE, {mem['sensors']:,} sensors (peak {mem['peak_rss_mib']:.0f} MiB)",
            "≤ 1024 MiB",
            mem["rss_mib"],
            "MiB",
            mem["rss_mib"] / TARGETS["rss_mib"],
            mem["rss_mib"] <= TARGETS["rss_mib"],
        )
    rep = r.get("replay")
    if rep:
        add(
            f"LSTM-VAE replay vs raw batched call ({rep['lstm_raw_windows_per_s']:,.0f} windows/s)",
            "≥ 0.6",
            rep["lstm_replay_ratio"],
            "ratio",
            rep["lstm_replay_ratio"] / TARGETS["replay_ratio"],
            rep["lstm_replay_ratio"] >= TARGETS["replay_ratio"],
        )
        add(
            "LSTM-VAE replay throughput",
            "≥ 40,000 windows/s",
            rep["lstm_replay_windows_per_s"],
            "windows/s",
            rep["lstm_replay_windows_per_s"] / TARGETS["replay_windows_s"],
            rep["lstm_replay_windows_per_s"] >= TARGETS["replay_windows_s"],
        )
        add(
            "Gaussian replay",
            "≥ 300,000 readings/s",
            rep["gaussian_replay_readings_per_s"],
            "readings/s",
            rep["gaussian_replay_readings_per_s"] / TARGETS["gaussian_replay"],
            rep["gaussian_replay_readings_per_s"] >= TARGETS["gaussian_replay"],
        )
        add(
            "Naive per-window LSTM-VAE call vs raw batched",
            "(reported)",
            rep["naive_ratio"],
            "ratio",
            None,
            None,
        )
    return rows


def _fmt(v: float, unit: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if unit == "ratio":
        return f"{v:.3f}" if v >= 0.01 else f"{v:.5f}"
    if unit == "ms":
        return f"{v:.1f} ms"
    if unit == "MiB":
        return f"{v:,.0f} MiB"
    return f"{v:,.0f} {unit}"


def markdown(r: dict[str, Any], command: str) -> str:
    """docs/performance.md."""
    m = r["machine"]
    v = m["versions"]
    lines = [
        "# Live performance",
        "",
        "End-to-end throughput, latency and memory of the daemon through a real Mosquitto, side",
        "by side with the bare MQTT ingest ceiling (issue 7), and replay throughput (issue 3).",
        "Written by `bench/bench_live.py`; how it measures is in that script's docstring.",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        f"Machine: {m['cpu']}, {m['cores']} CPUs, {m['memory_gib']} GiB; {m['platform']}. "
        f"Python {v['python']}, paho-mqtt {v['paho-mqtt']}, numpy {v['numpy']}, TensorFlow "
        f"{v['tensorflow']}, {v['mosquitto']}. Commit {m['commit']}"
        f"{' (with uncommitted changes)' if m['dirty'] else ''}. "
        f"TF threads intra {r['plan']['tf_threads'][0]} / inter {r['plan']['tf_threads'][1]}; "
        "the live LSTM-VAE daemon scores with "
        + (
            "LiteRT (the bundle's export, as `streamwatch train` makes it). "
            if r["plan"].get("litert")
            else "TensorFlow (`--no-litert`). "
        )
        + f"Load average (1 min) before / after: {r['load_before'][0]:.2f} / "
        f"{r['load_after'][0]:.2f}; "
        f"a shared machine, so expect ±15% between runs. Wall time {r['wall_s']:.0f} s.",
        "",
        "| figure | target | measured | ratio | met |",
        "|---|---|---:|---:|---|",
    ]
    for row in r["figures"]:
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
        met = "" if row["met"] is None else ("met" if row["met"] else "**missed**")
        lines.append(
            f"| {row['figure']} | {row['target']} | "
            f"{_fmt(row['measured'], row['unit'])} | {ratio} | {met} |"
        )
    lines += ["", FINDINGS]
    lines += ["", "## Trials", "", "```"]
    lines += r["log"]
    lines += ["```", ""]
    return "\n".join(lines)


def main() -> int:
    """Parse arguments; run a child role or the whole benchmark."""
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        role = sys.argv[1]
        ap = argparse.ArgumentParser()
        ap.add_argument("--port", type=int, required=True)
        ap.add_argument("--feed")
        ap.add_argument("--rate", default="0")
        ap.add_argument("--stamp-now", action="store_true")
        ap.add_argument("--expect", default="0")
        ap.add_argument("--idle", default="3")
        ap.add_argument("--qos", default="1")
        a = ap.parse_args(sys.argv[2:])
        return {"_publish": publisher_main, "_subscribe": subscriber_main, "_alerts": alerts_main}[
            role
        ](a)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a seconds-long smoke run (CI)")
    ap.add_argument("--report", type=Path, help="write the full report as JSON here")
    ap.add_argument("--write", type=Path, help="write the Markdown table here")
    ap.add_argument("--tf-threads", default="2,1", help="intra,inter for the daemon (default 2,1)")
    ap.add_argument("--only", help="comma-separated detectors to run (default: all three)")
    ap.add_argument(
        "--no-litert",
        action="store_true",
        help="LSTM-VAE bundle without its LiteRT export: the daemon scores with TensorFlow "
        "(default: with it, as `streamwatch train` makes it, so the daemon uses LiteRT)",
    )
    args = ap.parse_args()
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        print("mosquitto not found (apt-get install mosquitto)", file=sys.stderr)
        return 2
    intra, inter = (int(x) for x in args.tf_threads.split(","))
    only = set(args.only.split(",")) if args.only else None
    report = run(Plan.make(args.quick), (intra, inter), only, litert=not args.no_litert)
    command = " ".join(["python", "bench/bench_live.py", *sys.argv[1:]])
    report["command"] = command
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2, default=float))
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        text = markdown(report, command)
        # Keep the sections written by hand or by other scripts (between their markers).
        old = args.write.read_text(encoding="utf-8") if args.write.exists() else ""
        for mark in ("issue15", "ack_compare"):
            begin, end = f"<!-- {mark} -->", f"<!-- /{mark} -->"
            if begin in old and end in old:
                keep = old[old.index(begin) : old.index(end) + len(end)]
                text = text.replace("\n## Trials\n", f"\n{keep}\n\n## Trials\n", 1)
        args.write.write_text(text)
    for row in report["figures"]:
        met = "" if row["met"] is None else ("met" if row["met"] else "MISSED")
        print(f"{row['figure']:<70} {_fmt(row['measured'], row['unit']):>22} {met}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
