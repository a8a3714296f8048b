"""Sensor faults apart from process anomalies, on a real Mosquitto: a running daemon, sensors
publishing over MQTT, and the alerts it publishes (issue 14). A flatline is ``stuck``, a level
shift ``process``, a reading past its pattern's limit ``out_of_range``, and a sensor that stops
publishing ``silent`` while nothing arrives, cleared by its next reading."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

import streamwatch.daemon as daemon_mod
from streamwatch.config import from_mapping
from streamwatch.daemon import Daemon
from tests.helpers import Collector, Mosquitto, Publisher, http_get, wait_until

pytestmark = pytest.mark.integration

ALERTS = "streamwatch/alerts"


class Plant:
    """A running daemon, a publisher and a collector of its alerts."""

    def __init__(self, broker: Mosquitto, state_dir: Path, silent_min_s: float) -> None:
        cfg = from_mapping(
            {
                "mqtt": {"broker": broker.url, "client_id": f"sw-flt-{broker.port}"},
                "learning": {"warmup": 200},
                "alerts": {"clear_m": 5, "clear_hold_s": 0},
                "faults": {
                    "silent_min_s": silent_min_s,
                    "ranges": [{"pattern": "plant/+/pressure", "min": 0.0, "max": 100.0}],
                },
                "metrics": {"host": "127.0.0.1", "port": 0},
                "state_dir": str(state_dir),
            }
        )
        self.registry = CollectorRegistry()
        self.daemon = Daemon(cfg, registry=self.registry)
        self.out = Collector(broker.port, ["streamwatch/alerts/#"])
        self.daemon.start()
        assert self.daemon.wait_ready(10)
        self.pub = Publisher(broker.port)
        self.t = time.time() - 10_000
        self.sent: dict[str, int] = {}

    def readings(self, values: dict[str, np.ndarray]) -> None:
        """Publish each sensor's values, the sensors side by side one second apart, and wait
        until the daemon counted them all."""
        n = max(len(v) for v in values.values())
        for i in range(n):
            for sensor, v in values.items():
                if i < len(v):
                    self.pub.reading(sensor, float(v[i]), self.t)
            self.t += 1.0
        self.pub.flush()
        for sensor, v in values.items():
            self.sent[sensor] = self.sent.get(sensor, 0) + len(v)
            want = self.sent[sensor]
            assert wait_until(
                lambda s=sensor, w=want: (
                    self.registry.get_sample_value("streamwatch_readings_total", {"sensor": s}) == w
                )
            ), f"{sensor}: not all {want} readings taken"

    def alerts(self, sensor: str) -> list[dict[str, Any]]:
        return self.out.json_on(f"{ALERTS}/{sensor}")

    def kinds(self, sensor: str) -> dict[str, tuple[str, str | None]]:
        """Alert id -> (kind, fault) as last published for its raise (a reclassification is
        published after the raise, with the same id)."""
        return {
            a["alert_id"]: (a["kind"], a.get("fault"))
            for a in self.alerts(sensor)
            if a["state"] == "raised"
        }

    def page(self) -> dict[str, dict[str, Any]]:
        """The live page's sensors by id."""
        status, body = http_get(f"http://127.0.0.1:{self.daemon.metrics_port}/api/state")
        assert status == 200, body
        return {s["id"]: s for s in json.loads(body)["sensors"]}

    def close(self) -> None:
        self.pub.close()
        self.daemon.stop()
        self.out.close()


@pytest.fixture
def plant(mosquitto: Mosquitto, tmp_path: Path) -> Any:
    """Silence judged only after 10 minutes: the test's own pauses between publishes (longer
    than a sensor's 3 s gap limit on a loaded machine) are not silences."""
    p = Plant(mosquitto, tmp_path / "state", silent_min_s=600.0)
    yield p
    p.close()


