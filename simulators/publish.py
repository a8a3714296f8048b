"""Publish a simulated stream to an MQTT broker (paho-mqtt 2.x).

One topic per sensor, ``<topic_prefix><sensor>``. A message carries one reading as a JSON
object ``{"value": v, "ts": t}``, or with ``batch > 1`` a JSON array of such objects (one
sensor's consecutive readings). Labels, when asked for, go to ``<label_topic>/<sensor>`` in
the same shape with ``"label"`` in place of ``"value"``.

Pacing: ``rate`` readings per second overall, or ``realtime=True`` to follow the readings'
own timestamps (divided by ``speed``), or neither for as fast as the broker acknowledges.
With QoS 1 the call returns only once the broker has acknowledged every message, so nothing
is lost at the end; at most ``max_inflight`` messages are unacknowledged at any time.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import paho.mqtt.client as mqtt

from simulators.generate import Simulated

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """The broker could not be reached, or did not acknowledge in time."""


def _batches(sim: Simulated, batch: int) -> Iterator[tuple[str, list[int]]]:
    """``(sensor, row indices)`` per message, in time order of each message's last reading."""
    pending: dict[str, list[int]] = {}
    sensors = sim.sensor.tolist()
    for i, s in enumerate(sensors):
        buf = pending.setdefault(s, [])
        buf.append(i)
        if len(buf) >= batch:
            yield s, buf
            pending[s] = []
    for s, buf in pending.items():
        if buf:
            yield s, buf


def _payload(
    ts: np.ndarray, values: np.ndarray, rows: list[int], key: str, as_array: bool, as_int: bool
) -> str:
    """The JSON text of one message: an object for one reading, or an array."""
    items = [
        {key: int(values[i]) if as_int else float(values[i]), "ts": float(ts[i])} for i in rows
    ]
    return json.dumps(items if as_array else items[0])


def publish(
    sim: Simulated,
    broker_host: str = "localhost",
    broker_port: int = 1883,
    topic_prefix: str = "sensors/",
    rate: float | None = None,
    batch: int = 1,
    qos: Literal[0, 1] = 1,
    protocol: Literal["5", "3.1.1"] = "5",
    stop_event: threading.Event | None = None,
    label_topic: str | None = None,
    realtime: bool = False,
    speed: float = 1.0,
    client_id: str = "",
    max_inflight: int = 1000,
    connect_timeout_s: float = 10.0,
    ack_timeout_s: float = 60.0,
) -> int:
    """Publish every reading of ``sim``; return the number of readings published.

    Stops early (still waiting for acknowledgements) when ``stop_event`` is set. Raises
    :class:`PublishError` if the broker refuses or is unreachable, or if acknowledgements
    stop arriving for ``ack_timeout_s``.
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0 (or None for as fast as possible)")
    if speed <= 0:
        raise ValueError("speed must be > 0")
    stop = stop_event or threading.Event()
    version = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version)
    client.max_inflight_messages_set(min(max_inflight, 65535))
    client.max_queued_messages_set(0)
    cond = threading.Condition()
    state: dict[str, Any] = {"acked": 0, "sent": 0, "connected": False, "refused": None}

    def on_connect(c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        with cond:
            if rc.is_failure:
                state["refused"] = str(rc)
            else:
                state["connected"] = True
            cond.notify_all()

    def on_publish(c: mqtt.Client, u: Any, mid: int, rc: Any = None, props: Any = None) -> None:
        with cond:
            state["acked"] += 1
            cond.notify_all()

    client.on_connect = on_connect
    client.on_publish = on_publish
    try:
        client.connect(broker_host, broker_port, keepalive=60)
    except OSError as exc:
        raise PublishError(f"cannot connect to {broker_host}:{broker_port}: {exc}") from exc
    client.loop_start()
    sent_readings = 0
    try:
        with cond:
            cond.wait_for(
                lambda: state["connected"] or state["refused"] is not None, connect_timeout_s
            )
            if not state["connected"]:
                why = state["refused"] or "no CONNACK in time"
                raise PublishError(f"broker {broker_host}:{broker_port} refused: {why}")
        ts, values, labels = sim.ts, sim.value, sim.label
        t0 = time.monotonic()
        ts0 = float(ts[0]) if len(sim) else 0.0
        for sensor, rows in _batches(sim, batch):
            if stop.is_set():
                log.info("publish stopped after %d readings", sent_readings)
                break
            if realtime:
                delay = t0 + (float(ts[rows[-1]]) - ts0) / speed - time.monotonic()
            elif rate is not None:
                delay = t0 + sent_readings / rate - time.monotonic()
            else:
                delay = 0.0
            if delay > 0 and stop.wait(delay):
                break
            arr = batch > 1
            client.publish(
                topic_prefix + sensor, _payload(ts, values, rows, "value", arr, False), qos=qos
            )
            state["sent"] += 1
            if label_topic is not None:
                client.publish(
                    f"{label_topic}/{sensor}",
                    _payload(ts, labels, rows, "label", arr, True),
                    qos=qos,
                )
                state["sent"] += 1
            sent_readings += len(rows)
            with cond:
                if not cond.wait_for(
                    lambda: state["sent"] - state["acked"] <= max_inflight, ack_timeout_s
                ):
                    raise PublishError(f"no acknowledgement from the broker in {ack_timeout_s}s")
        with cond:
            if not cond.wait_for(lambda: state["acked"] >= state["sent"], ack_timeout_s):
                raise PublishError(
                    f"{state['sent'] - state['acked']} of {state['sent']} messages unacknowledged "
                    f"after {ack_timeout_s}s"
                )
        log.info("published %d readings in %d messages", sent_readings, state["sent"])
        return sent_readings
    finally:
        client.disconnect()
        client.loop_stop()
