"""Trained model bundles in the live daemon: LSTM-VAE alerts, and SIGHUP reload."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamwatch.config import from_mapping
from streamwatch.daemon import Daemon
from streamwatch.training import train
from tests.helpers import (
    Collector,
    Mosquitto,
    Publisher,
    free_port,
    http_get,
    http_ok,
    wait_until,
)

pytestmark = pytest.mark.integration


def sine(n: int, seed: int, phase: float = 0.0) -> np.ndarray:
    """The documents' stream: sin(2πt) + sin(4πt) + N(0, 0.1²), 20 samples per period."""
    t = np.arange(n) / 20.0 + phase
    rng = np.random.default_rng(seed)
    return np.sin(2 * np.pi * t) + np.sin(4 * np.pi * t) + rng.normal(0, 0.1, n)


@pytest.fixture(scope="module")
def vae_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small LSTM-VAE trained on two sensors' normal streams."""
    cfg = from_mapping(
        {
            "detector": {
                "type": "lstm-vae",
                "hidden": 16,
                "latent": 4,
                "epochs": 8,
                "batch_size": 128,
                "patience": 3,
            },
            "windows": {"length": 20},
        }
    )
    data = {
        s: (np.arange(3000.0), sine(3000, seed=i, phase=0.3 * i), None)
        for i, s in enumerate(("m1", "m2"))
    }
    out = tmp_path_factory.mktemp("vae") / "model"
    train(cfg, data, out)
    return out


def test_lstm_vae_bundle_raises_a_level_shift_with_top_steps(
    mosquitto: Mosquitto, vae_bundle: Path
) -> None:
    cfg = from_mapping(
        {
            "mqtt": {"broker": mosquitto.url, "client_id": "vae-test"},
            "detector": {"type": "lstm-vae"},
            "model_dir": str(vae_bundle),
            "alerts": {"raise_k": 2, "raise_n": 3, "clear_m": 30},
            "metrics": {"host": "127.0.0.1", "port": 0},
        }
    )
    registry = CollectorRegistry()
    daemon = Daemon(cfg, registry=registry)
    alerts = Collector(mosquitto.port, ["streamwatch/alerts/#"])
    daemon.start()
    try:
        assert daemon.wait_ready(30)
        pub = Publisher(mosquitto.port)
        values = sine(600, seed=11)
        values[400:440] += 1.0  # the documents' level shift
        t0 = time.time() - 1000
        for i, v in enumerate(values):
            pub.reading("m1", float(v), t0 + i * 0.05)
        pub.close()
        assert alerts.wait_for(lambda c: len(c.json_on("streamwatch/alerts/m1")) >= 1, 60)
        raised = alerts.json_on("streamwatch/alerts/m1")[0]
        assert raised["state"] == "raised" and raised["detector"] == "lstm-vae"
        assert t0 + 400 * 0.05 <= raised["ts"] <= t0 + 440 * 0.05
        assert raised["window_end"] - raised["window_start"] == pytest.approx(19 * 0.05)
        steps = raised["top_steps"]
        assert len(steps) == 3
        assert all(raised["window_start"] <= s["ts"] <= raised["window_end"] for s in steps)
        # The step blamed most is at the shift (a reconstruction smooths the edge, so the
        # step just before it may share the blame).
        assert steps[0]["ts"] >= t0 + 398 * 0.05
        assert wait_until(
            lambda: registry.get_sample_value("streamwatch_windows_scored_total") == 600 - 19
        )
        # One shift, one raise (no storm), before and after it no false alarm.
        assert [a["state"] for a in alerts.json_on("streamwatch/alerts/m1")].count("raised") == 1
    finally:
        daemon.stop()
        alerts.close()


def _scrape(port: int) -> str:
    return http_get(f"http://127.0.0.1:{port}/metrics")[1]


def _sample(text: str, name: str, labels: str = "") -> float | None:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_sighup_reloads_the_model_without_dropping_readings(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    gcfg = from_mapping({"detector": {"type": "gaussian"}})
    rng = np.random.default_rng(5)
    model = tmp_path / "model"
    train(gcfg, {"p": (np.arange(2000.0), rng.normal(10, 1, 2000), None)}, model)
    before = (model / "thresholds.json").read_text()

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamwatch",
            "run",
            "--broker",
            mosquitto.url,
            "--metrics-port",
            str(port),
            "--detector",
            "gaussian",
            "--model-dir",
            str(model),
        ],
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), timeout=30)
        pub = Publisher(mosquitto.port)
        t0 = time.time() - 5000
        sent = 0
        for round_ in range(3):
            for _ in range(500):
                pub.reading("p", float(rng.normal(10, 1)), t0 + sent)
                sent += 1
            pub.flush()
            if round_ == 0:
                assert wait_until(
                    lambda: (
                        _sample(_scrape(port), "streamwatch_readings_total", '{sensor="p"}') == 500
                    )
                )
                thr0 = _sample(_scrape(port), "streamwatch_threshold", '{sensor="p"}')
                # Retrain on other data (a wider spread) and swap it in mid-stream.
                train(gcfg, {"p": (np.arange(2000.0), rng.normal(10, 3, 2000), None)}, model)
                assert (model / "thresholds.json").read_text() != before
                proc.send_signal(signal.SIGHUP)
        pub.close()
        assert wait_until(
            lambda: _sample(_scrape(port), "streamwatch_readings_total", '{sensor="p"}') == sent,
            timeout=30,
        )
        text = _scrape(port)
        thr = _sample(text, "streamwatch_threshold", '{sensor="p"}')
        new = json.loads((model / "thresholds.json").read_text())["per_sensor"]["p"]
        old = json.loads(before)["per_sensor"]["p"]
        assert thr0 == pytest.approx(old) and thr == pytest.approx(new)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read() if proc.stderr else ""
    assert "reloaded model" in err and "Traceback" not in err
