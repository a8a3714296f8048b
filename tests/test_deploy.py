"""Everything under deploy/, checked with the real tools where they are installed.

- systemd: ``systemd-analyze verify`` (and ``security --offline``) on the unit;
- the example config: validates, holds the defaults, and names every option in the schema;
- containers: compose parses (and ``docker compose config`` validates it when a compose CLI is
  installed), every referenced file exists, ports and host names agree across the Dockerfile,
  compose, the config defaults, Prometheus and Grafana; the Mosquitto config starts a real
  Mosquitto;
- Prometheus: ``promtool check config``, ``check rules`` and ``test rules``;
- Grafana: every query uses documented metric names and parses as PromQL (through promtool).

The tests that need a tool skip, with the reason, when it is missing; CI installs them.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import types
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Union, get_args, get_origin
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

from streamwatch.config import DEFAULT_METRICS_PORT, Config, load

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "streamwatch.service"
EXAMPLE = DEPLOY / "streamwatch.toml"
DOCKER = DEPLOY / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
MOSQUITTO_CONF = DOCKER / "mosquitto.conf"
PROM = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboard.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"

UNIT_EXEC = "/opt/streamwatch/bin/streamwatch"
UNIT_CONFIG = "/etc/streamwatch/streamwatch.toml"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (CI installs it; see docs/deploy.md)")
    return path


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------------------------
# Shared helpers (also used by tests/integration/test_prometheus_dashboard.py)
# --------------------------------------------------------------------------------------------


def documented_metrics() -> dict[str, str]:
    """Metric name -> type, from the table in docs/metrics.md."""
    out = {}
    for m in re.finditer(
        r"^\|\s*`(streamwatch_\w+)`\s*\|\s*([a-z]+)", METRICS_DOC.read_text(), re.M
    ):
        out[m.group(1)] = m.group(2)
    return out


def allowed_series_names() -> set[str]:
    """Names a query may use: documented metrics, plus the series of documented histograms."""
    names = set()
    for name, kind in documented_metrics().items():
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def metric_names_in(expr: str) -> set[str]:
    """Every ``streamwatch_*`` identifier in a PromQL expression."""
    return set(re.findall(r"\bstreamwatch_\w+", expr))


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def load_dashboard() -> dict[str, Any]:
    """The provisioned dashboard JSON."""
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_targets() -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every query target of every panel."""
    return [
        (p.get("title", ""), t)
        for p in _panels(load_dashboard()["panels"])
        for t in p.get("targets", [])
    ]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title / refId, PromQL with template variables) for every panel query."""
    return [(f"{title} / {t['refId']}", t["expr"]) for title, t in dashboard_targets()]


def variable_queries() -> dict[str, str]:
    """Template variable name -> its ``label_values(...)`` query, for query variables."""
    out = {}
    for v in load_dashboard()["templating"]["list"]:
        if v.get("type") == "query":
            q = v["query"]
            out[v["name"]] = q["query"] if isinstance(q, dict) else q
    return out


def parse_label_values(query: str) -> tuple[str, str]:
    """``label_values(SELECTOR, label)`` -> (SELECTOR, label)."""
    m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", query)
    assert m, f"not a label_values(metric, label) query: {query}"
    return m.group(1), m.group(2)


def substitute(expr: str, variables: dict[str, str], rate_interval: str, range_: str) -> str:
    """Replace Grafana's template variables the way Grafana would before sending a query."""
    builtins = {
        "__rate_interval": rate_interval,
        "__interval": rate_interval,
        "__range": range_,
    }
    values = {**builtins, **variables}

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise KeyError(f"unknown template variable {name!r} in {expr}")
        return values[name]

    out = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", repl, expr)
    assert "$" not in out, out
    return out


def rule_expressions() -> list[tuple[str, str]]:
    """(alert name, expr) for every rule in rules.yml."""
    doc = yaml.safe_load((PROM / "rules.yml").read_text())
    return [
        (r.get("alert") or r.get("record"), r["expr"]) for g in doc["groups"] for r in g["rules"]
    ]


