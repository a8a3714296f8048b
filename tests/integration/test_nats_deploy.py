"""deploy/nats/ run for real on loopback, without containers: three nats-servers started from
deploy/nats/nats.conf (only addresses, ports and the store folder rewritten), the stream made by
deploy/nats/create_stream.py with three replicas, the two daemons of compose.yaml from their
config files (server URLs and metrics port rewritten), the simulator through NATS's MQTT
listener as compose runs it, and a real Mosquitto from deploy/nats/mosquitto-bridge.conf
forwarding a ``mosquitto_pub`` sensor into NATS. Every reading is scored, each sensor by the
daemon that owns its partition."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamwatch.commands import build_parser
from streamwatch.config import from_mapping
from streamwatch.daemon import Daemon
from streamwatch.embedded_broker import free_port, wait_port
from tests.helpers import wait_until
from tests.natsutil import NATS_SERVER, NatsClient, by_label
from tests.test_deploy_nats import BRIDGE, DAEMONS, NATS, NATS_CONF, NODES, compose

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
MOSQUITTO_PUB = shutil.which("mosquitto_pub")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        NATS_SERVER is None or MOSQUITTO is None or MOSQUITTO_PUB is None,
        reason="needs nats-server, mosquitto and mosquitto_pub (apt-get install nats-server "
        "mosquitto mosquitto-clients)",
    ),
]


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"{old!r} is not in the deployed config any more"
    return text.replace(old, new)


class Node:
    """One nats-server started from deploy/nats/nats.conf on loopback ports."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir, self.name = workdir, name
        self.client, self.http, self.mqtt, self.route = (free_port() for _ in range(4))
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, nodes: list[Node]) -> None:
        """This node's copy of the deployed config."""
        text = NATS_CONF.read_text()
        text = _replace(text, "listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{self.client}")
        text = _replace(text, "http: 0.0.0.0:8222", f"http: 127.0.0.1:{self.http}")
        text = _replace(text, "listen: 0.0.0.0:1883", f"listen: 127.0.0.1:{self.mqtt}")
        text = _replace(text, "listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{self.route}")
        text = _replace(text, 'store_dir: "/data"', f'store_dir: "{self.workdir / "js"}"')
        for other in nodes:
            text = _replace(
                text, f"nats-route://{other.name}:6222", f"nats-route://127.0.0.1:{other.route}"
            )
        (self.workdir / "nats.conf").write_text(text)

    def start(self) -> None:
        """Start it (its name from the environment, as compose gives it)."""
        assert NATS_SERVER is not None
        with open(self.workdir / "nats.log", "wb") as log:
            self.proc = subprocess.Popen(
                [NATS_SERVER, "-c", str(self.workdir / "nats.conf")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, NATS_SERVER_NAME=self.name),
            )
        wait_port(self.client)
        wait_port(self.mqtt)

    def stop(self) -> None:
        """Stop it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    @property
    def url(self) -> str:
        """Its client URL."""
        return f"nats://127.0.0.1:{self.client}"


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    """The three nodes, started."""
    d = Path(tempfile.mkdtemp(prefix="sw-nats-deploy-"))
    out = []
    for name in NODES:
        (d / name).mkdir()
        out.append(Node(d / name, name))
    for n in out:
        n.write(out)
    for n in out:
        n.start()
    yield out
    for n in out:
        n.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def bridge(nodes: list[Node]) -> Iterator[int]:
    """A real Mosquitto from mosquitto-bridge.conf, bridged to the nodes' MQTT listeners."""
    assert MOSQUITTO is not None
    d = Path(tempfile.mkdtemp(prefix="sw-bridge-"))
    (d / "data").mkdir()
    os.chmod(d, 0o777)  # Mosquitto started as root drops to its own user
    os.chmod(d / "data", 0o777)
    port = free_port()
    text = BRIDGE.read_text()
    text = _replace(text, "listener 1883", f"listener {port} 127.0.0.1")
    text = _replace(
        text, "persistence_location /mosquitto/data/", f"persistence_location {d}/data/"
    )
    text = _replace(
        text,
        "address " + " ".join(f"{n.name}:1883" for n in nodes),
        "address " + " ".join(f"127.0.0.1:{n.mqtt}" for n in nodes),
    )
    conf = d / "mosquitto.conf"
    conf.write_text(text)
    os.chmod(conf, 0o644)
    with open(d / "mosquitto.log", "wb") as log:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


