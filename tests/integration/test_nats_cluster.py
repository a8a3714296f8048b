"""Two daemons on a 3-node NATS cluster (loopback) keep scoring when one node is SIGKILLed.

Three real nats-servers (cluster routes, clustered JetStream) with the partition mapping; the
stream is created with three replicas before the daemons start (the daemon creates a missing
stream with one replica: a clustered deployment creates it first, docs/scale-out.md). Two
daemons with disjoint static partitions are given all three server URLs. Readings are published
through one node; mid-stream the node a daemon is connected to is killed (SIGKILL), and publishing
goes on through the same surviving node, retrying a publish the cluster did not confirm (with a
``Nats-Msg-Id``, so a retried publish is stored once). Every reading must be scored once (a
redelivered duplicate is rejected by timestamp), or counted as out of order where JetStream
delivered it again only after a newer reading of its sensor (messages in flight on the killed
node), and both daemons must be ready again.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamwatch.config import Config, from_mapping
from streamwatch.daemon import Daemon
from tests.helpers import wait_until
from tests.natsutil import NATS_SERVER, NatsClient, NatsServer, by_label, nats_cluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        NATS_SERVER is None,
        reason="nats-server is not installed (.ci/run installs it: apt-get install nats-server)",
    ),
]

P = 8
STREAM = "SENSORS"
SENSORS = [f"c{i}" for i in range(16)]
ROUNDS = 60
KILL_AT = 25


@pytest.fixture
def cluster() -> Iterator[list[NatsServer]]:
    """Three started cluster nodes."""
    d = Path(tempfile.mkdtemp(prefix="sw-nats-cluster-"))
    nodes = nats_cluster(d, P)
    for n in nodes:
        n.start()
    yield nodes
    for n in nodes:
        n.stop()
    shutil.rmtree(d, ignore_errors=True)


def _cfg(nodes: list[NatsServer], partitions: str) -> Config:
    return from_mapping(
        {
            "ingest": {"transport": "jetstream"},
            "nats": {
                "url": ",".join(n.url for n in nodes),
                "partition_count": P,
                "partitions": partitions,
                "ack_wait_s": 5.0,
            },
            "detector": {"type": "gaussian"},
            "learning": {"warmup": 200},
            "metrics": {"host": "127.0.0.1", "port": 0},
        }
    )


def _reconnects(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("streamwatch_mqtt_reconnects_total") or 0.0


def _daemon_connections(node: NatsServer) -> int:
    """Client connections named ``streamwatch`` (the daemons') on ``node``, from /connz."""
    url = f"http://127.0.0.1:{node.monitor_port}/connz?limit=1000"
    with urllib.request.urlopen(url, timeout=5) as r:
        conns = json.load(r)["connections"] or []
    return sum(1 for c in conns if c.get("name") == "streamwatch")


def _retrying(action: Callable[..., object], *args: Any, within: float = 30.0, **kw: Any) -> None:
    """Call ``action(*args, **kw)`` until it does not raise (a cluster electing a leader times
    out), for at most ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            action(*args, **kw)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_two_daemons_keep_scoring_when_a_nats_node_is_killed(
    cluster: list[NatsServer],
) -> None:
    admin = NatsClient(cluster[0].url)
    try:
        # Clustered JetStream elects its meta leader first: retry until the R3 stream exists.
        _retrying(admin.add_stream, STREAM, ["streamwatch.in.>"], replicas=3, within=40)
        assert admin.stream(STREAM).config.num_replicas == 3
    finally:
        admin.close()

    regs = [CollectorRegistry(), CollectorRegistry()]
    daemons = [
        Daemon(_cfg(cluster, "0-3"), registry=regs[0]),
        Daemon(_cfg(cluster, f"4-{P - 1}"), registry=regs[1]),
    ]
    for d in daemons:
        d.start()
    client: NatsClient | None = None
    try:
        for d in daemons:
            assert d.wait_ready(40), d.ready()
        # The victim: a node a daemon is connected to; the publisher uses another node.
        assert wait_until(lambda: sum(_daemon_connections(n) for n in cluster) == 2), [
            _daemon_connections(n) for n in cluster
        ]
        counts = [_daemon_connections(n) for n in cluster]
        victim = max(range(3), key=lambda i: counts[i])
        survivor = cluster[(victim + 1) % 3]
        client = pub = NatsClient(survivor.url)

        t0 = time.time() - 1000
        for r in range(ROUNDS):
            if r == KILL_AT:
                cluster[victim].kill()
            for s in SENSORS:
                body = json.dumps({"value": 1.0 + 0.01 * r, "ts": t0 + r}).encode()
                _retrying(pub.publish, f"sensors.{s}", body, msg_id=f"{s}-{r}", timeout=1.0)

        want = {s: float(ROUNDS) for s in SENSORS}

        def merged() -> dict[str, float]:
            out: dict[str, float] = {}
            for reg in regs:
                for s, v in by_label(reg, "streamwatch_readings_total", "sensor").items():
                    out[s] = out.get(s, 0.0) + v
            return out

        def late() -> float:
            return sum(
                by_label(r, "streamwatch_rejected_total", "reason").get("out_of_order", 0.0)
                for r in regs
            )

        def accounted() -> bool:
            got = merged()
            return set(got) == set(want) and sum(got.values()) + late() >= sum(want.values())

        # Every reading is scored, or (delivered again by JetStream after a newer one of its
        # sensor, the messages in flight on the killed node) counted as out of order.
        assert wait_until(accounted, timeout=60), (
            {k: v for k, v in merged().items() if v != ROUNDS},
            [by_label(r, "streamwatch_rejected_total", "reason") for r in regs],
        )
        got = merged()
        assert all(ROUNDS - 10 <= v <= ROUNDS for v in got.values()), got
        on = [set(d.engine.windows.sensors) for d in daemons]
        assert on[0] and on[1] and not on[0] & on[1]  # each sensor on one daemon only
        # Readiness recovers on both; a daemon that lost its node reconnected.
        for d in daemons:
            assert wait_until(lambda d=d: d.ready() is None, timeout=30), d.ready()
        assert sum(_reconnects(r) for r in regs) >= counts[victim] >= 1

        def settled() -> bool:
            try:
                infos = [pub.consumer(STREAM, f"streamwatch-{p}") for p in range(P)]
            except Exception:
                return False
            return all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos)

        assert wait_until(settled, timeout=30), [
            (i.num_pending, i.num_ack_pending)
            for i in (pub.consumer(STREAM, f"streamwatch-{p}") for p in range(P))
        ]
        assert pub.stream(STREAM).state.messages == ROUNDS * len(SENSORS)
    finally:
        for d in daemons:
            d.stop()
        if client is not None:
            client.close()
