"""The sensor-fault checks (streamwatch.pipeline.faults): each check on its own, then through
the engine (kinds on the alerts, silence on the idle sweep, faults kept out of learning)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamwatch.config import Config, ConfigError, FaultsConfig, from_mapping
from streamwatch.ingest.parse import Reading
from streamwatch.outputs.metrics import Metrics
from streamwatch.pipeline import faults as F
from streamwatch.pipeline.alerts import AlertEvent, AlertState
from streamwatch.pipeline.engine import Engine
from streamwatch.replay import replay
from tests.helpers import fresh_model

W = 20


def _faults(**cfg: Any) -> tuple[F.Faults, CollectorRegistry]:
    reg = CollectorRegistry()
    return F.Faults(FaultsConfig(**cfg), Metrics(reg), 1), reg


def _state() -> Any:
    series = SimpleNamespace(raised=0, active=0)
    return SimpleNamespace(fault=None, alert=AlertState(1, 1, 1), threshold=1.0, series=series)


def _windows(values: np.ndarray) -> np.ndarray:
    """Every full window of ``values`` (stride 1)."""
    return np.lib.stride_tricks.sliding_window_view(values, W).copy()


def _check(f: F.Faults, sensor: str, st: Any, x: np.ndarray) -> np.ndarray:
    return f.check([sensor] * len(x), [st] * len(x), x, np.ones(len(x), dtype=bool))


def test_stuck_fires_on_a_flat_span_and_never_on_noise() -> None:
    rng = np.random.default_rng(0)
    f, reg = _faults()
    st = _state()
    f.learn_series("a", st, rng.normal(10.0, 1.0, 500))
    assert st.fault.noise > 0
    normal = _windows(rng.normal(10.0, 1.0, 5000))
    assert not _check(f, "a", st, normal).any()
    flat = rng.normal(10.0, 1.0, 40)
    flat[25:] = flat[24]  # frozen: 15 repeats
    codes = _check(f, "a", st, _windows(flat))
    # flagged once the newest stuck_span readings are all frozen, not before
    first = int(np.flatnonzero(codes)[0])
    assert first + W - 1 == 24 + F.FaultsConfig().stuck_span - 1
    assert set(codes[first:].tolist()) == {F.STUCK}
    assert "a" in f.faulted
    assert reg.get_sample_value("streamwatch_sensors_in_fault", {"fault": "stuck"}) == 1
    _check(f, "a", st, normal[:3])
    assert "a" not in f.faulted
    assert reg.get_sample_value("streamwatch_sensors_in_fault", {"fault": "stuck"}) == 0


def test_stuck_above_everything_learned_is_a_rail() -> None:
    rng = np.random.default_rng(1)
    f, _ = _faults()
    st = _state()
    f.learn_series("a", st, rng.normal(0.0, 1.0, 500))
    pinned = np.concatenate([rng.normal(0.0, 1.0, 10), np.full(20, 50.0)])
    assert _check(f, "a", st, pinned[None, -W:])[0] == F.RAIL


def test_a_sensor_that_repeats_readings_normally_is_not_judged_stuck() -> None:
    rng = np.random.default_rng(2)
    f, _ = _faults()
    st = _state()
    f.learn_series("a", st, np.round(rng.normal(10.0, 1.0, 500)))  # integer steps: repeats
    assert st.fault.noise == 0
    assert not _check(f, "a", st, np.full((1, W), 10.0)).any()


def test_a_continuous_sensor_gone_coarse_is_a_quantisation_fault() -> None:
    rng = np.random.default_rng(9)
    f, reg = _faults()
    st = _state()
    f.learn_series("a", st, rng.normal(10.0, 1.0, 500))
    assert not _check(f, "a", st, _windows(rng.normal(10.0, 1.0, 5000))).any()
    coarse = np.round(rng.normal(10.0, 1.0, W) / 2.0) * 2.0  # 2-unit steps: a few levels
    assert len(np.unique(coarse)) <= W // 4
    assert _check(f, "a", st, coarse[None, :])[0] == F.QUANTISATION
    assert reg.get_sample_value("streamwatch_sensors_in_fault", {"fault": "quantisation"}) == 1
    off, _ = _faults(quantisation_share=0)
    st2 = _state()
    off.learn_series("a", st2, rng.normal(10.0, 1.0, 500))
    assert _check(off, "a", st2, coarse[None, :])[0] == F.OK


def test_out_of_range_by_pattern_first_match_wins() -> None:
    f, reg = _faults(
        ranges=[
            {"pattern": "plant/+/temp", "min": -20.0, "max": 100.0},
            {"pattern": "plant/#", "max": 5.0},
        ]
    )
    x = np.full((1, W), 50.0)
    assert _check(f, "plant/p1/temp", _state(), x)[0] == F.OK
    assert _check(f, "plant/p1/flow", _state(), x)[0] == F.OUT_OF_RANGE
    assert _check(f, "other", _state(), x)[0] == F.OK
    x[0, -1] = 101.0
    assert _check(f, "plant/p2/temp", _state(), x)[0] == F.OUT_OF_RANGE
    x[0, -1] = -21.0
    assert _check(f, "plant/p3/temp", _state(), x)[0] == F.OUT_OF_RANGE
    assert reg.get_sample_value("streamwatch_sensors_in_fault", {"fault": "out_of_range"}) == 3


@pytest.mark.parametrize(
    "rng_cfg",
    [{"pattern": "pl+nt/#", "max": 1.0}, {"pattern": "#/x"}, {"pattern": "a", "min": 2, "max": 1}],
)
def test_bad_ranges_are_config_errors(rng_cfg: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"faults\.ranges"):
        from_mapping({"faults": {"ranges": [rng_cfg]}})


def test_a_known_sensor_learns_from_normal_windows_that_do_not_overlap() -> None:
    rng = np.random.default_rng(3)
    f, _ = _faults(learn_windows=5)
    st = _state()
    x = _windows(rng.normal(0.0, 1.0, 5 * W))
    _check(f, "a", st, x[: 4 * W])
    assert st.fault.learned == 4 and st.fault.noise < 0
    _check(f, "a", st, x[4 * W :])
    assert st.fault.learned == 5 and st.fault.noise > 0


def test_payload_says_kind_and_fault() -> None:
    ev = AlertEvent("s", "raised", 1.0, 2.0, 1.0, "robust", 0.0, 1.0, "id")
    assert ev.to_json()["kind"] == "process" and "fault" not in ev.to_json()
    ev.kind, ev.fault = F.SENSOR_FAULT, "stuck"
    assert ev.to_json()["kind"] == "sensor_fault" and ev.to_json()["fault"] == "stuck"


# -- through the engine ------------------------------------------------------------------------


def _cfg(**sections: Any) -> Config:
    data: dict[str, Any] = {"learning": {"warmup": 300}, "faults": {"silent_min_s": 5.0}}
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    return from_mapping(data)


def _final_kinds(events: list[AlertEvent]) -> dict[str, tuple[str, str | None]]:
    """Alert id -> (kind, fault) as last published (a reclassification comes after)."""
    return {e.alert_id: (e.kind, e.fault) for e in events if e.state == "raised"}


def test_replay_tells_a_flatline_from_a_level_shift() -> None:
    rng = np.random.default_rng(4)
    n = 1500
    ts = 1.7e9 + np.arange(n, dtype=float)
    stuck = np.sin(np.arange(n) / 8.0) + rng.normal(0, 0.1, n)
    stuck[1000:1100] = stuck[999]
    shift = np.sin(np.arange(n) / 8.0) + rng.normal(0, 0.1, n)
    shift[1000:1100] += 3.0
    c = _cfg()
    events = replay(c, fresh_model(c), {"stuck": (ts, stuck), "shift": (ts, shift)})
    by = {s: [e for e in events if e.sensor == s] for s in ("stuck", "shift")}
    assert set(_final_kinds(by["stuck"]).values()) == {("sensor_fault", "stuck")}
    assert set(_final_kinds(by["shift"]).values()) == {("process", None)}
    cleared = [e for e in by["stuck"] if e.state == "cleared"]
    assert cleared and cleared[0].kind == "sensor_fault" and cleared[0].fault == "stuck"


def test_a_dropout_seen_on_the_next_reading_is_a_silent_fault() -> None:
    rng = np.random.default_rng(6)
    v = 5.0 + rng.normal(0, 0.1, 800)
    stamps = np.arange(800, dtype=float)
    stamps[600:] += 60.0
    c = _cfg(windows={"max_gap_s": 300})
    events = replay(c, fresh_model(c), {"a": (1.7e9 + stamps, v)})
    raised = [e for e in events if e.state == "raised"]
    assert len(raised) == 1 and raised[0].fault == "silent" and raised[0].kind == "sensor_fault"


class _Run:
    """An engine fed by hand, with wall-clock ``now`` under the test's control."""

    def __init__(self, c: Config) -> None:
        self.events: list[AlertEvent] = []
        self.reg = CollectorRegistry()
        self.eng = Engine(c, fresh_model(c), Metrics(self.reg), self.events.append)
        self.t = 1.7e9

    def feed(self, sensors: str, values: Any) -> None:
        """Each value to each of ``sensors`` (comma-separated), one second apart."""
        for v in values:
            self.t += 1.0
            rows = [Reading(s, self.t, float(v)) for s in sensors.split(",")]
            self.eng.process([(rows, self.t)], now=self.t)