# --------------------------------------------------------------------------------------------
# systemd
# --------------------------------------------------------------------------------------------


def _unit_settings() -> list[tuple[str, str, str]]:
    """(section, key, value) for every active line of the unit, in order."""
    section = ""
    out = []
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def _unit(section: str) -> dict[str, list[str]]:
    d: dict[str, list[str]] = {}
    for s, k, v in _unit_settings():
        if s == section:
            d.setdefault(k, []).append(v)
    return d


def _verifiable_unit(tmp_path: Path) -> Path:
    """The unit, with ExecStart pointed at a binary that exists here.

    ``systemd-analyze verify`` fails when ExecStart's binary is missing, and this machine has no
    /opt/streamwatch. The copy runs this checkout's own ``streamwatch`` console script (or
    /bin/true), with the same arguments; nothing else changes.
    """
    script = Path(sys.executable).parent / "streamwatch"
    exe = str(script) if script.exists() else (shutil.which("true") or "/bin/true")
    text = UNIT.read_text()
    assert f"ExecStart={UNIT_EXEC} " in text
    copy = tmp_path / UNIT.name  # verify wants the real unit name
    copy.write_text(text.replace(f"ExecStart={UNIT_EXEC} ", f"ExecStart={exe} "))
    return copy


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = _need("systemd-analyze")
    unit = _verifiable_unit(tmp_path)
    res = _run([tool, "verify", str(unit)])
    # verify exits 0 on unknown keys and bad values, and only warns: treat any word about our
    # unit as a failure.
    complaints = [ln for ln in (res.stdout + res.stderr).splitlines() if "streamwatch" in ln]
    assert res.returncode == 0 and not complaints, res.stdout + res.stderr


def test_systemd_analyze_verify_catches_a_bad_unit(tmp_path: Path) -> None:
    """The check above would see a typo: a guard against a verify that accepts anything."""
    tool = _need("systemd-analyze")
    unit = _verifiable_unit(tmp_path)
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notfiy"))
    res = _run([tool, "verify", str(unit)])
    assert res.returncode != 0 or "streamwatch" in res.stdout + res.stderr


def test_unit_security_exposure_is_low(tmp_path: Path) -> None:
    tool = _need("systemd-analyze")
    if "--offline" not in _run([tool, "--help"]).stdout:
        pytest.skip("this systemd-analyze has no `security --offline` (systemd < 250)")
    unit = _verifiable_unit(tmp_path)
    # Exposure is 0.0 (locked down) .. 10.0 (exposed); --threshold takes tenths of that.
    res = _run([tool, "security", "--offline=yes", "--threshold=25", "--no-pager", str(unit)])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr


def test_unit_settings() -> None:
    unit, service, install = _unit("Unit"), _unit("Service"), _unit("Install")
    single = {k: v[-1] for k, v in service.items()}
    assert single["Type"] == "notify"
    assert single["NotifyAccess"] == "main"
    assert single["WatchdogSec"].rstrip("s") == "30"
    assert single["Restart"] == "on-failure"
    assert "RestartSec" in single
    assert single.get("DynamicUser") == "yes" or "User" in single
    assert single["StateDirectory"] == "streamwatch"
    assert single["ConfigurationDirectory"] == "streamwatch"
    assert single["EnvironmentFile"] == "-/etc/streamwatch/env"
    assert shlex.split(single["ExecStart"]) == [UNIT_EXEC, "run", "--config", UNIT_CONFIG]
    assert single["ExecReload"] == "/bin/kill -HUP $MAINPID"
    hardening = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }
    for key, value in hardening.items():
        assert single.get(key) == value, f"{key}={single.get(key)!r}, want {value!r}"
    # TensorFlow's oneDNN JIT needs W+X memory: the setting must be absent, and say why.
    assert "MemoryDenyWriteExecute" not in single
    lines = UNIT.read_text().splitlines()
    why = [
        " ".join(lines[i : i + 2])
        for i, ln in enumerate(lines)
        if ln.startswith("#") and "MemoryDenyWriteExecute" in ln
    ]
    assert any("oneDNN" in w for w in why), "say in a comment why MemoryDenyWriteExecute is off"
    assert "network-online.target" in unit["After"][0]
    assert install["WantedBy"] == ["multi-user.target"]


