"""Every dashboard and alert-rule query, run by a real Prometheus against the real daemon.

1. A real Mosquitto (the ``mosquitto`` fixture) and ``streamwatch run`` against it.
2. Simulated data: a fast burst from ``streamwatch simulate`` (history, so sensors warm up and
   get scored), a sensor driven into an alert, a few malformed messages (rejections), and a
   real-time ``streamwatch simulate`` running throughout, so rates and latencies are live.
3. A real Prometheus scraping the daemon every second, with deploy/prometheus/rules.yml loaded.
4. Every expression in deploy/prometheus/rules.yml and every panel query in
   deploy/grafana/dashboard.json (template variables substituted, as Grafana would) goes
   through Prometheus's HTTP API: each must parse and evaluate (status "success"), each rule
   must evaluate healthily inside Prometheus, and each dashboard query must return data.

Skips only when the ``prometheus`` binary is missing (CI installs it with apt-get).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.helpers import Mosquitto, Publisher, free_port, http_get, http_ok, wait_until
from tests.test_deploy import (
    PROM,
    dashboard_targets,
    parse_label_values,
    rule_expressions,
    substitute,
    variable_queries,
)

pytestmark = pytest.mark.integration

SCRAPE_S = 1
RATE_INTERVAL = "10s"  # what Grafana's $__rate_interval would be at this scrape interval
RANGE = "2m"  # the dashboard's time range ($__range)
PROBE = "probe"  # a sensor this test drives into an alert


def _streamwatch(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamwatch", *args]


_get = partial(http_get, timeout=10.0)


def _stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class Prom:
    """A tiny client for Prometheus's HTTP API."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path: str, **params: str | float) -> dict[str, Any]:
        """GET /api/v1/<path>; the decoded JSON body (``status`` is "success" or "error")."""
        url = f"{self.base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        code, body = _get(url)
        try:
            return dict(json.loads(body))
        except json.JSONDecodeError:
            return {"status": "error", "error": f"HTTP {code}: {body[:500]}"}

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query at the current time."""
        return self.api("query", query=expr)

    def query_range(self, expr: str, seconds: float = 60.0) -> dict[str, Any]:
        """A range query over the last ``seconds``, one step per scrape (what a graph asks)."""
        end = time.time()
        return self.api("query_range", query=expr, start=end - seconds, end=end, step=SCRAPE_S)

    def scalar(self, expr: str) -> float:
        """The single value of an instant query, or NaN when it returns nothing."""
        res = self.query(expr)
        result = res.get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if res.get("status") == "success" and result else np.nan

    def label_values(self, label: str, selector: str) -> list[str]:
        """What Grafana's ``label_values(selector, label)`` asks Prometheus for."""
        res = self.api(f"label/{label}/values", **{"match[]": selector})
        assert res.get("status") == "success", res
        return list(res["data"])


@pytest.fixture
def prometheus_bin() -> str:
    """The prometheus server binary; skip (with the reason) when it is not installed."""
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("prometheus is not installed (CI: apt-get install prometheus)")
    return path


