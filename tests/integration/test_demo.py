"""The README's first command: ``streamwatch demo`` starts its own broker, simulator and
daemon, announces each injected anomaly and prints the alerts it raises."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.integration
def test_the_demo_warms_up_and_alerts_on_injected_anomalies() -> None:
    # Played at 40 readings/s (1-second data), warm-up takes about 14 s; anomalies follow.
    r = subprocess.run(
        [sys.executable, "-m", "streamwatch", "demo", "--rate", "40", "--duration", "70"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = r.stdout
    assert r.returncode == 0, r.stderr
    assert len(re.findall(r"sensor s00\d warmed up on 500 readings", out)) == 4, out
    injected = re.findall(r"injected (\w+) on (s\d+)", out)
    raised = re.findall(r"RAISED\s+(s\d+)", out)
    assert injected, out
    assert raised and set(raised) <= {s for _, s in injected}, out
    assert "Traceback" not in r.stderr
