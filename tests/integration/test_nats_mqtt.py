"""Sensors that speak MQTT, straight into JetStream through nats-server's own MQTT listener.

A real nats-server (JetStream, ``server_name``, ``mqtt { listen }`` and the partition mapping)
takes readings from real ``mosquitto_pub`` processes on ``sensors/<id>``: the listener makes the
MQTT topic ``sensors/pump1`` the NATS subject ``sensors.pump1``, the mapping puts it into its
partition's subject, the stream keeps it, and a daemon on the JetStream transport scores it. The
alert the daemon publishes on the core NATS subject ``streamwatch.alerts.pump1`` reaches MQTT
subscribers of ``streamwatch/alerts/pump1`` through the same listener.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from prometheus_client import CollectorRegistry

from streamwatch.config import Config, from_mapping
from streamwatch.daemon import Daemon
from tests.helpers import Collector, wait_until
from tests.natsutil import (
    NATS_SERVER,
    NatsClient,
    NatsServer,
    by_label,
    mosquitto_pub,
    started_server,
)

MOSQUITTO_PUB = shutil.which("mosquitto_pub")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        NATS_SERVER is None,
        reason="nats-server is not installed (.ci/run installs it: apt-get install nats-server)",
    ),
    pytest.mark.skipif(
        MOSQUITTO_PUB is None,
        reason="mosquitto_pub is not installed (apt-get install mosquitto-clients)",
    ),
]

P = 8
STREAM = "SENSORS"


@pytest.fixture
def server() -> Iterator[NatsServer]:
    """nats-server with JetStream, the MQTT listener and the mapping into P partitions."""
    with started_server("sw-nats-mqtt-", P, mqtt=True) as s:
        yield s


def _cfg(server: NatsServer) -> Config:
    return from_mapping(
        {
            "ingest": {"transport": "jetstream"},
            "nats": {"url": server.url, "partition_count": P, "partitions": f"0-{P - 1}"},
            "detector": {"type": "gaussian"},
            "learning": {"warmup": 200},
            "alerts": {"raise_k": 2, "raise_n": 3, "clear_m": 5},
            "threshold": {"false_alarm_rate": 1e-4},
            "metrics": {"host": "127.0.0.1", "port": 0},
        }
    )


def test_mosquitto_pub_through_the_nats_mqtt_listener_is_scored_and_alerts(
    server: NatsServer,
) -> None:
    assert server.mqtt_port is not None
    registry = CollectorRegistry()
    daemon = Daemon(_cfg(server), registry=registry)
    client = NatsClient(server.url)
    # nats-server's MQTT listener speaks MQTT 3.1.1 only.
    alerts = Collector(server.mqtt_port, ["streamwatch/alerts/#"], protocol=mqtt.MQTTv311)
    daemon.start()
    try:
        assert daemon.wait_ready(20), daemon.ready()
        client.subscribe("streamwatch.alerts.>")
        rng = np.random.default_rng(11)
        t0 = time.time() - 400
        values = list(rng.normal(20.0, 0.5, 300))
        values[250:256] = [35.0] * 6  # a 30-sigma excursion for six readings
        pump = [json.dumps({"value": float(v), "ts": t0 + i}) for i, v in enumerate(values)]
        mosquitto_pub(server.mqtt_port, "sensors/pump1", pump, qos=1)
        fan = [json.dumps({"value": 1.0 + 0.01 * i, "ts": t0 + i}) for i in range(40)]
        mosquitto_pub(server.mqtt_port, "sensors/fan1", fan, qos=0)
        # Two topic levels: the NATS subject sensors.plant.pump2, the sensor plant/pump2.
        two = [json.dumps({"value": 7.0, "ts": t0 + i}) for i in range(5)]
        mosquitto_pub(server.mqtt_port, "sensors/plant/pump2", two, qos=1)

        # The stream holds exactly what was published (QoS 1 and QoS 0 alike, on loopback).
        assert wait_until(lambda: client.stream(STREAM).state.messages == 345)
        want = {"pump1": 300.0, "fan1": 40.0, "plant/pump2": 5.0}
        assert wait_until(
            lambda: by_label(registry, "streamwatch_readings_total", "sensor") == want
        ), by_label(registry, "streamwatch_readings_total", "sensor")

        # The alert: on the core NATS subject, and to the MQTT subscriber through the listener.
        assert wait_until(lambda: client.on("streamwatch.alerts.pump1"))
        raised = json.loads(client.on("streamwatch.alerts.pump1")[0])
        assert raised["state"] == "raised" and raised["sensor"] == "pump1"
        assert t0 + 250 <= raised["window_end"] <= t0 + 256
        assert alerts.wait_for(lambda c: c.json_on("streamwatch/alerts/pump1"))
        over_mqtt = alerts.json_on("streamwatch/alerts/pump1")[0]
        assert over_mqtt["alert_id"] == raised["alert_id"]
        assert not alerts.json_on("streamwatch/alerts/fan1")
        assert wait_until(lambda: len(daemon.outbox) == 0)
        # Every message acknowledged after scoring.
        assert wait_until(
            lambda: (
                sum(client.consumer(STREAM, f"streamwatch-{p}").num_ack_pending for p in range(P))
                == 0
            )
        )
    finally:
        daemon.stop()
        alerts.client.loop_stop()
        alerts.client.disconnect()
        client.close()