@pytest.fixture
def daemon(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``streamwatch run`` on the broker; yields (metrics port, log path) once ready."""
    port = free_port()
    cfg = tmp_path / "streamwatch.toml"
    cfg.write_text(
        f'[mqtt]\nclient_id = "sw-promtest-{mosquitto.port}"\n'
        '[detector]\ntype = "gaussian"\n[learning]\nwarmup = 100\n'
        '[metrics]\nhost = "127.0.0.1"\n'
    )
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            _streamwatch(
                "run",
                "--config",
                str(cfg),
                "--broker",
                mosquitto.url,
                "--metrics-port",
                str(port),
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _await_ready(proc, f"http://127.0.0.1:{port}/readyz", 90, log, "daemon")
        yield port, log
    finally:
        _stop(proc)


def _feed(broker: Mosquitto, tmp_path: Path) -> subprocess.Popen[bytes]:
    """Publish the test data; returns the real-time simulator, still running."""
    # History: 3 sensors x 900 s at 1 Hz, published as fast as the broker takes it.
    burst = subprocess.run(
        _streamwatch(
            "simulate",
            "--broker",
            broker.url,
            "--sensors",
            "3",
            "--duration",
            "900",
            "--rate",
            "1",
            "--seed",
            "3",
            "--batch",
            "50",
            "--warmup",
            "300",
            "--anomaly-rate",
            "20",
            "--size",
            "4",
            "--log-level",
            "WARNING",
        ),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert burst.returncode == 0, burst.stdout + burst.stderr

    # A sensor driven into an alert, and messages the daemon must reject.
    pub = Publisher(broker.port)
    rng = np.random.default_rng(11)
    t0 = time.time() - 300
    values = list(rng.normal(20.0, 0.5, 160))
    values[150:156] = [60.0] * 6  # 80 sigma
    for i, v in enumerate(values):
        pub.reading(PROBE, float(v), t0 + i)
    pub.send(f"sensors/{PROBE}", b"{not json")
    pub.send(f"sensors/{PROBE}", b'{"value": "abc"}')
    pub.close()

    # Live data for the rest of the test.
    log = (tmp_path / "simulate-live.log").open("w")
    return subprocess.Popen(
        _streamwatch(
            "simulate",
            "--broker",
            broker.url,
            "--sensors",
            "3",
            "--duration",
            "600",
            "--rate",
            "2",
            "--seed",
            "4",
            "--realtime",
            "--log-level",
            "WARNING",
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def prometheus(prometheus_bin: str, daemon: tuple[int, Path], tmp_path: Path) -> Iterator[Prom]:
    """A real Prometheus scraping the daemon every second, with the shipped rules loaded."""
    metrics_port, _ = daemon
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "global": {
                    "scrape_interval": f"{SCRAPE_S}s",
                    "evaluation_interval": f"{SCRAPE_S}s",
                },
                "rule_files": [str(PROM / "rules.yml")],
                "scrape_configs": [
                    {
                        # The job name the rules and the shipped scrape config use.
                        "job_name": "streamwatch",
                        "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                    }
                ],
            }
        )
    )
    log = tmp_path / "prometheus.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                prometheus_bin,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prom = Prom(port)
    try:
        _await_ready(proc, f"{prom.base}/-/ready", 60, log, "prometheus")
        yield prom
    finally:
        _stop(proc)


def _await_ready(
    proc: subprocess.Popen[bytes], url: str, timeout: float, log: Path, what: str
) -> None:
    """Wait until ``url`` answers 200; fail with the log's tail if ``proc`` dies or times out."""
    ready = wait_until(lambda: proc.poll() is not None or http_ok(url), timeout, every=0.2)
    assert ready and proc.poll() is None, f"{what} not ready:\n{_tail(log)}"


def _has_data(res: dict[str, Any]) -> bool:
    return res.get("status") == "success" and bool(res["data"]["result"])


def test_every_rule_and_dashboard_query_runs_on_real_data(
    mosquitto: Mosquitto, daemon: tuple[int, Path], prometheus: Prom, tmp_path: Path
) -> None:
    _, daemon_log = daemon
    live = _feed(mosquitto, tmp_path)
    try:
        _run_queries(prometheus, daemon_log)
    finally:
        _stop(live)


def _run_queries(prom: Prom, daemon_log: Path) -> None:
    # A few scrapes, with the daemon up, and the probe sensor scored.
    assert wait_until(
        lambda: (
            prom.scalar('count_over_time(up{job="streamwatch"}[5m])') >= 5
            and prom.scalar('min(up{job="streamwatch"})') == 1
            and prom.scalar(f'count(streamwatch_score{{sensor="{PROBE}"}})') == 1
        ),
        timeout=120,
        every=0.5,
    ), "no scrapes of a scored daemon:\n" + _tail(daemon_log)

    # --- alert rules -------------------------------------------------------------------------
    for name, expr in rule_expressions():
        res = prom.query(expr)
        assert res.get("status") == "success", f"rule {name}: {res.get('error')}\n{expr}"

    def rules_evaluated() -> list[dict[str, Any]] | None:
        res = prom.api("rules")
        rules = [r for g in res.get("data", {}).get("groups", []) for r in g["rules"]]
        if len(rules) == len(rule_expressions()) and all(
            not r["lastEvaluation"].startswith("0001") for r in rules
        ):
            return rules
        return None

    assert wait_until(lambda: rules_evaluated() is not None, timeout=30, every=0.5)
    for rule in rules_evaluated() or []:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"

    # --- template variables --------------------------------------------------------------------
    var_queries = variable_queries()
    instance_selector, instance_label = parse_label_values(var_queries["instance"])
    instances = prom.label_values(instance_label, instance_selector)
    assert instances, f"label_values for $instance is empty: {var_queries['instance']}"
    sensor_selector, sensor_label = parse_label_values(
        substitute(var_queries["sensor"], {"instance": ".+"}, RATE_INTERVAL, RANGE)
    )
    sensors = prom.label_values(sensor_label, sensor_selector)
    assert PROBE in sensors and len(sensors) >= 2, sensors

    # "All" for both variables, and one instance with the sensor that raised an alert.
    selections = [
        {"datasource": "prometheus", "instance": ".+", "sensor": ".+"},
        {"datasource": "prometheus", "instance": instances[0], "sensor": PROBE},
    ]

    # --- dashboard panels ----------------------------------------------------------------------
    def run_all() -> dict[str, dict[str, Any]]:
        out = {}
        for title, target in dashboard_targets():
            for sel in selections:
                expr = substitute(target["expr"], sel, RATE_INTERVAL, RANGE)
                key = f"{title} / {target['refId']} [{sel['sensor']}]: {expr}"
                if target.get("instant"):
                    out[key] = prom.query(expr)
                else:
                    out[key] = prom.query_range(expr)
        return out

    results = run_all()
    errors = {k: r.get("error") for k, r in results.items() if r.get("status") != "success"}
    assert not errors, "queries Prometheus refused:\n" + "\n".join(
        f"{k}\n  -> {e}" for k, e in errors.items()
    )
    # Rates need a few scrapes after the data arrived: give the empty ones time.
    empty: list[str] = []

    def all_have_data() -> bool:
        nonlocal empty
        empty = [k for k, r in run_all().items() if not _has_data(r)]
        return not empty

    assert wait_until(all_have_data, timeout=60, every=2.0), (
        "dashboard queries with no data:\n" + "\n".join(empty) + "\n" + _tail(daemon_log)
    )
