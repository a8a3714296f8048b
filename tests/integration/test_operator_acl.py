"""deploy/mosquitto/acl.example on a real Mosquitto: an operator's command is applied, the
same command from a sensor's account never reaches the daemon."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from prometheus_client import CollectorRegistry

from streamwatch.config import from_mapping
from streamwatch.daemon import Daemon
from tests.helpers import Mosquitto, free_port, wait_until

pytestmark = pytest.mark.integration

ACL = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "acl.example"
USERS = {"streamwatch": "sw-pass", "operator-alice": "op-pass", "plc-line1": "plc-pass"}


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.fail("mosquitto_passwd not found (it comes with the mosquitto package)")
    # Not under pytest's tmp_path: Mosquitto reads these files as its own user.
    d = Path(tempfile.mkdtemp(prefix="sw-acl-"))
    d.chmod(0o755)
    passwd = d / "passwd"
    for i, (user, password) in enumerate(USERS.items()):
        flags = ["-c", "-b"] if i == 0 else ["-b"]
        subprocess.run([tool, *flags, str(passwd), user, password], check=True, timeout=30)
    passwd.chmod(0o644)
    acl = d / "acl"
    shutil.copy(ACL, acl)
    acl.chmod(0o644)
    port = free_port()
    b = Mosquitto(
        d / "broker",
        port=port,
        extra_conf=f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n",
    )
    b.start()
    yield b
    b.stop()
    shutil.rmtree(d, ignore_errors=True)


class Client:
    """A logged-in client that publishes at QoS 1 and records what it may read."""

    def __init__(self, port: int, user: str) -> None:
        self.got: list[tuple[str, dict]] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, USERS[user])
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, json.loads(m.payload)))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def send(self, topic: str, doc: dict) -> None:
        self.c.publish(topic, json.dumps(doc), qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_only_operators_can_command(
    broker: Mosquitto, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SW_TEST_PASSWORD", USERS["streamwatch"])
    cfg = from_mapping(
        {
            "mqtt": {
                "broker": broker.url,
                "client_id": "sw-acl",
                "username": "streamwatch",
                "password_env": "SW_TEST_PASSWORD",
            },
            "learning": {"warmup": 200},
            "metrics": {"enabled": False},
        }
    )
    registry = CollectorRegistry()
    daemon = Daemon(cfg, registry=registry)
    daemon.start()
    plc = Client(broker.port, "plc-line1")
    op = Client(broker.port, "operator-alice")
    try:
        assert daemon.wait_ready(10)
        op.c.subscribe("streamwatch/cmd/+/result", qos=1)
        time.sleep(0.3)
        t0 = time.time() - 1000
        for i, v in enumerate(10 + np.random.default_rng(3).normal(0, 0.5, 250)):
            plc.send("sensors/a", {"value": float(v), "ts": t0 + i})
        assert wait_until(
            lambda: registry.get_sample_value("streamwatch_readings_total", {"sensor": "a"}) == 250
        )
        # The sensor's account tries to mute: Mosquitto drops it.
        plc.send("streamwatch/cmd/a", {"action": "mute", "for_s": 600})
        # The operator's unmute then finds nothing muted: the plc's command never arrived.
        op.send("streamwatch/cmd/a", {"action": "unmute"})
        assert wait_until(lambda: len(op.got) == 1)
        assert op.got[0][1]["ok"] is False and "not muted" in op.got[0][1]["error"]
        op.send("streamwatch/cmd/a", {"action": "mute", "for_s": 600})
        assert wait_until(lambda: len(op.got) == 2)
        assert op.got[1][1]["ok"] is True
        assert (
            registry.get_sample_value(
                "streamwatch_commands_total", {"action": "mute", "result": "ok"}
            )
            == 1
        )
        assert plc.got == []
    finally:
        plc.close()
        op.close()
        daemon.stop()