@pytest.fixture
def plant_silence(mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(daemon_mod, "IDLE_SWEEP_S", 0.2)  # silence judged within a second
    p = Plant(mosquitto, tmp_path / "state", silent_min_s=1.0)
    yield p
    p.close()


def _normal(n: int, seed: int, level: float = 10.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return level + np.sin(np.arange(n) / 5.0) + rng.normal(0.0, 0.2, n)


def test_flatline_is_stuck_and_level_shift_is_process(plant: Plant) -> None:
    temp, flow = "plant/p1/temp", "plant/p1/flow"
    plant.readings({temp: _normal(300, 1), flow: _normal(300, 2)})
    assert plant.alerts(temp) == [] and plant.alerts(flow) == []
    frozen = np.full(40, _normal(300, 1)[-1])
    shifted = _normal(40, 3) + 4.0
    plant.readings({temp: frozen, flow: shifted})
    # The flatline's raise may go out first as a process alert and be reclassified (same id)
    # once the fault checks have seen enough of it: wait for the reclassification.
    assert plant.out.wait_for(
        lambda c: ("sensor_fault", "stuck") in plant.kinds(temp).values() and plant.kinds(flow)
    ), plant.alerts(temp)
    assert set(plant.kinds(temp).values()) == {("sensor_fault", "stuck")}
    assert set(plant.kinds(flow).values()) == {("process", None)}
    assert all("fault" not in a for a in plant.alerts(flow))
    reg = plant.registry
    assert reg.get_sample_value("streamwatch_sensor_faults_total", {"fault": "stuck"}) == 1
    assert (reg.get_sample_value("streamwatch_alert_raises_total", {"kind": "process"}) or 0) >= 1
    # The frozen sensor is in fault; the fault ends with its movement, the alert then clears
    assert reg.get_sample_value("streamwatch_sensors_in_fault", {"fault": "stuck"}) == 1
    assert wait_until(lambda: plant.page()[temp].get("state") == "fault")
    assert plant.page()[temp]["fault"] == "stuck" and plant.page()[flow]["fault"] is None
    plant.readings({temp: _normal(60, 4)})
    assert reg.get_sample_value("streamwatch_sensors_in_fault", {"fault": "stuck"}) == 0
    assert plant.out.wait_for(lambda c: plant.alerts(temp)[-1]["state"] == "cleared")
    cleared = plant.alerts(temp)[-1]
    assert cleared["kind"] == "sensor_fault" and cleared["fault"] == "stuck"


def test_a_reading_past_its_limit_is_out_of_range(plant: Plant) -> None:
    p = "plant/p2/pressure"
    plant.readings({p: _normal(300, 5, level=50.0)})
    plant.readings({p: np.array([120.0])})
    assert plant.out.wait_for(lambda c: plant.kinds(p))
    assert set(plant.kinds(p).values()) == {("sensor_fault", "out_of_range")}


def test_a_sensor_that_stops_publishing_is_silent_until_it_resumes(plant_silence: Plant) -> None:
    plant = plant_silence
    quiet, busy = "plant/p3/level", "plant/p3/speed"
    going = _normal(1000, 7)
    plant.readings({quiet: _normal(300, 6), busy: going[:300]})
    stopped = time.time()
    # Only the busy sensor goes on (its readings keep arriving), the quiet one stops.
    deadline = time.time() + 20
    i = 300
    while not plant.alerts(quiet) and time.time() < deadline and i < 990:
        plant.readings({busy: going[i : i + 2]})
        i += 2
        time.sleep(0.2)
    got = plant.alerts(quiet)
    assert got, "no silent alert while the sensor published nothing"
    raised = got[0]
    assert [raised[k] for k in ("state", "kind", "fault")] == ["raised", "sensor_fault", "silent"]
    # Its limit is 3 x its 1 s cadence (learning.gap_factor), so it fired after >= 3 s of silence
    assert time.time() - stopped >= 3.0
    assert plant.alerts(busy) == []
    assert (
        plant.registry.get_sample_value("streamwatch_sensor_faults_total", {"fault": "silent"}) == 1
    )
    plant.readings({quiet: _normal(5, 8)})
    assert plant.out.wait_for(lambda c: len(plant.alerts(quiet)) >= 2)
    time.sleep(0.5)
    rest = plant.alerts(quiet)[1:]
    assert [(a["state"], a.get("reason"), a["alert_id"]) for a in rest] == [
        ("cleared", "resumed", raised["alert_id"])
    ], "the silence is reported once: no second alert from the gap when readings resume"
