"""Group patterns (pipeline/groups.py) and the alignment of members onto a grid
(pipeline/align.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamwatch.config import ConfigError, from_mapping
from streamwatch.pipeline.align import Aligner, infer_period
from streamwatch.pipeline.groups import Grouper, Pattern, PatternError

# -- patterns -------------------------------------------------------------------------------


def test_skab_pattern_names_group_and_member() -> None:
    p = Pattern.parse("skab/+/#")
    assert p.match("skab/valve1_3/Pressure") == ("skab/valve1_3", "Pressure")
    assert p.match("skab/valve1_3/Volume Flow RateRMS") == (
        "skab/valve1_3",
        "Volume Flow RateRMS",
    )
    assert p.match("skab/valve1_3/a/b") == ("skab/valve1_3", "a/b")


@pytest.mark.parametrize(
    "sensor",
    ["skab/valve1_3", "skab", "other/valve1_3/Pressure", "skab//Pressure", "skab/v/", "x"],
)
def test_skab_pattern_rejects(sensor: str) -> None:
    assert Pattern.parse("skab/+/#").match(sensor) is None


def test_several_plus_levels_group_up_to_the_last() -> None:
    p = Pattern.parse("sparkplug/+/+/+/#")
    assert p.match("sparkplug/plant/edge1/pump7/flow") == ("sparkplug/plant/edge1/pump7", "flow")
    assert p.match("sparkplug/plant/edge1/pump7/motor/current") == (
        "sparkplug/plant/edge1/pump7",
        "motor/current",
    )
    assert p.match("sparkplug/plant/edge1/flow") is None  # too few levels


def test_fixed_member_level_and_prefix_patterns() -> None:
    assert Pattern.parse("plant/+/temp").match("plant/p1/temp") == ("plant/p1", "temp")
    assert Pattern.parse("plant/+/temp").match("plant/p1/flow") is None
    assert Pattern.parse("plant/+/temp").match("plant/p1/temp/x") is None
    assert Pattern.parse("plant/pump1/#").match("plant/pump1/flow") == ("plant/pump1", "flow")
    assert Pattern.parse("a/+/b/+/#").match("a/1/b/2/c") == ("a/1/b/2", "c")
    assert Pattern.parse("a/+/b/+/#").match("a/1/x/2/c") is None


@pytest.mark.parametrize(
    "bad", ["", "skab/+", "#", "+/#x", "a/#/b", "a//#", "a/b+/#", "a/b", "skab/+/+"]
)
def test_bad_patterns_are_refused(bad: str) -> None:
    with pytest.raises(PatternError):
        Pattern.parse(bad)


def test_grouper_first_match_wins_and_sorts_the_rest_alone() -> None:
    g = Grouper(["plant/pump1/#", "plant/+/#"])
    groups, alone = g.split(["plant/pump1/flow", "plant/p2/flow", "plant/p2/temp", "solo"])
    assert groups == {
        "plant/pump1": {"flow": "plant/pump1/flow"},
        "plant/p2": {"flow": "plant/p2/flow", "temp": "plant/p2/temp"},
    }
    assert alone == ["solo"]
    assert g.match("solo") is None  # cached misses stay misses
    assert not Grouper([])


def test_grouper_cache_is_bounded() -> None:
    g = Grouper(["s/+/#"], cache_size=10)
    for i in range(100):
        assert g.match(f"s/{i}/x") == (f"s/{i}", "x")
    assert len(g._cache) <= 10


def test_config_groups_exact_form_and_errors() -> None:
    cfg = from_mapping({"groups": {"patterns": ["skab/+/#"]}})
    assert cfg.groups.patterns == ["skab/+/#"]
    assert cfg.groups.detector.type == "mahalanobis"
    with pytest.raises(ConfigError, match=r"groups\.patterns"):
        from_mapping({"groups": {"patterns": ["skab/+"]}})
    with pytest.raises(ConfigError, match=r"groups\.detector\.bogus: unknown key"):
        from_mapping({"groups": {"detector": {"type": "mahalanobis", "bogus": 1}}})


# -- alignment ------------------------------------------------------------------------------


def _feed(al: Aligner, readings: list[tuple[str, float, float]]) -> list:
    out = []
    for m, t, v in readings:
        out += al.add(m, t, v)
    return out


def test_shared_timestamps_land_in_one_step_whatever_the_order() -> None:
    al = Aligner(members=["a", "b"], period_s=1.0)
    readings = []
    for k in range(5):
        pair = [("a", float(k), 10.0 + k), ("b", float(k), 20.0 + k)]
        readings += pair if k % 2 else pair[::-1]
    steps = _feed(al, readings)
    assert [s.ts for s in steps] == [0.0, 1.0, 2.0, 3.0]  # step 4 waits for a later reading
    for s in steps:
        np.testing.assert_array_equal(s.values, [10.0 + s.ts, 20.0 + s.ts])
        assert s.missing == ()
    assert al.missing_steps == 0


def test_members_at_own_times_hold_last_value() -> None:
    al = Aligner(members=["fast", "slow"], period_s=1.0, max_age_s=2.5)
    readings = [("fast", t, t) for t in np.arange(0.0, 6.0, 0.5)]
    readings += [("slow", t, -t) for t in (0.2, 2.2, 4.2)]
    readings.sort(key=lambda r: r[1])
    steps = _feed(al, readings)
    by_ts = {s.ts: s for s in steps}
    # The grid starts once both have reported (0.2) and steps every second.
    assert sorted(by_ts) == pytest.approx([0.2, 1.2, 2.2, 3.2, 4.2, 5.2])
    assert by_ts[1.2].values[1] == -0.2  # slow's value held
    assert by_ts[3.2].values[0] == 3.0  # fast's last value at or before 3.2
    assert al.missing_steps == 0


def test_member_missing_too_long_is_imputed_flagged_and_counted() -> None:
    al = Aligner(members=["a", "b"], period_s=1.0, max_age_s=2.0)
    readings = [("a", float(t), 1.0) for t in range(10)]
    readings += [("b", float(t), 2.0) for t in range(3)]  # b falls silent after t=2
    readings.sort(key=lambda r: r[1])
    steps = _feed(al, readings)
    assert [s.ts for s in steps] == [float(t) for t in range(9)]
    for s in steps:
        if s.ts <= 4.0:  # b's value from t=2 is at most 2 s old
            assert s.missing == () and s.values[1] == 2.0
        else:
            assert s.missing == (1,) and math.isnan(s.values[1]) and s.values[0] == 1.0
    assert al.missing_steps == 4


def test_member_missing_with_restart_policy_restarts_the_window() -> None:
    al = Aligner(members=["a", "b"], period_s=1.0, max_age_s=1.5, policy="restart")
    readings = [("a", float(t), 1.0) for t in range(12)]
    readings += [("b", float(t), 2.0) for t in (*range(4), *range(7, 12))]
    readings.sort(key=lambda r: r[1])
    steps = _feed(al, readings)
    ts = [s.ts for s in steps]
    assert ts == [0.0, 1.0, 2.0, 3.0, 4.0, 7.0, 8.0, 9.0, 10.0]
    assert al.missing_steps == 2  # t=5 and t=6: b last seen at 3
    assert [s.ts for s in steps if s.restart] == [7.0]
    assert all(s.missing == () for s in steps)


def test_period_and_members_inferred_from_cadences() -> None:
    al = Aligner(discover_periods=4.0)
    readings = [("a", 0.5 * k, 1.0) for k in range(40)] + [
        ("b", 2.0 * k + 0.1, 2.0) for k in range(10)
    ]
    readings.sort(key=lambda r: r[1])
    steps = _feed(al, readings)
    assert al.members == ["a", "b"]
    assert al.period_s == pytest.approx(2.0)  # the slowest member's cadence
    assert steps and steps[0].ts == pytest.approx(0.1)  # once both have a value
    assert np.diff([s.ts for s in steps]) == pytest.approx(2.0)
    assert al.missing_steps == 0


def test_unknown_member_and_late_readings_are_counted() -> None:
    al = Aligner(members=["a"], period_s=1.0)
    _feed(al, [("a", float(t), 0.0) for t in range(5)])
    al.add("z", 5.0, 1.0)
    al.add("a", 1.0, 9.0)
    assert al.unknown == 1
    assert al.late == 1


def test_long_silence_skips_ahead_and_restarts() -> None:
    al = Aligner(members=["a"], period_s=1.0)
    _feed(al, [("a", float(t), 0.0) for t in range(3)])
    steps = al.add("a", 1e9, 0.0)
    assert len(steps) == 1 and steps[0].restart


def test_infer_period_needs_two_stamps_per_member() -> None:
    assert infer_period({"a": [0.0, 1.0, 2.0], "b": [0.0]}) is None
    assert infer_period({"a": [0.0, 1.0, 2.0], "b": [0.0, 3.0, 6.0]}) == 3.0
