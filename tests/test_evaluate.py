"""Evaluation maths on hand-made cases, the baselines, and a small run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simulators.generate import AnomalySpec, simulate
from streamwatch.config import Config, from_mapping
from streamwatch.evaluation import baselines as bl
from streamwatch.evaluation.datasets import Dataset, from_nab, from_simulated
from streamwatch.evaluation.report import markdown
from streamwatch.evaluation.runs import Run, evaluate, nab_scores
from streamwatch.evaluation.scoring import (
    Event,
    alert_onsets,
    average_precision,
    event_scores,
    events_from_labels,
)

NAB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nab"


def test_average_precision_hand_cases() -> None:
    # Ranked 1,0,1,0: precision 1 at recall 1/2, 2/3 at recall 1.
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == (
        pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    )
    assert average_precision(np.array([3.0, 2.0, 1.0]), np.array([1, 1, 0])) == 1.0
    # All tied: one threshold, precision = positive rate.
    assert average_precision(np.ones(8), np.array([1, 0, 0, 0, 1, 0, 0, 0])) == 0.25
    assert average_precision(np.array([1.0, 2.0]), np.array([0, 0])) is None
    # NaN scores (unscored readings) are left out.
    assert average_precision(np.array([np.nan, 2.0, 1.0]), np.array([0, 1, 0])) == 1.0


def test_average_precision_agrees_with_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.1
    s = rng.normal(size=500) + y * 1.5
    s[:50] = np.round(s[:50])  # some ties
    assert average_precision(s, y) == pytest.approx(metrics.average_precision_score(y, s))


def _one_sensor() -> tuple[list[Event], dict, dict]:
    ts = {"a": np.arange(100, dtype=float)}
    lab = np.zeros(100, dtype=int)
    lab[10:20] = 1
    lab[60:70] = 1
    events = [Event("a", 10.0, 19.0, "spike"), Event("a", 60.0, 69.0, "drift")]
    return events, ts, {"a": lab}


def test_event_scores_hand_case() -> None:
    events, ts, label = _one_sensor()
    # 12: detects the first event 2 s in; 21: inside its 5 s tolerance tail (true, no new
    # detection); 50: a false alarm. The second event is missed.
    sc = event_scores(events, {"a": [12.0, 21.0, 50.0]}, ts, label, tolerance_s=5.0)
    assert (sc.events, sc.detected, sc.recall) == (2, 1, 0.5)
    assert (sc.alerts, sc.true_alerts, sc.false_alerts) == (3, 2, 1)
    assert sc.precision == pytest.approx(2 / 3)
    assert sc.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert sc.normal_readings == 100 - 20 - 5 - 5  # labelled rows and tolerance tails left out
    assert sc.false_alarms_per_10k == pytest.approx(1e4 / 70)
    assert sc.false_alarms_per_100k == pytest.approx(1e5 / 70)
    assert sc.mean_delay_s == 2.0 == sc.median_delay_s
    assert sc.per_kind["spike"].recall == 1.0 and sc.per_kind["drift"].recall == 0.0
    assert sc.per_kind["drift"].mean_delay_s is None


def test_event_scores_no_alerts_and_training_prefix() -> None:
    events, ts, label = _one_sensor()
    none = event_scores(events, {}, ts, label)
    assert none.recall == 0.0 and none.precision is None and none.f1 == 0.0
    assert none.false_alarms_per_10k == 0.0
    # Training ends at t=30: the first event and the alert at 12 are not scored.
    late = event_scores(events, {"a": [12.0, 61.0]}, ts, label, start={"a": 30.0})
    assert (late.events, late.detected, late.alerts, late.precision) == (1, 1, 1, 1.0)
    assert late.normal_readings == 70 - 10


def test_event_scores_auc_pr_per_kind() -> None:
    events, ts, label = _one_sensor()
    perfect = {"a": label["a"].astype(float)}
    sc = event_scores(events, {}, ts, label, score=perfect)
    assert sc.auc_pr == 1.0 and sc.positive_rate == pytest.approx(0.2)
    # Scores that find only the spike: AUC-PR 1 for spikes, the positive rate for drift.
    spike_only = np.zeros(100)
    spike_only[10:20] = 1.0
    sc = event_scores(events, {}, ts, label, score={"a": spike_only})
    assert sc.per_kind["spike"].auc_pr == 1.0
    assert sc.per_kind["drift"].auc_pr == pytest.approx(10 / 90)
    assert sc.per_kind["drift"].positive_rate == pytest.approx(10 / 90)


def test_alert_onsets_follow_the_daemon_state_machine() -> None:
    t = np.arange(8, dtype=float)
    v = np.array([0, 1, 1, 0, 0, 0, 1, 0], dtype=bool)
    np.testing.assert_array_equal(alert_onsets(t, v, 1, 1, 2), [1.0, 6.0])
    np.testing.assert_array_equal(alert_onsets(t, v, 1, 1, 10), [1.0])
    w = np.array([1, 0, 1, 0, 0, 1, 1, 0], dtype=bool)
    np.testing.assert_array_equal(alert_onsets(t, w, 2, 2, 1), [6.0])
    # With the off-delay, the clear at t=4 needs 3 s since the last anomalous verdict (t=2):
    np.testing.assert_array_equal(alert_onsets(t, v, 1, 1, 2, hold_s=3.0), [1.0, 6.0])
    np.testing.assert_array_equal(alert_onsets(t, v, 1, 1, 2, hold_s=4.0), [1.0])


def test_events_from_label_runs() -> None:
    ts = {"x": np.arange(10.0)}
    evs = events_from_labels(ts, {"x": np.array([1, 1, 0, 0, 1, 0, 0, 0, 1, 1])})
    assert [(e.start, e.end) for e in evs] == [(0.0, 1.0), (4.0, 4.0), (8.0, 9.0)]


@pytest.mark.parametrize("name", bl.ALL_BASELINES)
def test_each_baseline_scores_a_level_shift_above_normal(name: str) -> None:
    if name in bl.SKLEARN_BASELINES and not bl.sklearn_available():
        pytest.skip("scikit-learn not installed")
    t = np.arange(1200)
    v = np.sin(2 * np.pi * t / 10) + np.random.default_rng(1).normal(0, 0.1, t.size)
    v[900:960] += 3.0
    scores, calib = bl.score_series(name, v, 600, 20, seed=0)
    assert np.isnan(scores[:19]).all() and np.isfinite(scores[19:]).all()
    assert calib.size >= 20
    assert np.nanmax(scores[900:960]) > np.nanquantile(scores[600:880], 0.99)


def test_sklearn_baselines_skip_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bl, "sklearn_available", lambda: False)
    with pytest.raises(bl.BaselineUnavailable, match=r"pip install 'streamwatch\[eval\]'"):
        bl.make("iforest")
    assert bl.make("pca").name == "pca"
    cfg = _cfg()
    res, _ = evaluate(cfg, _small_sim(), ["ocsvm", "zscore"])
    assert "ocsvm" in res["skipped"] and "zscore" in res["detectors"]
    assert "Skipped `ocsvm`" in markdown([res], {})


def _cfg() -> Config:
    return from_mapping({"detector": {"type": "gaussian"}, "learning": {"warmup": 300}})


def _small_sim() -> Dataset:
    sim = simulate(2, 3600.0, 1.0, 7, anomalies=AnomalySpec(rate_per_hour=10.0), warmup_s=400.0)
    return from_simulated(sim, "small", 300, 20.0)


def test_evaluate_small_simulation_end_to_end() -> None:
    ds = _small_sim()
    res, runs = evaluate(_cfg(), ds, ["zscore", "pca"])
    assert set(res["detectors"]) == {"streamwatch:gaussian", "zscore", "pca"}
    ours = res["detectors"]["streamwatch:gaussian"]
    assert ours["events"] == len(ds.events) > 0
    assert 0 <= ours["recall"] <= 1 and ours["auc_pr"] is not None
    pca = res["detectors"]["pca"]
    assert pca["recall"] >= 0.5 and pca["auc_pr"] > pca["positive_rate"]
    run = runs["streamwatch:gaussian"]
    assert set(run.score) == set(ds.sensors)
    # No readings are scored during warm-up.
    assert all(np.isnan(run.score[s][:300]).all() for s in ds.sensors)
    md = markdown([res], {"detector": "gaussian"})
    assert "| `pca` |" in md and "Event recall by kind" in md
    json.dumps(res)  # JSON-ready


def test_nab_scores_of_perfect_and_silent_runs() -> None:
    ts = np.arange(1000, dtype=float)
    lab = np.zeros(1000, dtype=int)
    lab[400:450] = 1
    ds = Dataset(
        "nab",
        {"f": ts},
        {"f": np.zeros(1000)},
        {"f": lab},
        [Event("f", 400.0, 449.0, "cat")],
        {"f": 150},
        0.0,
        {"f": [(400, 449)]},
    )
    perfect = Run("p", {"f": np.array([400.0])}, {"f": np.zeros(1000)}, {}, 0.0)
    silent = Run("s", {"f": np.empty(0)}, {"f": np.zeros(1000)}, {}, 0.0)
    late_fp = Run("l", {"f": np.array([100.0, 900.0])}, {"f": np.zeros(1000)}, {}, 0.0)
    for profile, v in nab_scores(ds, perfect).items():
        assert v["score"] == pytest.approx(100.0), profile
    assert all(v["score"] == 0.0 for v in nab_scores(ds, silent).values())
    # 100 is in probation (free); 900 is a false positive long after the window.
    assert nab_scores(ds, late_fp)["standard"]["raw"] == pytest.approx(-1.0 - 0.11)


def test_evaluate_on_one_nab_series() -> None:
    if not NAB.is_dir():
        pytest.skip("shared NAB data not present")
    ds = from_nab(NAB, ["art_daily_jumpsdown"])
    res, _ = evaluate(_cfg(), ds, ["zscore"])
    for d in res["detectors"].values():
        assert set(d["nab"]) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
        assert d["nab"]["standard"]["score"] <= 100.0
    assert res["training_readings_per_sensor"] == [604]


def test_cli_writes_markdown_and_json(tmp_path: Path) -> None:
    out = tmp_path / "ev"
    cmd = [
        sys.executable,
        "-m",
        "streamwatch",
        "evaluate",
        "--simulate",
        "--sensors",
        "2",
        "--duration",
        "2400",
        "--baselines",
        "zscore",
        "--detector",
        "gaussian",
        "--out",
        str(out),
        "--log-level",
        "WARNING",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    doc = json.loads((out / "report.json").read_text())
    assert {"streamwatch:gaussian", "zscore"} <= set(doc["results"][0]["detectors"])
    assert "# streamwatch evaluation" in (out / "report.md").read_text()
    sim = simulate(1, 1200.0, 1.0, 3, anomalies=AnomalySpec(rate_per_hour=12.0), warmup_s=600.0)
    sim.to_csv(tmp_path / "r.csv")
    sim.events_to_csv(tmp_path / "e.csv")
    sw = [
        *cmd[:4],
        "--detector",
        "gaussian",
        "--baselines",
        "none",
        "--out",
        str(out),
    ]
    subprocess.run(
        [*sw, "--csv", str(tmp_path / "r.csv"), "--events", str(tmp_path / "e.csv")],
        check=True,
        capture_output=True,
        text=True,
    )
    res = json.loads((out / "report.json").read_text())["results"][0]
    assert res["dataset"] == "r" and res["events"] == len(sim.events) > 0
    (tmp_path / "bad.csv").write_text("timestamp,sensor,value\n1,a,oops\n")
    bad = subprocess.run([*sw, "--csv", str(tmp_path / "bad.csv")], capture_output=True, text=True)
    assert bad.returncode == 2 and "bad value" in bad.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "streamwatch", "evaluate"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--simulate" in bad.stderr


def test_cli_evaluates_a_pretrained_bundle(tmp_path: Path) -> None:
    # Train on a separate, anomaly-free period (another seed), then evaluate the labelled
    # stream with --model-dir: the bundle's thresholds serve the sensors it knows.
    clean = simulate(2, 1800.0, 1.0, 5, anomalies=None)
    clean.to_csv(tmp_path / "clean.csv")
    sw = [sys.executable, "-m", "streamwatch"]
    common = ["--detector", "gaussian", "--model-dir", str(tmp_path / "m"), "--log-level", "ERROR"]
    subprocess.run(
        [*sw, "train", "--data", str(tmp_path / "clean.csv"), *common],
        check=True,
        capture_output=True,
        text=True,
    )
    out = tmp_path / "ev"
    tail = ["--baselines", "none", "--out", str(out), *common]
    subprocess.run(
        [*sw, "evaluate", "--simulate", "--sensors", "2", "--duration", "2400", *tail],
        check=True,
        capture_output=True,
        text=True,
    )
    doc = json.loads((out / "report.json").read_text())
    assert "pre-trained bundle" in doc["settings"]["model"]
    assert "3600 readings of 2 sensors" in doc["settings"]["model"]
    bundle = json.loads((tmp_path / "m" / "thresholds.json").read_text())
    det = doc["results"][0]["detectors"]["streamwatch:gaussian"]
    assert det["false_alarms_per_100k"] is not None and det["events"] > 0
    assert set(bundle["per_sensor"]) == {"s000", "s001"}
    assert "false alarms / 100k" in (out / "report.md").read_text()
