"""Faults against a real Mosquitto: broker outages, daemon restarts, overload, a stuck worker,
bad configs and model directories that try to run code.

What "nothing lost" means here is exact: a publisher counts only the readings the broker
acknowledged (PUBACK), and the daemon's ``streamwatch_readings_total`` must come to exactly that
number, with redelivered duplicates rejected by timestamp rather than counted twice.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from prometheus_client import CollectorRegistry

import streamwatch.daemon as daemon_mod
from streamwatch.config import Config, GaussianConfig, from_mapping
from streamwatch.daemon import Daemon
from streamwatch.detectors import base, bundle
from streamwatch.detectors.bundle import Model
from streamwatch.ingest.mqtt import MQTTLink
from streamwatch.ingest.parse import Reading
from streamwatch.ingest.raw import Raw, RawDecoder
from streamwatch.pipeline.threshold import Thresholds, calibrate
from tests.helpers import Mosquitto, Publisher, free_port, wait_until

MU, SIGMA = 20.0, 0.5
"""Every sensor in these tests reads N(20, 0.5²) when normal; 35 is a 30-sigma anomaly."""
ANOMALY = 35.0


# -- helpers ----------------------------------------------------------------------------------


def gaussian_bundle(path: Path, sensors: Sequence[str]) -> Path:
    """A trained Gaussian model bundle for ``sensors`` (so nothing warms up in the daemon)."""
    det = base.create(GaussianConfig(), 1)
    rng = np.random.default_rng(0)
    det.fit({s: rng.normal(MU, SIGMA, 4000) for s in sensors})
    held_out = rng.normal(MU, SIGMA, 20000)
    pooled = calibrate(det.score([sensors[0]] * held_out.size, held_out), 1e-4)
    bundle.save(Model(det, Thresholds(1e-4, pooled=pooled)), path)
    return path


def config(broker: Mosquitto, model_dir: Path | None = None, **sections: Any) -> Config:
    """A test daemon config: fast reconnects, metrics on a free port, QoS 1 session."""
    data: dict[str, Any] = {
        "mqtt": {
            "broker": broker.url,
            "client_id": f"sw-faults-{broker.port}",
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
        },
        "detector": {"type": "gaussian"},
        "learning": {"warmup": 10},
        "alerts": {"raise_k": 1, "raise_n": 1, "clear_m": 5, "clear_hold_s": 0.0},
        "metrics": {"host": "127.0.0.1", "port": 0},
    }
    if model_dir is not None:
        data["model_dir"] = str(model_dir)
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return from_mapping(data)


def readings(registry: CollectorRegistry, sensor: str) -> float:
    return registry.get_sample_value("streamwatch_readings_total", {"sensor": sensor}) or 0.0


def rejected(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("streamwatch_rejected_total", {"reason": reason}) or 0.0


def record_hand_offs(daemon: Daemon) -> list[tuple[Reading, int]]:
    """Every reading the daemon's network thread hands to the worker, in order, with the
    number of the connection it came in on (1 = the first)."""
    seen: list[tuple[Reading, int]] = []
    real = daemon.link.hand_off
    decoder = RawDecoder(daemon.cfg.payload)

    def recording(rs: Sequence[Reading] | Raw, now: float, token: Any = None) -> object:
        conn = cast(MQTTLink, daemon.link)._connections
        # A sensor message is handed over undecoded (the worker decodes it): decode a copy.
        readings = decoder.decode(rs, now, []) if isinstance(rs, Raw) else rs
        seen.extend((r, conn) for r in readings)
        return real(rs, now, token)

    daemon.link.hand_off = recording
    return seen


class Stream:
    """A publisher thread streaming one sensor's readings at QoS 1 with increasing timestamps.

    At most one message is in flight (so a resend after a reconnect cannot overtake a newer
    reading), and it pauses while disconnected. ``acked()`` counts only readings the broker
    acknowledged: the ones it accepted.
    """

    def __init__(self, port: int, sensor: str, t0: float, step: float = 0.01) -> None:
        self.sensor, self.t0, self.step = sensor, t0, step
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"stream-{sensor}", protocol=mqtt.MQTTv5
        )
        self.client.max_inflight_messages_set(1)
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        # Acknowledged message ids, from paho's on_publish: a message published in the instant
        # the broker went away has an info whose is_published() raises, though paho resends
        # it after the reconnect and the broker may well accept it then.
        self._acked_mids: set[int] = set()
        self.client.on_publish = lambda c, u, mid, rc, p: self._acked_mids.add(mid)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.infos: list[mqtt.MQTTMessageInfo] = []
        self.value: Callable[[int], float] = lambda i: MU + SIGMA * np.sin(i)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ts(self, i: int) -> float:
        return self.t0 + i * self.step

    def publish(self, i: int) -> None:
        body = json.dumps({"value": self.value(i), "ts": self.ts(i)})
        self.infos.append(self.client.publish(f"sensors/{self.sensor}", body, qos=1))

    def start(self, every_s: float = 0.002) -> None:
        def run() -> None:
            while not self._stop.is_set():
                if self.client.is_connected():
                    self.publish(len(self.infos))
                self._stop.wait(every_s)

        self._thread = threading.Thread(target=run, name=f"stream-{self.sensor}", daemon=True)
        self._thread.start()

    def stop(self, flush_s: float = 30.0) -> None:
        """Stop publishing and wait (bounded) for outstanding acknowledgements."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        deadline = time.monotonic() + flush_s
        for info in self.infos:
            while info.mid not in self._acked_mids and time.monotonic() < deadline:
                time.sleep(0.01)

    def acked(self) -> list[int]:
        done = self._acked_mids
        return [i for i, info in enumerate(self.infos) if info.mid in done]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class SessionCollector:
    """A subscriber with a persistent session (MQTT 3.1.1, clean_session=False), so QoS 1
    messages published while it is cut off reach it after it reconnects."""

    def __init__(self, port: int, topic: str, client_id: str) -> None:
        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(json.loads(msg.payload))

    def states(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(m["state"], m["alert_id"]) for m in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return gaussian_bundle(tmp_path / "model", ["s1", "hot", "load", "fast", "marker", "a", "b"])


# -- 1. broker outage -------------------------------------------------------------------------


@pytest.mark.integration
def test_broker_outage_mid_stream_scores_every_accepted_reading(
    mosquitto: Mosquitto, model_dir: Path
) -> None:
    """Mosquitto (persistence on) is stopped mid-stream while it holds a backlog for the
    daemon, and restarted on the same port: the daemon reconnects with backoff, resumes its
    session, and scores every reading the broker acknowledged, each exactly once."""
    registry = CollectorRegistry()
    daemon = Daemon(config(mosquitto, model_dir), registry=registry)
    seen = record_hand_offs(daemon)
    # Hold the daemon's network thread now and then, so the broker has readings queued and in
    # flight for it when it goes down.
    gate = threading.Event()
    gate.set()
    real = daemon.link.hand_off

    def gated(rs: Sequence[Reading] | Raw, now: float, token: Any = None) -> object:
        gate.wait(30)
        return real(rs, now, token)

    daemon.link.hand_off = gated
    daemon.start()
    stream = Stream(mosquitto.port, "s1", t0=time.time() - 3000)
    try:
        assert daemon.wait_ready(10)
        stream.start()
        assert wait_until(lambda: len(stream.acked()) >= 300)
        gate.clear()  # the daemon stops reading; the broker queues for it
        n = len(stream.acked())
        assert wait_until(lambda: len(stream.acked()) >= n + 300)
        before_stop = set(stream.acked())
        mosquitto.stop()  # SIGTERM: the broker saves its sessions and queues, then exits
        gate.set()
        assert wait_until(lambda: not daemon.link.connected.is_set(), timeout=10)
        assert daemon.ready() is not None
        time.sleep(1.0)  # an outage: the daemon retries with backoff meanwhile
        mosquitto.start()
        assert daemon.wait_ready(15), daemon.ready()
        assert wait_until(lambda: len(stream.acked()) >= n + 900)
        stream.stop()
        acked = stream.acked()
        assert len(acked) == len(stream.infos), "the publisher's resends were all accepted"
        assert wait_until(lambda: readings(registry, "s1") == len(acked), timeout=30), (
            readings(registry, "s1"),
            len(acked),
        )
        time.sleep(0.5)  # nothing more arrives afterwards
        assert readings(registry, "s1") == len(acked)
        # Every acknowledged reading reached the worker; redeliveries were rejected, not counted.
        index = {round((r.ts - stream.t0) / stream.step): conn for r, conn in seen}
        assert set(acked) <= set(index)
        dups = rejected(registry, "duplicate_timestamp") + rejected(registry, "out_of_order")
        assert len(seen) == len(acked) + dups
        # The broker's backlog: accepted before it stopped, delivered only after the restart.
        backlog = [i for i in before_stop if index[i] == 2]
        assert len(backlog) >= 250, len(backlog)  # about the 300 held back above
        assert registry.get_sample_value("streamwatch_mqtt_reconnects_total") == 1
        assert registry.get_sample_value("streamwatch_mqtt_connected") == 1
    finally:
        gate.set()
        stream.close()
        daemon.stop()


@pytest.mark.integration
def test_alerts_raised_during_an_outage_are_delivered_after_reconnect(
    mosquitto: Mosquitto, model_dir: Path
) -> None:
    """Readings already queued inside the daemon are scored while the broker is down; the
    alerts they raise wait in paho's QoS 1 queue and are published after the reconnect."""
    raised: list[tuple[str, bool]] = []
    daemon: Daemon

    def on_alert(ev: Any) -> None:
        raised.append((ev.state, daemon.link.connected.is_set()))

    daemon = Daemon(config(mosquitto, model_dir), registry=CollectorRegistry(), on_alert=on_alert)
    alerts = SessionCollector(mosquitto.port, "streamwatch/alerts/#", "sw-alert-watcher")
    daemon.start()
    try:
        assert daemon.wait_ready(10)
        mosquitto.stop()
        assert wait_until(lambda: not daemon.link.connected.is_set(), timeout=10)
        # The backlog the worker still had when the broker went: normal, then an excursion,
        # then normal again (raise, then clear after clear_m = 5).
        t0 = time.time() - 100
        values = [MU] * 5 + [ANOMALY] * 3 + [MU] * 6
        for i, v in enumerate(values):
            daemon.handoff.put([Reading("a", t0 + i, v)], time.time())
        assert wait_until(lambda: len(raised) == 2, timeout=10), raised
        assert raised == [("raised", False), ("cleared", False)], "scored during the outage"
        mosquitto.start()
        assert daemon.wait_ready(15)
        assert wait_until(lambda: len(alerts.states()) == 2, timeout=15), alerts.states()
        (s1, id1), (s2, id2) = alerts.states()
        assert (s1, s2) == ("raised", "cleared") and id1 == id2
    finally:
        alerts.close()
        daemon.stop()


@pytest.mark.integration
def test_resubscribes_when_the_broker_lost_the_session(
    mosquitto: Mosquitto, model_dir: Path
) -> None:
    """A hard kill with the persistence file gone: the session is lost, so readings flow again
    only because the daemon subscribes in on_connect."""
    registry = CollectorRegistry()
    daemon = Daemon(config(mosquitto, model_dir), registry=registry)
    daemon.start()
    try:
        assert daemon.wait_ready(10)
        mosquitto.kill()
        for f in (mosquitto.workdir / "data").iterdir():
            f.unlink()
        mosquitto.start()
        assert wait_until(lambda: daemon.link.subscribed.is_set(), timeout=15)
        pub = Publisher(mosquitto.port)
        for i in range(20):
            pub.reading("b", MU, time.time() - 50 + i)
        pub.close()
        assert wait_until(lambda: readings(registry, "b") == 20)
        assert registry.get_sample_value("streamwatch_mqtt_reconnects_total") == 1
    finally:
        daemon.stop()


# -- 2. daemon restart ------------------------------------------------------------------------


@pytest.mark.integration
def test_daemon_restart_under_load_loses_nothing_and_keeps_alert_state(
    mosquitto: Mosquitto, model_dir: Path, tmp_path: Path
) -> None:
    """Stop the daemon while two sensors stream (one of them in a raised alert) and start it
    again: every reading is scored exactly once across the two runs (persistent session), and
    the raised alert is resumed from ``state_dir``: not raised again, and cleared later with
    its original alert id."""
    cfg = config(mosquitto, model_dir, state_dir=str(tmp_path / "state"))
    alerts = SessionCollector(mosquitto.port, "streamwatch/alerts/#", "sw-restart-watcher")
    reg1 = CollectorRegistry()
    first = Daemon(cfg, registry=reg1)
    first.start()
    t0 = time.time() - 3000
    load = Stream(mosquitto.port, "load", t0)
    hot = Stream(mosquitto.port, "hot", t0, step=0.05)
    hot.value = lambda i: ANOMALY  # in alarm from the start
    second: Daemon | None = None
    try:
        assert first.wait_ready(10)
        load.start(every_s=0.001)
        hot.start(every_s=0.005)
        assert wait_until(lambda: alerts.states()[:1] and alerts.states()[0][0] == "raised")
        state_file = tmp_path / "state" / "alerts.json"
        assert wait_until(lambda: state_file.exists())
        raised_id = alerts.states()[0][1]
        assert json.loads(state_file.read_text())["raised"] == {"hot": raised_id}
        assert wait_until(lambda: readings(reg1, "load") >= 300)
        first.stop()  # under load: both streams keep publishing into the session
        n_stopped = len(load.acked())
        assert wait_until(lambda: len(load.acked()) >= n_stopped + 300)

        reg2 = CollectorRegistry()
        second = Daemon(cfg, registry=reg2)
        assert second.engine.raised == {"hot": raised_id}
        second.start()
        assert second.wait_ready(10)
        assert wait_until(lambda: readings(reg2, "hot") >= 20)
        hot.value = lambda i: MU  # back to normal: cleared after clear_m = 5 normal readings
        assert wait_until(lambda: len(alerts.states()) >= 2, timeout=20), alerts.states()
        assert wait_until(lambda: readings(reg2, "load") >= 300)
        load.stop()
        hot.stop()
        for stream in (load, hot):
            acked = stream.acked()
            assert len(acked) == len(stream.infos)

            def scored(s: Stream = stream) -> float:
                return readings(reg1, s.sensor) + readings(reg2, s.sensor)

            want = len(acked)
            assert wait_until(lambda: scored() == want, timeout=30), (stream.sensor, want)  # noqa: B023
        time.sleep(0.5)
        assert readings(reg1, "load") + readings(reg2, "load") == len(load.acked())
        # One raise (by the first run) and one clear (by the second), with the same id.
        assert alerts.states() == [("raised", raised_id), ("cleared", raised_id)]
        assert reg2.get_sample_value("streamwatch_alerts_raised_total", {"sensor": "hot"}) == 0
        assert json.loads(state_file.read_text())["raised"] == {}
    finally:
        load.close()
        hot.close()
        alerts.close()
        first.stop()
        if second is not None:
            second.stop()


@pytest.mark.integration
def test_a_message_mid_hand_off_at_shutdown_is_not_lost(
    mosquitto: Mosquitto, model_dir: Path
) -> None:
    """Regression: a message that passed the ``accepting`` check just before ``stop()`` used to
    be handed off after the worker's final drain, then acknowledged, and so lost. Now stop()
    waits for the hand-off, and the worker scores it."""
    cfg = config(mosquitto, model_dir)
    reg1 = CollectorRegistry()
    first = Daemon(cfg, registry=reg1)
    first.start()
    entered = threading.Event()
    real_hand_off = first.link.hand_off

    def slow_hand_off(rs: Any, now: float, token: Any = None) -> object:
        if isinstance(rs, Raw) and rs.payload == b"5":
            entered.set()
            time.sleep(1.0)  # stop() begins while this message is half handled
        return real_hand_off(rs, now, token)

    first.link.hand_off = slow_hand_off
    pub = Publisher(mosquitto.port)
    try:
        assert first.wait_ready(10)
        for i in range(10):
            pub.send("sensors/a", str(MU + 0.01 * i))
        pub.send("sensors/a", b"5")  # the slow one: a bare number, arrival time as timestamp
        for i in range(10):
            pub.send("sensors/a", str(MU + 0.01 * i))
        pub.flush()
        assert entered.wait(10)
        first.stop()
    finally:
        first.link.hand_off = real_hand_off
    reg2 = CollectorRegistry()
    second = Daemon(cfg, registry=reg2)
    second.start()
    try:
        assert second.wait_ready(10)
        pub.reading("b", MU, time.time())  # a marker: everything before it has been redelivered
        pub.flush()
        assert wait_until(lambda: readings(reg2, "b") == 1)
        assert readings(reg1, "a") + readings(reg2, "a") == 21
    finally:
        pub.close()
        second.stop()


# -- 3. overload ------------------------------------------------------------------------------


class Gate:
    """Makes the worker's detector slow on demand: ``score`` waits while the gate is shut."""

    def __init__(self, daemon: Daemon) -> None:
        self.open = threading.Event()
        self.open.set()
        self.blocked = threading.Event()
        det = daemon.engine.detector
        real = det.score

        def score(sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
            if not self.open.is_set():
                self.blocked.set()
                self.open.wait(60)
            return real(sensors, x)

        det.score = score  # type: ignore[method-assign]

    def shut(self) -> None:
        self.blocked.clear()
        self.open.clear()


@pytest.mark.integration
def test_overload_holds_back_at_the_broker_and_sheds_nothing(
    mosquitto: Mosquitto, model_dir: Path
) -> None:
    """Scoring stalls while 3000 readings arrive at QoS 1. Messages are acknowledged only
    once scored, so the broker holds back all but ``mqtt.receive_maximum`` of them: the
    hand-off stays small, nothing is shed, paho's thread stays responsive, and once scoring
    resumes every reading is scored exactly once. All were acknowledged then, so a new
    session of the same client gets none of them again (issue 12: backpressure, no shedding
    of what the broker handed over)."""
    window = 50
    cfg = config(mosquitto, model_dir, mqtt={"receive_maximum": window})
    registry = CollectorRegistry()
    daemon = Daemon(cfg, registry=registry)
    gate = Gate(daemon)
    taken = [0]
    peak = [0]
    real = daemon.link.hand_off

    def watching(rs: Sequence[Reading] | Raw, now: float, token: Any = None) -> object:
        shed = real(rs, now, token)
        taken[0] += len(rs)
        peak[0] = max(peak[0], len(daemon.handoff))
        return shed

    daemon.link.hand_off = watching
    daemon.start()
    pub = Publisher(mosquitto.port)
    n = 3000
    try:
        assert daemon.wait_ready(10)
        gate.shut()
        t0 = time.time() - 1000
        pub.reading("fast", MU, t0)
        assert gate.blocked.wait(10), "the worker is now stuck in score()"
        for i in range(1, n):
            pub.reading("fast", MU + 0.1 * np.sin(i), t0 + i * 0.01)
        pub.flush()
        # The broker sends no more than the in-flight window while nothing is acknowledged.
        assert wait_until(lambda: taken[0] >= window - 1, timeout=30), taken[0]
        time.sleep(1.0)
        assert taken[0] <= window + 1 and peak[0] <= window + 1, (taken[0], peak[0])
        assert daemon.link.connected.is_set() and daemon.live() is None
        gate.open.set()
        assert wait_until(lambda: readings(registry, "fast") == n, timeout=60), readings(
            registry, "fast"
        )
        assert (registry.get_sample_value("streamwatch_readings_shed_total") or 0.0) == 0.0
    finally:
        gate.open.set()
        daemon.stop()
    reg2 = CollectorRegistry()
    again = Daemon(cfg, registry=reg2)
    again.start()
    try:
        assert again.wait_ready(10)
        pub.reading("marker", MU, time.time())
        pub.flush()
        assert wait_until(lambda: readings(reg2, "marker") == 1)
        assert readings(reg2, "fast") == 0
    finally:
        pub.close()
        again.stop()


# -- 4. stuck processing ----------------------------------------------------------------------


@pytest.mark.integration
def test_stuck_worker_fails_readyz_and_stops_the_watchdog(
    mosquitto: Mosquitto, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While scoring is stuck, /healthz and /readyz answer 503 and no WATCHDOG=1 reaches the
    notify socket (systemd would restart the service); both recover when it moves again."""
    monkeypatch.setattr(daemon_mod, "STALL_S", 1.0)
    with tempfile.TemporaryDirectory(prefix="sdn") as d:
        path = os.path.join(d, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "400000")  # pings every 0.2 s while healthy
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        daemon = Daemon(config(mosquitto, model_dir), registry=CollectorRegistry())
        gate = Gate(daemon)
        daemon.start()
        pub = Publisher(mosquitto.port)
        base_url = f"http://127.0.0.1:{daemon.metrics_port}"

        def pings(window_s: float) -> int:
            """WATCHDOG=1 datagrams that arrive within ``window_s``."""
            deadline = time.monotonic() + window_s
            count = 0
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    count += sock.recv(4096).decode().splitlines().count("WATCHDOG=1")
                except TimeoutError:
                    break
            return count

        def drain() -> None:
            sock.setblocking(False)
            try:
                while True:
                    sock.recv(4096)
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)

        try:
            assert daemon.wait_ready(10)
            assert wait_until(lambda: _get(base_url + "/readyz")[0] == 200)
            assert pings(1.0) >= 2
            gate.shut()
            pub.reading("s1", MU, time.time())
            assert gate.blocked.wait(10)
            assert wait_until(lambda: daemon.live() is not None, timeout=10)
            code, body = _get(base_url + "/readyz")
            assert code == 503 and "stalled" in body
            assert _get(base_url + "/healthz")[0] == 503
            drain()
            assert pings(1.5) == 0, "no heartbeat while the worker is stuck"
            gate.open.set()
            assert pings(2.0) >= 1
            assert wait_until(lambda: _get(base_url + "/readyz")[0] == 200)
        finally:
            gate.open.set()
            pub.close()
            daemon.stop()
            sock.close()


# -- 7. config errors and bad model directories ----------------------------------------------


def _copy_bundle(src: Path, dst: Path, edit: Callable[[Path], object]) -> str:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    edit(dst)
    return str(dst)


def _flip_a_byte(d: Path) -> None:
    f = d / bundle.SENSORS
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


def _empty(d: Path) -> None:
    for f in d.iterdir():
        f.unlink()


@pytest.mark.integration
def test_config_and_model_errors_are_one_line_exit_2_no_traceback(
    tmp_path: Path, model_dir: Path
) -> None:
    """``streamwatch run`` with each kind of bad config or model directory: exit code 2, one
    ``config error:``/``error:`` line that names the key or file, and no traceback."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    none = tmp_path / "missing"
    tomls = {
        "unknown key": ("[mqtt]\nbrokr = 'x'\n", "mqtt.brokr: unknown key"),
        "bad value": ("[windows]\nlength = 1\n", "windows.length"),
        "bad toml": ("[mqtt\nbroker=", "not valid TOML"),
        "password env unset": (
            "[mqtt]\nusername = 'u'\npassword_env = 'SW_TEST_UNSET'\n",
            "mqtt.password_env: SW_TEST_UNSET is not set",
        ),
        "password file missing": (
            f"[mqtt]\nusername = 'u'\npassword_file = '{none}'\n",
            "mqtt.password_file: cannot read",
        ),
        "ca file missing": (
            f"[mqtt.tls]\nenabled = true\nca_file = '{none}'\n",
            "mqtt.tls.ca_file: cannot load",
        ),
        "ca file not a certificate": (
            f"[mqtt.tls]\nenabled = true\nca_file = '{junk}'\n",
            "mqtt.tls.ca_file: cannot load",
        ),
        "client key missing": (
            f"[mqtt.tls]\nenabled = true\ncert_file = '{junk}'\nkey_file = '{none}'\n",
            "mqtt.tls.cert_file/key_file: cannot load",
        ),
        "metrics cert missing": (
            f"[metrics]\ntls_cert_file = '{none}'\ntls_key_file = '{none}'\n",
            "metrics.tls_cert_file/tls_key_file: cannot load",
        ),
        "metrics port busy": (
            f"[metrics]\nhost = '127.0.0.1'\nport = {busy.getsockname()[1]}\n",
            "metrics.host/port: cannot listen",
        ),
        "basic auth env unset": (
            "[metrics]\nbasic_auth_user = 'p'\nbasic_auth_password_env = 'SW_TEST_UNSET'\n",
            "metrics.basic_auth_password_env",
        ),
    }
    cases: dict[str, tuple[list[str], str]] = {}
    for name, (text, want) in tomls.items():
        path = tmp_path / (name.replace(" ", "-") + ".toml")
        path.write_text(text)
        cases[name] = (["--config", str(path)], want)
    cases |= {
        "config file missing": (["--config", str(none)], "file not found"),
        "bad broker url": (["--broker", "http://plant"], "mqtt.broker"),
        "model dir missing": (["--model-dir", str(none)], "does not exist"),
        "model dir empty": (
            ["--model-dir", _copy_bundle(model_dir, tmp_path / "empty", _empty)],
            "manifest.json: missing",
        ),
        "manifest corrupt": (
            [
                "--model-dir",
                _copy_bundle(
                    model_dir, tmp_path / "mc", lambda d: (d / bundle.MANIFEST).write_text("{")
                ),
            ],
            "unreadable or corrupt",
        ),
        "file edited": (
            ["--model-dir", _copy_bundle(model_dir, tmp_path / "edited", _flip_a_byte)],
            "checksum mismatch",
        ),
        "wrong detector": (["--model-dir", str(model_dir), "--detector", "gmm"], "asks for 'gmm'"),
    }
    env = {k: v for k, v in os.environ.items() if k != "SW_TEST_UNSET"}
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for name, (args, _) in cases.items():
            # Gaussian: the default detector (lstm-vae) would import TensorFlow in each process.
            argv = [sys.executable, "-m", "streamwatch", "run", "--detector", "gaussian"]
            if "--broker" not in args:
                argv += ["--broker", f"mqtt://127.0.0.1:{free_port()}"]
            if name != "metrics port busy":
                argv += ["--metrics-port", "0"]
            procs[name] = subprocess.Popen(
                [*argv, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        for name, proc in procs.items():
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name}: still running: the error was not caught")
            want = cases[name][1]
            assert proc.returncode == 2, (name, proc.returncode, err)
            assert "Traceback" not in err, (name, err)
            lines = [ln for ln in err.splitlines() if ln.startswith(("config error:", "error:"))]
            assert len(lines) == 1 and want in lines[0], (name, err)
    finally:
        busy.close()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


# -- 11. model loading never executes code --------------------------------------------------

_UNPICKLED: list[str] = []
_WATCHING = threading.Event()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _WATCHING.is_set() and event == "pickle.find_class":
        _UNPICKLED.append(f"{args[0]}.{args[1]}")


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one only counts while watching


class _Planted:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _plant(d: Path, marker: Path) -> None:
    """Files a careless loader might pick up, each of which runs code when loaded."""
    payload = pickle.dumps(_Planted(marker))
    for name in ("model.pkl", "sensors.pkl", "detector.pickle", "thresholds.npy", "model.joblib"):
        (d / name).write_bytes(payload)


def _load_watched(path: Path) -> Any:
    _UNPICKLED.clear()
    _WATCHING.set()
    try:
        return bundle.load(path).detector
    finally:
        _WATCHING.clear()


def test_planted_pickles_in_a_model_directory_are_never_loaded(
    model_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "code-ran"
    _plant(model_dir, marker)
    with (model_dir / "model.pkl").open("rb") as f:  # the payload does work when unpickled...
        pickle.load(f)
    assert marker.exists()
    marker.unlink()
    det = _load_watched(model_dir)  # ...but the loader never unpickles anything
    assert det.knows("s1")
    assert not marker.exists() and _UNPICKLED == []


@pytest.mark.slow
def test_lstm_vae_weights_swapped_for_a_keras_lambda_archive_is_refused_unexecuted(
    tmp_path: Path,
) -> None:
    """An attacker who can write the model directory replaces the weights with a full Keras
    model whose Lambda layer runs code, or with an .npz holding a pickled object, and even
    fixes the manifest's checksum: loading is a ModelError (plain arrays only, no pickle, into
    a model built from code), and nothing ran."""
    import keras

    from streamwatch.config import LSTMVAEConfig

    cfg = LSTMVAEConfig(hidden=4, latent=2, epochs=1, batch_size=64)
    det = base.create(cfg, 10)
    rng = np.random.default_rng(0)
    det.fit({"a": np.sin(np.arange(400) / 8.0) + rng.normal(0, 0.05, 400)})
    vae = tmp_path / "vae"
    bundle.save(Model(det, Thresholds(1e-5)), vae)
    (weights,) = vae.glob("*.weights.npz")
    assert _load_watched(vae).knows("a")  # the honest bundle loads
    with np.load(weights, allow_pickle=False) as f:
        honest = {k: f[k] for k in f.files}

    marker = tmp_path / "lambda-ran"

    def evil(x: Any) -> Any:
        marker.touch()
        return x

    model = keras.Sequential([keras.Input((10,)), keras.layers.Lambda(evil)])
    archive = tmp_path / "evil.keras"
    model.save(archive)
    marker.unlink(missing_ok=True)  # building the model above called it once

    # Swapped in without touching the manifest: the checksum catches it.
    weights.write_bytes(archive.read_bytes())
    with pytest.raises(base.ModelError, match="checksum"):
        _load_watched(vae)
    # Swapped in with a forged checksum, and pickles planted beside it: still refused.
    manifest = json.loads((vae / bundle.MANIFEST).read_text())
    manifest["files"][weights.name] = bundle._sha256(weights)
    (vae / bundle.MANIFEST).write_text(json.dumps(manifest))
    (vae / "model.keras").write_bytes(archive.read_bytes())
    _plant(vae, marker)
    with pytest.raises(base.ModelError, match=r"cannot load lstm-vae model") as err:
        _load_watched(vae)
    assert "no eps array" in str(err.value)  # the zip holds no weight arrays
    assert not marker.exists(), "code from the model directory ran"
    # An .npz whose weights are a pickled object that runs code when unpickled.
    with weights.open("wb") as f:
        np.savez(f, **(honest | {"enc_kernel": np.array([_Planted(marker)], dtype=object)}))
    manifest["files"][weights.name] = bundle._sha256(weights)
    (vae / bundle.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(base.ModelError, match=r"cannot load lstm-vae model") as err:
        _load_watched(vae)
    assert "allow_pickle" in str(err.value)
    assert not marker.exists(), "code from the model directory ran"
    assert _UNPICKLED == []
