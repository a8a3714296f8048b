"""The daemon end to end on a real Mosquitto: readings in, alerts and metrics out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamwatch.config import Config, from_mapping, override
from streamwatch.daemon import Daemon
from tests.helpers import (
    Collector,
    Mosquitto,
    Publisher,
    free_port,
    http_get,
    http_ok,
    wait_until,
)

pytestmark = pytest.mark.integration

ALERT_FIELDS = {
    "sensor",
    "state",
    "ts",
    "score",
    "threshold",
    "detector",
    "window_start",
    "window_end",
    "alert_id",
}


def _cfg(broker: Mosquitto, **extra: dict) -> Config:
    data: dict[str, dict] = {
        "mqtt": {"broker": broker.url, "client_id": f"sw-test-{broker.port}"},
        "detector": {"type": "gaussian"},
        "learning": {"warmup": 200},
        "alerts": {"raise_k": 2, "raise_n": 3, "clear_m": 5},
        "threshold": {"false_alarm_rate": 1e-4},
        "metrics": {"host": "127.0.0.1", "port": 0},
    }
    for k, v in extra.items():
        data.setdefault(k, {}).update(v)
    return from_mapping(data)


def test_anomaly_raises_then_clears_with_every_field(mosquitto: Mosquitto) -> None:
    registry = CollectorRegistry()
    daemon = Daemon(_cfg(mosquitto), registry=registry)
    alerts = Collector(mosquitto.port, ["streamwatch/#"])
    daemon.start()
    try:
        assert daemon.wait_ready(10)
        pub = Publisher(mosquitto.port)
        rng = np.random.default_rng(7)
        t0 = time.time() - 400
        values = list(rng.normal(20.0, 0.5, 300))
        values[250:256] = [35.0] * 6  # a 30-sigma excursion for six readings
        for i, v in enumerate(values):
            pub.reading("pump1", float(v), t0 + i)
        pub.send("sensors/pump1", b"{not json")
        pub.send("sensors/pump1", b'{"value": NaN}')
        pub.close()

        assert alerts.wait_for(lambda c: len(c.json_on("streamwatch/alerts/pump1")) >= 2)
        raised, cleared = alerts.json_on("streamwatch/alerts/pump1")[:2]
        assert raised["state"] == "raised" and cleared["state"] == "cleared"
        assert set(raised) >= ALERT_FIELDS and set(cleared) >= ALERT_FIELDS
        assert raised["alert_id"] == cleared["alert_id"]
        assert raised["sensor"] == "pump1" and raised["detector"] == "gaussian"
        assert raised["score"] > raised["threshold"]
        assert t0 + 250 <= raised["ts"] <= t0 + 256  # the reading that tipped it
        assert cleared["ts"] > raised["ts"]
        # Exactly one raise for one excursion: no storm.
        assert len(alerts.json_on("streamwatch/alerts/pump1")) == 2

        assert alerts.wait_for(
            lambda c: (
                [d["state"] for d in c.json_on("streamwatch/state/pump1")] == ["raised", "cleared"]
            )
        )
        assert any(t == "streamwatch/status" and p == b"online" for t, p, _ in alerts.messages)

        def counted() -> bool:
            v = registry.get_sample_value("streamwatch_readings_total", {"sensor": "pump1"})
            return v == 300

        assert wait_until(counted)
        status, body = http_get(f"http://127.0.0.1:{daemon.metrics_port}/metrics")
        assert status == 200
        assert 'streamwatch_readings_total{sensor="pump1"} 300.0' in body
        assert 'streamwatch_rejected_total{reason="undecodable"} 1.0' in body
        assert 'streamwatch_rejected_total{reason="non_finite"} 1.0' in body
        assert 'streamwatch_alerts_raised_total{sensor="pump1"} 1.0' in body
        assert 'streamwatch_sensor_warming{sensor="pump1"} 0.0' in body
        assert "streamwatch_mqtt_connected 1.0" in body
        assert http_get(f"http://127.0.0.1:{daemon.metrics_port}/readyz")[0] == 200

        # The bad messages did not stop it: a later reading is still taken.
        pub = Publisher(mosquitto.port)
        pub.reading("pump1", 20.0, t0 + 300)
        pub.close()
        assert wait_until(
            lambda: (
                registry.get_sample_value("streamwatch_readings_total", {"sensor": "pump1"}) == 301
            )
        )
    finally:
        daemon.stop()
        alerts.close()


def test_restart_loses_no_reading(mosquitto: Mosquitto) -> None:
    cfg = _cfg(mosquitto, learning={"warmup": 50})
    t0 = time.time() - 3000
    first = Daemon(cfg, registry=CollectorRegistry())
    first.start()
    assert first.wait_ready(10)
    pub = Publisher(mosquitto.port)
    for i in range(100):
        pub.reading("fan", 1.0 + 0.01 * (i % 7), t0 + i)
    pub.flush()
    reg1 = first.registry
    assert wait_until(
        lambda: reg1.get_sample_value("streamwatch_readings_total", {"sensor": "fan"}) == 100
    )
    first.stop()

    for i in range(100, 1100):  # published while the daemon is down
        pub.reading("fan", 1.0 + 0.01 * (i % 7), t0 + i)
    pub.close()

    reg2 = CollectorRegistry()
    second = Daemon(cfg, registry=reg2)
    second.start()
    try:
        assert wait_until(
            lambda: reg2.get_sample_value("streamwatch_readings_total", {"sensor": "fan"}) == 1000,
            timeout=30,
        ), reg2.get_sample_value("streamwatch_readings_total", {"sensor": "fan"})
        time.sleep(0.5)
        assert reg2.get_sample_value("streamwatch_readings_total", {"sensor": "fan"}) == 1000
    finally:
        second.stop()


def test_cli_run_stops_cleanly_on_sigterm(mosquitto: Mosquitto) -> None:
    port = free_port()
    status = Collector(mosquitto.port, ["streamwatch/status"])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamwatch",
            "run",
            "--broker",
            mosquitto.url,
            "--metrics-port",
            str(port),
            "--topic",
            "plant/+/temp",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), timeout=30), (
            "daemon never became ready"
        )
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read() if proc.stderr else ""
    assert "subscribed to plant/+/temp" in err
    assert "Traceback" not in err
    assert status.wait_for(lambda c: any(p == b"offline" for _, p, _ in c.messages))
    status.close()


def test_broker_not_running_is_reported_on_readyz() -> None:
    port = free_port()
    cfg = from_mapping(
        {
            "mqtt": {"broker": f"mqtt://127.0.0.1:{port}", "reconnect_min_s": 0.2},
            "metrics": {"host": "127.0.0.1", "port": 0},
        }
    )
    daemon = Daemon(cfg, registry=CollectorRegistry())
    daemon.start()
    try:
        time.sleep(1.0)
        code, body = http_get(f"http://127.0.0.1:{daemon.metrics_port}/readyz")
        assert code == 503
        assert "connect" in body
        assert http_get(f"http://127.0.0.1:{daemon.metrics_port}/healthz")[0] == 200
    finally:
        daemon.stop()


def test_alert_payload_is_json_with_sensor_topic(mosquitto: Mosquitto) -> None:
    """Batched payloads (a JSON array) are decoded and scored like single readings."""
    registry = CollectorRegistry()
    daemon = Daemon(_cfg(mosquitto), registry=registry)
    daemon.start()
    try:
        assert daemon.wait_ready(10)
        pub = Publisher(mosquitto.port)
        t0 = time.time() - 1000
        batch = [{"value": 5.0 + 0.1 * (i % 5), "ts": t0 + i} for i in range(250)]
        pub.send("sensors/line/3/flow", json.dumps(batch))
        pub.close()
        assert wait_until(
            lambda: (
                registry.get_sample_value("streamwatch_readings_total", {"sensor": "line/3/flow"})
                == 250
            )
        )
        assert registry.get_sample_value("streamwatch_windows_scored_total") == 50
    finally:
        daemon.stop()


def test_qos0_messages_of_every_shape_are_decoded_and_counted(mosquitto: Mosquitto) -> None:
    """At QoS 0 (nothing to acknowledge) the undecoded hand-off still accounts for every
    item: bare numbers, objects and a batch are scored, bad payloads counted by reason."""
    registry = CollectorRegistry()
    daemon = Daemon(_cfg(mosquitto, mqtt={"qos": 0}), registry=registry)
    daemon.start()
    try:
        assert daemon.wait_ready(10)
        pub = Publisher(mosquitto.port)
        t0 = time.time() - 1000
        for i in range(100):
            pub.reading("q0", 5.0 + 0.1 * (i % 5), t0 + i)
        batch = [{"value": 5.0, "ts": t0 + 100 + i} for i in range(50)]
        pub.send("sensors/q0", json.dumps(batch))
        for _ in range(3):
            pub.send("sensors/bare", b"21.5")  # arrival time as its timestamp
            time.sleep(0.01)
        pub.send("sensors/q0", b"{not json")
        pub.send("sensors/q0", b'{"value": "high", "ts": 1}')
        pub.close()

        def value(name: str, **labels: str) -> float:
            return registry.get_sample_value(name, labels) or 0.0

        assert wait_until(lambda: value("streamwatch_readings_total", sensor="q0") == 150)
        assert wait_until(lambda: value("streamwatch_readings_total", sensor="bare") == 3)
        # The two bad payloads came last: they may be decoded in a later batch.
        assert wait_until(lambda: value("streamwatch_rejected_total", reason="undecodable") == 1)
        assert wait_until(lambda: value("streamwatch_rejected_total", reason="non_numeric") == 1)
        assert value("streamwatch_readings_shed_total") == 0
    finally:
        daemon.stop()


def test_restart_keeps_what_was_learned(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """A sensor warmed up before a restart is scored at once after it, at the same threshold:
    the daemon keeps its online-learned model under state_dir (saved on stop)."""
    cfg = _cfg(mosquitto, learning={"warmup": 50})
    cfg = override(cfg, {"state_dir": str(tmp_path / "state")})
    t0 = time.time() - 3000
    first = Daemon(cfg, registry=CollectorRegistry())
    first.start()
    assert first.wait_ready(10)
    pub = Publisher(mosquitto.port)
    for i in range(80):
        pub.reading("fan", 1.0 + 0.01 * (i % 7), t0 + i)
    pub.flush()
    reg1 = first.registry
    # All 80 taken: any still in flight at stop() would (rightly) be delivered again.
    assert wait_until(
        lambda: reg1.get_sample_value("streamwatch_readings_total", {"sensor": "fan"}) == 80
    )
    assert reg1.get_sample_value("streamwatch_threshold", {"sensor": "fan"}) is not None
    before = reg1.get_sample_value("streamwatch_threshold", {"sensor": "fan"})
    first.stop()
    assert (tmp_path / "state" / "model" / "manifest.json").is_file()

    reg2 = CollectorRegistry()
    second = Daemon(cfg, registry=reg2)
    second.start()
    try:
        assert second.wait_ready(10)
        pub.reading("fan", 1.02, t0 + 100)
        pub.flush()
        assert wait_until(
            lambda: reg2.get_sample_value("streamwatch_readings_total", {"sensor": "fan"}) == 1
        ), reg2.get_sample_value("streamwatch_readings_total", {"sensor": "fan"})
        assert reg2.get_sample_value("streamwatch_sensor_warming", {"sensor": "fan"}) == 0
        after = reg2.get_sample_value("streamwatch_threshold", {"sensor": "fan"})
        assert after == before
    finally:
        pub.close()
        second.stop()
