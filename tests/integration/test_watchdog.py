"""The systemd watchdog and READY=1 against a real Mosquitto (issue 12, item 4).

``tests/test_sdnotify.py`` pins the notify protocol on a real socket (READY, WATCHDOG,
STOPPING from ``streamwatch run``) and ``test_faults`` that a stuck worker stops the pings.
These pin the two orderings the issue was about, by counting events rather than timing them:
a large backlog is scored in slices with a ping between any two of them, and READY=1 waits
for the model's warm-up.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import streamwatch.daemon as daemon_mod
from streamwatch import sdnotify
from streamwatch.daemon import Daemon
from streamwatch.pipeline.handoff import Queued
from tests.helpers import Mosquitto, Publisher, wait_until
from tests.integration.test_faults import MU, Gate, config, gaussian_bundle, readings


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """What the daemon told systemd, in order, interleaved by the tests with what it did.
    The real functions still run (without ``$NOTIFY_SOCKET`` they send nothing)."""
    seen: list[str] = []
    lock = threading.Lock()

    def recorder(name: str, real: Any) -> Any:
        def call() -> bool:
            with lock:
                seen.append(name)
            return bool(real())

        return call

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1")  # ping at every chance the loop gives
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setattr(sdnotify, "watchdog", recorder("ping", sdnotify.watchdog))
    monkeypatch.setattr(sdnotify, "ready", recorder("READY", sdnotify.ready))
    yield seen


@pytest.mark.integration
def test_a_large_backlog_pings_the_watchdog_between_slices(
    mosquitto: Mosquitto, tmp_path: Path, events: list[str]
) -> None:
    """20,000 readings (400 messages of 50) wait while scoring is stuck; once it moves they
    are scored in slices of at most ``SLICE_READINGS`` (5,000) readings, each acknowledged on
    its own, with a watchdog ping between any two slices. Before the fix the worker pinged
    once per drain, so a backlog that took longer than ``WatchdogSec`` to score got the
    daemon killed by systemd while it was working. Fails if the pings go back to one per
    drain or if the backlog is scored in one piece."""
    model = gaussian_bundle(tmp_path / "model", ["slow", "bulk"])
    daemon = Daemon(config(mosquitto, model), registry=CollectorRegistry())
    gate = Gate(daemon)
    real = daemon._process

    def process(items: list[Queued]) -> None:
        events.append(f"slice {sum(len(rs) for rs, *_ in items)}")
        real(items)

    daemon._process = process  # type: ignore[method-assign]
    daemon.start()
    pub = Publisher(mosquitto.port)
    t0 = time.time() - 86_400.0
    try:
        assert daemon.wait_ready(10)
        gate.shut()
        pub.reading("slow", MU, t0)
        assert gate.blocked.wait(10), "the worker is now stuck in score()"
        for m in range(400):
            batch = [{"value": MU, "ts": t0 + 50 * m + i} for i in range(50)]
            pub.send("sensors/bulk", json.dumps(batch))
        pub.flush()
        assert wait_until(lambda: len(daemon.handoff) == 20_000, timeout=60), len(daemon.handoff)
        events.clear()
        gate.open.set()
        assert wait_until(lambda: readings(daemon.registry, "bulk") == 20_000, timeout=60)
    finally:
        gate.open.set()
        pub.close()
        daemon.stop()
    slices = [i for i, e in enumerate(events) if e.startswith("slice")]
    sizes = [int(events[i].split()[1]) for i in slices]
    assert sizes == [daemon_mod.SLICE_READINGS] * 4, events  # the 20,000 waiting, sliced
    for a, b in itertools.pairwise(slices):
        assert "ping" in events[a:b], f"no ping between slices: {events[a : b + 1]}"


@pytest.mark.integration
def test_ready_waits_for_the_model_warm_up(
    mosquitto: Mosquitto, tmp_path: Path, events: list[str]
) -> None:
    """``run_forever`` (main thread, as ``streamwatch run``) is subscribed while the model's
    warm-up is still running: READY=1 must wait, else systemd would start what depends on
    the daemon while its first readings still wait for a model being compiled. Its loop is
    watched for three turns after subscribing without READY=1; once the warm-up returns
    READY=1 follows, exactly once; the reading published meanwhile is scored only after the
    warm-up too. Fails if READY=1 goes back to following the subscription alone."""
    model = gaussian_bundle(tmp_path / "model", ["r"])
    daemon = Daemon(config(mosquitto, model), registry=CollectorRegistry())
    release = threading.Event()
    real_warm_up = daemon.engine.detector.warm_up

    def warm_up() -> None:
        events.append("warm-up started")
        release.wait(60)
        real_warm_up()
        events.append("warm-up done")

    daemon.engine.detector.warm_up = warm_up  # type: ignore[method-assign]
    real_score = daemon.engine.detector.score

    def score(sensors: Sequence[str], x: Any) -> Any:
        events.append("scored")
        return real_score(sensors, x)

    daemon.engine.detector.score = score  # type: ignore[method-assign]
    turns = [0]
    worker = daemon._worker
    real_alive = worker.is_alive

    def is_alive() -> bool:
        main = threading.current_thread() is threading.main_thread()
        if main and daemon.link.subscribed.is_set():
            turns[0] += 1  # run_forever's loop asks once a turn
        return real_alive()

    worker.is_alive = is_alive  # type: ignore[method-assign]
    failures: list[str] = []

    def drive() -> None:
        pub = Publisher(mosquitto.port)
        try:
            if not wait_until(lambda: turns[0] >= 3, timeout=30):
                failures.append("run_forever's loop did not turn while subscribed")
            elif "READY" in events:
                failures.append(f"READY=1 before the warm-up was done: {events}")
            pub.reading("r", MU, time.time())
            pub.flush()
            release.set()
            if not wait_until(lambda: "scored" in events and "READY" in events, timeout=30):
                failures.append(f"never ready or never scored: {events}")
        finally:
            release.set()
            pub.close()
            if signal.getsignal(signal.SIGTERM) is not saved[signal.SIGTERM]:
                os.kill(os.getpid(), signal.SIGTERM)  # run_forever's handler stops it

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    driver = threading.Thread(target=drive, name="driver")
    driver.start()
    try:
        code = daemon.run_forever()
    finally:
        driver.join(60)
        for s, handler in saved.items():
            signal.signal(s, handler)
    assert not failures, failures
    assert code == 0
    assert events.count("READY") == 1
    done = events.index("warm-up done")
    assert done < events.index("READY") and done < events.index("scored"), events
