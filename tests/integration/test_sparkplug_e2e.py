"""Sparkplug B end to end on a real Mosquitto: a real edge node (the simulator's publisher)
sends births and data to a running daemon, which scores them as ``sparkplug/...`` sensors,
asks for a rebirth after a seq gap or data before a birth, and marks members silent at a
DDEATH or an NDEATH (the edge node's MQTT will)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from simulators.plant import simulate_plant
from simulators.spb_publish import EdgeNode, publish_sparkplug
from streamwatch.config import Config, from_mapping
from streamwatch.daemon import Daemon
from streamwatch.ingest import sparkplug as sp
from tests.helpers import Collector, Mosquitto, wait_until

pytestmark = pytest.mark.integration

GROUP = "plant1"


def _cfg(broker: Mosquitto) -> Config:
    return from_mapping(
        {
            "mqtt": {"broker": broker.url, "client_id": f"sw-spb-{broker.port}"},
            "sparkplug": {"enabled": True, "group": GROUP, "rebirth_interval_s": 0.2},
            "detector": {"type": "gaussian"},
            "learning": {"warmup": 200},
            "alerts": {"raise_k": 2, "raise_n": 3, "clear_m": 5},
            "threshold": {"false_alarm_rate": 1e-4},
            "metrics": {"host": "127.0.0.1", "port": 0},
        }
    )


def _sensor(edge: str, device: str, metric: str) -> str:
    return f"sparkplug/{GROUP}/{edge}/{device}/{metric}"


def test_births_data_rebirth_and_deaths(mosquitto: Mosquitto) -> None:
    registry = CollectorRegistry()
    daemon = Daemon(_cfg(mosquitto), registry=registry)
    alerts = Collector(mosquitto.port, ["streamwatch/alerts/#", "spBv1.0/+/NCMD/#"])
    daemon.start()
    nodes: list[EdgeNode] = []

    def value(name: str, labels: dict[str, str] | None = None) -> float:
        return registry.get_sample_value(name, labels or {}) or 0.0

    def readings(sensor: str) -> float:
        return value("streamwatch_readings_total", {"sensor": sensor})

    def event(name: str) -> float:
        return value("streamwatch_sparkplug_events_total", {"event": name})

    try:
        assert daemon.wait_ready(10)
        node = EdgeNode(
            "127.0.0.1", mosquitto.port, GROUP, "edge1", {"pump1": ["flow", "pressure"]}, qos=1
        )
        nodes.append(node)
        node.connect()
        node.birth()
        rng = np.random.default_rng(11)
        t0 = time.time() - 2000
        flow = rng.normal(20.0, 0.5, 300)
        flow[250:256] = 35.0  # a 30-sigma excursion on one member
        pressure = rng.normal(5.0, 0.1, 300)
        for i in range(300):
            node.data("pump1", t0 + i, {"flow": float(flow[i]), "pressure": float(pressure[i])})
        node.flush()
        f, p = _sensor("edge1", "pump1", "flow"), _sensor("edge1", "pump1", "pressure")
        assert wait_until(lambda: readings(f) == 300 and readings(p) == 300)

        # The spike raises an alert on the right sensor id, and only there.
        assert alerts.wait_for(lambda c: len(c.json_on(f"streamwatch/alerts/{f}")) >= 1)
        raised = alerts.json_on(f"streamwatch/alerts/{f}")[0]
        assert raised["state"] == "raised" and raised["sensor"] == f
        assert t0 + 250 <= raised["ts"] <= t0 + 256
        assert not alerts.json_on(f"streamwatch/alerts/{p}")
        assert event(sp.EV_NBIRTH) == 1 and event(sp.EV_DBIRTH) == 1
        assert event(sp.EV_SEQ_GAP) == 0 and event(sp.EV_REBIRTH) == 0

        # A seq gap: the daemon asks for a rebirth (NCMD), the node publishes its births
        # again, and data after them is scored.
        node.data("pump1", t0 + 300, {"flow": 20.0, "pressure": 5.0}, skip_seq=3)
        assert wait_until(lambda: node.rebirth_requests >= 1)
        assert event(sp.EV_SEQ_GAP) == 1 and event(sp.EV_REBIRTH) == 1
        assert any(t == f"spBv1.0/{GROUP}/NCMD/edge1" for t, _, _ in alerts.messages)
        assert readings(f) == 301  # the aliases were still known: the gap's data counts
        assert node.rebirth_if_asked()
        node.data("pump1", t0 + 301, {"flow": 20.0, "pressure": 5.0})
        node.flush()
        assert wait_until(lambda: event(sp.EV_NBIRTH) == 2 and readings(f) == 302)
        assert event(sp.EV_SEQ_GAP) == 1  # the births restarted seq: no gap after them

        # A DDEATH marks the device's members silent.
        node.device_death("pump1")
        node.flush()
        assert wait_until(lambda: value("streamwatch_sensors_silenced_total") == 2)
        assert event(sp.EV_DDEATH) == 1
        assert daemon.engine.windows.sensors[f].filled == 0  # its window restarted

        # Data before a birth (a second node the daemon never saw born): rejected and
        # counted, a rebirth requested, and after the node's births its data is scored.
        late = EdgeNode("127.0.0.1", mosquitto.port, GROUP, "edge2", {"pump2": ["flow"]}, qos=1)
        nodes.append(late)
        late.connect()
        late.seq = 17  # as if it had been running for a while
        late.data("pump2", t0 + 10, {"flow": 1.0})
        late.flush()
        assert wait_until(lambda: late.rebirth_requests >= 1)
        assert value("streamwatch_rejected_total", {"reason": sp.NO_BIRTH}) == 1
        assert late.rebirth_if_asked()
        late.data("pump2", t0 + 11, {"flow": 1.5})
        late.flush()
        f2 = _sensor("edge2", "pump2", "flow")
        assert wait_until(lambda: readings(f2) == 1)

        # The node dies without a word (its connection drops): the broker publishes its
        # NDEATH will, whose bdSeq matches its NBIRTH, and its members go silent.
        late.client.loop_stop()
        sock = late.client.socket()
        assert sock is not None
        sock.close()
        assert wait_until(lambda: event(sp.EV_NDEATH) == 1)
        assert wait_until(lambda: value("streamwatch_sensors_silenced_total") == 3)
        nodes.remove(late)
        assert daemon.live() is None
        assert value("streamwatch_message_errors_total") == 0
    finally:
        for n in nodes:
            n.close()
        alerts.close()
        daemon.stop()


def test_plant_simulator_publishes_sparkplug_to_the_daemon(mosquitto: Mosquitto) -> None:
    """``simulate --plant --sparkplug``'s publisher: every member of every pump arrives as a
    reading of its sparkplug/... sensor, and the node's closing NDEATH silences them."""
    registry = CollectorRegistry()
    daemon = Daemon(_cfg(mosquitto), registry=registry)
    daemon.start()
    try:
        assert daemon.wait_ready(10)
        sim = simulate_plant(2, 60.0, seed=4, start_ts=time.time() - 100, faults=None)
        sent = publish_sparkplug(sim, "127.0.0.1", mosquitto.port, group=GROUP, qos=1)
        assert sent == len(sim) == 2 * 5 * 60

        def counts() -> list[float]:
            return [
                registry.get_sample_value(
                    "streamwatch_readings_total",
                    {"sensor": _sensor("edge1", s.split("/")[1], s.split("/")[2])},
                )
                or 0.0
                for s in sim.sensors
            ]

        assert wait_until(lambda: counts() == [60.0] * 10)
        assert wait_until(
            lambda: registry.get_sample_value("streamwatch_sensors_silenced_total") == 10
        )
        assert (
            registry.get_sample_value("streamwatch_sparkplug_events_total", {"event": sp.EV_NDEATH})
            == 1
        )
    finally:
        daemon.stop()
