"""A daemon whose worker thread dies exits non-zero and leaves what it held to the broker.

Issue 12, item 5: before the fix, paho went on acknowledging (and the hand-off shedding)
into a queue that nobody read; only a systemd watchdog noticed, and under Docker nothing did.
Now a message is acknowledged only by the worker, after scoring, and ``run_forever`` stops
the daemon with exit code 1 once the worker is gone, so the service manager restarts it and
the broker delivers what was not acknowledged to the new process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import Mosquitto, Publisher, free_port, wait_until
from tests.integration.test_faults import MU, gaussian_bundle
from tests.integration.test_kill import _config, _metric, _ready, _start

WRAPPER = '''
import sys

from streamwatch.commands import main
from streamwatch.detectors.gaussian import GaussianDetector


class Fatal(BaseException):
    """Escapes the worker's ``except Exception``, as anything raised outside the engine's
    handler would (a SystemExit or GeneratorExit from a library, a bug in the loop)."""


real = GaussianDetector.score


def score(self, sensors, x):
    if "doom" in list(sensors):
        raise Fatal("injected: the worker dies scoring sensor doom")
    return real(self, sensors, x)


GaussianDetector.score = score
sys.exit(main(sys.argv[1:]))
'''


def _readings(port: int, sensor: str) -> float:
    return _metric(port, f'streamwatch_readings_total{{sensor="{sensor}"}}')


@pytest.mark.integration
def test_a_dead_worker_stops_the_daemon_with_exit_1_and_nothing_it_held_is_acknowledged(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Pins ``Daemon.run_forever`` returning 1 when the worker thread is gone (without it the
    first process runs on and ``wait`` times out) and acknowledgement by the worker only
    (with paho acknowledging on receipt, the second process would not get the message the
    first one died on, nor those that came after it). A real ``streamwatch run`` process whose
    detector raises a BaseException on sensor ``doom``: it scores ``ok`` readings, dies on the
    ``doom`` message, logs why (CRITICAL plus the thread's traceback) and exits 1. A second,
    healthy process of the same persistent session gets exactly the ``doom`` reading and the
    ``after`` readings (the first never acknowledged them) and none of the ``ok`` ones."""
    model = gaussian_bundle(tmp_path / "model", ["ok", "doom", "after"])
    port = free_port()
    conf = _config(tmp_path / "sw.toml", mosquitto, model, tmp_path / "state", port)
    log = tmp_path / "first.log"
    wrapper = tmp_path / "dying_worker.py"
    wrapper.write_text(WRAPPER, encoding="utf-8")
    first = subprocess.Popen(
        [sys.executable, str(wrapper), "run", "--config", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )
    pub = Publisher(mosquitto.port)
    second: subprocess.Popen[bytes] | None = None
    t0 = time.time() - 1000.0
    try:
        assert wait_until(lambda: _ready(port), timeout=60), log.read_text()
        for i in range(5):
            pub.reading("ok", MU, t0 + i)
        pub.flush()
        assert wait_until(lambda: _readings(port, "ok") == 5, timeout=30)
        pub.send("sensors/doom", json.dumps({"value": MU, "ts": t0}))
        for i in range(3):
            pub.reading("after", MU, t0 + i)
        pub.flush()
        assert first.wait(60) == 1
        text = log.read_text()
        assert "the worker thread died" in text, text
        assert "Fatal: injected: the worker dies scoring sensor doom" in text, text

        log2 = tmp_path / "second.log"
        second = _start(conf, log2)
        assert wait_until(lambda: _ready(port), timeout=60), log2.read_text()
        pub.reading("ok", MU, t0 + 100)  # a marker: what the broker held came before it
        pub.flush()
        assert wait_until(lambda: _readings(port, "ok") == 1, timeout=30)
        assert wait_until(lambda: _readings(port, "after") == 3, timeout=30)
        assert _readings(port, "doom") == 1
        assert _metric(port, "streamwatch_message_errors_total") == 0
    finally:
        pub.close()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
