"""Dynamic partition ownership (``nats.ownership = "lease"``) against a real nats-server:
daemons share the partitions through leases in JetStream KV, a new daemon gets its share, a
stopping daemon hands its partitions over at once, and an alert raised by one owner is
cleared, not raised again, by the next."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import cast

import pytest
from prometheus_client import CollectorRegistry

from streamwatch.config import Config, from_mapping
from streamwatch.daemon import Daemon
from streamwatch.ingest.jetstream import JetStreamLink
from tests.helpers import wait_until
from tests.natsutil import NATS_SERVER, CutProxy, NatsClient, NatsServer, started_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        NATS_SERVER is None,
        reason="nats-server is not installed (.ci/run installs it: apt-get install nats-server)",
    ),
]

P = 8
TTL = 4.0
LEASES = "streamwatch_leases"


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream and the mapping into P partitions."""
    with started_server("sw-lease-", P) as server:
        yield server


def _cfg(server: NatsServer | CutProxy, name: str) -> Config:
    return from_mapping(
        {
            "ingest": {"transport": "jetstream"},
            "nats": {
                "url": server.url,
                "partition_count": P,
                "ownership": "lease",
                "lease_ttl_s": TTL,
                "daemon_id": name,
            },
            "detector": {"type": "gaussian"},
            "learning": {"warmup": 30},
            "alerts": {"raise_k": 2, "raise_n": 3, "clear_m": 5},
            "threshold": {"false_alarm_rate": 1e-4},
            "metrics": {"enabled": False},
        }
    )


def _owners(client: NatsClient) -> dict[int, str]:
    try:
        latest = client.kv_latest(LEASES)
    except Exception:  # the bucket does not exist yet
        return {}
    return {int(k[2:]): json.loads(v)["owner"] for k, v in latest.items() if k.startswith("p.")}


def _link(d: Daemon) -> JetStreamLink:
    return cast(JetStreamLink, d.link)


def _scored(registry: CollectorRegistry) -> float:
    return sum(
        s.value
        for fam in registry.collect()
        for s in fam.samples
        if s.name == "streamwatch_readings_total"
    )


def test_daemons_share_the_partitions_and_a_stop_hands_them_over(
    nats_server: NatsServer, client: NatsClient
) -> None:
    a = Daemon(_cfg(nats_server, "a"), registry=(reg_a := CollectorRegistry()))
    b = Daemon(_cfg(nats_server, "b"), registry=(reg_b := CollectorRegistry()))
    a.start()
    try:
        assert a.wait_ready(20), a.ready()
        assert wait_until(lambda: len(_link(a).owned) == P)
        joined = time.monotonic()
        b.start()
        assert b.wait_ready(20), b.ready()
        # The join: a hands back its surplus, b claims it; one owner per partition.
        assert wait_until(lambda: len(_link(a).owned) == len(_link(b).owned) == P // 2, 30), (
            _link(a).owned,
            _link(b).owned,
        )
        print(f"join: shared {P // 2}/{P // 2} {time.monotonic() - joined:.1f}s after the start")
        assert not set(_link(a).owned) & set(_link(b).owned)
        owners = _owners(client)
        assert sorted(p for p, o in owners.items() if o == "a") == _link(a).owned
        assert sorted(p for p, o in owners.items() if o == "b") == _link(b).owned

        t0 = time.time() - 100
        sensors = [f"s{i}" for i in range(24)]
        client.publish_many(
            [
                (f"sensors.{s}", json.dumps({"value": 1.0 + 0.01 * i, "ts": t0 + i}).encode())
                for i in range(5)
                for s in sensors
            ]
        )
        assert wait_until(lambda: _scored(reg_a) + _scored(reg_b) >= 5 * len(sensors))
        assert set(a.engine.windows.sensors).isdisjoint(b.engine.windows.sensors)

        # A clean stop deletes b's leases: a takes them without waiting for the TTL.
        stopped = time.monotonic()
        b.stop()
        assert wait_until(lambda: len(_link(a).owned) == P, 20)
        print(f"clean stop: all {P} on the other {time.monotonic() - stopped:.1f}s later")
        assert time.monotonic() - stopped < TTL  # released, not expired
        assert set(_owners(client).values()) == {"a"}
    finally:
        b.stop()
        a.stop()


def test_a_daemon_that_loses_nats_stops_before_its_leases_can_be_taken(
    nats_server: NatsServer, client: NatsClient
) -> None:
    """Cut one daemon off NATS: it stops reading its partitions (it cannot renew) before the
    TTL ends, and only then does the other take them; back on NATS, it gets its share again."""
    proxy = CutProxy(nats_server.port)
    a = Daemon(_cfg(nats_server, "a"), registry=CollectorRegistry())
    b = Daemon(_cfg(proxy, "b"), registry=CollectorRegistry())
    a.start()
    b.start()
    try:
        assert a.wait_ready(20) and b.wait_ready(20)
        assert wait_until(lambda: len(_link(a).owned) == len(_link(b).owned) == P // 2, 30)
        b_parts = _link(b).owned
        cut = time.monotonic()
        proxy.cut()
        stopped: float | None = None
        taken: float | None = None
        while time.monotonic() - cut < TTL + 15 and taken is None:
            now = time.monotonic()
            if stopped is None and not _link(b).owned:
                stopped = now
            if set(b_parts) <= set(_link(a).owned):
                taken = now
            time.sleep(0.02)
        assert stopped is not None and taken is not None, (_link(a).owned, _link(b).owned)
        print(f"cut off: stopped after {stopped - cut:.1f}s, taken over after {taken - cut:.1f}s")
        assert stopped - cut < TTL  # it could not renew: it stopped within the TTL ...
        assert stopped < taken  # ... and before anyone could take its partitions
        # Back on NATS: it rejoins and gets its share again; one owner per partition.
        proxy.restore()
        assert wait_until(lambda: len(_link(a).owned) == len(_link(b).owned) == P // 2, 40), (
            _link(a).owned,
            _link(b).owned,
        )
        assert not set(_link(a).owned) & set(_link(b).owned)
    finally:
        b.stop()
        a.stop()
        proxy.close()
