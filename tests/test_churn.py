"""Topic churn: 100,000 distinct sensor topics must not grow memory or /metrics without bound.

The engine tracks at most ``windows.max_sensors`` sensors (the least recently seen is evicted,
and counted), frees what it learned online about an evicted sensor, and exports at most
``metrics.max_sensor_labels`` sensor labels plus ``_other``. Memory is compared by tracemalloc
after 20k and after 100k sensors: the difference must be small next to what 80k more sensors
would cost if anything were kept per sensor. No timings are asserted.
"""

from __future__ import annotations

import gc
import json
import re
import time
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from streamwatch.config import Config, from_mapping
from streamwatch.daemon import Daemon
from streamwatch.detectors import base
from streamwatch.detectors.bundle import Model
from streamwatch.ingest.parse import Reading
from streamwatch.outputs.metrics import OTHER, Metrics
from streamwatch.pipeline.engine import Engine
from streamwatch.pipeline.lifecycle import SCORED
from streamwatch.pipeline.threshold import Thresholds
from tests.helpers import Mosquitto, Publisher, fresh_model, wait_until

NOW = 1_763_900_000.0
_LABEL = re.compile(r'sensor="((?:[^"\\]|\\.)*)"')


def _cfg(max_sensors: int, max_labels: int, warmup: int = 20) -> Config:
    return from_mapping(
        {
            "detector": {"type": "gaussian"},
            "learning": {"warmup": warmup},
            "windows": {"max_sensors": max_sensors},
            "metrics": {"max_sensor_labels": max_labels},
        }
    )


class _Rig:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry, cfg.metrics.max_sensor_labels)
        self.model = fresh_model(cfg)
        self.det = self.model.detector
        self.engine = Engine(cfg, self.model, self.metrics, lambda ev: None)

    def feed(self, sensors: Iterator[str] | list[str], per_sensor: int = 1) -> None:
        items = [
            ([Reading(s, NOW - 1000 + j, 20.0 + 0.1 * (j % 7))], NOW)
            for s in sensors
            for j in range(per_sensor)
        ]
        self.engine.process(items, now=NOW)

    def evicted(self) -> float:
        return self.registry.get_sample_value("streamwatch_sensors_evicted_total") or 0.0

    def labels(self) -> set[str]:
        body = generate_latest(self.registry).decode()
        return set(_LABEL.findall(body))

    def accepted(self) -> float:
        rows = self.metrics.per_sensor()
        return float(sum(s.readings for _, s in rows) + self.metrics.other.readings)


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def test_100k_topics_keep_sensors_labels_and_memory_bounded() -> None:
    cap, labels = 1000, 100
    rig = _Rig(_cfg(cap, labels))
    batch = 2000
    sizes: dict[int, int] = {}
    tracemalloc.start()
    try:
        for start in range(0, 100_000, batch):
            rig.feed([f"plant/{k}/temperature" for k in range(start, start + batch)])
            done = start + batch
            assert len(rig.engine.windows) <= cap
            if done % 20_000 == 0:
                assert len(rig.labels() - {OTHER}) <= labels
            if done in (20_000, 100_000):
                sizes[done] = _traced()
    finally:
        tracemalloc.stop()
    assert len(rig.engine.windows) == cap
    assert rig.evicted() == 100_000 - cap
    # Counted once each: by the labelled series of the sensors still tracked, by _other, or
    # in the series of an evicted sensor, which ends with it (Prometheus sees the series end).
    assert rig.accepted() <= 100_000
    assert (
        rig.registry.get_sample_value("streamwatch_rejected_total", {"reason": "out_of_order"}) == 0
    )
    assert len(rig.labels()) <= labels + 1
    assert len(rig.metrics.per_sensor()) <= labels
    # A tracked sensor costs over 500 bytes (its window's two numpy buffers, engine and alert
    # state, dict entries): 80k more kept would be 40 MB. Measured: under 1 kB. Allow 1 MB.
    grown = sizes[100_000] - sizes[20_000]
    assert grown < 1_000_000, f"memory grew {grown} bytes from 20k to 100k sensors"


def test_churning_sensors_that_warm_up_free_what_was_learned() -> None:
    """Each sensor warms up (the detector fits its Normal and a threshold) and is then pushed
    out by newer ones: the detector's per-sensor state stays within ``max_sensors``."""
    cap = 300
    rig = _Rig(_cfg(cap, 50))
    for start in range(0, 6000, 300):
        rig.feed([f"s{k}" for k in range(start, start + 300)], per_sensor=20)
        learned = rig.det._table  # type: ignore[attr-defined]
        assert len(learned) <= cap and len(rig.model.thresholds.per_sensor) <= cap
    assert rig.evicted() == 6000 - cap
    # Slots are reused: at most the tracked sensors plus those one batch brought in (freed at
    # the end of that batch), never one per sensor ever seen.
    assert rig.det._table.capacity <= 2 * (cap + 300)  # type: ignore[attr-defined]
    assert rig.engine.warming == 0
    # The last sensors are scored, with their own thresholds.
    assert all(rig.det.knows(f"s{k}") for k in range(5700, 6000))


