"""A SIGKILLed daemon's partitions move to the survivor (``nats.ownership = "lease"``),
against a real nats-server: 1,000 sensors over 64 partitions, two daemons (the survivor in
this process, the victim a real ``streamwatch run`` process). The watched sensor's readings
(the ones that raise and clear its alert across the move) are sent by ``mosquitto_pub``
through nats-server's MQTT listener, every other reading on NATS."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamwatch.config import from_mapping
from streamwatch.daemon import Daemon
from streamwatch.ingest.jetstream import JetStreamLink
from streamwatch.ingest.takeover import alert_key
from tests.helpers import wait_until
from tests.natsutil import (
    NATS_SERVER,
    NatsClient,
    NatsServer,
    by_label,
    mosquitto_pub,
    started_server,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        NATS_SERVER is None,
        reason="nats-server is not installed (.ci/run installs it: apt-get install nats-server)",
    ),
]

MOSQUITTO_PUB = shutil.which("mosquitto_pub")
P = 64
SENSORS = [f"m{i:04d}" for i in range(1000)]
TTL = 6.0
STREAM = "SENSORS"
LEASES = "streamwatch_leases"
ALERTS = "streamwatch_alerts"
SETTINGS: dict[str, Any] = {
    "detector": {"type": "gaussian"},
    "learning": {"warmup": 30},
    "alerts": {"raise_k": 2, "raise_n": 3, "clear_m": 5, "clear_hold_s": 0.0},
    "threshold": {"false_alarm_rate": 1e-4},
}


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream and the mapping into P partitions."""
    with started_server("sw-lease-kill-", P, mqtt=True) as server:
        yield server


def _nats(server: NatsServer, name: str) -> dict[str, Any]:
    return {
        "url": server.url,
        "partition_count": P,
        "ownership": "lease",
        "lease_ttl_s": TTL,
        "daemon_id": name,
        "replay_s": 600.0,
    }


def _toml(section: str, values: dict[str, Any]) -> str:
    return f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def _owners(client: NatsClient) -> dict[int, str]:
    try:
        latest = client.kv_latest(LEASES)
    except Exception:  # not there yet
        return {}
    return {int(k[2:]): json.loads(v)["owner"] for k, v in latest.items() if k.startswith("p.")}


def _messages(
    sensors: Sequence[str], first: int, count: int, t0: float, rng: np.random.Generator
) -> list[tuple[str, bytes]]:
    """``count`` normal readings per sensor from step ``first`` on, five per message."""
    out = []
    for start in range(first, first + count, 5):
        for s in sensors:
            batch = [
                {"value": float(rng.normal(20.0, 0.5)), "ts": t0 + i}
                for i in range(start, min(start + 5, first + count))
            ]
            out.append((f"sensors.{s}", json.dumps(batch).encode()))
    return out


def _settled(client: NatsClient) -> bool:
    try:
        infos = [client.consumer(STREAM, f"streamwatch-{p}") for p in range(P)]
    except Exception:  # a consumer being recreated
        return False
    return all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos)


def _state(link: JetStreamLink, client: NatsClient, log: Path) -> str:
    """Who reads what, for a failed wait: the survivor's link, the lease bucket, the other's
    log."""
    owners = _owners(client)
    by = {d: sorted(p for p, o in owners.items() if o == d) for d in set(owners.values())}
    return f"link a reads {link.owned}\nbucket: {by}\nb's log:\n{log.read_text()[-3000:]}"


def _floor(client: NatsClient, partition: int) -> int:
    """The stream sequence of partition ``partition``'s consumer's acknowledgement floor."""
    return int(client.consumer(STREAM, f"streamwatch-{partition}").ack_floor.stream_seq)


class _Sender:
    """Publishes the watched sensor's messages: on NATS (stream sequences known at once), or
    through the MQTT listener with ``mosquitto_pub`` (QoS 1; sequences read off the stream)."""

    def __init__(self, via: str, server: NatsServer, client: NatsClient) -> None:
        self.via, self.server, self.client = via, server, client

    def send(self, messages: list[tuple[str, bytes]]) -> list[int]:
        """Publish ``messages`` (one sensor's, in order); the stream sequences known now."""
        if self.via == "nats":
            return self.client.publish_many(messages)
        assert self.server.mqtt_port is not None
        topic = messages[0][0].replace(".", "/")
        mosquitto_pub(self.server.mqtt_port, topic, [body for _, body in messages], qos=1)
        return []


