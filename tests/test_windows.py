"""Per-sensor windows: ring buffer order, stride, gap restarts, order checks, eviction."""

from __future__ import annotations

import numpy as np

from streamwatch.ingest import parse
from streamwatch.pipeline.windows import Windows


def make(length: int = 4, stride: int = 1, gap: float = 10.0, cap: int = 100) -> Windows:
    return Windows(length, stride, gap, cap, idle_evict_s=60.0)


def test_first_window_after_length_readings_then_every_stride() -> None:
    w = make(length=4, stride=2)
    sw = w.get("a", 0.0)
    due = [w.add(sw, float(t), float(t)) for t in range(1, 11)]
    assert due == [False, False, False, True, False, True, False, True, False, True]
    np.testing.assert_array_equal(sw.window(), [7.0, 8.0, 9.0, 10.0])
    np.testing.assert_array_equal(sw.window_stamps(), [7.0, 8.0, 9.0, 10.0])


def test_window_is_oldest_first_across_wraparound() -> None:
    w = make(length=3)
    sw = w.get("a", 0.0)
    for t in range(1, 8):
        w.add(sw, float(t), t * 10.0)
        if t >= 3:
            np.testing.assert_array_equal(sw.window(), [(t - 2) * 10.0, (t - 1) * 10.0, t * 10.0])


def test_out_of_order_and_duplicate_are_rejected_without_changing_state() -> None:
    w = make()
    sw = w.get("a", 0.0)
    w.add(sw, 5.0, 1.0)
    assert w.add(sw, 5.0, 2.0) == parse.DUPLICATE
    assert w.add(sw, 4.0, 2.0) == parse.OUT_OF_ORDER
    assert sw.filled == 1 and sw.last_ts == 5.0


def test_gap_restarts_the_window_and_is_counted() -> None:
    w = make(length=3, gap=10.0)
    sw = w.get("a", 0.0)
    for t in (1.0, 2.0):
        w.add(sw, t, t)
    assert w.add(sw, 50.0, 50.0) is False  # gap: starts afresh with this reading
    assert w.restarts == 1
    assert w.add(sw, 51.0, 51.0) is False
    assert w.add(sw, 52.0, 52.0) is True
    np.testing.assert_array_equal(sw.window(), [50.0, 51.0, 52.0])


def test_cap_evicts_least_recently_seen() -> None:
    w = make(cap=3)
    for s in ("a", "b", "c"):
        w.get(s, 0.0)
    w.get("a", 1.0)  # a is fresh again
    w.get("d", 2.0)
    assert list(w.sensors) == ["c", "a", "d"]
    assert w.evicted == 1 and [s for s, _ in w.evicted_ids] == ["b"]


def test_idle_eviction() -> None:
    w = make()
    w.get("old", 0.0)
    w.get("new", 100.0)
    assert w.evict_idle(100.0) == 1
    assert list(w.sensors) == ["new"]


def test_memory_stays_bounded_under_topic_churn() -> None:
    w = make(cap=1000)
    for i in range(100_000):
        sw = w.get(f"s{i}", float(i))
        w.add(sw, float(i), 1.0)
        w.evicted_ids.clear()
    assert len(w) == 1000 and w.evicted == 99_000


def test_gap_restart_is_relative_to_the_sensor_cadence() -> None:
    """An hourly sensor is not restarted at every reading by a 10 s limit; a gap of many of
    its own intervals still restarts it."""
    w = make(length=3, gap=10.0)
    sw = w.get("hourly", 0.0)
    due = [w.add(sw, 3600.0 * t, float(t)) for t in range(1, 6)]
    assert due == [False, False, True, True, True] and w.restarts == 0
    w.add(sw, 3600.0 * 5 + 3600.0 * 20, 1.0)  # 20 intervals of silence
    assert w.restarts == 1
