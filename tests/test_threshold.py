"""Threshold calibration: empirical quantile where data suffice, tail fit beyond."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamwatch.pipeline.threshold import CalibrationError, Thresholds, calibrate


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