def test_silence_raises_on_the_sweep_and_the_next_reading_clears_it() -> None:
    rng = np.random.default_rng(7)
    run = _Run(_cfg())
    run.feed("a,b", 10.0 + rng.normal(0, 0.5, 400))
    eng = run.eng
    st = eng.windows.sensors["a"].state
    assert st.gap_limit == 3.0  # gap_factor 3 x 1 s
    assert eng.evict_idle(run.t + 2.0) == []  # under the floor (5 s)
    eng.muted = {"b"}
    raised = eng.evict_idle(run.t + 30.0)
    assert [(e.sensor, e.kind, e.fault, e.state) for e in raised] == [
        ("a", "sensor_fault", "silent", "raised")
    ]
    assert eng.raised["a"] == raised[0].alert_id
    assert eng.faults.silent == {"a", "b"} and eng.faults.faulted == {"a", "b"}
    assert eng.evict_idle(run.t + 40.0) == []  # raised once
    assert run.reg.get_sample_value("streamwatch_sensor_faults_total", {"fault": "silent"}) == 1
    assert run.reg.get_sample_value("streamwatch_sensors_in_fault", {"fault": "silent"}) == 2
    run.t += 40.0
    before = len(run.events)
    process = run.reg.get_sample_value("streamwatch_alert_raises_total", {"kind": "process"})
    run.feed("a", [10.0])
    new = run.events[before:]
    assert [(e.state, e.reason, e.fault) for e in new] == [("cleared", "resumed", "silent")]
    assert "a" not in eng.raised and "a" not in eng.faults.faulted
    run.feed("a", 10.0 + rng.normal(0, 0.5, 30))  # no gap verdict for the reported silence
    assert len(run.events) == before + 1
    assert run.reg.get_sample_value("streamwatch_alert_raises_total", {"kind": "process"}) == (
        process
    )


