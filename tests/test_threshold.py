"""Threshold calibration: empirical quantile where data suffice, tail fit beyond."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamwatch.config import Config, GaussianConfig, ThresholdConfig, from_mapping
from streamwatch.detectors.bundle import Model
from streamwatch.detectors.gaussian import GaussianDetector
from streamwatch.ingest.parse import Reading
from streamwatch.outputs.metrics import Metrics
from streamwatch.pipeline.engine import Engine
from streamwatch.pipeline.threshold import (
    CalibrationError,
    Thresholds,
    calibrate,
    calibrate_all,
    sensor_threshold,
)
from streamwatch.training import fit_calibrated
from tests.helpers import fresh_model


def gaussian_nll(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * x + 0.5 * math.log(2 * math.pi)


def test_empirical_quantile_when_enough_data() -> None:
    s = np.arange(100_000, dtype=float)
    assert calibrate(s, 0.01) == pytest.approx(99_000, abs=2)


@pytest.mark.parametrize("far", [1e-3, 1e-4, 1e-5])
def test_tail_extrapolation_hits_the_target_rate_on_gaussian_scores(far: float) -> None:
    rng = np.random.default_rng(0)
    thr = calibrate(gaussian_nll(rng.standard_normal(5000)), far)
    # True rate for the Normal: P(|z| > z_thr)
    z = math.sqrt(2 * (thr - 0.5 * math.log(2 * math.pi)))
    true_rate = math.erfc(z / math.sqrt(2))
    # Within a factor of ten of the target, and never far above it (fewer false alarms).
    assert far / 30 < true_rate < far * 3


def test_heavier_tail_gets_a_higher_threshold() -> None:
    rng = np.random.default_rng(1)
    light = calibrate(rng.exponential(1.0, 5000), 1e-5)
    heavy = calibrate(rng.pareto(3.0, 5000) * 2, 1e-5)
    assert heavy > light


def test_constant_scores_give_a_threshold_just_above() -> None:
    thr = calibrate(np.full(1000, 3.0), 1e-5)
    assert 3.0 < thr < 3.001


@pytest.mark.parametrize("bad", [np.array([]), np.full(10, 1.0), np.full(100, np.nan)])
def test_too_little_data_is_an_error(bad: np.ndarray) -> None:
    with pytest.raises(CalibrationError):
        calibrate(bad, 1e-3)


def test_rate_out_of_range() -> None:
    with pytest.raises(CalibrationError):
        calibrate(np.arange(100.0), 0.0)


def test_thresholds_round_trip_and_pooled_fallback() -> None:
    t = Thresholds(1e-4, {"a": 1.5}, pooled=2.5)
    back = Thresholds.from_json(t.to_json())
    assert back == t
    assert back.get("a") == 1.5 and back.get("zzz") == 2.5
    assert Thresholds(1e-4).get("a") is None


# -- one calibration policy: train, warm-up (and adaptation) ---------------------------------


class _SharedGaussian(GaussianDetector):
    """A Gaussian whose scores claim to be comparable across sensors (as a shared model's
    are), so the pooled floor applies."""

    comparable_scores = True


def _warm_up_threshold(cfg: Config, model: Model, sensor: str, values: np.ndarray) -> float:
    """The threshold the engine's warm-up gives ``sensor`` after exactly ``values``."""
    eng = Engine(cfg, model, Metrics(CollectorRegistry()), lambda ev: None)
    rows = [Reading(sensor, 1000.0 + i, float(v)) for i, v in enumerate(values)]
    eng.process([(rows, 0.0)], now=1000.0 + len(rows))
    st = eng.windows.sensors[sensor].state
    assert st is not None and st.threshold is not None
    return st.threshold


def test_train_and_warm_up_give_the_same_threshold_for_the_same_scores() -> None:
    rng = np.random.default_rng(3)
    data = {
        s: (np.arange(2000.0), rng.normal(5.0, 1.0 + k, 2000), None) for k, s in enumerate("ab")
    }
    for kind in ("gaussian", "robust"):
        cfg = from_mapping({"detector": {"type": kind}, "learning": {"warmup": 2000}})
        trained = fit_calibrated(cfg, data)
        # The daemon's warm-up on the very same readings, from an empty model.
        got = _warm_up_threshold(cfg, fresh_model(cfg), "a", data["a"][1])
        assert got == trained.thresholds.per_sensor["a"]


def test_pooled_floor_applies_in_warm_up_for_comparable_scores() -> None:
    rng = np.random.default_rng(4)
    det = _SharedGaussian(GaussianConfig(), 1)
    det.fit({s: rng.normal(0.0, 1.0, 1000) for s in "ab"})
    held = {"a": rng.normal(0.0, 1.0, 300), "b": rng.normal(0.0, 3.0, 300)}  # b: wider tail
    policy = ThresholdConfig()
    thresholds, failed = calibrate_all(
        {s: det.score_series(s, v) for s, v in held.items()}, policy, "nll", comparable=True
    )
    assert not failed and thresholds.pooled is not None
    assert thresholds.per_sensor["a"] == thresholds.pooled  # floored
    # A sensor the model does not know warms up: adapted, then calibrated under the same floor.
    cfg = from_mapping({"detector": {"type": "gaussian"}, "learning": {"warmup": 300}})
    warm = Model(det, Thresholds(1e-5, pooled=thresholds.pooled))
    new = rng.normal(0.0, 1.0, 300)
    got = _warm_up_threshold(cfg, warm, "c", new)
    assert got == sensor_threshold(
        det.score_series("c", new), policy, "nll", thresholds.pooled, comparable=True
    )
    assert got >= thresholds.pooled
    own = calibrate(det.score_series("a", held["a"]), 1e-5)
    scores = det.score_series("a", held["a"])
    assert sensor_threshold(scores, policy, "nll", 99.0, comparable=False) == own
    assert sensor_threshold(scores, policy, "nll", 99.0, comparable=True) == 99.0
    assert sensor_threshold(scores, policy, "ratio") == policy.margin * scores.max()