def test_trained_sensors_survive_eviction() -> None:
    """Sensors the model was trained on are not forgotten when evicted: back, they score at
    once, with no warm-up."""
    cfg = _cfg(2, 10)
    det = base.create(cfg.detector, 1)
    rng = np.random.default_rng(0)
    det.fit({s: rng.normal(20.0, 0.5, 500) for s in ("a", "b", "c")})
    rig = _Rig(cfg)
    rig.model = Model(det, Thresholds(1e-5, pooled=12.0))
    rig.det = det
    rig.engine = Engine(cfg, rig.model, rig.metrics, lambda ev: None)
    rig.feed(["a", "b", "c", "a"])
    assert rig.evicted() == 2 and all(det.knows(s) for s in "abc")
    assert rig.engine.warming == 0


def test_sensor_evicted_and_back_within_one_batch_keeps_its_state() -> None:
    """With room for two, a batch [c, a, b, a] evicts a and brings it back at once: it must
    stay known to the detector (forgetting it then would break scoring of its next reading)."""
    rig = _Rig(_cfg(2, 10))
    rig.feed(["a", "b"], per_sensor=20)  # both warmed up
    assert rig.det.knows("a") and rig.det.knows("b")
    items = [([Reading(s, NOW - 500 + i, 20.0)], NOW) for i, s in enumerate("caba")]
    rig.engine.process(items, now=NOW)
    tracked = set(rig.engine.windows.sensors)
    for s in tracked:
        if rig.engine.windows.sensors[s].state.phase == SCORED:
            assert rig.det.knows(s)
    rig.engine.process([([Reading(s, NOW - 100, 20.0)], NOW) for s in tracked], now=NOW)


@pytest.mark.integration
def test_topic_churn_through_mosquitto(mosquitto: Mosquitto) -> None:
    """3,000 distinct topics through a real broker into the daemon: tracked sensors, labels
    in the /metrics text and the accounting all hold."""
    cap, labels, n = 500, 50, 3000
    cfg = from_mapping(
        {
            "mqtt": {"broker": mosquitto.url, "client_id": f"sw-churn-{mosquitto.port}"},
            "detector": {"type": "gaussian"},
            "learning": {"warmup": 20},
            "windows": {"max_sensors": cap},
            "metrics": {"host": "127.0.0.1", "port": 0, "max_sensor_labels": labels},
        }
    )
    registry = CollectorRegistry()
    daemon = Daemon(cfg, registry=registry)
    daemon.start()
    pub = Publisher(mosquitto.port)
    try:
        assert daemon.wait_ready(10)
        t = time.time() - 100
        for k in range(n):
            pub.send(f"sensors/churn/{k}/rpm", json.dumps({"value": 1.0 + k % 5, "ts": t}))
        pub.flush()

        def evicted() -> float:
            return registry.get_sample_value("streamwatch_sensors_evicted_total") or 0.0

        assert wait_until(lambda: evicted() == n - cap, timeout=30), evicted()
        assert len(daemon.engine.windows) == cap
        import urllib.request

        with urllib.request.urlopen(
            f"http://127.0.0.1:{daemon.metrics_port}/metrics", timeout=10
        ) as r:
            body = r.read().decode()
        found = set(_LABEL.findall(body))
        assert len(found) <= labels + 1
        assert "streamwatch_rejected_total" in body and "_other" in body
        assert f"streamwatch_sensors_tracked {float(cap)}" in body
    finally:
        pub.close()
        daemon.stop()


def test_lstm_vae_forgets_an_online_sensors_standardisation() -> None:
    from streamwatch.config import LSTMVAEConfig

    det = base.create(LSTMVAEConfig(), 20)
    det.install_state({"x": {"mean": 1.0, "std": 2.0, "model": "shared"}})
    det.forget("x")
    assert det._sensor_state() == {}


def test_a_sensor_evicted_later_in_the_same_batch_is_still_scored() -> None:
    """Its window came due, then more than max_sensors others arrived in the same drain:
    scoring it must not fail (it raised KeyError and lost every reading of the drain)."""
    rig = _Rig(_cfg(2, 10))
    rig.feed(["a"], per_sensor=40)  # a warmed up (warmup 20) and scored from then on
    assert rig.det.knows("a")
    items = [([Reading("a", NOW - 100, 99.0)], NOW)]  # due, and anomalous
    items += [([Reading(s, NOW - 100, 20.0)], NOW) for s in ("b", "c", "d")]
    events = rig.engine.process(items, now=NOW)
    assert [(e.sensor, e.state) for e in events] == [("a", "raised")]
    assert "a" not in rig.engine.windows.sensors and not rig.det.knows("a")


def test_a_sensor_evicted_while_raised_is_cleared_with_a_reason() -> None:
    """Its alert would otherwise stay raised in the state file and on the retained topic
    forever (issue 12, item 7)."""
    cfg = _cfg(1, 10)
    events: list = []
    rig = _Rig(cfg)
    rig.engine.sink = events.append
    rig.feed(["a"], per_sensor=40)  # warmed up
    rig.engine.process([([Reading("a", NOW - 100, 99.0)], NOW)], now=NOW)
    assert [e.state for e in events] == ["raised"] and rig.engine.raised
    rig.engine.process([([Reading("b", NOW - 100, 20.0)], NOW)], now=NOW)  # evicts a
    assert [(e.sensor, e.state, e.reason) for e in events[1:]] == [("a", "cleared", "evicted")]
    assert events[1].alert_id == events[0].alert_id and rig.engine.raised == {}
    assert json.loads(events[1].payload())["score"] is None  # no NaN in the JSON
