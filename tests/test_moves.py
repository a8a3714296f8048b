"""What a partition move does to the engine (streamwatch.pipeline.moves) and how alert state is
keyed in NATS KV (streamwatch.ingest.takeover): context readings fill windows and warm-up
without verdicts, adopted alerts clear instead of raising again, forgotten sensors leave no
state and publish nothing."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from streamwatch.config import Config, from_mapping
from streamwatch.ingest.parse import Reading
from streamwatch.outputs.metrics import Metrics
from streamwatch.pipeline.alerts import AlertEvent
from streamwatch.pipeline.engine import Engine
from streamwatch.pipeline.moves import Adopt, Context, Forget, apply
from tests.helpers import fresh_model


def _cfg() -> Config:
    return from_mapping(
        {
            "detector": {"type": "gaussian"},
            "learning": {"warmup": 30},
            "alerts": {"raise_k": 2, "raise_n": 3, "clear_m": 5, "clear_hold_s": 0.0},
            "threshold": {"false_alarm_rate": 1e-4},
        }
    )


def _normal(sensor: str, start: int, n: int, seed: int) -> list[Reading]:
    rng = np.random.default_rng(seed)
    return [
        Reading(sensor, 1000.0 + i, float(rng.normal(20, 0.5))) for i in range(start, start + n)
    ]


def test_context_warms_up_without_verdicts_or_counts() -> None:
    reg = CollectorRegistry()
    events: list[AlertEvent] = []
    eng = Engine(_cfg(), fresh_model(_cfg()), Metrics(reg), events.append)
    history = _normal("a", 0, 40, seed=1)
    history[35:38] = [Reading("a", r.ts, 35.0) for r in history[35:38]]  # scored before
    apply(eng, Context(history))
    assert events == []  # no verdict, no alert on context
    assert reg.get_sample_value("streamwatch_readings_total", {"sensor": "a"}) in (None, 0.0)
    assert eng.warming == 0  # warmed up from the context alone
    # The first live readings are scored at once (a fresh sensor would warm up for 30).
    eng.process([(_normal("a", 40, 5, seed=2), 0.0)], now=2000.0)
    assert reg.get_sample_value("streamwatch_readings_total", {"sensor": "a"}) == 5
    assert reg.get_sample_value("streamwatch_windows_scored_total") == 5
    # Older context (already held) is skipped silently, not counted as out of order.
    apply(eng, Context(history[:3]))
    assert reg.get_sample_value("streamwatch_rejected_total", {"reason": "out_of_order"}) in (
        None,
        0.0,
    )


def test_adopted_alert_clears_under_its_id_and_is_not_raised_again() -> None:
    events: list[AlertEvent] = []
    eng = Engine(_cfg(), fresh_model(_cfg()), Metrics(CollectorRegistry()), events.append)
    apply(eng, Adopt(3, {"a": {"alert_id": "abc", "kind": "process", "fault": None}}))
    apply(eng, Context(_normal("a", 0, 40, seed=1)))
    spike = [Reading("a", 1040.0 + i, 35.0) for i in range(4)]  # re-scored after the move
    eng.process([(spike + _normal("a", 44, 10, seed=3), 0.0)], now=2000.0)
    assert [(e.state, e.alert_id) for e in events] == [("cleared", "abc")]
    assert "a" not in eng.raised


def test_forget_drops_state_and_alerts_silently() -> None:
    events: list[AlertEvent] = []
    eng = Engine(_cfg(), fresh_model(_cfg()), Metrics(CollectorRegistry()), events.append)
    eng.process([(_normal("a", 0, 40, seed=1) + _normal("b", 0, 40, seed=2), 0.0)], now=2000.0)
    apply(eng, Adopt(1, {"a": {"alert_id": "x1", "kind": "process", "fault": None}}))
    assert eng.windows.sensors["a"].state.alert.alert_id == "x1"  # resumed on its state
    apply(eng, Forget(1, ["a"]))
    assert "a" not in eng.windows.sensors and "a" not in eng.raised
    assert "b" in eng.windows.sensors
    assert events == []  # its alert goes on with the next owner: no clear published here
    assert eng.raised_changes() == {}


def test_alert_keys_escape_what_kv_keys_cannot_hold() -> None:
    from streamwatch.ingest.takeover import _sensor_of, alert_key

    for sensor in ("pump1", "plant/pump2", "a.b c=d", "température"):
        key = alert_key(7, sensor)
        assert key.startswith("7.")
        assert all(c.isalnum() or c in "-_/=." for c in key) and key.isascii()
        assert key.count(".") == 1
        assert _sensor_of(key) == sensor


def test_the_queue_never_sheds_a_marker() -> None:
    from streamwatch.pipeline.handoff import Handoff

    q = Handoff(100, linger_s=0.0)
    q.put(Adopt(2, {"a": {"alert_id": "x"}}), 0.0, None)  # type: ignore[arg-type]
    for i in range(5):
        q.put([Reading("s", float(i * 50 + j), 1.0) for j in range(50)], 0.0, None)
    items = q.drain(0)
    assert isinstance(items[0][0], Adopt)  # kept at the head, nothing shed past it