def test_sigkilled_daemons_partitions_move_to_the_survivor(
    nats_server: NatsServer, client: NatsClient, tmp_path: Path
) -> None:
    via = "mqtt" if MOSQUITTO_PUB is not None else "nats"  # .ci/run installs mosquitto_pub
    sender = _Sender(via, nats_server, client)
    rng = np.random.default_rng(16)
    t0 = time.time() - 1000.0
    client.subscribe("streamwatch.alerts.>")
    conf = tmp_path / "b.toml"
    conf.write_text(
        'log_level = "INFO"\n'
        + _toml("ingest", {"transport": "jetstream"})
        + _toml("nats", _nats(nats_server, "b"))
        + "".join(_toml(k, v) for k, v in SETTINGS.items())
        + _toml("metrics", {"enabled": False}),
        encoding="utf-8",
    )
    registry = CollectorRegistry()
    cfg = from_mapping(
        {
            "ingest": {"transport": "jetstream"},
            "nats": _nats(nats_server, "a"),
            "metrics": {"enabled": False},
            **SETTINGS,
        }
    )
    a = Daemon(cfg, registry=registry)
    link = cast(JetStreamLink, a.link)
    done: set[int] = set()  # stream sequences the survivor's worker scored and acknowledged
    ack = link.ack

    def recording(tokens: Sequence[Any]) -> None:
        done.update(int(t.msg.metadata.sequence.stream) for t in tokens)
        ack(tokens)

    link.ack = recording  # type: ignore[method-assign]
    a.start()
    log = tmp_path / "b.log"
    b = subprocess.Popen(
        [sys.executable, "-m", "streamwatch", "run", "--config", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        assert a.wait_ready(30), a.ready()
        # The join: half each, one owner per partition.
        assert wait_until(
            lambda: (
                len(link.owned) == P // 2
                and sorted(p for p, o in _owners(client).items() if o == "b")
                == sorted(set(range(P)) - set(link.owned))
            ),
            timeout=60,
            every=0.5,
        ), _state(link, client, log)

        published = client.publish_many(_messages(SENSORS, 0, 40, t0, rng))
        assert wait_until(lambda: _settled(client), timeout=60, every=0.5)
        # A sensor the other daemon scores: 20 more normal readings, then a 30-sigma spike.
        victim = next(s for s in SENSORS if s not in a.engine.windows.sensors)
        published += sender.send(_messages([victim], 40, 20, t0, rng))
        spike = [{"value": 35.0, "ts": t0 + i} for i in range(60, 66)]
        published += sender.send([(f"sensors.{victim}", json.dumps(spike).encode())])
        subject = f"streamwatch.alerts.{victim}"
        assert wait_until(lambda: client.on(subject), timeout=30), log.read_text()[-2000:]
        raised = json.loads(client.on(subject)[0])
        assert raised["state"] == "raised"
        alert_id = raised["alert_id"]
        owners = _owners(client)
        killed_parts = sorted(p for p, o in owners.items() if o == "b")
        # The open alert is in KV under its partition before anything else happens.
        assert wait_until(
            lambda: any(
                json.loads(v).get("alert_id") == alert_id
                for k, v in client.kv_latest(ALERTS).items()
                if k in {alert_key(p, victim) for p in killed_parts}
            ),
            timeout=10,
        )

        # Mid-stream: a backlog for everyone but the victim, and the kill once the other
        # daemon is reading it (its ack floors move) while it is still being published.
        others = [s for s in SENSORS if s != victim]
        before = {p: _floor(client, p) for p in killed_parts}
        backlog: list[int] = []
        publisher = threading.Thread(
            target=lambda: backlog.extend(client.publish_many(_messages(others, 40, 10, t0, rng)))
        )
        publisher.start()
        assert wait_until(
            lambda: any(_floor(client, p) > before[p] for p in killed_parts), every=0.02
        )
        b.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        b.wait(10)
        publisher.join(120)
        published += backlog
        # What the dead daemon acknowledged it had scored: its consumers' ack floors.
        floors = {p: _floor(client, p) for p in killed_parts}
        assert not set(link.owned) & set(killed_parts), "taken over before the TTL"
        published += client.publish_many(_messages(others, 50, 20, t0, rng))
        published += sender.send(_messages([victim], 66, 20, t0, rng))

        # Takeover within the TTL plus a margin.
        assert wait_until(lambda: len(link.owned) == P, timeout=TTL + 20, every=0.1), _state(
            link, client, log
        )
        takeover = time.monotonic() - killed
        print(f"takeover of {len(killed_parts)} partitions: {takeover:.1f}s after SIGKILL")
        assert takeover <= TTL + 15
        assert wait_until(lambda: _settled(client), timeout=60, every=0.5)
        assert set(_owners(client).values()) == {"a"}

        # Every published message was scored: acknowledged by the dead daemon (at or before
        # its partition's ack floor) or scored by the survivor; nothing rejected as out of
        # order or duplicate on the survivor.
        subjects = client.stream_subjects(STREAM, "streamwatch.in.>")
        if via == "mqtt":  # the watched sensor's messages (8 on NATS, 4 + 1 + 4 over MQTT)
            mine = [q for q, subj in subjects.items() if subj.endswith(f".{victim}")]
            published += [q for q in mine if q not in set(published)]
            assert len(mine) == 8 + 4 + 1 + 4, len(mine)
        missed = [
            seq
            for seq in published
            if seq not in done and seq > floors.get(int(subjects[seq].split(".")[2]), 0)
        ]
        assert not missed, f"{len(missed)} messages never scored, e.g. {missed[:5]}"
        left = [
            seq
            for seq in backlog
            if int(subjects[seq].split(".")[2]) in floors
            and seq > floors[int(subjects[seq].split(".")[2])]
        ]
        print(f"backlog messages beyond the killed daemon's ack floors: {len(left)}")
        assert "out_of_order" not in by_label(registry, "streamwatch_rejected_total", "reason")
        assert "duplicate_timestamp" not in by_label(
            registry, "streamwatch_rejected_total", "reason"
        )

        # The victim's alert: raised once (by the dead daemon), cleared by the survivor
        # under the same id, not raised again.
        assert wait_until(lambda: len(client.on(subject)) >= 2, timeout=30)
        events = [json.loads(d) for d in client.on(subject)]
        assert [e["state"] for e in events] == ["raised", "cleared"], events
        assert events[1]["alert_id"] == alert_id
        # Cleared on readings published after the kill: by the survivor, which had them
        # scored at once. Without the window context it would still be warming up (30
        # readings) after those 20, with no verdict to clear on.
        assert events[1]["ts"] >= t0 + 66
        # No sensor raised twice without a clear between (across the move).
        by_sensor: dict[str, list[dict[str, Any]]] = {}
        for subj, data in client.received:
            if subj.startswith("streamwatch.alerts."):
                by_sensor.setdefault(subj, []).append(json.loads(data))
        for subj, evs in by_sensor.items():
            states = [e["state"] for e in evs]
            assert all(x != y for x, y in itertools.pairwise(states)), (subj, evs)

        # One owner at a time, from the lease history: an owner changes either after the
        # previous one deleted its lease (a hand-over) or at least TTL after its last renewal.
        expiries: dict[int, float] = {}
        for p in range(P):
            history = client.kv_history(LEASES, f"p.{p}")
            prev: Any = None
            for entry in history:
                if entry.operation is not None:
                    prev = None  # released
                    continue
                owner = json.loads(entry.value)["owner"]
                if prev is not None and json.loads(prev.value)["owner"] != owner:
                    gap = (entry.created - prev.created).total_seconds()
                    assert gap >= TTL - 0.05, (p, gap, history)
                    expiries[p] = gap
                prev = entry
        # Every one of the dead daemon's partitions was taken over on expiry (the last owner
        # change of each: nothing moved back).
        assert set(killed_parts) <= set(expiries)
        gaps = [expiries[p] for p in killed_parts]
        print(f"taken over {min(gaps):.1f}-{max(gaps):.1f}s after the last renewal")
        print(f"owner changes on expiry: {len(expiries)} (the victim had {len(killed_parts)})")
    finally:
        if b.poll() is None:
            b.kill()
            b.wait(10)
        a.stop()
