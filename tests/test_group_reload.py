"""Reloading the group model (SIGHUP) and imputed members in a group alert's payload."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import CollectorRegistry

from streamwatch.commands import main
from streamwatch.commands.common import EXIT_OK
from streamwatch.config import from_mapping
from streamwatch.detectors import bundle
from streamwatch.outputs.metrics import Metrics
from streamwatch.pipeline.alerts import AlertEvent
from streamwatch.pipeline.engine import Engine
from tests.helpers import fresh_model
from tests.test_group_engine import BREAK, T0, _long_csv, cfg, pump, readings


def _trained_groups(tmp_path: Path) -> Path:
    """`streamwatch train` with [groups] on the intact pump: the group bundle's path."""
    conf = tmp_path / "groups.toml"
    conf.write_text('[groups]\npatterns = ["plant/+/#"]\n')
    normal = _long_csv(tmp_path / "normal.csv", broken=False)
    model = tmp_path / "model"
    args = ["--config", str(conf), "--model-dir", str(model), "--detector", "gaussian"]
    assert main(["train", "--data", str(normal), *args]) == EXIT_OK
    return tmp_path / "model.groups"


def test_swapped_group_model_scores_at_once_and_keeps_the_raised_alert(tmp_path: Path) -> None:
    """An alert raised under the online-learned model is carried through the swap: the new
    model clears it once the break is over, and never raises it a second time."""
    trained = bundle.load(_trained_groups(tmp_path))
    c = cfg()
    events: list[AlertEvent] = []
    eng = Engine(c, fresh_model(c), Metrics(CollectorRegistry()), events.append)
    rows = readings(pump())
    swapped_at = None
    for i in range(0, len(rows), 100):
        chunk = rows[i : i + 100]
        if swapped_at is None and any(e.state == "raised" for e in events):
            eng.request_group_swap(trained)
            swapped_at = chunk[0].ts
        eng.process([(chunk, chunk[-1].ts)], now=chunk[-1].ts)
    assert swapped_at is not None and swapped_at < T0 + BREAK.stop
    assert eng.groups is not None and eng.groups.model is trained
    gs = eng.groups.groups["plant/p1"]
    assert gs.threshold == trained.thresholds.per_sensor["plant/p1"]
    assert gs.aligner.members == ["current", "flow", "pressure"]
    states = [e.state for e in events]
    assert states.count("raised") == 1
    assert states[-1] == "cleared" and events[-1].ts > swapped_at


def test_daemon_reload_takes_the_group_bundle_and_refuses_a_broken_one(tmp_path: Path) -> None:
    from streamwatch.daemon import Daemon

    path = _trained_groups(tmp_path)
    c = from_mapping(
        {
            "state_dir": str(tmp_path / "state"),
            "model_dir": str(tmp_path / "model"),
            "metrics": {"enabled": False},
            "detector": {"type": "gaussian"},
            "groups": {"patterns": ["plant/+/#"]},
        }
    )
    daemon = Daemon(c, registry=CollectorRegistry())
    try:
        assert daemon.engine.groups is not None
        before = daemon.engine.groups.model
        assert daemon.reload() is True
        daemon.engine.process([])
        after = daemon.engine.groups.model
        assert after is not before and after.detector.knows("plant/p1")

        manifest = path / bundle.MANIFEST
        doc = json.loads(manifest.read_text())
        doc["files"] = {k: "0" * 64 for k in doc.get("files", {})} or {"x": "0"}
        manifest.write_text(json.dumps(doc))
        assert daemon.reload() is False
        daemon.engine.process([])
        assert daemon.engine.groups.model is after
    finally:
        daemon.engine.close()


def test_group_alert_counts_the_steps_a_silent_member_was_imputed() -> None:
    rows = [
        r
        for r in readings(pump(seed=0))
        if not (r.sensor.endswith("pressure") and T0 + BREAK.start - 10 <= r.ts < BREAK.stop + T0)
    ]
    events: list[AlertEvent] = []
    c = cfg(groups={"max_age_s": 3.0})
    eng = Engine(c, fresh_model(c), Metrics(CollectorRegistry()), events.append)
    for i in range(0, len(rows), 100):
        chunk = rows[i : i + 100]
        eng.process([(chunk, chunk[-1].ts)], now=chunk[-1].ts)
    raised = [json.loads(e.payload()) for e in events if e.state == "raised"]
    assert raised
    by_member = {s["member"]: s for s in raised[0]["sensors"]}
    assert by_member["pressure"]["value"] is None and by_member["pressure"]["imputed"] > 0
    assert by_member["current"]["imputed"] == 0 and by_member["flow"]["imputed"] == 0
