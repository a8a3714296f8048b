"""Per-sensor sliding windows: ring buffers with a stride, a gap policy and eviction.

Gap policy: a reading more than ``max_gap_s`` after the sensor's previous one, and more than
:data:`GAP_CADENCES` of its typical interval, starts the window afresh (the old partial
window is discarded, counted in ``restarts``), because a window spanning a gap mixes two
stretches of the signal the model never saw side by side. The typical interval is learned
per sensor, so an hourly sensor is not restarted at every reading by a limit meant for 1 Hz.
A reading whose timestamp is not after the previous one is rejected as ``out_of_order`` or
``duplicate_timestamp``.

Memory is bounded: at most ``max_sensors`` sensors are tracked. Adding one more evicts the
least recently seen sensor, and :meth:`Windows.evict_idle` drops sensors silent for
``idle_evict_s``. Both are counted in ``evicted``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamwatch.ingest import parse

GAP_CADENCES = 10.0
"""A gap must also exceed this many typical intervals to restart a window."""
_CADENCE_RATE = 0.02


@dataclass(slots=True)
class SensorWindow:
    """One sensor's ring buffer. Each value is written twice (at i and i+W) so that the
    latest window is always one contiguous slice, with no copying on insert."""

    length: int
    values: np.ndarray
    stamps: np.ndarray
    pos: int = 0
    filled: int = 0
    since_emit: int = 0
    last_ts: float = float("-inf")
    last_seen: float = 0.0
    typical_dt: float = 0.0
    """The sensor's typical interval between readings (a slow running mean, 0 = unknown)."""
    state: Any = None
    """Per-sensor state of later stages (warm-up, alert state), dropped with the window."""

    @classmethod
    def new(cls, length: int) -> SensorWindow:
        """An empty buffer for windows of ``length`` readings."""
        return cls(length, np.zeros(2 * length), np.zeros(2 * length))

    def push(self, ts: float, value: float, stride: int) -> bool:
        """Append a reading; True when a new full window is due (every ``stride`` readings)."""
        w = self.length
        p = self.pos
        self.values[p] = self.values[p + w] = value
        self.stamps[p] = self.stamps[p + w] = ts
        self.pos = (p + 1) % w
        self.last_ts = ts
        if self.filled < w:
            self.filled += 1
            if self.filled < w:
                return False
            self.since_emit = 0
            return True
        self.since_emit += 1
        if self.since_emit >= stride:
            self.since_emit = 0
            return True
        return False

    def restart(self) -> None:
        """Forget the partial window (after a gap)."""
        self.filled = 0
        self.since_emit = 0

    def window(self) -> np.ndarray:
        """The latest full window, oldest first (a view; copy it to keep it)."""
        return self.values[self.pos : self.pos + self.length]

    def window_stamps(self) -> np.ndarray:
        """Timestamps of the latest window (a view, like :meth:`window`)."""
        return self.stamps[self.pos : self.pos + self.length]


class Windows:
    """All sensors' windows, bounded in number."""

    def __init__(
        self, length: int, stride: int, max_gap_s: float, max_sensors: int, idle_evict_s: float
    ) -> None:
        self.length = length
        self.stride = stride
        self.max_gap_s = max_gap_s
        self.max_sensors = max_sensors
        self.idle_evict_s = idle_evict_s
        self.sensors: OrderedDict[str, SensorWindow] = OrderedDict()
        self.restarts = 0
        self.evicted = 0
        self.evicted_ids: list[tuple[str, SensorWindow]] = []
        """Sensors evicted since the caller last cleared this list."""

    def __len__(self) -> int:
        return len(self.sensors)

    def get(self, sensor: str, now: float) -> SensorWindow:
        """The sensor's window state, created (evicting the stalest if full) if new."""
        sw = self.sensors.get(sensor)
        if sw is None:
            if len(self.sensors) >= self.max_sensors:
                self._evicted(*self.sensors.popitem(last=False))
            sw = self.sensors[sensor] = SensorWindow.new(self.length)
        else:
            self.sensors.move_to_end(sensor)
        sw.last_seen = now
        return sw

    def add(self, sw: SensorWindow, ts: float, value: float) -> str | bool:
        """Add a reading: a rejection reason, or whether a full window is due."""
        if ts <= sw.last_ts:
            return parse.DUPLICATE if ts == sw.last_ts else parse.OUT_OF_ORDER
        if sw.last_ts > float("-inf"):
            dt = ts - sw.last_ts
            typical = sw.typical_dt or dt
            if dt > self.max_gap_s and dt > GAP_CADENCES * typical:
                if sw.filled:
                    sw.restart()
                    self.restarts += 1
            else:
                sw.typical_dt = typical + _CADENCE_RATE * (min(dt, 4.0 * typical) - typical)
        return sw.push(ts, value, self.stride)

    def evict_idle(self, now: float) -> int:
        """Drop sensors not seen for ``idle_evict_s``; returns how many."""
        n = 0
        cutoff = now - self.idle_evict_s
        while self.sensors:
            sensor, sw = next(iter(self.sensors.items()))
            if sw.last_seen >= cutoff:
                break
            del self.sensors[sensor]
            self._evicted(sensor, sw)
            n += 1
        return n

    def _evicted(self, sensor: str, sw: SensorWindow) -> None:
        self.evicted += 1
        self.evicted_ids.append((sensor, sw))