# --------------------------------------------------------------------------------------------
# The example config
# --------------------------------------------------------------------------------------------


def _models_of(annotation: Any) -> list[type[BaseModel]]:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _models_of(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [m for a in get_args(annotation) for m in _models_of(a)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def schema_options(
    model: type[BaseModel] = Config, section: str = ""
) -> dict[str, dict[str, list[FieldInfo]]]:
    """section -> option -> its field(s), walking nested models and discriminated unions.

    An option shared by several union members (``detector.seed``) lists each one's field.
    """
    out: dict[str, dict[str, list[FieldInfo]]] = {}
    for name, field in model.model_fields.items():
        subs = _models_of(field.annotation)
        if subs:
            child = f"{section}.{name}" if section else name
            for sub in subs:
                for sec, opts in schema_options(sub, child).items():
                    for opt, fields in opts.items():
                        out.setdefault(sec, {}).setdefault(opt, []).extend(fields)
        else:
            out.setdefault(section, {}).setdefault(name, []).append(field)
    return out


_HEADER = re.compile(r"^\[([A-Za-z0-9_.]+)\]\s*(#.*)?$")
_OPTION = re.compile(r"^(#\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(\S.*)$")


def example_mentions() -> list[tuple[str, str, bool, Any]]:
    """(section, option, commented_out, value) for every option line of the example."""
    section = ""
    out = []
    for raw in EXAMPLE.read_text().splitlines():
        line = raw.strip()
        if m := _HEADER.match(line):
            section = m.group(1)
        elif m := _OPTION.match(line):
            commented, key, value = bool(m.group(1)), m.group(2), m.group(3)
            parsed = tomllib.loads(f"{key} = {value}")[key]
            out.append((section, key, commented, parsed))
    return out


def test_example_config_validates_and_holds_the_defaults() -> None:
    cfg = load(EXAMPLE)
    assert cfg == Config(), "the example's active values must be the defaults"
    assert cfg.metrics.port == DEFAULT_METRICS_PORT


def test_example_config_mentions_every_option() -> None:
    schema = schema_options()
    mentioned: dict[str, set[str]] = {}
    for section, key, _, _ in example_mentions():
        mentioned.setdefault(section, set()).add(key)
    missing = [
        f"{sec}.{opt}".lstrip(".")
        for sec, opts in schema.items()
        for opt in opts
        if opt not in mentioned.get(sec, set())
    ]
    stale = [
        f"{sec}.{opt}".lstrip(".")
        for sec, opts in mentioned.items()
        for opt in opts
        if opt not in schema.get(sec, {})
    ]
    assert not missing, f"options missing from deploy/streamwatch.toml: {missing}"
    assert not stale, f"options in deploy/streamwatch.toml that the schema lacks: {stale}"


def test_example_config_commented_values_are_defaults_or_valid_examples() -> None:
    """A commented-out option shows its default; one without a default shows a valid value."""
    schema = schema_options()
    for section, key, commented, value in example_mentions():
        if not commented:
            continue
        for field in schema[section][key]:
            assert field.annotation is not None
            typed = TypeAdapter(field.annotation).validate_python(value)
            if field.default is not None:
                assert typed == field.default, f"{section}.{key}: {value!r} != {field.default!r}"


def test_example_config_passes_check_config_cli() -> None:
    from streamwatch.commands import main

    assert main(["check-config", str(EXAMPLE)]) == 0


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def _binds(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> local path for the service's bind mounts (named volumes skipped)."""
    out = {}
    for v in service.get("volumes", []):
        spec = v if isinstance(v, str) else f"{v['source']}:{v['target']}"
        source, target = spec.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (COMPOSE.parent / source).resolve()
    return out


def _container_port(service: dict[str, Any], port: int) -> bool:
    """Whether the service publishes container port ``port``."""
    return any(str(p).split(":")[-1].split("/")[0] == str(port) for p in service.get("ports", []))


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for every Dockerfile instruction, continuations joined."""
    out = []
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _mosquitto_conf() -> dict[str, list[str]]:
    d: dict[str, list[str]] = {}
    for line in MOSQUITTO_CONF.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            d.setdefault(key, []).append(value.strip())
    return d


def test_compose_services_and_local_paths_exist() -> None:
    doc = _compose()
    services = doc["services"]
    assert {"mosquitto", "streamwatch", "simulator", "prometheus", "grafana"} <= set(services)
    named = set(doc.get("volumes") or {})
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            source = (v if isinstance(v, str) else v["source"]).split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in named, f"{name}: volume {source} is not declared"
        if "build" in svc:
            ctx = COMPOSE.parent / svc["build"]["context"]
            assert ctx.is_dir(), f"{name}: build context {ctx}"
            assert (ctx / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_compose_validates_with_a_compose_cli() -> None:
    if shutil.which("docker") and _run(["docker", "compose", "version"]).returncode == 0:
        cmd = ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"]
    elif shutil.which("docker-compose"):
        cmd = ["docker-compose", "-f", str(COMPOSE), "config", "--quiet"]
    else:
        pytest.skip("no compose CLI (`docker compose` plugin or docker-compose) is installed")
    res = _run(cmd, cwd=COMPOSE.parent)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_copies_existing_files_and_runs_as_non_root() -> None:
    instr = _dockerfile()
    froms = [a for i, a in instr if i == "FROM"]
    assert froms and all("-slim" in f for f in froms), froms
    for i, args in instr:
        if i == "COPY" and "--from=" not in args:
            *sources, _dest = shlex.split(args)
            for s in sources:
                if any(c in s for c in "*?["):
                    continue  # an optional file: BuildKit accepts a wildcard matching nothing
                assert (ROOT / s).exists(), f"Dockerfile COPY source {s} is missing"
    users = [a for i, a in instr if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    entry = json.loads(next(a for i, a in instr if i == "ENTRYPOINT"))
    assert entry == ["streamwatch", "run"]
    # The build context is the repository root; its ignore file must let the sources through.
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    for i, args in instr:
        if i == "COPY" and "--from=" not in args:
            for s in shlex.split(args)[:-1]:
                s = re.sub(r"\[(.)\]", r"\1", s)  # README.m[d] -> README.md
                assert f"!{s.rstrip('/')}" in [x.rstrip("/") for x in ignore], s


def test_ports_agree_across_dockerfile_compose_config_and_prometheus() -> None:
    port = DEFAULT_METRICS_PORT
    instr = _dockerfile()
    assert [a for i, a in instr if i == "EXPOSE"] == [str(port)]
    health = next(a for i, a in instr if i == "HEALTHCHECK")
    url = re.search(r"http://[^'\" ]+", health)
    assert url is not None
    assert urlsplit(url.group(0)).port == port
    assert urlsplit(url.group(0)).path == "/healthz"
    assert "curl" not in health and "python" in health

    services = _compose()["services"]
    sw = services["streamwatch"]
    assert _container_port(sw, port)

    # The config the container really runs with: its --config file (mapped back to this
    # checkout through the bind mounts) plus the command-line overrides.
    from streamwatch.commands import build_parser
    from streamwatch.commands.common import config_from_args

    args = build_parser().parse_args(["run", *sw["command"]])
    binds = _binds(sw)
    args.config = binds[str(args.config)]
    assert args.config == EXAMPLE
    cfg = config_from_args(args)
    assert cfg.metrics.port == port and cfg.metrics.host == "0.0.0.0"

    # Prometheus scrapes that service on that port.
    prom = yaml.safe_load((PROM / "prometheus.yml").read_text())
    targets = [
        t
        for job in prom["scrape_configs"]
        if job["job_name"] == "streamwatch"
        for sc in job["static_configs"]
        for t in sc["targets"]
    ]
    assert targets == [f"streamwatch:{port}"]

    # The daemon and the simulator reach Mosquitto by service name on its listener port.
    listener = int(_mosquitto_conf()["listener"][0].split()[0])
    assert _container_port(services["mosquitto"], listener)
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("mosquitto", listener)
    sim = services["simulator"]
    assert sim["entrypoint"] == ["streamwatch", "simulate"]
    sim_args = build_parser().parse_args(["simulate", *sim["command"]])
    broker = urlsplit(sim_args.broker)
    assert (broker.hostname, broker.port) == ("mosquitto", listener)
    assert sim.get("healthcheck", {}).get("disable") is True  # it serves no /healthz


def test_compose_mounts_match_what_each_service_reads() -> None:
    services = _compose()["services"]

    # Mosquitto reads its config from the image's default path; persistence goes to a volume.
    mq = services["mosquitto"]
    assert _binds(mq)["/mosquitto/config/mosquitto.conf"] == MOSQUITTO_CONF
    conf = _mosquitto_conf()
    location = conf["persistence_location"][0].rstrip("/")
    assert any(str(v).split(":")[1].rstrip("/") == location for v in mq["volumes"])

    # Prometheus: its config and the rule files it names, side by side.
    prom = services["prometheus"]
    binds = _binds(prom)
    cfg_flag = next(a for a in prom["command"] if a.startswith("--config.file="))
    cfg_path = PurePosixPath(cfg_flag.split("=", 1)[1])
    assert binds[str(cfg_path)] == PROM / "prometheus.yml"
    for rule_file in yaml.safe_load((PROM / "prometheus.yml").read_text())["rule_files"]:
        assert binds[str(cfg_path.parent / rule_file)] == PROM / rule_file
    assert _container_port(prom, 9090)

    # Grafana: provisioning, the dashboard where the provider looks, the datasource URL.
    graf = services["grafana"]
    binds = _binds(graf)
    assert binds["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    dash_target = next(t for t, src in binds.items() if src == DASHBOARD)
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "streamwatch.yaml").read_text()
    )["providers"]
    assert [p["options"]["path"] for p in providers] == [str(PurePosixPath(dash_target).parent)]
    assert graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dash_target
    sources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )["datasources"]
    url = urlsplit(sources[0]["url"])
    assert (url.hostname, url.port) == ("prometheus", 9090)
    assert sources[0]["type"] == "prometheus"


def test_mosquitto_conf_settings() -> None:
    conf = _mosquitto_conf()
    assert conf["persistence"] == ["true"]
    assert int(conf["max_queued_messages"][0]) > 1000  # the default drops QoS 1 beyond 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mosquitto_conf_starts_a_real_mosquitto() -> None:
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if binary is None:
        pytest.skip("mosquitto is not installed")
    port = _free_port()
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "data"
        data.mkdir()
        Path(d).chmod(0o777)  # mosquitto started as root drops to its own user
        data.chmod(0o777)
        text = MOSQUITTO_CONF.read_text()
        text = re.sub(r"^listener .*$", f"listener {port} 127.0.0.1", text, flags=re.M)
        text = re.sub(
            r"^persistence_location .*$", f"persistence_location {data}/", text, flags=re.M
        )
        conf = Path(d) / "mosquitto.conf"
        conf.write_text(text)
        conf.chmod(0o644)
        proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                assert proc.poll() is None, proc.communicate()[0]
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "mosquitto did not listen"
                    time.sleep(0.05)
        finally:
            proc.terminate()
            out = proc.communicate(timeout=10)[0]
        assert "Error" not in out, out
        assert "Permission denied" not in out, out


# --------------------------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    promtool = _need("promtool")
    res = _run([promtool, "check", "config", "prometheus.yml"], cwd=PROM)
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_check_rules() -> None:
    promtool = _need("promtool")
    res = _run([promtool, "check", "rules", "rules.yml"], cwd=PROM)
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_test_rules() -> None:
    promtool = _need("promtool")
    res = _run([promtool, "test", "rules", "rules_test.yml"], cwd=PROM)
    assert res.returncode == 0, res.stdout + res.stderr


def test_rules_cover_the_required_alerts_with_documented_metrics() -> None:
    rules = dict(rule_expressions())
    required = {
        "StreamwatchDown": "up",
        "StreamwatchMQTTDisconnected": "streamwatch_mqtt_connected",
        "StreamwatchSensorSilent": "streamwatch_last_reading_timestamp_seconds",
        "StreamwatchAlertStorm": "streamwatch_alerts_raised_total",
        "StreamwatchRejectedRatioHigh": "streamwatch_rejected_total",
    }
    for alert, metric in required.items():
        assert alert in rules and re.search(rf"\b{metric}\b", rules[alert]), alert
    allowed = allowed_series_names()
    for name, expr in rules.items():
        assert metric_names_in(expr) <= allowed, (name, metric_names_in(expr) - allowed)
    # Every alert is exercised by rules_test.yml.
    tested = set(re.findall(r"alertname:\s*(\w+)", (PROM / "rules_test.yml").read_text()))
    assert set(rules) <= tested, set(rules) - tested


# --------------------------------------------------------------------------------------------
# Grafana
# --------------------------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    dash = load_dashboard()
    assert dash["uid"] == "streamwatch"
    names = [v["name"] for v in dash["templating"]["list"]]
    assert "sensor" in names
    selector, label = parse_label_values(variable_queries()["sensor"])
    assert label == "sensor" and selector.startswith("streamwatch_score")
    ids = [p["id"] for p in _panels(dash["panels"])]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for title, t in dashboard_targets():
        assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert t.get("expr"), title
    titles = " | ".join(p.get("title", "") for p in _panels(dash["panels"])).lower()
    for words in (
        "score vs threshold",
        "alert rate",
        "active alerts",
        "readings/s",
        "rejected/s by reason",
        "latency p50 / p99",
        "mqtt connection",
        "sensors tracked, warming and evicted",
        "model",
    ):
        assert words in titles, words


def test_dashboard_queries_use_documented_metrics() -> None:
    allowed = allowed_series_names()
    used: set[str] = set()
    for where, expr in dashboard_queries() + list(variable_queries().items()):
        names = metric_names_in(expr)
        assert names, f"{where}: no streamwatch metric in {expr}"
        assert names <= allowed, f"{where}: undocumented {names - allowed}"
        used |= names
    latency = [e for w, e in dashboard_queries() if "latency" in w.lower()]
    assert any("histogram_quantile(0.5," in e for e in latency)
    assert any("histogram_quantile(0.99," in e for e in latency)
    # Between them, the dashboard and the alert rules show every documented metric.
    for _, expr in rule_expressions():
        used |= metric_names_in(expr)
    used_bases = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used} | used
    unused = set(documented_metrics()) - used_bases
    assert not unused, f"documented metrics neither charted nor alerted on: {sorted(unused)}"


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses each query (variables substituted) as a recording rule's expression."""
    promtool = _need("promtool")
    variables = {"datasource": "prometheus", "instance": ".+", "sensor": ".+"}
    exprs = [substitute(e, variables, "1m", "1h") for _, e in dashboard_queries()]
    exprs += [
        parse_label_values(substitute(q, variables, "1m", "1h"))[0]
        for q in variable_queries().values()
    ]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    res = _run([promtool, "check", "rules", str(path)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_grafana_provisioning_parses() -> None:
    for path in (GRAFANA / "provisioning").rglob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        assert doc["apiVersion"] == 1, path
