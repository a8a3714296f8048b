"""deploy/nats/: the NATS cluster config, the compose file, the daemons' configs and the
Mosquitto bridge agree with each other; ``nats-server -t`` accepts the config (and catches a
missing node name). Started for real in tests/integration/test_nats_deploy.py.

The tests that need a tool skip, with the reason, when it is missing; CI installs them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from streamwatch.commands import build_parser
from streamwatch.config import Config, load
from tests.natsutil import NATS_SERVER

ROOT = Path(__file__).resolve().parents[1]
NATS = ROOT / "deploy" / "nats"
COMPOSE = NATS / "compose.yaml"
NATS_CONF = NATS / "nats.conf"
BRIDGE = NATS / "mosquitto-bridge.conf"
DAEMONS = {
    "streamwatch-a": NATS / "streamwatch-a.toml",
    "streamwatch-b": NATS / "streamwatch-b.toml",
}
NODES = ["nats1", "nats2", "nats3"]


def compose() -> dict[str, Any]:
    """The compose file, YAML anchors and merge keys resolved."""
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def conf_value(key: str, text: str | None = None) -> str:
    """The value of a top-level ``key: value`` or ``key { listen: value }`` in nats.conf."""
    text = NATS_CONF.read_text() if text is None else text
    m = re.search(rf"^{key}:\s*(\S+)\s*$", text, re.M) or re.search(
        rf"^{key}\s*\{{[^}}]*?listen:\s*(\S+)", text, re.M | re.S
    )
    assert m, f"no {key} in nats.conf"
    return m.group(1)


def mapping_partitions() -> set[int]:
    """Every n of ``{{partition(n, ...)}}`` in nats.conf."""
    return {int(n) for n in re.findall(r"partition\((\d+)", NATS_CONF.read_text())}


def daemon_configs() -> dict[str, Config]:
    """The two daemons' configs, validated."""
    return {name: load(path) for name, path in DAEMONS.items()}


def _port(hostport: str) -> int:
    return int(hostport.rsplit(":", 1)[1])


def _source(volume: str) -> str:
    return volume.split(":")[0]


def test_compose_services_files_and_volumes() -> None:
    doc = compose()
    services = doc["services"]
    assert set(NODES) | set(DAEMONS) | {"stream-init", "simulator", "mosquitto"} <= set(services)
    named = set(doc["volumes"])
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            src = _source(v)
            if src.startswith("."):
                assert (COMPOSE.parent / src).exists(), f"{name}: {src} does not exist"
            else:
                assert src in named, f"{name}: volume {src} is not declared"
        if "build" in svc:
            ctx = COMPOSE.parent / svc["build"]["context"]
            assert (ctx / svc["build"]["dockerfile"]).is_file()
            assert "nats" in svc["build"]["args"]["EXTRAS"].split(",")
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    # Each node: the shared config, its own name and its own store.
    stores = set()
    for node in NODES:
        svc = services[node]
        assert svc["environment"]["NATS_SERVER_NAME"] == node
        assert svc["command"] == ["-c", "/etc/nats/nats.conf"]
        binds = {v.split(":")[1]: _source(v) for v in svc["volumes"]}
        assert (COMPOSE.parent / binds["/etc/nats/nats.conf"]).resolve() == NATS_CONF
        store = next(iter(re.findall(r'store_dir:\s*"([^"]+)"', NATS_CONF.read_text())))
        stores.add(binds[store])
    assert len(stores) == 3


def test_compose_validates_with_a_compose_cli() -> None:
    if shutil.which("docker") and _run(["docker", "compose", "version"]).returncode == 0:
        cmd = ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"]
    elif shutil.which("docker-compose"):
        cmd = ["docker-compose", "-f", str(COMPOSE), "config", "--quiet"]
    else:
        pytest.skip("no compose CLI (`docker compose` plugin or docker-compose) is installed")
    res = _run(cmd)
    assert res.returncode == 0, res.stdout + res.stderr


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=NATS, capture_output=True, text=True, timeout=60, env=env or dict(os.environ)
    )


def test_daemons_split_every_partition_between_them() -> None:
    cfgs = daemon_configs()
    (p,) = mapping_partitions()  # one partition count across the mapping lines
    owned: list[int] = []
    for cfg in cfgs.values():
        assert cfg.ingest.transport == "jetstream"
        assert cfg.nats.partition_count == p
        owned += cfg.nats.owned()
    assert sorted(owned) == list(range(p))  # each partition, exactly one owner
    services = compose()["services"]
    client_port = _port(conf_value("listen"))
    for name, cfg in cfgs.items():
        urls = [urlsplit(u.strip()) for u in cfg.nats.url.split(",")]
        assert [(u.hostname, u.port) for u in urls] == [(n, client_port) for n in NODES]
        # The container runs this file: the service's --config is where it is mounted.
        args = build_parser().parse_args(["run", *services[name]["command"]])
        binds = {v.split(":")[1]: _source(v) for v in services[name]["volumes"]}
        assert (NATS / binds[str(args.config)]).resolve() == DAEMONS[name]
        assert cfg.metrics.host == "0.0.0.0"
        assert any(str(pt).endswith(f":{cfg.metrics.port}") for pt in services[name]["ports"])
        assert cfg.nats.subject_prefix == "streamwatch.in"
    # The mapping writes into the daemons' subject prefix; stream-init creates their stream.
    assert all(
        t.startswith(f"streamwatch.in.{{{{partition({p}")
        for t in re.findall(r'"sensors[.*]*":\s*"([^"]+)"', NATS_CONF.read_text())
    )
    init = services["stream-init"]["command"]
    assert init[init.index("--replicas") + 1] == "3"


def test_mqtt_routes_point_at_the_nats_mqtt_listener() -> None:
    mqtt_port = _port(conf_value("mqtt"))
    services = compose()["services"]
    sim = services["simulator"]
    args = build_parser().parse_args(["simulate", *sim["command"]])
    broker = urlsplit(args.broker)
    assert broker.hostname in NODES and broker.port == mqtt_port
    assert args.protocol == "3.1.1"  # nats-server's MQTT listener speaks 3.1.1 only
    bridge = BRIDGE.read_text()
    addresses = re.search(r"^address (.+)$", bridge, re.M)
    assert addresses
    assert addresses.group(1).split() == [f"{n}:{mqtt_port}" for n in NODES]
    assert re.search(r"^bridge_protocol_version mqttv311$", bridge, re.M)
    assert re.search(r"^try_private false$", bridge, re.M)
    assert re.search(r"^topic sensors/# out 1$", bridge, re.M)
    mq = services["mosquitto"]
    binds = {v.split(":")[1]: _source(v) for v in mq["volumes"]}
    assert (NATS / binds["/mosquitto/config/mosquitto.conf"]).resolve() == BRIDGE


def test_nats_server_checks_the_config() -> None:
    if NATS_SERVER is None:
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    env = dict(os.environ, NATS_SERVER_NAME="nats1")
    res = _run([NATS_SERVER, "-t", "-c", str(NATS_CONF)], env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    # The check is real: without a node name the variable reference fails.
    env.pop("NATS_SERVER_NAME")
    res = _run([NATS_SERVER, "-t", "-c", str(NATS_CONF)], env=env)
    assert res.returncode != 0 and "NATS_SERVER_NAME" in res.stdout + res.stderr
