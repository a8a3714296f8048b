"""At-least-once from broker to alert across a SIGKILL (issue 12).

A real daemon process (``streamwatch run``) takes a stream of 200,000 readings in 50-reading
JSON batches at QoS 1 through a real Mosquitto. Mid-stream it is frozen (SIGSTOP) with what
the broker sent it unscored and unacknowledged, then SIGKILLed and started again; or the
broker is SIGKILLed instead (with the shipped ``autosave_on_changes true`` /
``autosave_interval 1000``), or both. Every 50th reading of each sensor is a 30-sigma spike,
followed by a normal one, so each 50-reading message holds exactly one spike: each spike, once
scored, raises an alert that the next reading clears. So every spike's raise reaching a
subscriber shows that its message was scored at least once and its alert got out, although
the first process died holding it: messages are acknowledged only once scored, alerts go
through the outbox under ``state_dir``, and what was not acknowledged the broker delivers
again to the persistent session.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import Collector, Mosquitto, Publisher, free_port, http_get, wait_until
from tests.integration.test_faults import ANOMALY, MU, gaussian_bundle

SENSORS = [f"k{i}" for i in range(10)]
BATCH = 50
SPIKE_EVERY = 50


def _config(path: Path, broker: Mosquitto, model: Path, state: Path, port: int) -> Path:
    path.write_text(
        f'model_dir = "{model}"\nstate_dir = "{state}"\nlog_level = "WARNING"\n'
        f'[mqtt]\nbroker = "{broker.url}"\nclient_id = "sw-kill-{broker.port}"\n'
        "reconnect_min_s = 0.2\nreconnect_max_s = 1.0\n"
        '[detector]\ntype = "gaussian"\n'
        "[alerts]\nraise_k = 1\nraise_n = 1\nclear_m = 1\nclear_hold_s = 0.0\nrefractory = 0\n"
        f'[metrics]\nhost = "127.0.0.1"\nport = {port}\n',
        encoding="utf-8",
    )
    return path


def _start(conf: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamwatch", "run", "--config", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def _ready(port: int) -> bool:
    """Subscribed (and the model loaded): readings published from now on reach it."""
    try:
        return http_get(f"http://127.0.0.1:{port}/readyz", timeout=2)[0] == 200
    except OSError:
        return False


def _metric(port: int, prefix: str) -> float:
    """The sum of the samples whose line starts with ``prefix`` (0 if it cannot scrape)."""
    _, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=2)
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in body.splitlines() if ln.startswith(prefix))


def _scored(port: int) -> float:
    return _metric(port, "streamwatch_readings_total{")


SAVE_EVERY_1000 = "autosave_on_changes true\nautosave_interval 1000\n"
"""The autosave settings deploy/docker/mosquitto.conf ships: the broker saves its whole
database once 1,000 changes (messages queued for a client, acknowledgements, subscriptions,
retained messages) have piled up since the last save."""


def _saved_at(broker: Mosquitto) -> float:
    """When the broker last finished writing its database (0 if it never has). Mosquitto
    writes ``mosquitto.db.new`` and renames it; a save cut short by a kill leaves the last
    whole one in place."""
    try:
        return (broker.workdir / "data" / "mosquitto.db").stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _wait_for_save(broker: Mosquitto, pub: Publisher, after: float) -> int:
    """Publish padding at QoS 1, queued for an absent persistent session (each one a change
    for the broker), until the broker has saved its database after ``after``. Returns the
    messages sent. A PUBACK that reached the test before that save ended was sent before it
    began (Mosquitto is one thread), so everything acknowledged by ``after`` is in it."""
    Collector(broker.port, ["pad/#"], session="kill-test-pad").close()
    sent = 0
    while _saved_at(broker) <= after:
        for _ in range(50):
            pub.send("pad/x", b".")
        pub.flush(60)
        sent += 50
        assert sent <= 20_000, "the broker never saved"
    return sent


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("kill", ["daemon", "broker", "both"])
def test_sigkill_with_thousands_in_hand_loses_no_reading(
    kill: str, mosquitto_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL the daemon, the broker, or both, while the daemon holds hundreds of messages
    (tens of thousands of readings) unscored and unacknowledged.

    With the broker killed, a reading can only be scored if the broker still has it after
    its restart: Mosquitto keeps what it had saved, and ``autosave_interval 1000`` saves
    once 1,000 changes have piled up, so a kill can lose up to about that many of the last
    messages it acknowledged (docs/reliability.md, bench/broker_kill.py). The test kills the
    broker right after a save that came after the publisher's last PUBACK (padding queued for
    another session brings the save on; the database file's time says when it happened), so
    every reading it acknowledged is in the save and the guarantee is checked exactly: each
    spike must alert. What is lost at the broker is counted all the same: a missing spike
    whose message the broker acknowledged before its last save fails the test as a loss in
    streamwatch; one acknowledged after it would be the broker's loss, and the failure
    message counts both.

    The "broker" run failed now and then (once in two earlier, with ``autosave_interval 1``;
    2 runs in 9 here before the fix). In the one whose output was kept, 240 spikes of one
    sensor never alerted and ``streamwatch_rejected_total{reason="out_of_order"}`` held
    ~19,000. Not a loss in the
    broker or in streamwatch: the test's publisher sent that sensor's messages out of order.
    It went on publishing while paho reconnected it to the restarted broker; paho marks the
    connection up at CONNACK and only then resends what it held, and a message published in
    between goes out at once, ahead of them. The daemon scored the newer reading and then
    (rightly, per sensor timestamps only increase) rejected the older ones as out of order.
    The publisher now waits for its reconnect before it publishes again (nothing is pending
    then). With the broker saving on every change, each run also took minutes: it rewrote
    its whole database after each of ~20,000 changes."""
    extra = SAVE_EVERY_1000 if kill != "daemon" else ""
    mosquitto = Mosquitto(mosquitto_dir, extra_conf=extra)
    mosquitto.start()
    model = gaussian_bundle(tmp_path / "model", SENSORS)
    state = tmp_path / "state"
    port = free_port()
    conf = _config(tmp_path / "sw.toml", mosquitto, model, state, port)
    log = tmp_path / "daemon.log"
    alerts = Collector(mosquitto.port, ["streamwatch/alerts/#"], session="kill-test-alerts")
    first = _start(conf, log)
    pub = Publisher(mosquitto.port)
    second: subprocess.Popen[bytes] | None = None
    spikes: dict[tuple[str, float], int] = {}
    """Each spike and the id of the message that carried it."""
    per_sensor = 20_000
    t0 = time.time() - 3 * 86400.0
    saved_at = float("inf")  # the broker, not killed, loses nothing
    padding = 0
    try:
        assert wait_until(lambda: _ready(port), timeout=60), log.read_text()
        killed = False
        for start in range(0, per_sensor, BATCH):
            for s in SENSORS:
                batch = []
                spike_at = None
                for i in range(start, start + BATCH):
                    ts = t0 + i
                    spike = i % SPIKE_EVERY == SPIKE_EVERY // 2
                    if spike:
                        spike_at = (s, ts)
                    batch.append({"value": ANOMALY if spike else MU, "ts": ts})
                mid = pub.send(f"sensors/{s}", json.dumps(batch))
                if spike_at is not None:
                    spikes[spike_at] = mid
            # Freeze the daemon mid-stream, so that it holds what it was sent unscored and
            # the broker fills its in-flight window to it; then kill.
            if start == per_sensor // 10:
                pub.flush(60)
                first.send_signal(signal.SIGSTOP)
            elif start == per_sensor // 5:
                pub.flush(60)
                time.sleep(0.5)
                if kill in ("daemon", "both"):
                    first.send_signal(signal.SIGKILL)
                    first.wait(10)
                if kill in ("broker", "both"):
                    padding = _wait_for_save(mosquitto, pub, max(pub.acked_at.values()))
                    mosquitto.kill()
                    saved_at = _saved_at(mosquitto)
                    mosquitto.start()
                    # paho reorders across a reconnect: a message published after its CONNACK
                    # but before it resends what was pending overtakes those (see docstring).
                    assert wait_until(lambda: pub.connects == 2, timeout=30)
                if kill == "broker":
                    first.send_signal(signal.SIGCONT)
                killed = True
        pub.flush(60)
        assert killed

        if kill in ("daemon", "both"):
            second = _start(conf, log)
        assert wait_until(lambda: _ready(port), timeout=60), log.read_text()

        def raised() -> set[tuple[str, float]]:
            return {
                (a["sensor"], a["ts"])
                for a in alerts.json_on("streamwatch/alerts/")
                if a["state"] == "raised"
            }

        done = wait_until(lambda: spikes.keys() <= raised(), timeout=240)
        missing = sorted(spikes.keys() - raised())
        # What the broker may have lost: acknowledged after its last save before the kill.
        broker_may_lose = [k for k in missing if pub.acked_at.get(spikes[k], 0.0) >= saved_at]
        assert done, (
            f"{len(missing)} of {len(spikes)} spikes never alerted ({len(broker_may_lose)} "
            f"of them acknowledged by the broker after its last save, {padding} padding "
            f"messages); scored after the restart {_scored(port)}, killed: {kill}; first missing "
            f"{missing[:5]}, "
            f"last {missing[-5:]}; "
            + " ".join(
                line
                for line in http_get(f"http://127.0.0.1:{port}/metrics")[1].splitlines()
                if line.startswith("streamwatch_rejected_total") and not line.endswith(" 0.0")
            )
        )
        body = http_get(f"http://127.0.0.1:{port}/metrics")[1]
        assert "streamwatch_readings_shed_total 0.0" in body
        assert "streamwatch_message_errors_total 0.0" in body
    finally:
        pub.close()
        alerts.close()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        mosquitto.stop()
