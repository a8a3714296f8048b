"""The operator loop on a real Mosquitto: commands on streamwatch/cmd/<id>, their results,
and what mute, maintenance and relearn do to a running daemon's alerts and learning; the
live page's JSON and command endpoint."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamwatch.config import Config, from_mapping
from streamwatch.daemon import Daemon
from tests.helpers import Collector, Mosquitto, Publisher, http_get, wait_until

pytestmark = pytest.mark.integration

CMD = "streamwatch/cmd"


def _cfg(broker: Mosquitto, state_dir: Path) -> Config:
    return from_mapping(
        {
            "mqtt": {"broker": broker.url, "client_id": f"sw-op-{broker.port}"},
            "learning": {"warmup": 200},
            "alerts": {"raise_k": 2, "raise_n": 3, "clear_m": 5},
            "metrics": {"host": "127.0.0.1", "port": 0},
            "state_dir": str(state_dir),
        }
    )


class Plant:
    """A running daemon, a publisher and a collector of everything it publishes."""

    def __init__(self, broker: Mosquitto, state_dir: Path) -> None:
        self.registry = CollectorRegistry()
        self.daemon = Daemon(_cfg(broker, state_dir), registry=self.registry)
        self.out = Collector(broker.port, ["streamwatch/#"])
        self.daemon.start()
        assert self.daemon.wait_ready(10)
        self.pub = Publisher(broker.port)
        self.t: dict[str, float] = {}  # next reading time per sensor
        self.sent: dict[str, int] = {}  # readings sent per sensor
        self.barriers = 0

    def readings(self, sensor: str, values: np.ndarray) -> None:
        """Publish ``values`` one second apart and wait until the daemon counted them."""
        t = self.t.get(sensor, time.time() - 10_000)
        for v in values:
            self.pub.reading(sensor, float(v), t)
            t += 1.0
        self.t[sensor] = t
        self.pub.flush()
        self.sent[sensor] = self.sent.get(sensor, 0) + len(values)
        want = self.sent[sensor]
        assert wait_until(
            lambda: (
                self.registry.get_sample_value("streamwatch_readings_total", {"sensor": sensor})
                == want
            )
        ), f"{sensor}: not all {want} readings taken"

    def command(self, target: str, doc: dict[str, Any] | bytes) -> dict[str, Any]:
        """Publish a command and wait for its result."""
        topic = f"{CMD}/{target}/result"
        before = len(self.out.json_on(topic))
        payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self.pub.send(f"{CMD}/{target}", payload)
        self.pub.flush()
        assert self.out.wait_for(lambda c: len(c.json_on(topic)) > before), f"no result on {topic}"
        return self.out.json_on(topic)[before]

    def barrier(self) -> None:
        """Wait until everything sent before was processed and its alerts published: commands
        are applied in order with readings, and answered through the same outbox."""
        self.barriers += 1
        self.command(f"_barrier{self.barriers}", {"action": "unmute"})

    def alerts(self, sensor: str) -> list[dict[str, Any]]:
        return self.out.json_on(f"streamwatch/alerts/{sensor}")

    def states(self, sensor: str) -> list[dict[str, Any]]:
        return self.out.json_on(f"streamwatch/state/{sensor}")

    def page(self) -> dict[str, dict[str, Any]]:
        status, body = http_get(f"http://127.0.0.1:{self.daemon.metrics_port}/api/state")
        assert status == 200, body
        return {s["id"]: s for s in json.loads(body)["sensors"]}

    def close(self) -> None:
        self.pub.close()
        self.daemon.stop()
        self.out.close()


@pytest.fixture
def plant(mosquitto: Mosquitto, tmp_path: Path) -> Any:
    p = Plant(mosquitto, tmp_path / "state")
    yield p
    p.close()


def normal(n: int, level: float = 10.0, seed: int = 1) -> np.ndarray:
    return level + np.random.default_rng(seed).normal(0.0, 0.5, n)


def test_a_muted_sensor_raises_nothing_until_the_mute_ends(plant: Plant) -> None:
    plant.readings("a", normal(300))
    res = plant.command("a", {"action": "mute", "for_s": 5, "reason": "valve work"})
    assert res == {**res, "ok": True, "error": None, "action": "mute", "id": "a"}
    until = plant.states("a")[-1]["muted_until"]
    assert plant.states("a")[-1]["muted"] is True
    plant.readings("a", np.full(20, 40.0))  # far out: would raise at once unmuted
    plant.barrier()
    done = plant.out.json_on(f"{CMD}/_barrier{plant.barriers}/result")[-1]["ts"]
    assert done < until, "the readings were not all taken within the mute: machine too slow"
    assert plant.alerts("a") == []
    assert wait_until(lambda: plant.page().get("a", {}).get("state") == "muted")
    # The mute ends on its own: the retained state says so.
    assert plant.out.wait_for(lambda c: c.json_on("streamwatch/state/a")[-1]["muted"] is False)
    plant.readings("a", np.full(5, 40.0))
    assert plant.out.wait_for(lambda c: len(c.json_on("streamwatch/alerts/a")) == 1)
    raised = plant.alerts("a")[0]
    assert raised["state"] == "raised" and raised["muted"] is False


def test_maintenance_readings_move_neither_normalisation_nor_threshold(plant: Plant) -> None:
    plant.readings("a", normal(300))
    plant.barrier()
    det = plant.daemon.engine.detector
    baseline = det._sensor_state()["a"]
    threshold = plant.page()["a"]["threshold"]
    assert threshold is not None
    res = plant.command("a", {"action": "maintenance", "for_s": 3600, "reason": "calibration"})
    assert res["ok"], res
    assert plant.states("a")[-1]["maintenance"] is True
    # A calibration run at another level, and a sensor first seen during maintenance.
    plant.readings("a", normal(300, level=30.0, seed=2))
    assert plant.command("b", {"action": "maintenance", "for_s": 3600})["ok"]
    plant.readings("b", normal(300, seed=3))
    plant.barrier()
    assert plant.alerts("a") == [] and plant.alerts("b") == []
    assert det._sensor_state()["a"] == baseline
    assert wait_until(lambda: plant.page().get("b", {}).get("readings") == 300)
    page = plant.page()
    assert page["a"]["threshold"] == threshold and page["a"]["state"] == "maintenance"
    assert page["b"]["phase"] == "warming"  # did not warm up on maintenance readings
    assert not det.knows("b")


def test_relearn_ends_a_lasting_change_alert_and_arms_on_the_new_level(plant: Plant) -> None:
    plant.readings("a", normal(300))
    plant.readings("a", normal(30, level=30.0, seed=2))  # a lasting change
    plant.barrier()
    assert [a["state"] for a in plant.alerts("a")] == ["raised"]
    res = plant.command("a", {"action": "relearn", "reason": "new setpoint"})
    assert res["ok"], res
    assert plant.out.wait_for(lambda c: len(c.json_on("streamwatch/alerts/a")) == 2)
    cleared = plant.alerts("a")[1]
    assert cleared["state"] == "cleared" and cleared["reason"] == "relearn: new setpoint"
    assert plant.states("a")[-1]["state"] == "cleared"
    plant.readings("a", normal(300, level=30.0, seed=4))
    plant.barrier()
    assert wait_until(lambda: plant.page().get("a", {}).get("state") == "armed")
    assert len(plant.alerts("a")) == 2  # quiet on the new level
    plant.readings("a", np.full(5, 60.0))
    assert plant.out.wait_for(lambda c: len(c.json_on("streamwatch/alerts/a")) == 3)


def test_bad_commands_get_an_error_result_and_change_nothing(plant: Plant, tmp_path: Path) -> None:
    plant.readings("a", normal(300))
    bad: list[tuple[str, dict[str, Any] | bytes, str]] = [
        ("a", b"{not json", "not JSON"),
        ("a", {"action": "mute"}, "for_s: Field required"),
        ("a", {"action": "mute", "for_s": "soon"}, "for_s"),
        ("a", {"action": "reboot"}, "action must be one of"),
        ("a", {"action": "ack", "alert_id": "x"}, "no raised alert"),
        ("a", {"action": "unmute"}, "not muted"),
        ("nobody", {"action": "relearn"}, "not a tracked sensor"),
    ]
    for target, doc, why in bad:
        res = plant.command(target, doc)
        assert res["ok"] is False and why in res["error"], res
    assert plant.states("a") == [] and plant.states("nobody") == []
    assert not (tmp_path / "state" / "operator.json").exists()
    assert wait_until(lambda: plant.page().get("a", {}).get("state") == "armed")
    errors = plant.registry.get_sample_value(
        "streamwatch_commands_total", {"action": "invalid", "result": "error"}
    )
    assert errors == 4


def test_a_mute_survives_a_daemon_restart(mosquitto: Mosquitto, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = Plant(mosquitto, state)
    try:
        first.readings("a", normal(300))
        assert first.command("a", {"action": "mute", "for_s": 600})["ok"]
        until = first.states("a")[-1]["muted_until"]
    finally:
        first.close()
    second = Plant(mosquitto, state)
    try:
        second.t["a"] = time.time() - 5000
        second.readings("a", normal(300))  # warms up again or resumes, either way muted
        second.readings("a", np.full(20, 40.0))
        second.barrier()
        assert second.alerts("a") == []
        assert wait_until(lambda: second.page().get("a", {}).get("readings") == 320)
        page = second.page()["a"]
        assert page["muted"] is True and page["muted_until"] == until
    finally:
        second.close()


def test_the_page_and_its_command_endpoint(plant: Plant) -> None:
    plant.readings("a", normal(300))
    base = f"http://127.0.0.1:{plant.daemon.metrics_port}"
    status, html = http_get(base + "/")
    assert status == 200 and "/live/app.js" in html and "http" not in html.split("<body>")[1]
    assert http_get(base + "/live/app.js")[0] == 200

    def post(body: bytes, ctype: str = "application/json") -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(
            base + "/api/cmd/a", data=body, headers={"Content-Type": ctype}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    assert post(b'{"action": "mute", "for_s": 60}', "text/plain")[0] == 415
    code, res = post(b'{"action": "mute", "for_s": -1}')
    assert code == 400 and "for_s" in res["error"]
    code, res = post(b'{"action": "mute", "for_s": 60, "reason": "from a test"}')
    assert code == 200 and res["ok"] and res["source"] == "http"
    # The same path as MQTT: answered on the result topic, in the retained state, on the page.
    assert plant.out.wait_for(lambda c: any(d["ok"] for d in c.json_on(f"{CMD}/a/result")))
    assert plant.states("a")[-1]["muted"] is True
    assert wait_until(lambda: plant.page().get("a", {}).get("state") == "muted")
