"""Operator commands without a broker: validation, persisted state, and what mute,
maintenance and relearn do to the engine (driven directly, batch by batch)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamwatch.config import Config, from_mapping
from streamwatch.control.commands import CommandError, Maintenance, Mute, parse_command, request
from streamwatch.control.service import Operator
from streamwatch.control.snapshot import RecentScores, Snapshots
from streamwatch.control.state import ControlState
from streamwatch.ingest.parse import Reading
from streamwatch.outputs.metrics import Metrics
from streamwatch.pipeline.alerts import AlertEvent
from streamwatch.pipeline.engine import Engine
from tests.helpers import fresh_model

T0 = 1_700_000_000.0


def _cfg() -> Config:
    return from_mapping(
        {
            "detector": {"type": "robust"},
            "learning": {"warmup": 300},
            "alerts": {"raise_k": 2, "raise_n": 3, "clear_m": 5},
        }
    )


class Rig:
    """An engine, its operator and everything they published."""

    def __init__(self, state: Path | None = None) -> None:
        self.cfg = _cfg()
        self.events: list[AlertEvent] = []
        self.metrics = Metrics(CollectorRegistry())
        self.engine = Engine(self.cfg, fresh_model(self.cfg), self.metrics, self.events.append)
        self.control = ControlState(state)
        self.published: list[tuple[str, dict[str, Any], bool]] = []
        self.op = Operator(
            self.engine,
            self.control,
            self.metrics,
            lambda t, p, r: self.published.append((t, json.loads(p), r)),
            "streamwatch/cmd",
            "streamwatch/state",
        )
        self.t = T0

    def feed(self, sensor: str, values: np.ndarray) -> None:
        for v in values:
            self.engine.process([([Reading(sensor, self.t, float(v))], self.t)], now=self.t)
            self.t += 1.0

    def cmd(self, target: str, doc: dict[str, Any] | str) -> dict[str, Any]:
        payload = doc if isinstance(doc, str) else json.dumps(doc)
        return self.op.apply(request(target, payload, "test"), self.t)

    def state(self, sensor: str) -> Any:
        return self.engine.windows.sensors[sensor].state


def normal(n: int, level: float = 10.0, seed: int = 1) -> np.ndarray:
    return level + np.random.default_rng(seed).normal(0.0, 0.5, n)


# -- validation -----------------------------------------------------------------------------


def test_commands_validate_with_one_line_reasons() -> None:
    assert isinstance(parse_command('{"action": "mute", "for_s": 60}'), Mute)
    assert isinstance(parse_command(b'{"action": "maintenance", "for_s": 7200}'), Maintenance)
    bad = {
        b"{nope": "not JSON",
        b"[1]": "a command is a JSON object",
        b'{"action": "explode"}': "action must be one of",
        b'{"action": "mute"}': "for_s: Field required",
        b'{"action": "mute", "for_s": -5}': "for_s: Input should be greater than 0",
        b'{"action": "mute", "for_s": 60, "colour": "red"}': "colour: Extra inputs",
        b'{"action": "ack"}': "alert_id: Field required",
        b'{"action": "unmute", "x": "' + b"y" * 5000 + b'"}': "at most 4096 bytes",
    }
    for payload, why in bad.items():
        with pytest.raises(CommandError, match=why):
            parse_command(payload)
    assert request("a+b", '{"action": "unmute"}', "test").error is not None


def test_bad_commands_answer_an_error_count_it_and_change_nothing(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "operator.json")
    rig.feed("a", normal(400))
    before = dict(rig.control.holds), dict(rig.control.acked)
    cases: list[tuple[str, dict[str, Any] | str]] = [
        ("a", "{nope"),
        ("a", {"action": "mute", "for_s": 0}),
        ("a", {"action": "unmute"}),  # not muted
        ("a", {"action": "ack", "alert_id": "deadbeef"}),  # nothing raised
        ("ghost", {"action": "relearn"}),  # not tracked
    ]
    for target, doc in cases:
        res = rig.cmd(target, doc)
        assert res["ok"] is False and res["error"], res
        assert res["id"] == target
    assert (dict(rig.control.holds), dict(rig.control.acked)) == before
    assert not (tmp_path / "operator.json").exists()
    results = [d for t, d, _ in rig.published if t.endswith("/result")]
    assert len(results) == 5 and not any(d["ok"] for d in results)
    assert not [t for t, _, _ in rig.published if t.startswith("streamwatch/state/")]
    assert rig.metrics.commands.labels("invalid", "error")._value.get() == 2
    assert rig.metrics.commands.labels("unmute", "error")._value.get() == 1


# -- mute, maintenance, relearn -----------------------------------------------------------


def test_muted_sensor_raises_nothing_until_the_mute_ends() -> None:
    rig = Rig()
    rig.feed("a", normal(400))
    assert rig.state("a").phase == "scored"
    assert rig.cmd("a", {"action": "mute", "for_s": 10})["ok"]
    rig.feed("a", np.full(20, 40.0))  # far out, inside the mute
    assert rig.events == []
    rig.op.tick(rig.t)  # the mute ends
    assert "a" not in rig.engine.muted
    rig.feed("a", np.full(5, 40.0))
    assert [e.state for e in rig.events] == ["raised"]
    state_docs = [d for t, d, r in rig.published if t == "streamwatch/state/a"]
    assert state_docs[0]["muted"] is True and state_docs[-1]["muted"] is False


def test_maintenance_readings_move_no_baseline_threshold_or_training() -> None:
    rig = Rig()
    rig.feed("a", normal(400))
    det = rig.engine.detector
    baseline = det._sensor_state()["a"]
    thr = rig.state("a").threshold
    assert rig.cmd("a", {"action": "maintenance", "for_s": 3600})["ok"]
    rig.feed("a", normal(300, level=25.0, seed=2))  # a calibration run at another level
    assert rig.events == []
    assert det._sensor_state()["a"] == baseline
    assert rig.state("a").threshold == thr
    # A sensor first seen during maintenance does not warm up on it.
    assert rig.cmd("b", {"action": "maintenance", "for_s": 3600})["ok"]
    rig.feed("b", normal(400))
    assert rig.state("b").phase == "warming" and rig.state("b").warm == []


def test_relearn_clears_the_alert_and_arms_on_the_new_level() -> None:
    rig = Rig()
    rig.feed("a", normal(400))
    rig.feed("a", normal(50, level=30.0, seed=3))  # a lasting change
    assert [e.state for e in rig.events] == ["raised"]
    res = rig.cmd("a", {"action": "relearn", "reason": "new pump"})
    assert res["ok"], res
    assert [e.state for e in rig.events] == ["raised", "cleared"]
    assert rig.events[-1].reason == "relearn: new pump"
    assert rig.engine.raised == {}
    assert rig.state("a").phase == "warming"
    rig.feed("a", normal(400, level=30.0, seed=4))
    st = rig.state("a")
    assert st.phase == "scored"
    assert len(rig.events) == 2  # armed on the new level, quiet there
    rig.feed("a", np.full(5, 60.0))
    assert [e.state for e in rig.events][-1] == "raised"


def test_ack_marks_the_raised_alert_and_goes_when_it_clears(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "op.json")
    rig.feed("a", normal(400))
    rig.feed("a", np.full(4, 40.0))
    alert_id = rig.engine.raised["a"]
    assert rig.cmd("a", {"action": "ack", "alert_id": alert_id})["ok"]
    assert rig.control.acked == {"a": alert_id}
    state = [d for t, d, _ in rig.published if t == "streamwatch/state/a"][-1]
    assert state["acked"] is True and state["alert_id"] == alert_id
    assert json.loads((tmp_path / "op.json").read_text())["acked"] == {"a": alert_id}
    rig.op.cleared("a")
    assert rig.control.acked == {}


def test_mute_end_time_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "operator.json"
    rig = Rig(path)
    assert rig.cmd("pump/7", {"action": "mute", "for_s": 600, "reason": "known"})["ok"]
    again = ControlState(path)
    hold = again.holds["pump/7"]
    assert hold.until == pytest.approx(T0 + 600) and hold.reason == "known"
    assert again.muted == {"pump/7"} and again.maintenance == set()
    assert again.expire(T0 + 599) == [] and again.expire(T0 + 600) == ["pump/7"]


def test_unwritable_state_refuses_the_command_and_changes_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    rig = Rig(blocker / "operator.json")  # its folder is a file: cannot be written
    res = rig.cmd("a", {"action": "mute", "for_s": 60})
    assert res["ok"] is False and "cannot persist" in res["error"]
    assert rig.control.holds == {} and rig.engine.muted == set()


# -- the page's data ------------------------------------------------------------------------


def test_recent_scores_are_kept_per_batch_capped_and_thinned() -> None:
    ring = RecentScores(horizon_s=100.0, max_rows=1000)
    for i in range(300):
        ring.add(["a", "b"], [T0 + i, T0 + i], np.array([1.0, 2.0]), np.array([3.0, math.nan]))
    assert ring._rows <= 1000
    out = ring.by_sensor(points=20)
    assert set(out) == {"a", "b"} and len(out["a"]) <= 20
    assert out["a"][-1] == [T0 + 299, 1.0, 3.0]
    assert out["b"][-1][2] is None
    first = out["a"][0][0]
    assert first is not None and first >= T0 + 299 - 100


def test_snapshot_is_built_on_request_and_names_every_state() -> None:
    rig = Rig()
    snaps = Snapshots(rig.engine, rig.control, every_s=0.0)
    rig.feed("a", normal(400))
    rig.feed("w", normal(10))
    rig.cmd("m", {"action": "mute", "for_s": 60})
    snaps.tick(rig.t)
    assert snaps._latest is None  # nobody asked
    snaps.want()
    snaps.tick(rig.t)
    snap = snaps.latest()
    assert snap is not None
    states = {s["id"]: s["state"] for s in snap["sensors"]}
    assert states == {"a": "armed", "w": "warming", "m": "muted"}
    a = next(s for s in snap["sensors"] if s["id"] == "a")
    assert a["history"] and a["threshold"] is not None


def test_relearn_drops_a_fit_of_the_old_behaviour_still_running() -> None:
    """A slow (GMM) fit started before the relearn must not arm the sensor afterwards."""
    c = from_mapping({"detector": {"type": "gmm"}, "learning": {"warmup": 300}})
    engine = Engine(
        c, fresh_model(c), Metrics(CollectorRegistry()), lambda ev: None, background_fits=True
    )
    try:
        t = T0
        for v in normal(400):
            engine.process([([Reading("a", t, float(v))], t)], now=t)
            t += 1.0
            if engine.windows.sensors["a"].state.phase == "fitting":
                break
        st = engine.windows.sensors["a"].state
        assert st.phase == "fitting"
        futures = [f for *_, f in engine.lifecycle._fits]
        assert futures
        engine.relearn("a", "relearn")
        for future in futures:
            future.result(60)  # the old fit finished: it must not be installed
        engine.process([([Reading("a", t, 10.0)], t)], now=t)
        assert st.phase == "warming" and not engine.detector.knows("a")
    finally:
        engine.close()


def test_a_command_message_is_acknowledged_after_it_is_applied_and_persisted(
    tmp_path: Path,
) -> None:
    """The worker's turn (Daemon._process, no broker needed): the command's state is on disk
    and its result in the outbox before any of the turn's messages is acknowledged, and the
    readings around it are all taken."""
    from streamwatch.daemon import Daemon

    cfg = from_mapping(
        {"state_dir": str(tmp_path), "metrics": {"enabled": False}, "learning": {"warmup": 300}}
    )
    daemon = Daemon(cfg, registry=CollectorRegistry())
    order: list[str] = []
    saved: list[bool] = []
    daemon.link.ack = lambda tokens: order.append(f"ack {list(tokens)}")  # type: ignore[method-assign]
    real_save = daemon.control.save

    def save() -> None:
        real_save()
        saved.append(True)
        order.append("saved")

    daemon.control.save = save  # type: ignore[method-assign]

    def flush() -> bool:
        order.append(f"flush {len(daemon.outbox)}")
        return True

    daemon.outbox.flush = flush  # type: ignore[method-assign]
    t = T0
    items: list[Any] = [([Reading("a", t + i, 10.0)], t, (1, i + 1, 1)) for i in range(3)]
    items.append((request("a", '{"action": "mute", "for_s": 60}', "mqtt"), t, (1, 4, 1)))
    items.append(([Reading("a", t + 3, 10.0)], t, (1, 5, 1)))
    try:
        daemon._process(items)
        # Persisted, then its retained state and result made durable, then all acknowledged.
        assert order == [
            "saved",
            "flush 2",
            "ack [(1, 1, 1), (1, 2, 1), (1, 3, 1), (1, 4, 1), (1, 5, 1)]",
        ]
        assert json.loads((tmp_path / "operator.json").read_text())["holds"]["a"]["until"] > 0
        assert daemon.engine.windows.sensors["a"].state.series.readings == 4
    finally:
        daemon.engine.close()
        daemon.outbox.close()
