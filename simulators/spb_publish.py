"""A Sparkplug B edge node (paho-mqtt 2.x) publishing a simulated plant.

The node connects with its NDEATH (carrying ``bdSeq``) as the MQTT will, publishes NBIRTH
(``bdSeq``, ``Node Control/Rebirth``) and one DBIRTH per device (each metric with a name, an
alias and the Double datatype), then DDATA by alias, with ``seq`` counting 0-255 across all of
the node's messages. An NCMD with ``Node Control/Rebirth`` = true makes it publish its births
again (seq from 0, the same bdSeq) before its next data.

Each pump of :func:`simulators.plant.simulate_plant` is a device; its members are the metrics.
Failure modes for tests: skip a seq number, send data before the births, a DDEATH.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import paho.mqtt.client as mqtt

from simulators.generate import Simulated
from simulators.publish import PublishError
from streamwatch.ingest import spb_payload as spb
from streamwatch.ingest.sparkplug import NAMESPACE, REBIRTH_METRIC

log = logging.getLogger(__name__)


class EdgeNode:
    """One Sparkplug B edge node with devices whose metrics are all Doubles."""

    def __init__(
        self,
        host: str,
        port: int,
        group: str,
        edge: str,
        devices: Mapping[str, Sequence[str]],
        protocol: Literal["5", "3.1.1"] = "5",
        qos: Literal[0, 1] = 0,
        bd_seq: int = 0,
        client_id: str = "",
    ) -> None:
        self.group, self.edge, self.qos = group, edge, qos
        self.devices = {d: list(ms) for d, ms in devices.items()}
        self.aliases: dict[str, dict[str, int]] = {}
        alias = 1
        for d, ms in self.devices.items():
            self.aliases[d] = {}
            for m in ms:
                self.aliases[d][m] = alias
                alias += 1
        self.bd_seq = bd_seq
        self.seq = 0
        self.births = 0
        """How many times the node published its births (the first, then each rebirth)."""
        self.rebirth_requests = 0
        self._rebirth = threading.Event()
        self._connected = threading.Event()
        self._refused: str | None = None
        version = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version
        )
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(1000)
        self.client.will_set(self.topic("NDEATH"), self._death_payload(), qos=1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.host, self.port = host, port

    def topic(self, kind: str, device: str | None = None) -> str:
        """The node's (or a device's) topic for a message kind."""
        base = f"{NAMESPACE}/{self.group}/{kind}/{self.edge}"
        return f"{base}/{device}" if device else base

    def _death_payload(self) -> bytes:
        return spb.encode(
            spb.Payload(
                timestamp=int(time.time() * 1000),
                metrics=[spb.Metric(name="bdSeq", datatype=spb.UINT64, value=self.bd_seq)],
            )
        )

    # -- paho callbacks (never raise) ------------------------------------------------------

    def _on_connect(self, c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        try:
            if rc.is_failure:
                self._refused = str(rc)
            else:
                c.subscribe(self.topic("NCMD"), qos=1)
                self._connected.set()
        except Exception:
            log.exception("error in on_connect")

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            for m in spb.decode(bytes(msg.payload)).metrics:
                if m.name == REBIRTH_METRIC and m.value is True:
                    self.rebirth_requests += 1
                    self._rebirth.set()
        except spb.PayloadError:
            log.warning("undecodable NCMD on %s", msg.topic)
        except Exception:
            log.exception("error in on_message")

    # -- lifecycle -------------------------------------------------------------------------

    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect (the NDEATH as the will) and wait for the CONNACK."""
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise PublishError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self.client.loop_start()
        if not self._connected.wait(timeout_s):
            self.close()
            raise PublishError(f"broker {self.host}:{self.port}: {self._refused or 'no CONNACK'}")

    def _send(self, topic: str, payload: spb.Payload, with_seq: bool = True) -> None:
        if with_seq:
            payload.seq = self.seq
            self.seq = (self.seq + 1) % 256
        self.client.publish(topic, spb.encode(payload), qos=self.qos)

    def birth(self, values: Mapping[str, Mapping[str, float]] | None = None) -> None:
        """Publish NBIRTH and every DBIRTH (seq from 0), with ``values[device][metric]`` as
        the births' current values where given."""
        now = int(time.time() * 1000)
        self.seq = 0
        self._send(
            self.topic("NBIRTH"),
            spb.Payload(
                timestamp=now,
                metrics=[
                    spb.Metric(name="bdSeq", datatype=spb.UINT64, value=self.bd_seq),
                    spb.Metric(name=REBIRTH_METRIC, datatype=spb.BOOLEAN, value=False),
                ],
            ),
        )
        for d, names in self.devices.items():
            given = (values or {}).get(d, {})
            metrics = [
                spb.Metric(
                    name=m,
                    alias=self.aliases[d][m],
                    timestamp=now,
                    datatype=spb.DOUBLE,
                    value=given.get(m),
                    is_null=m not in given,
                )
                for m in names
            ]
            self._send(self.topic("DBIRTH", d), spb.Payload(timestamp=now, metrics=metrics))
        self.births += 1
        self._rebirth.clear()

    def rebirth_if_asked(self) -> bool:
        """Publish the births again if an NCMD asked for it since the last births."""
        if not self._rebirth.is_set():
            return False
        log.info("rebirth requested: publishing NBIRTH and DBIRTHs again")
        self.birth()
        return True

    def data(self, device: str, ts: float, values: Mapping[str, float], skip_seq: int = 0) -> None:
        """Publish one DDATA of ``values`` by alias at ``ts`` (epoch seconds); ``skip_seq``
        seq numbers are left out first (a gap, for tests)."""
        self.seq = (self.seq + skip_seq) % 256
        ms = round(ts * 1000)
        metrics = [
            spb.Metric(alias=self.aliases[device][m], timestamp=ms, value=float(v))
            for m, v in values.items()
        ]
        self._send(self.topic("DDATA", device), spb.Payload(timestamp=ms, metrics=metrics))

    def device_death(self, device: str) -> None:
        """Publish a DDEATH for ``device``."""
        self._send(self.topic("DDEATH", device), spb.Payload(timestamp=int(time.time() * 1000)))

    def node_death(self) -> None:
        """Publish the NDEATH explicitly (a graceful shutdown; the will covers the rest)."""
        self.client.publish(self.topic("NDEATH"), self._death_payload(), qos=1)

    def flush(self, timeout_s: float = 20.0) -> None:
        """Wait until paho has sent everything queued."""
        deadline = time.monotonic() + timeout_s
        while self.client.want_write() and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        """Disconnect cleanly (no will) and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def plant_steps(sim: Simulated) -> Iterator[tuple[float, str, dict[str, float]]]:
    """``(ts, device, {member: value})`` of a plant simulation, in time order: one DDATA per
    pump and timestamp (members that share a timestamp go together)."""
    parts = np.char.rpartition(sim.sensor.astype(str), "/")
    devices = np.char.rpartition(parts[:, 0], "/")[:, 2]
    members = parts[:, 2]
    i = 0
    n = len(sim)
    while i < n:
        t = float(sim.ts[i])
        batch: dict[str, dict[str, float]] = {}
        while i < n and float(sim.ts[i]) == t:
            batch.setdefault(str(devices[i]), {})[str(members[i])] = float(sim.value[i])
            i += 1
        for d, vals in batch.items():
            yield t, d, vals


def publish_sparkplug(
    sim: Simulated,
    host: str,
    port: int,
    group: str = "plant",
    edge: str = "edge1",
    rate: float | None = None,
    realtime: bool = False,
    speed: float = 1.0,
    qos: Literal[0, 1] = 0,
    protocol: Literal["5", "3.1.1"] = "5",
    stop_event: threading.Event | None = None,
    client_id: str = "",
) -> int:
    """Publish a plant simulation as one Sparkplug B edge node (each pump a device); returns
    the readings published. ``rate`` is DDATA messages per second; ``realtime`` follows the
    readings' timestamps (divided by ``speed``). Rebirth requests are honoured before the next
    DDATA; the node publishes its NDEATH at the end."""
    devices: dict[str, list[str]] = {}
    for s in sim.sensors:
        _, pump, member = s.rsplit("/", 2)
        devices.setdefault(pump, []).append(member)
    node = EdgeNode(host, port, group, edge, devices, protocol, qos, client_id=client_id)
    node.connect()
    stop = stop_event or threading.Event()
    sent = 0
    try:
        node.birth()
        t0 = time.monotonic()
        ts0 = float(sim.ts[0]) if len(sim) else 0.0
        for k, (ts, device, values) in enumerate(plant_steps(sim)):
            if realtime:
                delay = t0 + (ts - ts0) / speed - time.monotonic()
            elif rate is not None:
                delay = t0 + k / rate - time.monotonic()
            else:
                delay = 0.0
            if stop.wait(max(delay, 0.0)) if delay > 0 else stop.is_set():
                break
            node.rebirth_if_asked()
            node.data(device, ts, values)
            sent += len(values)
        node.node_death()
        node.flush()
    finally:
        node.close()
    log.info("published %d readings as Sparkplug B (%d births)", sent, node.births)
    return sent
