"""Sensor-fault checks beside the model: is the *sensor* wrong, rather than the process?

Cheap and always on (``[faults]``), vectorised over each scored batch's window rows:

- **stuck**: the newest ``stuck_span`` readings of a window spread over at most
  ``stuck_ratio`` times the sensor's learned step noise (the median change between readings).
  A frozen transmitter repeats its last value exactly, so a sensor whose learned readings
  repeat exactly more often than :data:`MAX_REPEATS` (quantised, slow) is not judged;
- **rail**: stuck at or beyond the extremes seen while learning (a saturated transmitter);
- **quantisation**: a window of a sensor judged for stuck (its readings never repeat) holds at
  most ``quantisation_share`` of distinct values: its resolution got coarse (bits lost, a
  transmitter reconfigured). A sensor quantised from the start is not judged (its resolution
  growing coarser still is not detected);
- **out_of_range**: a reading outside the physical limits that ``[[faults.ranges]]`` gives
  the sensor's pattern (MQTT-style patterns, first match wins);
- **silent**: no reading for longer than the sensor's gap limit (``learning.gap_factor`` x its
  longest warm-up interval, the limit of the dropout verdict) or ``silent_min_s``, whichever is
  longer. Judged live on the worker's idle sweep (:meth:`Faults.sweep`), so it fires while
  nothing arrives, and cleared by the next reading (reason ``resumed``); that reading's gap
  verdict is then not given again. A dropout first seen when the next reading arrives (no
  sweep in between, as in replay) is the same fault, reported then.

A sensor's noise, repeat share and seen range are learned from its warm-up readings (the
same readings its threshold is calibrated on); a sensor a trained model already knows learns
them from ``learn_windows`` windows judged normal by the model, not overlapping, instead. Nothing is
saved: after a restart they are learned again that way, and after a ``relearn`` from the new
warm-up. Until then only out_of_range and silent are judged. A fault verdict is an
anomalous verdict for the alert state machine, and the alert it raises carries
``kind: sensor_fault`` and ``fault``; any other raise is ``kind: process``. A sensor in fault
is kept out of learning the way maintenance is (:attr:`Faults.faulted`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamwatch.config import FaultsConfig
from streamwatch.outputs.metrics import Metrics
from streamwatch.pipeline.alerts import CLEARED, RAISED, AlertEvent
from streamwatch.pipeline.groups import Pattern, pattern_levels

log = logging.getLogger(__name__)

PROCESS = "process"
SENSOR_FAULT = "sensor_fault"
OK, STUCK, RAIL, OUT_OF_RANGE, SILENT, QUANTISATION = 0, 1, 2, 3, 4, 5
NAMES = {
    STUCK: "stuck",
    RAIL: "rail",
    OUT_OF_RANGE: "out_of_range",
    SILENT: "silent",
    QUANTISATION: "quantisation",
}
"""Fault code -> the ``fault`` an alert and the metrics name."""
FAULT_NAMES = tuple(NAMES.values())
MAX_REPEATS = 0.01
"""A sensor is judged for stuck only if at most this share of its learned readings repeat the
one before exactly: a frozen transmitter repeats its value, and for a quantised or slow sensor
that repeats often a flat span is normal (repeats cluster, so no span length makes it safe)."""


def compile_pattern(text: str) -> Pattern:
    """A sensor-id pattern (``+`` one level, ``#`` the rest, last); ValueError if bad."""
    return Pattern(text, pattern_levels(text), 0)


@dataclass(slots=True)
class FaultState:
    """One sensor's fault-check state (on its :class:`~.lifecycle.SensorState`)."""

    lo_limit: float = -math.inf
    hi_limit: float = math.inf
    noise: float = -1.0
    """Learned median change between readings; 0: never judged stuck; -1: still learning."""
    lo: float = math.inf
    hi: float = -math.inf
    """The extremes seen while learning."""
    learned: int = 0
    offered: int = 0
    """Normal windows offered to learning (every ``window // stride``-th is taken)."""
    steps: list[float] = field(default_factory=list)
    flat: int = 0
    diffs: int = 0
    current: int = OK
    """The latest check's fault code."""
    raised: str | None = None
    """The fault that raised the sensor's alert, if a fault did."""


class Faults:
    """The fault checks of every sensor (worker thread only)."""

    def __init__(self, cfg: FaultsConfig, metrics: Metrics, stride: int) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.stride = stride
        self.ranges = [(compile_pattern(r.pattern), r.min, r.max) for r in cfg.ranges]
        self.faulted: set[str] = set()
        """Sensors in fault now: scored, but kept out of learning (as in maintenance)."""
        self.silent: set[str] = set()
        """Sensors in a live silent fault (cleared by their next reading)."""
        self.raised_as: dict[str, str] = {}
        """Sensor -> fault, for each raised alert that is a sensor fault (kept with the alert
        state, so a clear after a restart still says which fault it ends)."""

    # -- per sensor -----------------------------------------------------------------------

    def attach(self, sensor: str, st: Any) -> FaultState:
        """The sensor's fault state, created with its configured limits if new."""
        f: FaultState | None = st.fault
        if f is None:
            f = st.fault = FaultState()
            for pat, lo, hi in self.ranges:
                if pat.match(sensor) is not None:
                    f.lo_limit = -math.inf if lo is None else lo
                    f.hi_limit = math.inf if hi is None else hi
                    break
        return f

    def _set(self, sensor: str, f: FaultState, code: int) -> None:
        if code == f.current:
            return
        if f.current:
            self.metrics.sensors_in_fault.labels(NAMES[f.current]).dec()
        if code:
            self.metrics.sensors_in_fault.labels(NAMES[code]).inc()
            self.faulted.add(sensor)
        else:
            self.faulted.discard(sensor)
        if code == SILENT:
            self.silent.add(sensor)
        elif f.current == SILENT:
            self.silent.discard(sensor)
        f.current = code

    def forget(self, sensor: str, st: Any) -> None:
        """The sensor is gone or relearns: leave the fault sets and learn afresh."""
        f: FaultState | None = st.fault
        if f is not None:
            self._set(sensor, f, OK)
            st.fault = None

    # -- the batch checks -----------------------------------------------------------------

    def check(
        self, sensors: Sequence[str], states: Sequence[Any], x: np.ndarray, normal: np.ndarray
    ) -> np.ndarray:
        """Fault codes of a scored batch's rows (``x``: one window per row, oldest first);
        rows the model judged ``normal`` teach the sensors still learning."""
        n = len(states)
        codes = np.zeros(n, dtype=np.int8)
        if not self.cfg.enabled or n == 0:
            return codes
        # One pass over the rows in Python (the noise; -1 while learning), the rest in numpy.
        noise = np.fromiter(
            (-1.0 if (f := st.fault) is None else f.noise for st in states), np.float64, n
        )
        width = x.shape[1]
        if width >= 3:
            judged = noise > 0
            if judged.any():
                span = x[:, -min(self.cfg.stuck_span, width) :]
                spread = span.max(axis=1) - span.min(axis=1)
                stuck = np.flatnonzero(judged & (spread <= self.cfg.stuck_ratio * noise))
                for i in stuck.tolist():  # rare: stuck, or at a rail?
                    f = states[i].fault
                    last = x[i, -1]
                    codes[i] = RAIL if last >= f.hi or last <= f.lo else STUCK
                share = self.cfg.quantisation_share
                # Only windows whose newest reading repeats an older one can be on a few levels
                # (nearly every such window does): a cheap filter before sorting.
                again = (x[:, :-1] == x[:, -1:]).any(axis=1) if share > 0 else judged & False
                rows = np.flatnonzero(judged & again & (codes == OK))
                if len(rows):  # a sensor that never repeated, now on a few levels
                    srt = np.sort(x[rows], axis=1)
                    distinct = 1 + np.count_nonzero(np.diff(srt, axis=1), axis=1)
                    codes[rows[distinct <= share * width]] = QUANTISATION
            learning = np.flatnonzero((noise < 0) & normal)
            if learning.size:
                self._learn(sensors, states, x, learning)
        if self.ranges:
            fs = [st.fault or self.attach(s, st) for s, st in zip(sensors, states, strict=True)]
            lo = np.fromiter((f.lo_limit for f in fs), np.float64, n)
            hi = np.fromiter((f.hi_limit for f in fs), np.float64, n)
            recent = x[:, -min(self.stride, width) :]
            out = ((recent < lo[:, None]) | (recent > hi[:, None])).any(axis=1)
            codes[out] = OUT_OF_RANGE
        if self.faulted or codes.any():  # rare: set each such sensor to its newest verdict
            faulted = self.faulted
            names = {sensors[i] for i in np.flatnonzero(codes).tolist()}
            newest = {s: i for i, s in enumerate(sensors) if s in names or s in faulted}
            for s, i in newest.items():
                code = int(codes[i])
                if code or states[i].fault.current != SILENT:  # silence ends by a reading
                    self._set(s, self.attach(s, states[i]), code)
        return codes

    def _learn(
        self, sensors: Sequence[str], states: Sequence[Any], x: np.ndarray, rows: np.ndarray
    ) -> None:
        w = x[rows]
        d = np.abs(np.diff(w, axis=1))
        steps = np.median(d, axis=1)
        flats = (d == 0).sum(axis=1)
        lo, hi = w.min(axis=1), w.max(axis=1)
        every = max(1, x.shape[1] // self.stride)  # windows that do not overlap
        for k, i in enumerate(rows.tolist()):
            f = states[i].fault or self.attach(sensors[i], states[i])
            f.offered += 1
            if f.learned >= self.cfg.learn_windows or (f.offered - 1) % every:
                continue  # overlapping, or a sensor with several rows in this batch
            f.steps.append(float(steps[k]))
            f.flat += int(flats[k])
            f.diffs += d.shape[1]
            f.lo = min(f.lo, float(lo[k]))
            f.hi = max(f.hi, float(hi[k]))
            f.learned += 1
            if f.learned == self.cfg.learn_windows:
                self._learned(f, float(np.median(f.steps)))

    def _learned(self, f: FaultState, step: float) -> None:
        f.learned = self.cfg.learn_windows
        f.noise = step if f.flat <= MAX_REPEATS * max(f.diffs, 1) else 0.0
        f.steps = []

    def learn_series(self, sensor: str, st: Any, values: np.ndarray) -> None:
        """Learn a sensor's noise and range from its warm-up readings (a sensor the model
        already knows learns from its first normal windows instead)."""
        if values.size < 3:
            return
        f = self.attach(sensor, st)
        d = np.abs(np.diff(values))
        f.flat, f.diffs = int((d == 0).sum()), int(d.size)
        f.lo, f.hi = float(values.min()), float(values.max())
        self._learned(f, float(np.median(d)))

    # -- alert labels ---------------------------------------------------------------------

    def raised(self, ev: AlertEvent, st: Any, code: int, gap: bool) -> None:
        """Label a raise by what caused it (a fault takes precedence) and count it."""
        if code or gap:
            name = NAMES[code] if code else NAMES[SILENT]
            ev.kind, ev.fault = SENSOR_FAULT, name
            self.attach(ev.sensor, st).raised = name
            self.raised_as[ev.sensor] = name
            self.metrics.sensor_faults.labels(name).inc()
        self.metrics.alert_raises.labels(ev.kind).inc()

    def reclassified(
        self, sensor: str, st: Any, code: int, ts: float, score: float, detector: str
    ) -> AlertEvent | None:
        """A fault found soon after a process raise: the model saw the fault first (a frozen
        value far from the normal level trips it in a few readings, the stuck check needs
        ``stuck_span``). The same alert is published again as the sensor fault it is."""
        f: FaultState | None = st.fault
        alert = st.alert
        if (
            f is None
            or f.raised is not None
            or alert.alert_id is None
            or alert.since_raise > self.cfg.reclassify_verdicts
        ):
            return None
        name = NAMES[code]
        f.raised = name
        self.raised_as[sensor] = name
        self.metrics.sensor_faults.labels(name).inc()
        thr = st.threshold if st.threshold is not None else math.nan
        ev = AlertEvent(sensor, RAISED, ts, score, thr, detector, ts, ts, alert.alert_id)
        ev.kind, ev.fault, ev.reason = SENSOR_FAULT, name, "reclassified"
        return ev

    def cleared(self, ev: AlertEvent, st: Any) -> None:
        """Label a clear like the raise it ends (also one raised before a restart)."""
        f: FaultState | None = st.fault
        name = f.raised if f is not None and f.raised is not None else None
        name = name or self.raised_as.get(ev.sensor)
        if name is not None:
            ev.kind, ev.fault = SENSOR_FAULT, name
        if f is not None:
            f.raised = None
        self.raised_as.pop(ev.sensor, None)

    # -- silence --------------------------------------------------------------------------

    def sweep(
        self, now: float, windows: Any, quiet: Container[str], detector: str
    ) -> list[AlertEvent]:
        """Raise ``silent`` for every scored sensor with no reading for longer than its limit
        (not while ``quiet``: muted or in maintenance); returns the raises."""
        if not self.cfg.enabled:
            return []
        floor = self.cfg.silent_min_s
        cutoff = now - floor
        events: list[AlertEvent] = []
        for sensor, sw in windows.sensors.items():  # least recently seen first
            if sw.last_seen >= cutoff:
                break
            st = sw.state
            if st is None or st.threshold is None or sensor in self.silent:
                continue
            if now - sw.last_seen <= max(st.gap_limit, floor):
                continue
            f = self.attach(sensor, st)
            self._set(sensor, f, SILENT)
            if st.alert.raised or sensor in quiet:
                continue
            alert_id = st.alert.force_raise(sw.last_ts)
            last = sw.last_ts
            ev = AlertEvent(
                sensor, RAISED, now, math.nan, st.threshold, detector, last, last, alert_id
            )
            ev.reason = "silent"
            self.raised(ev, st, SILENT, False)
            st.series.raised += 1
            st.series.active = 1
            events.append(ev)
            log.warning("sensor %s silent for %.0f s", sensor, now - sw.last_seen)
        return events

    def resumed(self, sensor: str, st: Any, ts: float, detector: str) -> AlertEvent | None:
        """A reading from a silent sensor: the fault ends, and the alert it raised clears."""
        f = self.attach(sensor, st)
        self._set(sensor, f, OK)
        alert = st.alert
        if f.raised != NAMES[SILENT] or alert.alert_id is None:
            return None
        ev = AlertEvent(
            sensor,
            CLEARED,
            ts,
            math.nan,
            st.threshold if st.threshold is not None else math.nan,
            detector,
            ts,
            ts,
            alert.alert_id,
            reason="resumed",
        )
        alert.restore(None)
        alert.history = 0
        self.cleared(ev, st)
        st.series.cleared += 1
        st.series.active = 0
        return ev
