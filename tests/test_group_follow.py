"""Protected adaptation for groups (``groups.follow_half_life``): a group's normal member
means follow slow drift, but only from windows judged normal, outside an alert and clear of
the last anomalous verdict; the covariances stay as learned."""

from __future__ import annotations

import numpy as np
import pytest

from streamwatch.config import ConfigError, MahalanobisConfig, from_mapping
from streamwatch.detectors.mahalanobis import MahalanobisDetector
from tests.test_group_engine import T0, N, cfg, readings, run


def _fitted(seed: int = 0) -> MahalanobisDetector:
    rng = np.random.default_rng(seed)
    det = MahalanobisDetector(MahalanobisConfig(span=5), 10)
    flow = rng.normal(50.0, 1.0, 300)
    det.adapt("g", np.stack([flow, 0.1 * flow + rng.normal(0, 0.05, 300)], axis=1))
    return det


def test_follow_moves_the_means_only_and_in_order() -> None:
    det = _fitted()
    before = {k: v.copy() for k, v in det.groups["g"].items()}
    rate = 0.25
    steps = np.asarray([[60.0, np.nan], [70.0, 8.0]])
    det.follow(["g", "g"], steps, rate)
    after = det.groups["g"]
    m0 = before["mean"]
    flow = (1 - rate) * ((1 - rate) * m0[0] + rate * 60.0) + rate * 70.0  # in order
    current = (1 - rate) * m0[1] + rate * 8.0  # the missing (NaN) step left it alone
    assert after["mean"] == pytest.approx([flow, current])
    for key in before:
        if key != "mean":  # scales, covariances, part scales: as learned
            np.testing.assert_array_equal(after[key], before[key])
    det.follow(["unknown"], np.asarray([[1.0, 2.0]]), rate)  # a group it does not know: ignored


def _drifting(shift_at: int | None = None) -> dict[str, np.ndarray]:
    """The pump of test_group_engine, intact, with flow (and current and pressure with it)
    drifting slowly upward after the warm-up, far past its learned range; or, with
    ``shift_at``, current alone stepping away from flow there for good."""
    rng = np.random.default_rng(5)
    t = np.arange(N)
    drift = np.clip(t - 400, 0, None) * 0.08  # +40 by the end: 4 learned flow spreads
    flow = 50.0 + 5.0 * np.sin(2 * np.pi * t / 97.0) + drift + rng.normal(0, 0.5, N)
    current = 2.0 + 0.1 * (flow - 50.0) + rng.normal(0, 0.05, N)
    pressure = 3.0 - 0.05 * (flow - 50.0) + rng.normal(0, 0.05, N)
    if shift_at is not None:
        current[shift_at:] += 3.0
    return {"flow": flow, "current": current, "pressure": pressure}


def test_slow_drift_is_followed_not_raised() -> None:
    rows = readings(_drifting())
    events, _, _ = run(cfg(), rows)
    assert any(e.state == "raised" for e in events)  # without following, the drift raises
    events, eng, _ = run(cfg(groups={"follow_half_life": 30, "follow_guard": 20}), rows)
    assert events == []
    assert eng.groups is not None
    det = eng.groups.model.detector
    assert isinstance(det, MahalanobisDetector)
    members = eng.groups.groups["plant/p1"].aligner.members or []
    flow = det.groups["plant/p1"]["mean"][members.index("flow")]
    assert flow > 75.0  # flow's normal mean moved with it (learned near 50)


def test_nothing_is_followed_while_an_alert_is_raised() -> None:
    c = cfg(groups={"follow_half_life": 10, "follow_guard": 5})
    events, eng, _ = run(c, readings(_drifting(shift_at=600)))
    raised = [e for e in events if e.state == "raised"]
    assert len(raised) == 1 and raised[0].ts >= T0 + 600
    # The alert holds to the end: the stepped-away level was never learned as normal.
    assert not any(e.state == "cleared" for e in events)
    assert eng.groups is not None and eng.groups.groups["plant/p1"].alert.raised


def test_follow_options_are_validated() -> None:
    g = from_mapping({"groups": {"follow_half_life": 60, "follow_guard": 0}}).groups
    assert (g.follow_half_life, g.follow_guard) == (60, 0)
    assert from_mapping({}).groups.follow_half_life == 0  # off by default
    with pytest.raises(ConfigError, match=r"groups\.follow_half_life"):
        from_mapping({"groups": {"follow_half_life": -1}})
    with pytest.raises(ConfigError, match=r"groups\.follow_guard"):
        from_mapping({"groups": {"follow_guard": -5}})
