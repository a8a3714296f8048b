"""The worker keeps start-up objects out of the collector's full passes, and a model swapped
out (SIGHUP) is still collected."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from streamwatch.config import from_mapping
from streamwatch.daemon import Daemon
from streamwatch.training import train
from tests.helpers import Mosquitto, Publisher, wait_until


def test_start_up_is_frozen_and_a_reloaded_model_is_collected(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    gcfg = from_mapping({"detector": {"type": "gaussian"}})
    rng = np.random.default_rng(3)
    model = tmp_path / "model"
    train(gcfg, {"p": (np.arange(500.0), rng.normal(10, 1, 500), None)}, model)
    cfg = from_mapping(
        {
            "mqtt": {"broker": mosquitto.url, "client_id": "heap-test"},
            "detector": {"type": "gaussian"},
            "model_dir": str(model),
            "state_dir": str(tmp_path / "state"),
            "metrics": {"enabled": False},
        }
    )
    daemon = Daemon(cfg, registry=CollectorRegistry())
    daemon.start()
    try:
        assert daemon.wait_ready(30)
        assert wait_until(lambda: gc.get_freeze_count() > 0, 30)  # once warmed up
        old = daemon.engine.model.detector
        # A reference cycle through the frozen detector: only the cyclic collector can free
        # it, and only if the detector is unfrozen first.
        old.cycle = [old]  # type: ignore[attr-defined]
        gone = weakref.ref(old)
        del old
        swaps = daemon.engine.swaps
        assert daemon.reload() is True
        pub = Publisher(mosquitto.port)  # the swap happens before the next batch
        pub.reading("p", 10.0, 1000.0)
        pub.close()
        assert wait_until(lambda: daemon.engine.swaps > swaps, 10)
        assert wait_until(lambda: gone() is None, 10)
        assert wait_until(lambda: gc.get_freeze_count() > 0, 10)  # frozen again
    finally:
        daemon.stop()
