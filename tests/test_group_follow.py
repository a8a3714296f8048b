"""Hysteresis (``groups.clear_ratio``) and protected adaptation (``groups.follow_half_life``)
for groups. A raised group alert clears only on windows well below its threshold; a group's
normal member means follow slow drift, but only from windows judged normal, outside an alert
and clear of the last anomalous verdict; the covariances stay as learned."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamwatch.config import ConfigError, MahalanobisConfig, from_mapping
from streamwatch.detectors.mahalanobis import MahalanobisDetector
from streamwatch.ingest.parse import Reading
from streamwatch.outputs.metrics import Metrics
from streamwatch.pipeline.alerts import AlertEvent
from streamwatch.pipeline.engine import Engine
from tests.helpers import fresh_model
from tests.test_group_engine import T0, N, cfg, pump, readings, run


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


# -- hysteresis (groups.clear_ratio) -----------------------------------------------------------

WARM = 450
"""Steps fed before the test phases: the 400-step warm-up and the period inference."""


def _offset_for(det: MahalanobisDetector, group: str, row: Any, target: float) -> float:
    """The step ``a`` at which a window of ``row(a)`` scores ``target`` (bisection)."""
    lo, hi = 0.0, 1000.0
    for _ in range(60):
        a = (lo + hi) / 2
        score = det.score([group], np.tile(row(a), (det.window, 1))[None])[0]
        lo, hi = (a, hi) if score < target else (lo, a)
    return (lo + hi) / 2


def _hysteresis_run(clear_ratio: float) -> tuple[list[AlertEvent], float, float]:
    """Warm a pump group up, then hold it far out (raise), then at 0.8 of its threshold, then
    at 0.3; returns the transitions and when the 0.8 and 0.3 phases began."""
    c = cfg(groups={"clear_ratio": clear_ratio})
    members = {m: v[:WARM] for m, v in pump(seed=1, broken=False).items()}
    events: list[AlertEvent] = []
    eng = Engine(c, fresh_model(c), Metrics(CollectorRegistry()), events.append)
    rows = sorted(
        (
            Reading(f"plant/p1/{m}", T0 + i, float(v[i]))
            for m, v in members.items()
            for i in range(WARM)
        ),
        key=lambda r: r.ts,
    )
    eng.process([(rows, rows[-1].ts)], now=rows[-1].ts)
    assert eng.groups is not None
    gs = eng.groups.groups["plant/p1"]
    det = eng.groups.model.detector
    assert isinstance(det, MahalanobisDetector) and gs.threshold is not None
    names = gs.aligner.members or []
    state = det.groups["plant/p1"]
    sign = np.asarray([-1.0 if m == "current" else 1.0 for m in names])  # current against flow

    def row(a: float) -> np.ndarray:
        out: np.ndarray = state["mean"] + a * sign * state["sd"]
        return out

    thr = gs.threshold
    phases = [
        (_offset_for(det, "plant/p1", row, f * thr), n)
        for f, n in ((3.0, 40), (0.8, 120), (0.3, 80))
    ]
    t, starts = WARM, []
    for a, n in phases:
        starts.append(T0 + t)
        step = row(a)
        batch = [
            Reading(f"plant/p1/{m}", T0 + t + i, float(step[j]))
            for i in range(n)
            for j, m in enumerate(names)
        ]
        eng.process([(batch, batch[-1].ts)], now=batch[-1].ts)
        t += n
    return events, starts[1], starts[2]


def test_a_raised_group_clears_only_well_below_its_threshold() -> None:
    events, mid, low = _hysteresis_run(0.6)
    assert [e.state for e in events] == ["raised", "cleared"]
    assert events[0].ts < mid and events[1].ts >= low  # held through the 0.8 x threshold phase
    events, mid, low = _hysteresis_run(1.0)  # no hysteresis: it clears in that phase
    assert [e.state for e in events] == ["raised", "cleared"]
    assert mid <= events[1].ts < low
    with pytest.raises(ConfigError, match=r"groups\.clear_ratio"):
        from_mapping({"groups": {"clear_ratio": 0}})
