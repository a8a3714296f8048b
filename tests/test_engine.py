"""The engine through replay: warm-up, batched scoring, alerts, metrics, determinism."""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from streamwatch.config import Config, from_mapping
from streamwatch.detectors import base
from streamwatch.ingest.parse import Reading
from streamwatch.outputs.metrics import Metrics
from streamwatch.pipeline.engine import Engine
from streamwatch.pipeline.handoff import Handoff
from streamwatch.replay import merged, replay
from tests.helpers import fresh_model


def cfg(**sections: dict) -> Config:
    data: dict = {
        "detector": {"type": "gaussian"},
        "learning": {"warmup": 500},
        # One-reading spikes of a per-reading detector: no confirmation (tested on its own).
        "alerts": {"clear_m": 5, "confirm_s": 0.0},
    }
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    return from_mapping(data)


def series(n: int = 2000, spikes: tuple[int, ...] = (1500,), seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    ts = 1_700_000_000.0 + np.arange(n, dtype=float)
    v = 10.0 + rng.normal(0, 1.0, n)
    for s in spikes:
        v[s] += 12.0
    return ts, v


def test_warm_up_then_spike_raises_and_clears() -> None:
    c = cfg()
    model = fresh_model(c)
    events = replay(c, model, {"a": series(), "b": series(spikes=(), seed=1)})
    assert [(e.sensor, e.state) for e in events] == [("a", "raised"), ("a", "cleared")]
    raised = events[0]
    assert raised.ts == 1_700_000_000.0 + 1500
    assert raised.score > raised.threshold
    assert model.detector.knows("a") and model.detector.knows("b")


def test_replay_is_deterministic() -> None:
    c = cfg()
    data = {"a": series(spikes=(400, 900, 1600)), "b": series(seed=3)}
    one = replay(c, fresh_model(c), data)
    two = replay(c, fresh_model(c), data)
    assert [(e.sensor, e.state, e.ts, e.score) for e in one] == [
        (e.sensor, e.state, e.ts, e.score) for e in two
    ]


def test_no_scoring_during_warm_up_and_metrics_show_it() -> None:
    c = cfg()
    reg = CollectorRegistry()
    m = Metrics(reg)
    eng = Engine(c, fresh_model(c), m, lambda ev: None)
    rows = [Reading("a", 1000.0 + i, float(i % 3)) for i in range(450)]
    assert eng.process([(rows, 0.0)], now=2000.0) == []
    assert reg.get_sample_value("streamwatch_sensor_warming", {"sensor": "a"}) == 1
    assert reg.get_sample_value("streamwatch_sensors_warming") == 1
    assert reg.get_sample_value("streamwatch_windows_scored_total") == 0
    more = [Reading("a", 2000.0 + i, float(i % 3)) for i in range(100)]
    eng.process([(more, 0.0)], now=2100.0)
    assert reg.get_sample_value("streamwatch_sensor_warming", {"sensor": "a"}) == 0
    assert reg.get_sample_value("streamwatch_sensors_warming") == 0
    assert reg.get_sample_value("streamwatch_windows_scored_total") == 50
    assert reg.get_sample_value("streamwatch_readings_total", {"sensor": "a"}) == 550
    assert reg.get_sample_value("streamwatch_threshold", {"sensor": "a"}) is not None
    exposition = generate_latest(reg).decode()
    assert "streamwatch_windows_scored_total 50.0" in exposition
    assert "_created" not in exposition


def test_out_of_order_and_gap_are_counted() -> None:
    c = cfg(windows={"max_gap_s": 5.0})
    reg = CollectorRegistry()
    eng = Engine(c, fresh_model(c), Metrics(reg), lambda ev: None)
    rows = [Reading("a", t, 1.0) for t in (1.0, 2.0, 2.0, 1.5, 100.0)]
    eng.process([(rows, 0.0)], now=100.0)
    assert (
        reg.get_sample_value("streamwatch_rejected_total", {"reason": "duplicate_timestamp"}) == 1
    )
    assert reg.get_sample_value("streamwatch_rejected_total", {"reason": "out_of_order"}) == 1
    assert reg.get_sample_value("streamwatch_readings_total", {"sensor": "a"}) == 3


def test_label_cap_sends_the_rest_to_other() -> None:
    c = cfg(metrics={"max_sensor_labels": 2})
    reg = CollectorRegistry()
    eng = Engine(c, fresh_model(c), Metrics(reg, 2), lambda ev: None)
    rows = [Reading(f"s{i}", 1.0, 1.0) for i in range(5)]
    eng.process([(rows, 0.0)], now=1.0)
    assert reg.get_sample_value("streamwatch_readings_total", {"sensor": "s0"}) == 1
    assert reg.get_sample_value("streamwatch_readings_total", {"sensor": "s2"}) is None
    assert reg.get_sample_value("streamwatch_readings_total", {"sensor": "_other"}) == 3


def test_eviction_is_counted_and_frees_labels() -> None:
    c = cfg(windows={"max_sensors": 10})
    reg = CollectorRegistry()
    eng = Engine(c, fresh_model(c), Metrics(reg), lambda ev: None)
    eng.process([([Reading(f"s{i}", 1.0, 1.0) for i in range(25)], 0.0)], now=1.0)
    assert reg.get_sample_value("streamwatch_sensors_evicted_total") == 15
    assert reg.get_sample_value("streamwatch_sensors_tracked") is None  # daemon-provided gauge
    assert len(eng.windows) == 10
    labelled = [
        s
        for s in (f"s{i}" for i in range(25))
        if reg.get_sample_value("streamwatch_readings_total", {"sensor": s})
    ]
    assert labelled == [f"s{i}" for i in range(15, 25)]
    assert eng.warming == 10


def test_batched_scoring_matches_one_at_a_time() -> None:
    c = cfg(engine={"max_batch": 7})
    data = {f"s{i}": series(n=900, spikes=(800,), seed=i) for i in range(5)}
    big = replay(c, fresh_model(c), data)
    c1 = cfg(engine={"max_batch": 1})
    small = replay(c1, fresh_model(c1), data)
    assert [(e.sensor, e.state, e.ts) for e in big] == [(e.sensor, e.state, e.ts) for e in small]
    assert {e.sensor for e in big if e.state == "raised"} == set(data)


def test_merged_orders_across_sensors() -> None:
    data = {
        "a": (np.array([1.0, 3.0]), np.array([1.0, 3.0])),
        "b": (np.array([2.0, 3.0]), np.array([2.0, 4.0])),
    }
    rows = [r for chunk in merged(data) for r in chunk]
    assert [(r.sensor, r.ts) for r in rows] == [("a", 1.0), ("b", 2.0), ("a", 3.0), ("b", 3.0)]


def test_handoff_sheds_oldest_when_full() -> None:
    h = Handoff(max_readings=10)
    for i in range(5):
        h.put([Reading("a", float(i * 4 + j), 0.0) for j in range(4)], 0.0)
    assert len(h) <= 10 and h.shed == 12
    items = h.drain(0)
    assert next(r.ts for rs, *_ in items for r in cast(list[Reading], rs)) == 12.0  # oldest went
    assert len(h) == 0


def test_handoff_never_sheds_what_it_must_acknowledge() -> None:
    """QoS 1 messages (with a token) are acknowledged once scored, so they are never shed:
    the broker's in-flight limit bounds them instead. QoS 0 ones past them still are."""
    h = Handoff(max_readings=4)
    for i in range(5):
        h.put([Reading("a", float(i), 0.0)] * 2, 0.0, ("conn", i))
    assert h.shed == 0 and len(h) == 10
    items = h.drain(0)
    assert [tok for *_, tok in items] == [("conn", i) for i in range(5)]


@pytest.mark.parametrize("bad", [float("nan")])
def test_engine_never_sees_non_finite(bad: float) -> None:
    # The parser is the gate: a NaN never becomes a Reading (see test_parse); here we only
    # check the engine's own contract that scores are finite for finite input.
    c = cfg()
    det = base.create(c.detector, 20)
    det.fit({"a": np.arange(100.0)})
    assert np.isfinite(det.score(["a"], np.array([[5.0]]))).all()


def test_slow_fits_run_in_the_background_and_are_adopted_between_batches() -> None:
    c = from_mapping({"learning": {"warmup": 300}, "detector": {"type": "gmm", "steps": 50}})
    reg = CollectorRegistry()
    eng = Engine(c, fresh_model(c), Metrics(reg), lambda ev: None, background_fits=True)
    rng = np.random.default_rng(2)
    vals = np.where(rng.random(400) < 0.5, 0.0, 10.0) + rng.normal(0, 0.3, 400)
    rows = [Reading("two-state", 1.0 + i, float(v)) for i, v in enumerate(vals[:300])]
    eng.process([(rows, 0.0)], now=400.0)
    assert eng.detector.knows("two-state") is False  # fitting on the fitter thread
    assert eng.lifecycle._fits and eng.lifecycle._fits[0][3].result(timeout=120)
    more = [Reading("two-state", 301.0 + i, float(v)) for i, v in enumerate(vals[300:])]
    eng.process([(more, 0.0)], now=500.0)  # adopts the fit, then scores these readings
    assert eng.detector.knows("two-state")
    assert reg.get_sample_value("streamwatch_sensor_warming", {"sensor": "two-state"}) == 0
    assert reg.get_sample_value("streamwatch_windows_scored_total") == 100
    eng.close()


def test_auto_training_swaps_in_the_lstm_vae_mid_stream_without_losing_readings() -> None:
    """Replay trains inline once a sensor has auto_train_readings; the readings after it in
    the same batch are still taken, and the trained model scores from then on."""
    c = from_mapping(
        {
            "detector": {
                "type": "lstm-vae",
                "hidden": 4,
                "latent": 2,
                "epochs": 2,
                "min_steps": 0,
            },
            "learning": {"warmup": 100, "auto_train_readings": 300},
            "windows": {"length": 10},
        }
    )
    t = np.arange(1200.0)
    rng = np.random.default_rng(4)
    data = {
        s: (1.7e9 + t, np.sin(2 * np.pi * t / 20 + k) + rng.normal(0, 0.1, t.size))
        for k, s in enumerate(("a", "b"))
    }
    data["a"][1][1000:1040] += 3.0  # long after the swap: the LSTM-VAE must catch it
    reg = CollectorRegistry()
    events = replay(c, fresh_model(c), data, registry=reg)
    assert reg.get_sample_value("streamwatch_readings_total", {"sensor": "a"}) == 1200
    assert reg.get_sample_value("streamwatch_readings_total", {"sensor": "b"}) == 1200
    raised = [e for e in events if e.state == "raised" and e.sensor == "a"]
    assert raised and raised[-1].detector == "lstm-vae"
    assert 1.7e9 + 1000 <= raised[-1].ts <= 1.7e9 + 1040


# -- mechanisms of the detection policy ----------------------------------------------------


def _feed(c: Config, values: np.ndarray, stamps: np.ndarray | None = None) -> list:
    """Replay one sensor 'a' through a fresh engine; its alert transitions."""
    ts = 1.7e9 + (np.arange(values.size, dtype=float) if stamps is None else stamps)
    return replay(c, fresh_model(c), {"a": (ts, values)})


def test_robust_default_flags_a_flatline_as_too_little_movement() -> None:
    """Both tails: a stuck transmitter is anomalous although every reading is in range."""
    rng = np.random.default_rng(5)
    v = np.sin(np.arange(3000) / 8.0) + rng.normal(0, 0.1, 3000)
    v[2000:2200] = v[1999]
    # The model alone (with the fault checks on, the stuck check calls it first: a sensor fault)
    c = from_mapping({"learning": {"warmup": 500}, "faults": {"enabled": False}})
    assert c.detector.type == "robust"
    events = [e for e in _feed(c, v) if e.state == "raised"]
    assert len(events) == 1 and 1.7e9 + 2000 <= events[0].ts <= 1.7e9 + 2020
    assert events[0].parts is not None and events[0].parts["stuck"] > 1.0
    assert events[0].kind == "process"
    on = [e for e in _feed(from_mapping({"learning": {"warmup": 500}}), v) if e.state == "raised"]
    # One alert: the model's stuck part may raise it first, then the fault check reclassifies
    # it (the same alert_id again, reason "reclassified").
    assert len({e.alert_id for e in on}) == 1
    assert (on[-1].kind, on[-1].fault) == ("sensor_fault", "stuck")


def test_a_reading_after_a_long_gap_is_a_dropout() -> None:
    rng = np.random.default_rng(6)
    v = 5.0 + rng.normal(0, 0.1, 1500)
    stamps = np.arange(1500, dtype=float)
    stamps[1000:] += 60.0  # one minute of silence at 1 Hz
    c = from_mapping({"learning": {"warmup": 500}, "windows": {"max_gap_s": 300}})
    events = [e for e in _feed(c, v, stamps) if e.state == "raised"]
    assert len(events) == 1 and events[0].ts == 1.7e9 + 1060.0
    assert events[0].parts is not None and events[0].parts.get("gap") == 1.0
    off = from_mapping({"learning": {"warmup": 500, "gap_factor": 0}})
    assert not [e for e in _feed(off, v, stamps) if e.state == "raised"]


def test_auto_training_never_learns_from_what_the_stand_in_flagged() -> None:
    c = from_mapping(
        {
            "detector": {"type": "lstm-vae"},
            "learning": {"warmup": 100, "auto_train_readings": 400},
            "alerts": {"clear_m": 5, "clear_hold_s": 0, "refractory": 0},
        }
    )
    collected: dict[str, np.ndarray] = {}
    eng = Engine(c, fresh_model(c), Metrics(CollectorRegistry()), lambda ev: None, collected.update)
    rng = np.random.default_rng(7)
    v = 10.0 + rng.normal(0, 0.5, 600)
    v[250:260] += 50.0  # flagged by the Gaussian stand-in
    rows = [Reading("a", 1.0 + i, float(x)) for i, x in enumerate(v)]
    eng.process([(rows, 0.0)], now=700.0)
    got = collected["a"]
    assert got.size == 400 and got.max() < 20.0  # none of the fault, and none while raised


def test_a_backlog_is_worked_off_in_slices_that_never_split_a_message() -> None:
    """The daemon scores, acknowledges and pings the watchdog slice by slice (issue 12,
    item 4): a backlog of any size never outlasts WatchdogSec in one piece."""
    from streamwatch.daemon import _slices

    items = [([Reading("a", float(i), 0.0)] * n, 0.0, i) for i, n in enumerate([3, 3, 3, 9, 1])]
    parts = _slices(items, 5)  # type: ignore[arg-type]
    assert [[tok for *_, tok in p] for p in parts] == [[0, 1], [2, 3], [4]]
    assert _slices([], 5) == []


def _noise(n: int, seed: int) -> np.ndarray:
    return 5.0 + np.random.default_rng(seed).normal(0, 0.1, n)


def test_a_fast_sensor_confirms_a_raise_and_a_slow_one_does_not() -> None:
    """alerts.confirm_s: a 1 Hz sensor scored by windows raises on 2 anomalous verdicts of its
    last 3, a 5-minute one on 1; a per-reading detector, which sees a one-reading spike once,
    is not asked to confirm."""
    robust = cfg(detector={"type": "robust"}, alerts={"confirm_s": 10.0})
    v = _noise(800, 1)

    def rule(c: Config, step: float) -> tuple[int, int]:
        eng = Engine(c, fresh_model(c), Metrics(CollectorRegistry()), lambda ev: None)
        eng.process([([Reading("a", step * i, float(v[i])) for i in range(600)], 0.0)], now=0.0)
        alert = eng.windows.sensors["a"].state.alert
        return alert.k, alert.n

    assert rule(robust, 1.0) == (2, 3)
    assert rule(robust, 300.0) == (1, 1)
    assert rule(cfg(detector={"type": "robust"}, alerts={"confirm_s": 0.0}), 1.0) == (1, 1)
    gaussian = cfg(alerts={"confirm_s": 10.0})
    assert rule(gaussian, 1.0) == (1, 1)
    spike = v.copy()
    spike[600] += 5.0  # one reading: one anomalous verdict of the Gaussian, and it raises
    events = replay(gaussian, fresh_model(gaussian), {"a": (np.arange(800.0), spike)})
    assert events[0].state == "raised" and events[0].ts == 600.0


def test_a_silence_of_the_whole_feed_is_an_outage_not_a_dropout() -> None:
    """A logger pause silences every sensor at once: counted once, no alert. A sensor that
    alone goes quiet while the others report is still a dropout."""
    quiet = {"threshold": {"margin": 3.0}}  # no raise on the noise itself: only the gap counts
    c = from_mapping({"learning": {"warmup": 500}, **quiet})
    stamps = np.arange(1500, dtype=float)
    stamps[1000:] += 60.0  # one minute of silence on every sensor
    data = {s: (1.7e9 + stamps, _noise(1500, i)) for i, s in enumerate("abc")}
    reg = CollectorRegistry()
    events = replay(c, fresh_model(c), data, reg)
    assert not [e for e in events if e.state == "raised"]
    assert reg.get_sample_value("streamwatch_feed_outages_total") == 1
    alone = dict(data)
    alone["a"] = (1.7e9 + stamps, data["a"][1])
    for s in "bc":
        alone[s] = (1.7e9 + np.arange(1560, dtype=float), _noise(1560, ord(s)))
    raised = [e for e in replay(c, fresh_model(c), alone) if e.state == "raised"]
    assert [(e.sensor, e.parts and e.parts.get("gap")) for e in raised] == [("a", 1.0)]
    # A sensor that stopped long ago is no feed going quiet together: a dropout still.
    dead = {"a": data["a"], "b": (1.7e9 + np.arange(600, dtype=float), _noise(600, 12))}
    raised = [e for e in replay(c, fresh_model(c), dead) if e.state == "raised"]
    assert [(e.sensor, e.parts and e.parts.get("gap")) for e in raised] == [("a", 1.0)]
    off = from_mapping({"learning": {"warmup": 500, "feed_outage_sensors": 0}, **quiet})
    raised = [e for e in replay(off, fresh_model(off), data) if e.state == "raised"]
    assert sorted(e.sensor for e in raised) == ["a", "b", "c"]


def _in_small_batches(c: Config, model: object, v: np.ndarray) -> list:
    """Feed sensor 'a' at 1 Hz in batches of 5 readings, as the daemon drains a 1 Hz feed
    (the level moves between batches)."""
    events: list = []
    eng = Engine(c, model, Metrics(CollectorRegistry()), events.append)  # type: ignore[arg-type]
    for k in range(0, v.size, 5):
        rows = [Reading("a", 1.0 + i, float(v[i])) for i in range(k, min(k + 5, v.size))]
        eng.process([(rows, 0.0)], now=rows[-1].ts)
    return events


def test_protected_adaptation_follows_drift_but_never_learns_from_flagged_readings() -> None:
    """learning.follow_half_life: a slow drift moves the normal level along; readings judged
    anomalous, readings while an alert is raised and the guard after them never do."""
    learning = {"warmup": 500, "follow_half_life": 30, "follow_guard": 50}
    alerts = {"confirm_s": 0.0, "clear_m": 5, "clear_hold_s": 0}
    margin = {"margin": 3.0}  # no raise on the noise itself: only the drift counts
    c = from_mapping({"learning": learning, "alerts": alerts, "threshold": margin})
    off = from_mapping(
        {"learning": learning | {"follow_half_life": 0}, "alerts": alerts, "threshold": margin}
    )
    n = 4000
    drift = _noise(n, 2) + np.concatenate([np.zeros(500), np.linspace(0.0, 1.0, n - 500)])
    assert [e for e in _in_small_batches(off, fresh_model(off), drift) if e.state == "raised"]
    model = fresh_model(c)
    assert not [e for e in _in_small_batches(c, model, drift) if e.state == "raised"]
    assert model.detector.parts(["a"], drift[-20:][None, :])[0, 1] < 1.0  # level followed
    # A lasting fault: raised once and it stays raised, for its level is never learned.
    shifted = _noise(3000, 3)
    shifted[1000:] += 3.0
    model = fresh_model(c)
    events = _in_small_batches(c, model, shifted)
    assert [e.state for e in events] == ["raised"]
    assert model.detector.parts(["a"], shifted[-20:][None, :])[0, 1] > 10.0


def test_the_robust_detector_follows_only_the_readings_it_is_given() -> None:
    from streamwatch.config import RobustConfig
    from streamwatch.detectors.robust import RobustDetector

    det = RobustDetector(RobustConfig(), 20)
    det.adapt("a", _noise(500, 4))
    det.adapt("b", _noise(500, 5))
    before = det._sensor_state()
    det.follow(["a", "a"], np.array([6.0, float("nan")]), 0.5)
    after = det._sensor_state()
    assert after["b"] == before["b"]
    assert after["a"]["loc"] == pytest.approx(before["a"]["loc"] + 0.5 * (6.0 - before["a"]["loc"]))
    assert after["a"]["s"] == before["a"]["s"]  # spreads and scales stay as learned


def test_a_lasting_shift_raises_once_then_rebaselines_and_says_so() -> None:
    """learning.lasting_s: a level shift still anomalous after lasting_s is one alert, cleared
    with reason 'rebaselined' and the level before and after; the new level is then normal."""
    c = from_mapping(
        {"learning": {"warmup": 500, "lasting_s": 300.0}, "threshold": {"margin": 3.0}}
    )
    v = _noise(3000, 8)
    v[1000:] += 3.0
    events = replay(c, fresh_model(c), {"a": (np.arange(3000, dtype=float), v)})
    assert [(e.state, e.reason) for e in events] == [("raised", None), ("cleared", "rebaselined")]
    raised, cleared = events
    assert raised.alert_id == cleared.alert_id
    assert cleared.ts - raised.ts >= 300.0
    doc = cleared.to_json()
    assert doc["reason"] == "rebaselined"
    assert doc["baseline"]["from"] == pytest.approx(5.0, abs=0.05)
    assert doc["baseline"]["to"] == pytest.approx(8.0, abs=0.1)
    hold = from_mapping({"learning": {"warmup": 500, "lasting_s": 0}, "threshold": {"margin": 3.0}})
    events = replay(hold, fresh_model(hold), {"a": (np.arange(3000, dtype=float), v)})
    assert [e.state for e in events] == ["raised"]  # 0: the alert holds


def test_a_lasting_change_that_is_not_of_level_holds() -> None:
    """Lasting noise is not a new normal level: re-baselining would not make it normal, so
    the alert holds (stays raised, one alert) rather than clear and raise again."""
    c = from_mapping(
        {"learning": {"warmup": 500, "lasting_s": 300.0}, "threshold": {"margin": 3.0}}
    )
    v = _noise(3000, 9)
    v[1000:] += np.random.default_rng(10).normal(0, 2.0, 2000)
    events = replay(c, fresh_model(c), {"a": (np.arange(3000, dtype=float), v)})
    assert [e.state for e in events] == ["raised"]


def test_a_refused_auto_training_collects_afresh_and_retries_a_bounded_number_of_times() -> None:
    """learning.auto_train_retries: after the trained model is refused (it ended on the
    plateau), the engine collects twice the readings afresh and hands them over again, at
    most auto_train_retries times, counting each retry."""
    c = from_mapping(
        {
            "detector": {"type": "lstm-vae"},
            "learning": {"warmup": 100, "auto_train_readings": 100, "auto_train_retries": 1},
        }
    )
    handed: list[int] = []
    reg = CollectorRegistry()
    eng = Engine(
        c, fresh_model(c), Metrics(reg), lambda ev: None, lambda d: handed.append(d["a"].size)
    )
    v = _noise(1000, 11)

    def feed(a: int, b: int) -> None:
        eng.process([([Reading("a", 1.0 + i, float(v[i])) for i in range(a, b)], 0.0)], now=b)

    feed(0, 150)
    assert handed == [100] and not eng.learning
    eng.request_recollect()  # as the daemon does when it refuses the model
    feed(150, 500)
    assert handed == [100, 200]
    assert reg.get_sample_value("streamwatch_auto_train_retries_total") == 1
    eng.request_recollect()  # no retries left: the stand-in carries on
    feed(500, 1000)
    assert handed == [100, 200] and not eng.learning
    assert reg.get_sample_value("streamwatch_auto_train_retries_total") == 1