def test_the_deployed_cluster_daemons_simulator_and_bridge(
    nodes: list[Node], bridge: int, tmp_path: Path
) -> None:
    services = compose()["services"]
    urls = ",".join(n.url for n in nodes)
    init = services["stream-init"]["command"]
    init[init.index("--servers") + 1] = urls
    res = subprocess.run(
        [sys.executable, str(NATS / "create_stream.py"), *init],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 replicas" in res.stdout

    daemons, regs = [], []
    for name, path in DAEMONS.items():
        data = tomllib.loads(path.read_text())
        data["nats"]["url"] = urls
        data["metrics"]["port"] = 0
        data["state_dir"] = str(tmp_path / name)
        regs.append(CollectorRegistry())
        daemons.append(Daemon(from_mapping(data), registry=regs[-1]))
    for d in daemons:
        d.start()
    client = NatsClient(nodes[0].url)
    try:
        for d in daemons:
            assert d.wait_ready(40), d.ready()
        stream = client.stream("SENSORS")
        assert stream.config.num_replicas == 3

        # The simulator exactly as compose runs it, but for 4 s of data and to node 2's listener.
        argv = list(services["simulator"]["command"])
        args = build_parser().parse_args(["simulate", *argv])
        argv[argv.index("--broker") + 1] = f"mqtt://127.0.0.1:{nodes[1].mqtt}"
        argv[argv.index("--duration") + 1] = "4"
        argv.remove("--realtime")
        sim = subprocess.run(
            [sys.executable, "-m", "streamwatch", "simulate", *argv, "--qos", "1"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert sim.returncode == 0, sim.stderr[-2000:]
        simulated = int(args.sensors * args.rate * 4)

        # A sensor publishing to Mosquitto: the bridge forwards it into NATS.
        assert MOSQUITTO_PUB is not None
        t0 = time.time() - 100
        lines = "".join(f'{{"value": {20 + i % 3}, "ts": {t0 + i}}}\n' for i in range(10))
        pub = subprocess.run(
            [MOSQUITTO_PUB, "-p", str(bridge), "-q", "1", "-t", "sensors/bridged1", "-l"],
            input=lines,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert pub.returncode == 0, pub.stderr

        total = simulated + 10
        assert wait_until(lambda: client.stream("SENSORS").state.messages == total, timeout=30), (
            client.stream("SENSORS").state.messages
        )

        def merged() -> dict[str, float]:
            out: dict[str, float] = {}
            for r in regs:
                for s, v in by_label(r, "streamwatch_readings_total", "sensor").items():
                    out[s] = out.get(s, 0.0) + v
            return out

        want = {f"s{i:03d}": args.rate * 4 for i in range(args.sensors)} | {"bridged1": 10.0}

        def late() -> float:
            return sum(
                by_label(r, "streamwatch_rejected_total", "reason").get("out_of_order", 0.0)
                for r in regs
            )

        # Every reading scored, or counted out of order: under load a QoS 1 resend (the
        # bridge's, or the simulator's) can land a reading behind a newer one of its sensor.
        # Generous: on a loaded 2-core machine three nodes and two daemons share the CPU.
        assert wait_until(lambda: sum(merged().values()) + late() == total, timeout=90), (
            {k: v for k, v in merged().items() if v != want.get(k)},
            set(want) - set(merged()),
            [by_label(r, "streamwatch_rejected_total", "reason") for r in regs],
        )
        got = merged()
        assert set(got) == set(want) and all(got[k] >= v - 2 for k, v in want.items()), got
        on = [set(d.engine.windows.sensors) for d in daemons]
        assert on[0] and on[1] and not on[0] & on[1]
    finally:
        for d in daemons:
            d.stop()
        client.close()
