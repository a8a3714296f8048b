"""The evaluation harness of issue 11: group (SKAB) scoring, the SKAB loader, splits, the
``warmup`` and ``train`` protocols, the seed spread, and ``bench/detection.py --quick``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simulators.generate import AnomalySpec, simulate
from streamwatch.config import from_mapping
from streamwatch.evaluation.datasets import Dataset, from_simulated, from_skab, nab_split, subset
from streamwatch.evaluation.report import markdown
from streamwatch.evaluation.runs import (
    PROTOCOLS,
    evaluate,
    run_trained,
    seed_spread,
    training_series,
    with_seed,
)
from streamwatch.evaluation.scoring import Event, alert_spans, group_event_scores

ROOT = Path(__file__).resolve().parents[1]


def test_alert_spans_from_transitions() -> None:
    tr = [(1.0, "raised"), (2.0, "raised"), (4.0, "cleared"), (5.0, "cleared"), (7.0, "raised")]
    assert alert_spans(tr) == [(1.0, 4.0), (7.0, float("inf"))]
    assert alert_spans(tr, end=9.0)[-1] == (7.0, 9.0)
    assert alert_spans([]) == []


def test_group_event_scores_hand_case() -> None:
    t = np.arange(20, dtype=float)
    y = np.zeros(20, dtype=int)
    y[5:10] = 1
    groups = {"g": ["g/a", "g/b"]}
    events = [Event("g", 5.0, 9.0, "valve")]
    transitions = {
        "g/a": [(0.0, "raised"), (1.0, "cleared"), (6.0, "raised"), (12.0, "cleared")],
        "g/b": [(15.0, "raised")],  # never cleared: runs to the end
    }
    sc = group_event_scores(groups, events, transitions, {"g": t}, {"g": y}, {"g": 2.0})
    # The raise at 0 is in training (before 2); 6 finds the event 1 s in; 15 is false.
    assert (sc.events, sc.found, sc.raises, sc.false_raises) == (1, 1, 2, 1)
    assert sc.mean_delay_s == 1.0 and sc.found_per_group == {"g": 1}
    # Predicted rows 6..11 and 15..19 (t >= 2): TP 6..9 = 4, FP 10, 11, 15..19 = 7, FN 5 = 1.
    assert sc.scored_rows == 18
    assert sc.point_precision == pytest.approx(4 / 11)
    assert sc.point_recall == pytest.approx(4 / 5)
    p, r = 4 / 11, 4 / 5
    assert sc.point_f1 == pytest.approx(2 * p * r / (p + r))
    # A raise on another sensor of the group finds it too; silence gives F1 0.
    other = group_event_scores(groups, events, {"g/b": [(9.0, "raised")]}, {"g": t}, {"g": y})
    assert other.found == 1 and other.false_raises == 0 and other.mean_delay_s == 4.0
    silent = group_event_scores(groups, events, {}, {"g": t}, {"g": y})
    assert silent.found == 0 and silent.point_f1 == 0.0 and silent.point_precision is None


def _skab_file(path: Path, start: str, labels: list[int] | None) -> None:
    cols = "Accelerometer1RMS;Current;Volume Flow RateRMS"
    head = "datetime;" + cols + (";anomaly;changepoint" if labels is not None else "")
    rows = [head]
    for i in range(len(labels) if labels is not None else 12):
        row = f"{start}:{i:02d};{0.02 + i / 1000};{1.0 + i};{32.0 - i}"
        if labels is not None:
            row += f";{float(labels[i])};0.0"
        rows.append(row)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_skab_loader_on_a_tiny_tree(tmp_path: Path) -> None:
    _skab_file(tmp_path / "valve1_0.csv", "2020-03-09 10:14", [0] * 6 + [1, 1] + [0] * 4)
    _skab_file(tmp_path / "valve1_9.csv", "2020-03-10 10:14", [0] * 9 + [1, 1, 0])
    _skab_file(tmp_path / "anomaly-free.csv", "2020-02-08 13:30", None)
    (tmp_path / "README.md").write_text("not data")
    ds = from_skab(tmp_path, n_train=8)
    assert ds.groups is not None and sorted(ds.groups) == ["skab/valve1_0", "skab/valve1_9"]
    assert "skab/valve1_0/Volume Flow RateRMS" in ds.sensors and len(ds.sensors) == 6
    # valve1_0 is anomalous from row 6: it trains on 6 rows, never on a labelled one.
    assert ds.n_train["skab/valve1_0/Current"] == 6 and ds.n_train["skab/valve1_9/Current"] == 8
    np.testing.assert_array_equal(ds.value["skab/valve1_0/Current"][:3], [1.0, 2.0, 3.0])
    assert np.diff(ds.ts["skab/valve1_0/Current"]).tolist() == [1.0] * 11
    # One event per experiment, copied onto each of its 3 sensors.
    assert len(ds.events) == 6
    e = next(e for e in ds.events if e.sensor == "skab/valve1_9/Current")
    assert e.end - e.start == 1.0 and e.kind == "valve1"
    assert sorted(ds.extra_train) == [
        "skab/anomaly-free/Accelerometer1RMS",
        "skab/anomaly-free/Current",
        "skab/anomaly-free/Volume Flow RateRMS",
    ]
    train = training_series(ds)
    assert train["skab/valve1_0/Current"][1].size == 6 and len(train) == 9
    late = from_skab(tmp_path, "8-15", n_train=8)
    assert late.groups is not None and list(late.groups) == ["skab/valve1_9"]
    assert late.split == "8-15"
    with pytest.raises(ValueError, match="SKAB split"):
        from_skab(tmp_path, "odd")


def test_nab_split_by_sorted_index() -> None:
    names = ["c", "a", "d", "b", "e"]
    assert nab_split(names, "even") == ["a", "c", "e"]
    assert nab_split(names, "odd") == ["b", "d"]
    assert nab_split(names, "all") == sorted(names)
    with pytest.raises(ValueError):
        nab_split(names, "half")


def _two_sensors() -> Dataset:
    sim = simulate(2, 2400.0, 1.0, 7, anomalies=AnomalySpec(rate_per_hour=10.0), warmup_s=400.0)
    return from_simulated(sim, "small", 300, 20.0)


def test_train_and_warmup_protocols_side_by_side() -> None:
    cfg = from_mapping({"detector": {"type": "gaussian"}, "learning": {"warmup": 300}})
    ds = _two_sensors()
    res, runs = evaluate(cfg, ds, ["zscore"], protocols=PROTOCOLS)
    assert res["protocols"] == {
        "warmup": "streamwatch:gaussian",
        "train": "streamwatch:gaussian@train",
    }
    trained = runs["streamwatch:gaussian@train"]
    assert trained.protocol == "train" and set(trained.transitions) == set(ds.sensors)
    for r in (trained, runs["streamwatch:gaussian"]):
        for s in ds.sensors:
            raised = [t for t, st in r.transitions[s] if st == "raised"]
            np.testing.assert_array_equal(r.alerts[s], raised)
            assert r.threshold[s] is not None and np.isnan(r.score[s][:300]).all()
    assert res["detectors"]["streamwatch:gaussian@train"]["events"] == len(ds.events) > 0
    md = markdown([res], {})
    assert "(train)" in md and "(warmup)" in md and "protocol train" in md
    # Trained on a separate clean stream instead of the prefixes: every sensor is known.
    clean = simulate(2, 900.0, 1.0, 11, anomalies=None)
    run = run_trained(cfg, ds, {s: (*clean.series(s)[:2], None) for s in clean.sensors})
    assert all(run.threshold[s] is not None for s in ds.sensors)
    json.dumps(res)


def test_seed_spread_and_with_seed() -> None:
    gauss = from_mapping({"detector": {"type": "gaussian"}, "learning": {"warmup": 300}})
    assert with_seed(gauss, 5) is gauss  # no seed setting: unchanged
    vae = from_mapping({"detector": {"type": "lstm-vae", "seed": 0}})
    assert getattr(with_seed(vae, 3).detector, "seed", None) == 3
    assert getattr(vae.detector, "seed", None) == 0
    spread = seed_spread(gauss, subset(_two_sensors(), ["s000"], "one"), [0, 1])
    assert spread["detector_has_seed"] is False and spread["ratio_worst"] == pytest.approx(1.0)
    assert set(spread["found_per_seed"]) == {"0", "1"}


def test_bench_detection_quick(tmp_path: Path) -> None:
    if not (ROOT.parent / "shared" / "data" / "skab").is_dir():
        pytest.skip("shared NAB/SKAB data not present")
    out = tmp_path / "detection"
    script = str(ROOT / "bench" / "detection.py")
    proc = subprocess.run(
        [sys.executable, script, "--quick", "--detector", "gaussian", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads(out.with_suffix(".json").read_text())
    assert {"nab", "skab", "simulator", "seed_spread"} <= doc.keys()
    md = out.with_suffix(".md").read_text()
    for title in ("## NAB", "## SKAB", "## Simulator", "## Seed spread", "streamwatch evaluate"):
        assert title in md
