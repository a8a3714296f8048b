"""The alert state machine: k-of-n raise, m-normal clear, one raise per episode."""

from __future__ import annotations

import json

import pytest

from streamwatch.pipeline.alerts import CLEARED, RAISED, AlertEvent, AlertState


def run(st: AlertState, verdicts: str) -> list[str | None]:
    out: list[str | None] = []
    for v in verdicts:
        change = st.update(v == "1")
        out.append(change[0] if change else None)
    return out


def test_raise_after_k_of_n() -> None:
    st = AlertState(k=2, n=3, m=2)
    assert run(st, "1001") == [None, None, None, None]  # 1 of last 3, twice
    assert run(st, "1") == [RAISED]  # 1,0,1... now bits 101 within 3 -> 2 of 3


def test_clear_after_m_consecutive_normals_with_stable_id() -> None:
    st = AlertState(k=1, n=1, m=3)
    first = st.update(True)
    assert first is not None and first[0] == RAISED
    assert run(st, "001") == [None, None, None]  # the 1 resets the normal run
    assert run(st, "00") == [None, None]
    assert st.update(False) == (CLEARED, first[1])
    assert not st.raised


def test_long_anomaly_raises_once() -> None:
    st = AlertState(k=3, n=5, m=10)
    events = [e for e in run(st, "1" * 1000 + "0" * 10 + "1" * 3) if e]
    assert events == [RAISED, CLEARED, RAISED]


def test_flapping_inside_an_episode_does_not_storm() -> None:
    st = AlertState(k=1, n=1, m=5)
    events = [e for e in run(st, "10" * 500 + "0" * 5) if e]
    assert events == [RAISED, CLEARED]


def test_new_episode_gets_new_id() -> None:
    st = AlertState(k=1, n=1, m=1)
    a = st.update(True)
    st.update(False)
    b = st.update(True)
    assert a and b and a[1] != b[1]


def test_restore_resumes_without_a_second_raise() -> None:
    st = AlertState(k=1, n=1, m=2)
    st.restore("abc")
    assert st.update(True) is None
    assert run(st, "00") == [None, CLEARED]


def test_payload_fields() -> None:
    ev = AlertEvent("s1", RAISED, 10.0, 5.0, 3.0, "gaussian", 9.0, 10.0, "id1")
    doc = json.loads(ev.payload())
    assert doc == {
        "sensor": "s1",
        "state": "raised",
        "ts": 10.0,
        "score": 5.0,
        "threshold": 3.0,
        "detector": "gaussian",
        "window_start": 9.0,
        "window_end": 10.0,
        "alert_id": "id1",
        "kind": "process",
    }


def test_off_delay_keeps_a_periodic_anomaly_one_alert() -> None:
    # Anomalous for 2 s of every 10 s cycle (10 readings/s), for a minute, then normal.
    st = AlertState(k=1, n=1, m=10, hold_s=30.0)
    events = []
    for i in range(600 + 400):
        ts = i / 10.0
        anomalous = i < 600 and (i % 100) < 20
        change = st.update(anomalous, ts)
        if change:
            events.append((change[0], ts))
    assert [e for e, _ in events] == [RAISED, CLEARED]
    last_anomalous = 51.9  # reading 519 is the last anomalous one
    assert events[1][1] == pytest.approx(last_anomalous + 30.0)


def test_without_off_delay_the_same_anomaly_flaps() -> None:
    st = AlertState(k=1, n=1, m=10, hold_s=0.0)
    raised = 0
    for i in range(600):
        change = st.update((i % 100) < 20, i / 10.0)
        raised += bool(change and change[0] == RAISED)
    assert raised == 6


def test_refractory_no_new_raise_soon_after_the_last() -> None:
    """A stretch that flickers around its threshold costs one alert per refractory period."""
    st = AlertState(k=1, n=1, m=2, refractory=10)
    flicker = "100" * 12  # raise, clear after 2 normal verdicts, anomalous again at once ...
    events = [e for e in run(st, flicker) if e]
    # 36 verdicts, anomalous every third: raises at verdicts 0, 12 and 24 only
    assert events.count(RAISED) == 3 and events[0] == RAISED
    st2 = AlertState(k=1, n=1, m=2, refractory=0)
    assert [e for e in run(st2, flicker) if e].count(RAISED) == 12


def test_parts_travel_in_the_payload() -> None:
    ev = AlertEvent("s", RAISED, 1.0, 2.0, 1.5, "robust", 0.0, 1.0, "id", None, {"level": 1.3})
    assert json.loads(ev.payload())["parts"] == {"level": 1.3}


def test_confirm_needs_two_of_three_and_is_never_laxer() -> None:
    a = AlertState(k=1, n=1, m=3)
    a.confirm(2, 3)
    assert a.update(True, 1.0) is None  # one anomalous verdict: not yet
    assert a.update(False, 2.0) is None
    change = a.update(True, 3.0)  # two of the last three
    assert change is not None and change[0] == RAISED
    strict = AlertState(k=3, n=5, m=3)
    strict.confirm(2, 3)
    assert (strict.k, strict.n) == (3, 5)


def test_a_forced_verdict_raises_alone_but_respects_the_refractory() -> None:
    a = AlertState(k=2, n=3, m=1, refractory=10)
    change = a.update(True, 1.0, forced=True)
    assert change is not None and change[0] == RAISED
    assert a.update(False, 2.0) is not None  # cleared
    assert a.update(True, 3.0, forced=True) is None  # within the refractory period


def test_end_clears_at_once_and_returns_the_id() -> None:
    a = AlertState(k=1, n=1, m=100)
    change = a.update(True, 1.0)
    assert change is not None
    assert a.end() == change[1] and not a.raised
    ev = AlertEvent(
        "s",
        CLEARED,
        2.0,
        1.0,
        1.0,
        "robust",
        1.0,
        2.0,
        change[1],
        reason="rebaselined",
        baseline={"from": 1.0, "to": float("nan")},
    )
    doc = json.loads(ev.payload())
    assert doc["reason"] == "rebaselined" and doc["baseline"] == {"from": 1.0, "to": None}