def test_a_sensor_in_fault_is_kept_out_of_learning() -> None:
    """Auto-training collects no reading of a sensor in fault (the maintenance path), even
    muted, when no alert is raised to keep them out."""
    c = from_mapping(
        {
            "detector": {"type": "lstm-vae"},
            "learning": {"warmup": 100, "auto_train_readings": 100_000},
            "faults": {"ranges": [{"pattern": "a", "max": 20.0}]},
            "alerts": {"clear_m": 1, "clear_hold_s": 0, "refractory": 0},
        }
    )
    eng = Engine(c, fresh_model(c), Metrics(CollectorRegistry()), lambda ev: None, lambda d: None)
    eng.muted = {"a"}
    rng = np.random.default_rng(8)
    v = 10.0 + rng.normal(0, 0.5, 400)
    v[250:260] = 25.0  # out of range, 10 readings
    rows = [Reading("a", 1.0 + i, float(x)) for i, x in enumerate(v)]
    for i in range(0, len(rows), 7):
        eng.process([(rows[i : i + 7], 0.0)], now=1.0 + i)
    collected = eng.lifecycle._collect
    assert collected is not None
    got = np.asarray(collected["a"])
    assert got.size > 250 and not (got > 20.0).any()
    assert eng.faults.faulted == set()  # back to normal after the excursion


def test_faults_off_checks_nothing() -> None:
    f, _ = _faults(enabled=False)
    assert not _check(f, "a", _state(), np.full((3, W), 1.0)).any()
    sw = SimpleNamespace(last_seen=0.0, last_ts=0.0, state=_state())
    sw.state.gap_limit = 1.0
    assert f.sweep(1e6, SimpleNamespace(sensors={"a": sw}), set(), "robust") == []
    on, _ = _faults()
    assert [e.fault for e in on.sweep(1e6, SimpleNamespace(sensors={"a": sw}), set(), "x")] == [
        "silent"
    ]
