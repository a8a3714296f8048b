"""Groups through the engine: warm-up on aligned steps, a coupling break raising one group
alert that names the member that broke first, members not scored alone, counted misses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from streamwatch.commands import main
from streamwatch.commands.common import EXIT_OK
from streamwatch.config import Config, from_mapping
from streamwatch.detectors import bundle
from streamwatch.ingest.parse import Reading
from streamwatch.outputs.metrics import Metrics
from streamwatch.pipeline.alerts import AlertEvent
from streamwatch.pipeline.engine import Engine
from tests.helpers import fresh_model

T0 = 1_700_000_000.0
N = 900
BREAK = slice(700, 760)


def cfg(**sections: dict) -> Config:
    data: dict = {
        "groups": {"patterns": ["plant/+/#"]},
        "learning": {"warmup": 400},
        "alerts": {"clear_m": 5, "clear_hold_s": 0.0},
    }
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    return from_mapping(data)


def pump(seed: int = 0, broken: bool = True) -> dict[str, np.ndarray]:
    """Flow wanders over its range; current and pressure follow it. In the break, current
    runs *against* flow: every member stays inside its normal range."""
    rng = np.random.default_rng(seed)
    t = np.arange(N)
    flow = 50.0 + 10.0 * np.sin(2 * np.pi * t / 97.0) + rng.normal(0, 0.5, N)
    current = 2.0 + 0.1 * (flow - 50.0) + rng.normal(0, 0.05, N)
    pressure = 3.0 - 0.05 * (flow - 50.0) + rng.normal(0, 0.05, N)
    if broken:
        normal = current[: BREAK.start]
        against = 2.0 - 0.1 * (flow[BREAK] - 50.0) + rng.normal(0, 0.05, 60)
        current[BREAK] = np.clip(against, normal.min(), normal.max())
    return {"flow": flow, "current": current, "pressure": pressure}


def readings(members: dict[str, np.ndarray], group: str = "plant/p1") -> list[Reading]:
    """Members at their own times: current 0.3 s after flow, pressure 0.6 s after."""
    out = [
        Reading(f"{group}/{m}", T0 + i + 0.3 * k, float(v[i]))
        for k, (m, v) in enumerate(members.items())
        for i in range(N)
    ]
    out.sort(key=lambda r: r.ts)
    return out


def run(c: Config, rows: list[Reading]) -> tuple[list[AlertEvent], Engine, Metrics]:
    events: list[AlertEvent] = []
    metrics = Metrics(CollectorRegistry())
    eng = Engine(c, fresh_model(c), metrics, events.append)
    for i in range(0, len(rows), 100):
        chunk = rows[i : i + 100]
        eng.process([(chunk, chunk[-1].ts)], now=chunk[-1].ts)
    return events, eng, metrics


def test_coupling_break_raises_one_group_alert_naming_the_member() -> None:
    members = pump()
    lo = {m: v[: BREAK.start].min() for m, v in members.items()}
    hi = {m: v[: BREAK.start].max() for m, v in members.items()}
    for m, v in members.items():  # each member stays in its normal range (to noise)
        slack = 0.05 * (hi[m] - lo[m])
        assert lo[m] - slack <= v[BREAK].min() and v[BREAK].max() <= hi[m] + slack
    events, eng, _ = run(cfg(), readings(members))
    raised = [e for e in events if e.state == "raised"]
    assert len(raised) == 1
    ev = raised[0]
    assert ev.sensor == "plant/p1"
    assert T0 + BREAK.start <= ev.ts <= T0 + BREAK.stop
    doc = json.loads(ev.payload())
    assert doc["group"] == "plant/p1"
    assert doc["sensors"][0]["sensor"] == "plant/p1/current"
    assert {s["member"] for s in doc["sensors"]} == {"flow", "current", "pressure"}
    assert all(isinstance(s["value"], float) for s in doc["sensors"])
    assert sum(s["contribution"] for s in doc["sensors"]) == np_approx(1.0)
    # Grouped members are not scored alone: no per-sensor alert, no per-sensor windows.
    assert all(e.sensor == "plant/p1" for e in events)
    assert not eng.windows.sensors
    assert eng.groups is not None and eng.groups.groups["plant/p1"].aligner.period_s == 1.0
    assert "plant/p1" not in eng.raised or eng.raised["plant/p1"] == ev.alert_id


def np_approx(x: float) -> object:
    import pytest

    return pytest.approx(x, abs=1e-3)


def test_intact_coupling_raises_nothing() -> None:
    events, eng, metrics = run(cfg(), readings(pump(seed=1, broken=False)))
    assert events == []
    assert eng.groups is not None and eng.groups.scored > 0
    assert metrics.series("plant/p1").warming == 0


def test_member_gone_silent_is_imputed_and_counted() -> None:
    rows = [
        r
        for r in readings(pump(seed=2, broken=False))
        if not (r.sensor.endswith("pressure") and T0 + 500 <= r.ts < T0 + 520)
    ]
    _, eng, metrics = run(cfg(groups={"max_age_s": 3.0}), rows)
    assert eng.groups is not None
    assert eng.groups.missing_steps >= 15
    assert metrics.registry.get_sample_value("streamwatch_group_missing_steps_total") == float(
        eng.groups.missing_steps
    )


def test_score_members_alone_keeps_the_per_sensor_path() -> None:
    c = cfg(groups={"score_members_alone": True}, detector={"type": "gaussian"})
    _, eng, _ = run(c, readings(pump(seed=3, broken=False)))
    assert set(eng.windows.sensors) == {"plant/p1/flow", "plant/p1/current", "plant/p1/pressure"}


# -- train and replay with [groups] ------------------------------------------------------------


def _long_csv(path: Path, broken: bool) -> Path:
    """The pump's members at their own times, plus a sensor in no group, as a long CSV."""
    rows = readings(pump(seed=4, broken=broken))
    lines = ["timestamp,sensor,value"]
    lines += [f"{r.ts!r},{r.sensor},{r.value!r}" for r in rows]
    lines += [f"{T0 + i + 0.5!r},solo,{float(np.sin(i / 7.0))!r}" for i in range(N)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_with_groups_then_replay_raises_the_group_alert(tmp_path: Path) -> None:
    conf = tmp_path / "groups.toml"
    conf.write_text('[groups]\npatterns = ["plant/+/#"]\n')
    normal = _long_csv(tmp_path / "normal.csv", broken=False)
    model = tmp_path / "model"
    args = ["--config", str(conf), "--model-dir", str(model), "--detector", "gaussian"]
    assert main(["train", "--data", str(normal), *args]) == EXIT_OK
    single = bundle.load(model)
    assert single.trained_on["sensors"] == ["solo"]
    groups = bundle.load(tmp_path / "model.groups")
    assert groups.name == "mahalanobis"
    assert groups.trained_on["groups"]["plant/p1"]["members"] == ["current", "flow", "pressure"]
    assert groups.trained_on["groups"]["plant/p1"]["period_s"] == 1.0
    assert set(groups.thresholds.per_sensor) == {"plant/p1"}
    assert groups.detector.knows("plant/p1")

    broken = _long_csv(tmp_path / "broken.csv", broken=True)
    out = tmp_path / "alerts.jsonl"
    assert main(["replay", "--data", str(broken), "--alerts-out", str(out), *args]) == EXIT_OK
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    raised = [d for d in docs if d["state"] == "raised" and d.get("group") == "plant/p1"]
    assert len(raised) == 1
    assert raised[0]["sensors"][0]["member"] == "current"
    # The trained model scores at once: the alert comes in the break, not after a warm-up.
    assert T0 + BREAK.start <= raised[0]["ts"] <= T0 + BREAK.stop


def test_train_with_every_sensor_grouped_leaves_a_loadable_model_dir(tmp_path: Path) -> None:
    conf = tmp_path / "groups.toml"
    conf.write_text('[groups]\npatterns = ["+/#"]\n')  # solo has one level: in no group
    normal = _long_csv(tmp_path / "normal.csv", broken=False)
    text = "\n".join(line for line in normal.read_text().splitlines() if ",solo," not in line)
    normal.write_text(text + "\n")
    model = tmp_path / "model"
    assert (
        main(["train", "--data", str(normal), "--config", str(conf), "--model-dir", str(model)])
        == EXIT_OK
    )
    assert bundle.load(model).trained_on["sensors"] == []
    assert bundle.load(tmp_path / "model.groups").trained_on["groups"]["plant"]["members"] == [
        "p1/current",
        "p1/flow",
        "p1/pressure",
    ]


def test_idle_group_is_evicted_and_its_raised_alert_cleared() -> None:
    events: list[AlertEvent] = []
    metrics = Metrics(CollectorRegistry())
    eng = Engine(cfg(), fresh_model(cfg()), metrics, events.append)
    rows = [r for r in readings(pump()) if r.ts < T0 + BREAK.start + 20]  # stops mid-break
    for i in range(0, len(rows), 100):
        chunk = rows[i : i + 100]
        eng.process([(chunk, chunk[-1].ts)], now=1000.0)
    assert [e.state for e in events] == ["raised"]
    assert eng.raised == {"plant/p1": events[0].alert_id}
    eng.evict_idle(1000.0 + eng.cfg.windows.idle_evict_s + 1)
    assert [e.state for e in events] == ["raised", "cleared"]
    cleared = json.loads(events[1].payload())
    assert cleared["reason"] == "evicted" and cleared["group"] == "plant/p1"
    assert cleared["alert_id"] == events[0].alert_id
    assert eng.raised == {}
    assert eng.groups is not None and not eng.groups.groups and eng.groups.evicted == 1
    # What was learned online for it is forgotten: churn cannot grow the model.
    assert not eng.groups.model.detector.knows("plant/p1")
    assert "plant/p1" not in eng.groups.model.thresholds.per_sensor


def test_member_the_trained_group_lacks_is_counted_not_scored() -> None:
    rows = readings(pump(seed=5, broken=False))
    _, eng, metrics = run(cfg(), rows)
    assert eng.groups is not None
    extra = [Reading("plant/p1/vibration", T0 + N + i, 1.0) for i in range(3)]
    eng.process([(extra, extra[-1].ts)], now=extra[-1].ts)
    assert metrics.rejected.labels("unknown_member")._value.get() == 3.0
    assert eng.groups.groups["plant/p1"].aligner.members == ["current", "flow", "pressure"]
