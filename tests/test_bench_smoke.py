"""Smoke test of the live benchmark: ``bench/bench_live.py --quick`` runs and writes its report.

It proves the script works end to end (broker, publisher, subscribers, daemons, replay). It
asserts nothing about timings: the figures of a seconds-long run on a shared machine mean
nothing, and tests never assert wall-clock times.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
@pytest.mark.slow
def test_bench_live_quick(tmp_path: Path) -> None:
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.fail("mosquitto binary not found: .ci/run installs it (apt-get install mosquitto)")
    report, table = tmp_path / "report.json", tmp_path / "performance.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_live.py"),
            "--quick",
            "--report",
            str(report),
            "--write",
            str(table),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(report.read_text())
    for key in ("machine", "ceiling", "live", "memory", "replay", "figures", "load_before"):
        assert key in doc, key
    assert {"commit", "versions", "cpu", "cores"} <= doc["machine"].keys()
    assert {"single", "batched"} <= doc["ceiling"].keys()
    for det in ("gaussian", "lstm-vae"):
        res = doc["live"][det]
        for key in ("single", "batched", "single_latency", "batched_latency"):
            assert key in res, (det, key)
            assert res[key]["sent"] > 0
            assert {"readings_per_s", "lost", "zero_loss"} <= res[key].keys()
        assert {"p50_ms", "p99_ms"} <= res["single_latency"].keys()
    assert {"rss_mib", "sensors"} <= doc["memory"].keys()
    assert {
        "lstm_replay_ratio",
        "lstm_replay_windows_per_s",
        "gaussian_replay_readings_per_s",
        "naive_ratio",
    } <= doc["replay"].keys()
    for row in doc["figures"]:
        assert {"figure", "target", "measured", "ratio", "met"} <= row.keys()
    text = table.read_text()
    assert "| figure | target | measured | ratio | met |" in text
    assert "bench/bench_live.py" in text
