"""Test helpers shared by many test modules: a real Mosquitto broker, MQTT test clients,
waiting and HTTP. Fixtures live in conftest.py; modules import these from here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from streamwatch.config import Config
from streamwatch.detectors import bundle
from streamwatch.detectors.bundle import Model
from streamwatch.embedded_broker import free_port, wait_port


class Mosquitto:
    """A Mosquitto process with its own config, persistence folder and log."""

    def __init__(self, workdir: Path, extra_conf: str = "", port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.log = workdir / "mosquitto.log"
        data = workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        # Started as root, Mosquitto drops to its own user: the folder must be writable by it.
        os.chmod(workdir, 0o777)
        os.chmod(data, 0o777)
        self.conf = workdir / "mosquitto.conf"
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen[bytes] | None = None

    def write_conf(self) -> None:
        """Write the config (listener, persistence, large queues, plus ``extra_conf``)."""
        listener = f"listener {self.port} 127.0.0.1\n"
        if "listener" in self.extra_conf:
            listener = ""
        self.conf.write_text(
            listener + "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.workdir / 'data'}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 0\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n" + self.extra_conf
        )
        os.chmod(self.conf, 0o644)

    def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        self.write_conf()
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)])
        wait_port(self.port)

    def stop(self) -> None:
        """Stop the broker gracefully (it saves its persistence file)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """Kill the broker hard."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    @property
    def url(self) -> str:
        """mqtt://127.0.0.1:PORT"""
        return f"mqtt://{self.host}:{self.port}"


class Collector:
    """A separate MQTT client that records every message on some topics."""

    def __init__(
        self,
        port: int,
        topics: list[str],
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5,
        session: str | None = None,
    ) -> None:
        """``session``: a client id for a persistent MQTT 5 session, so that what is
        published while this client is cut off (a broker restart) still reaches it."""
        self.messages: list[tuple[str, bytes, bool]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=session or "", protocol=protocol
        )
        subscribed = threading.Event()

        def on_connect(c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
            c.subscribe([(t, 1) for t in topics])

        def on_subscribe(c: mqtt.Client, u: Any, mid: int, codes: Any, p: Any) -> None:
            subscribed.set()

        def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
            with self.cond:
                self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
                self.cond.notify_all()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        if session is None:
            self.client.connect("127.0.0.1", port)
        else:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
            self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise TimeoutError("collector did not subscribe")

    def json_on(self, prefix: str) -> list[dict[str, Any]]:
        """Decoded JSON payloads of messages whose topic starts with ``prefix``."""
        with self.cond:
            return [json.loads(p) for t, p, _ in self.messages if t.startswith(prefix)]

    def wait_for(self, pred: Any, timeout: float = 20.0) -> bool:
        """Wait until ``pred(self)`` is true."""
        with self.cond:
            return self.cond.wait_for(lambda: pred(self), timeout)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


class Publisher:
    """A separate MQTT client publishing at QoS 1 and waiting for every acknowledgement."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.acked_at: dict[int, float] = {}
        """``time.time()`` when the broker's PUBACK for each message id arrived (ids wrap
        after 65,535 messages)."""
        self.client.on_publish = self._on_publish
        self.connects = 0
        """CONNACKs received: 2 once it has reconnected after a broker restart."""
        self.client.on_connect = self._on_connect
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self._infos: list[mqtt.MQTTMessageInfo] = []

    def _on_connect(self, c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        self.connects += 1

    def _on_publish(self, c: mqtt.Client, u: Any, mid: int, rc: Any, p: Any) -> None:
        self.acked_at[mid] = time.time()

    def send(self, topic: str, payload: str | bytes) -> int:
        """Publish one message at QoS 1; returns its message id."""
        info = self.client.publish(topic, payload, qos=1)
        self._infos.append(info)
        return info.mid

    def reading(self, sensor: str, value: float, ts: float) -> None:
        """Publish one JSON reading to ``sensors/<sensor>``."""
        self.send(f"sensors/{sensor}", json.dumps({"value": value, "ts": ts}))

    def flush(self, timeout: float = 20.0) -> None:
        """Wait until the broker acknowledged everything sent. A message published while the
        connection was down is queued by paho and sent on reconnect (its ``rc`` says
        "not connected", which ``wait_for_publish`` takes for a failure): wait for its PUBACK
        all the same."""
        deadline = time.monotonic() + timeout
        for info in self._infos:
            if info.rc == mqtt.MQTT_ERR_NO_CONN:
                while not info._published and time.monotonic() < deadline:
                    time.sleep(0.01)
            else:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        self._infos.clear()

    def close(self) -> None:
        """Flush and disconnect."""
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(pred: Any, timeout: float = 20.0, every: float = 0.05) -> bool:
    """Poll ``pred()`` until it is truthy or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return bool(pred())


def http_get(url: str, timeout: float = 5.0, **kw: Any) -> tuple[int, str]:
    """A real HTTP GET: (status, body). An HTTP error status is returned, not raised; a
    connection failure is status 0 with the error as the body."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, **kw) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def http_ok(url: str) -> bool:
    """Whether GET ``url`` answers 200 (False while nothing listens yet)."""
    return http_get(url, timeout=2.0)[0] == 200


def fresh_model(cfg: Config) -> Model:
    """An untrained model of the configured detector, as the daemon starts without a bundle."""
    return bundle.fresh(cfg.detector, cfg.windows.length, cfg.threshold.false_alarm_rate)
