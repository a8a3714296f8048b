"""NAB scoring on hand-made cases whose answers are worked out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from streamwatch.evaluation.nab import (
    STANDARD_PROFILES,
    CostMatrix,
    load_corpus,
    load_profiles,
    parse_time,
    probation_length,
    scaled_sigmoid,
    score_alarms,
    window_rows,
)

NAB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nab"
STD = STANDARD_PROFILES["standard"]
MAX_TP = 2 / (1 + math.exp(-5)) - 1  # 0.98661


def _alarms(n: int, *rows: int) -> np.ndarray:
    a = np.zeros(n, dtype=bool)
    a[list(rows)] = True
    return a


def test_scaled_sigmoid_published_points() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert scaled_sigmoid(3.0) == -1.0


def test_probation_is_15_percent_capped_at_750_rows() -> None:
    assert probation_length(4032) == 604
    assert probation_length(100) == 15
    assert probation_length(5000) == 750
    assert probation_length(100_000) == 750


def test_alarm_at_left_edge_scores_the_full_tp_weight() -> None:
    s = score_alarms(_alarms(1000, 100), [(100, 119)], STD, probation=0)
    assert s.raw == pytest.approx(1.0)  # A_TP exactly
    assert s.normalised == pytest.approx(100.0)
    assert (s.detected, s.false_positives) == (1, 0)


def test_alarm_at_right_edge_scores_little() -> None:
    s = score_alarms(_alarms(1000, 119), [(100, 119)], STD, probation=0)
    y = -1 / 20
    assert s.raw == pytest.approx((2 / (1 + math.exp(5 * y)) - 1) / MAX_TP)  # 0.12604
    assert s.raw == pytest.approx(0.12604, abs=1e-5)


def test_window_scored_once_by_its_earliest_alarm() -> None:
    one = score_alarms(_alarms(1000, 105), [(100, 119)], STD, probation=0)
    many = score_alarms(_alarms(1000, 105, 110, 119), [(100, 119)], STD, probation=0)
    assert many.raw == pytest.approx(one.raw)
    y = -(119 - 105 + 1) / 20
    assert one.raw == pytest.approx((2 / (1 + math.exp(5 * y)) - 1) / MAX_TP)


def test_missed_window_costs_fn_weight_and_equals_the_null_detector() -> None:
    s = score_alarms(np.zeros(1000, bool), [(100, 119), (500, 519)], STD, probation=0)
    assert s.raw == pytest.approx(-2.0) == s.null
    assert s.perfect == pytest.approx(2.0)
    assert s.normalised == 0.0
    fn2 = score_alarms(
        np.zeros(1000, bool), [(100, 119)], STANDARD_PROFILES["reward_low_FN_rate"], probation=0
    )
    assert fn2.raw == pytest.approx(-2.0)


def test_false_positives_cost_by_distance_from_the_preceding_window() -> None:
    win = [(100, 119)]
    before = score_alarms(_alarms(1000, 50), win, STD, probation=0)
    assert before.raw == pytest.approx(-1.0 - 0.11)  # missed window, full FP cost
    just_after = score_alarms(_alarms(1000, 120), win, STD, probation=0)
    y = 1 / 19
    assert just_after.raw == pytest.approx(-1.0 + 0.11 * (2 / (1 + math.exp(5 * y)) - 1))
    assert just_after.raw == pytest.approx(-1.01439, abs=1e-5)
    far = score_alarms(_alarms(1000, 119 + 3 * 19), win, STD, probation=0)
    assert far.raw == pytest.approx(-1.11)
    low_fp = score_alarms(
        _alarms(1000, 50), win, STANDARD_PROFILES["reward_low_FP_rate"], probation=0
    )
    assert low_fp.raw == pytest.approx(-1.22)
    assert before.false_positives == just_after.false_positives == 1


def test_probationary_rows_are_not_scored() -> None:
    n = 1000  # probation = 150 rows
    s = score_alarms(_alarms(n, 10, 140, 300), [(100, 120), (300, 319)], STD)
    assert s.windows == 1  # the first window lies wholly in probation
    assert s.raw == pytest.approx(1.0) and s.false_positives == 0


def test_perfect_and_null_normalise_a_corpus_sum() -> None:
    a = score_alarms(_alarms(1000, 100), [(100, 119)], STD, probation=0)
    b = score_alarms(np.zeros(1000, bool), [(200, 219)], STD, probation=0)
    total = a + b
    assert (total.raw, total.null, total.perfect) == (0.0, -2.0, 2.0)
    assert total.normalised == pytest.approx(50.0)


def test_window_rows_and_time_parsing() -> None:
    ts = np.arange(10) * 300.0
    assert window_rows(ts, [(600.0, 1500.0), (10_000.0, 20_000.0)]) == [(2, 5)]
    assert parse_time("2014-04-10 16:15:00.000000") == parse_time("2014-04-10T16:15:00+00:00")


def test_profiles_file_matches_the_builtin_profiles() -> None:
    if not (NAB / "profiles.json").is_file():
        pytest.skip("shared NAB data not present")
    assert load_profiles(NAB / "profiles.json") == dict(STANDARD_PROFILES)
    assert CostMatrix(1.0, 0.11, 1.0) == STD


def test_load_corpus_reads_series_and_windows() -> None:
    if not NAB.is_dir():
        pytest.skip("shared NAB data not present")
    (s,) = load_corpus(NAB, only=["art_daily_jumpsdown"])
    assert s.ts.size == 4032 and s.probation == 604
    assert s.window_rows == [(2787, 3189)]
    assert s.labels().sum() == 3189 - 2787 + 1
