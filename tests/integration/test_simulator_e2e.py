"""The simulator publishes to a real Mosquitto, the daemon alerts, the alerts match the labels."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from simulators.generate import AnomalySpec, simulate
from simulators.publish import publish
from streamwatch.config import from_mapping
from streamwatch.daemon import Daemon
from streamwatch.evaluation.scoring import event_scores
from streamwatch.replay import replay
from tests.helpers import Collector, Mosquitto, fresh_model, wait_until

pytestmark = pytest.mark.integration


def test_simulated_stream_alerts_match_labels_and_offline_replay(mosquitto: Mosquitto) -> None:
    cfg = from_mapping(
        {
            "mqtt": {"broker": mosquitto.url, "client_id": f"sw-sim-{mosquitto.port}"},
            "detector": {"type": "gaussian"},
            "learning": {"warmup": 300},
            "metrics": {"host": "127.0.0.1", "port": 0},
        }
    )
    duration = 1800.0
    sim = simulate(
        3,
        duration,
        1.0,
        seed=11,
        start_ts=float(int(time.time() - duration - 60)),
        anomalies=AnomalySpec(kinds=("spike", "level_shift", "noise_burst"), rate_per_hour=20.0),
        warmup_s=400.0,
    )
    assert len(sim.events) >= 6
    registry = CollectorRegistry()
    daemon = Daemon(cfg, registry=registry)
    alerts = Collector(mosquitto.port, ["streamwatch/alerts/#"])
    daemon.start()
    try:
        assert daemon.wait_ready(10)
        assert publish(sim, mosquitto.host, mosquitto.port, batch=10) == len(sim)

        def all_counted() -> bool:
            return all(
                registry.get_sample_value("streamwatch_readings_total", {"sensor": s})
                == sim.series(s)[0].size
                for s in sim.sensors
            )

        assert wait_until(all_counted, timeout=60)
        time.sleep(0.5)  # let the last alert messages arrive
    finally:
        daemon.stop()
        alerts.close()

    live = sorted(
        (a["sensor"], a["ts"])
        for a in alerts.json_on("streamwatch/alerts/")
        if a["state"] == "raised"
    )
    series = {s: sim.series(s)[:2] for s in sim.sensors}
    offline = sorted(
        (e.sensor, e.ts) for e in replay(cfg, fresh_model(cfg), series) if e.state == "raised"
    )
    assert live == offline  # the live daemon and the offline replay agree alert for alert

    onsets = {s: np.asarray([t for who, t in live if who == s]) for s in sim.sensors}
    ts = {s: sim.series(s)[0] for s in sim.sensors}
    label = {s: sim.series(s)[2] for s in sim.sensors}
    start = {s: float(ts[s][300]) for s in sim.sensors}
    sc = event_scores(sim.events, onsets, ts, label, start=start, tolerance_s=20.0)
    assert sc.recall is not None and sc.recall >= 0.9, sc
    assert sc.precision is not None and sc.precision >= 0.9, sc


def test_simulate_cli_publishes_batches_and_labels(mosquitto: Mosquitto) -> None:
    got = Collector(mosquitto.port, ["sensors/#", "sim-labels/#"])
    try:
        cmd = [
            sys.executable,
            "-m",
            "streamwatch",
            "simulate",
            "--sensors",
            "2",
            "--duration",
            "120",
            "--warmup",
            "30",
            "--anomaly-rate",
            "60",
            "--batch",
            "5",
            "--broker",
            mosquitto.url,
            "--label-topic",
            "sim-labels",
            "--protocol",
            "3.1.1",
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60)
        assert "published" in res.stdout
        n = int(res.stdout.split()[0])

        def total(prefix: str) -> int:
            return sum(len(p) for p in got.json_on(prefix))

        assert got.wait_for(lambda c: total("sensors/") == n and total("sim-labels/") == n)
        first = got.json_on("sensors/s000")[0]
        assert isinstance(first, list) and len(first) == 5 and set(first[0]) == {"value", "ts"}
        labels = [x["label"] for batch in got.json_on("sim-labels/") for x in batch]
        assert set(labels) <= {0, 1} and 1 in labels
    finally:
        got.close()


def test_publish_single_objects_and_stop_event(mosquitto: Mosquitto) -> None:
    sim = simulate(1, 200.0, 1.0, seed=2, start_ts=time.time() - 300, anomalies=None)
    got = Collector(mosquitto.port, ["sensors/#"])
    try:
        assert publish(sim, mosquitto.host, mosquitto.port, rate=1e6) == 200
        assert got.wait_for(lambda c: len(c.json_on("sensors/s000")) == 200)
        assert got.json_on("sensors/s000")[0] == {"value": sim.value[0], "ts": sim.ts[0]}
        paced = publish(sim, mosquitto.host, mosquitto.port, realtime=True, speed=2000.0)
        assert paced == 200
        stop = threading.Event()
        stop.set()
        assert publish(sim, mosquitto.host, mosquitto.port, stop_event=stop) == 0
    finally:
        got.close()
