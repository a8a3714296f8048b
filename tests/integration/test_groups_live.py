"""``run`` with the exact ``[groups]`` form on a real Mosquitto: members of one machine
published at their own times, a coupling break, one group alert on the group's topic."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamwatch.config import from_mapping
from streamwatch.daemon import Daemon
from tests.helpers import Collector, Mosquitto, Publisher, wait_until
from tests.test_group_engine import BREAK, N, pump

pytestmark = pytest.mark.integration


def test_group_alert_on_the_group_topic(mosquitto: Mosquitto) -> None:
    cfg = from_mapping(
        {
            "mqtt": {"broker": mosquitto.url, "client_id": f"sw-groups-{mosquitto.port}"},
            "metrics": {"host": "127.0.0.1", "port": 0},
            "groups": {"patterns": ["plant/+/#"]},
            "learning": {"warmup": 400},
        }
    )
    registry = CollectorRegistry()
    daemon = Daemon(cfg, registry=registry)
    alerts = Collector(mosquitto.port, ["streamwatch/alerts/#"])
    daemon.start()
    try:
        assert daemon.wait_ready(10)
        pub = Publisher(mosquitto.port)
        t0 = time.time() - N - 10
        members = pump()
        rows = sorted(
            (t0 + i + 0.3 * k, m, float(v[i]))
            for k, (m, v) in enumerate(members.items())
            for i in range(N)
        )
        for ts, m, v in rows:
            pub.reading(f"plant/p1/{m}", v, ts)
        pub.close()
        assert alerts.wait_for(lambda c: c.json_on("streamwatch/alerts/plant/p1"), timeout=30)
        raised = alerts.json_on("streamwatch/alerts/plant/p1")[0]
        assert raised["state"] == "raised" and raised["group"] == "plant/p1"
        assert raised["sensors"][0]["sensor"] == "plant/p1/current"
        assert t0 + BREAK.start <= raised["ts"] <= t0 + BREAK.stop
        # Members are not scored alone: nothing on their own topics.
        assert not alerts.json_on("streamwatch/alerts/plant/p1/")
        assert wait_until(
            lambda: (
                registry.get_sample_value("streamwatch_alerts_raised_total", {"sensor": "plant/p1"})
                == 1.0
            )
        )
    finally:
        daemon.stop()
        alerts.close()


def test_groups_learned_online_survive_a_restart(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """A group warmed up before a restart is scored at once after it: the learned group
    model is kept under state_dir. Without it, the second daemon would spend the readings
    after the restart (the break included) warming the group up again, and miss the break."""
    cfg = from_mapping(
        {
            "mqtt": {"broker": mosquitto.url, "client_id": f"sw-grestart-{mosquitto.port}"},
            "metrics": {"host": "127.0.0.1", "port": 0},
            "groups": {"patterns": ["plant/+/#"]},
            "learning": {"warmup": 400},
            "state_dir": str(tmp_path / "state"),
        }
    )
    t0 = time.time() - N - 10
    members = pump()
    rows = sorted(
        (t0 + i + 0.3 * k, i, m, float(v[i]))
        for k, (m, v) in enumerate(members.items())
        for i in range(N)
    )
    alerts = Collector(mosquitto.port, ["streamwatch/alerts/#"])
    try:
        for part in (lambda i: i < 500, lambda i: i >= 500):
            registry = CollectorRegistry()
            daemon = Daemon(cfg, registry=registry)
            daemon.start()
            try:
                assert daemon.wait_ready(10)
                pub = Publisher(mosquitto.port)
                sent = [r for r in rows if part(r[1])]
                for ts, _, m, v in sent:
                    pub.reading(f"plant/p1/{m}", v, ts)
                pub.close()
                n = len(sent)
                assert wait_until(
                    lambda reg=registry, n=n: (
                        reg.get_sample_value("streamwatch_readings_total", {"sensor": "plant/p1"})
                        == n
                    ),
                    timeout=30,
                )
                warming = registry.get_sample_value(
                    "streamwatch_sensor_warming", {"sensor": "plant/p1"}
                )
                assert warming == 0, "the group was not armed"
            finally:
                daemon.stop()
            assert (tmp_path / "state" / "groups-model" / "manifest.json").exists()
        assert alerts.wait_for(lambda c: c.json_on("streamwatch/alerts/plant/p1"), timeout=30)
        raised = alerts.json_on("streamwatch/alerts/plant/p1")[0]
        assert raised["state"] == "raised"
        assert t0 + BREAK.start <= raised["ts"] <= t0 + BREAK.stop
    finally:
        alerts.close()
