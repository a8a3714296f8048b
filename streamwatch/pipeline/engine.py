"""The worker's hot path: readings in, alert events out. The daemon and ``replay`` share it.

One thread owns all of this state, so it needs no locks. Per drained batch it:

1. pushes each reading into its sensor's window (order and gap checks) and hands it to the
   sensor's lifecycle (:mod:`streamwatch.pipeline.lifecycle`: warm-up, calibration,
   auto-training collection);
2. scores every window that came due, from all scored sensors, in one detector call;
3. compares each score with its sensor's calibrated threshold;
4. feeds the verdicts to the sensors' alert state machines;
5. hands the transitions to a sink (MQTT in the daemon, a list in replay).

Beside the verdicts it keeps the learning that must see them: protected adaptation
(``learning.follow_half_life``: only readings judged normal, outside and clear of alerts,
move a sensor's level), lasting changes (``learning.lasting_s``: re-baseline, or hold) and
feed outages (:mod:`streamwatch.pipeline.feed`). (Over 400 lines, knowingly: these sit in
the verdict loop; the re-baselining is the next candidate to move out.)
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from streamwatch.config import Config
from streamwatch.detectors.base import Detector
from streamwatch.detectors.bundle import Model
from streamwatch.ingest.parse import Silence
from streamwatch.outputs.metrics import Metrics
from streamwatch.pipeline.alerts import CLEARED, RAISED, AlertEvent, AlertState
from streamwatch.pipeline.faults import Faults
from streamwatch.pipeline.feed import FeedWatch
from streamwatch.pipeline.group_path import GroupPath, load_group_model
from streamwatch.pipeline.handoff import Item, Queued
from streamwatch.pipeline.lifecycle import SCORED, SensorLifecycle, SensorState
from streamwatch.pipeline.windows import Windows

log = logging.getLogger(__name__)

TOP_STEPS = 3
"""How many of a window's steps an alert names as contributing most to its score."""


class Engine:
    """Windows → batched scores → thresholds → alert transitions, for every sensor."""

    def __init__(
        self,
        cfg: Config,
        model: Model,
        metrics: Metrics,
        sink: Callable[[AlertEvent], None],
        on_training_data: Callable[[dict[str, np.ndarray]], None] | None = None,
        background_fits: bool = False,
        raised: dict[str, str] | None = None,
        group_model: Model | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.sink = sink
        self._pending: Model | None = None
        self._pending_groups: Model | None = None
        self._pending_lock = threading.Lock()
        self._recollect = False
        self.swaps = 0
        """Models swapped in so far (per-sensor or group); the worker watches it."""
        self.raised: dict[str, str] = dict(raised or {})
        """Sensor -> alert id of every raised alert (persisted by the daemon)."""
        self._raised_changed = False
        self.lifecycle = SensorLifecycle(cfg, model, metrics, on_training_data, background_fits)
        self.windows = self._new_windows(self.detector)
        self.feed = FeedWatch(cfg.learning.feed_outage_sensors, metrics.feed_outages)
        half_life = cfg.learning.follow_half_life
        self._follow_rate = 1.0 - 0.5 ** (1.0 / half_life) if half_life else 0.0
        self._follow_guard = cfg.learning.follow_guard
        self._lasting_s = cfg.learning.lasting_s
        # Operator hooks (:mod:`streamwatch.control`), set by the daemon on this thread:
        self.muted: set[str] = set()
        """Ids that raise no alert now (an alert already raised may still clear)."""
        self.maintenance: set[str] = set()
        """Ids whose readings are scored but kept out of learning and calibration."""
        self.on_scores: Callable[[list[str], list[float], np.ndarray, np.ndarray], None] | None
        self.on_scores = None
        """Called once per scored batch with (sensors, window ends, scores, thresholds)."""
        self.faults = Faults(cfg.faults, metrics, cfg.windows.stride)
        """Sensor-fault checks beside the model (:mod:`streamwatch.pipeline.faults`)."""
        self.lifecycle.on_warmed = self.faults.learn_series  # they learn from the warm-up
        self.groups: GroupPath | None = None
        """The path for sensors that ``[groups]`` patterns put in groups (None without)."""
        if cfg.groups.patterns:
            self.groups = GroupPath(
                cfg,
                group_model if group_model is not None else load_group_model(cfg),
                metrics,
                sink,
                self.raised,
                self.mark_raised_changed,
            )

    def mark_raised_changed(self) -> None:
        """Have the raised alerts saved again (they changed outside the hot path)."""
        self._raised_changed = True

    @property
    def model(self) -> Model:
        """The model scoring now (the stand-in while auto-training)."""
        return self.lifecycle.model

    @property
    def detector(self) -> Detector:
        """The detector scoring now."""
        return self.lifecycle.model.detector

    @property
    def warming(self) -> int:
        """Sensors tracked and not yet scored."""
        return self.lifecycle.warming

    @property
    def learning(self) -> bool:
        """Whether auto-training is collecting data, or a new model waits to be swapped in."""
        return self.lifecycle.collecting or self._pending is not None

    def raised_changes(self) -> dict[str, str] | None:
        """A copy of the raised alerts if they changed since the last call, else None."""
        if not self._raised_changed:
            return None
        self._raised_changed = False
        return dict(self.raised)

    def _new_windows(self, detector: Detector) -> Windows:
        w = self.cfg.windows
        stride = 1 if detector.kind == "reading" else w.stride
        return Windows(detector.window, stride, w.max_gap_s, w.max_sensors, w.idle_evict_s)

    def _state_of(self, sensor: str) -> SensorState | None:
        sw = self.windows.sensors.get(sensor)
        return sw.state if sw is not None else None

    # -- model swap (SIGHUP reload, background training) ------------------------------------

    def request_swap(self, model: Model) -> None:
        """Swap in a new model before the next batch (thread-safe)."""
        with self._pending_lock:
            self._pending = model

    def request_group_swap(self, model: Model) -> None:
        """Swap in a reloaded group model before the next batch (thread-safe)."""
        with self._pending_lock:
            self._pending_groups = model

    def request_recollect(self) -> None:
        """Auto-train again on fresh data before the next batch (thread-safe): the trained
        model was refused (see :meth:`SensorLifecycle.recollect`)."""
        with self._pending_lock:
            self._recollect = True

    def _apply_swap(self) -> None:
        with self._pending_lock:
            new, self._pending = self._pending, None
            again, self._recollect = self._recollect, False
            groups_model, self._pending_groups = self._pending_groups, None
        if groups_model is not None and self.groups is not None:
            self.groups.swap(groups_model)
            self.swaps += 1
        if again:
            self.lifecycle.recollect()
        if new is None:
            return
        old = self.detector
        if new.detector.window != old.window or new.detector.kind != old.kind:
            # The window shape changed: keep alert state, restart the buffers.
            carried = {s: sw.state for s, sw in self.windows.sensors.items()}
            self.windows = self._new_windows(new.detector)
            now = time.time()
            for sensor, carried_state in carried.items():
                self.windows.get(sensor, now).state = carried_state
        states = {s: sw.state for s, sw in self.windows.sensors.items() if sw.state is not None}
        self.lifecycle.swap(new, states)
        self.swaps += 1

    # -- the hot path ---------------------------------------------------------------------

    def process(self, items: Iterable[Item | Queued], now: float | None = None) -> list[AlertEvent]:
        """Run a drained batch of messages through the pipeline; return the transitions."""
        self._apply_swap()
        life = self.lifecycle
        life.install_fits(self._state_of)
        now = time.time() if now is None else now
        det = life.model.detector
        windows = self.windows
        per_reading = det.kind == "reading"
        rejected: dict[str, int] = {}
        sensors: list[str] = []
        rows: list[Any] = []  # windows, or single values for per-reading detectors
        stamps: list[np.ndarray] = []  # each window's timestamps (window detectors)
        ends: list[float] = []
        states: list[SensorState] = []
        arrivals: list[float] = []
        gaps: list[bool] = []  # the reading came after a gap longer than its sensor's normal
        restarts = windows.restarts
        faults = self.faults
        maint = self.maintenance | faults.faulted if faults.faulted else self.maintenance
        silent = faults.silent
        resumed: list[AlertEvent] = []
        groups = self.groups
        alone = groups is None or self.cfg.groups.score_members_alone
        for item in items:
            readings, arrived = item[0], item[1]
            if readings.__class__ is Silence:
                self._silence(readings)
                continue
            for r in readings:
                if groups is not None and (g := groups.grouper.match(r.sensor)) is not None:
                    groups.add(g[0], g[1], r.ts, r.value, now)
                    if not alone:
                        continue
                sw = windows.get(r.sensor, now)
                st: SensorState | None = sw.state
                if st is None:
                    st = sw.state = self.new_state(r.sensor)
                dt = r.ts - sw.last_ts
                if silent and r.sensor in silent:  # its silence was reported live: no gap
                    resumed += self._resumed(r.sensor, st, r.ts)
                    dt = 0.0
                due = windows.add(sw, r.ts, r.value)
                if due.__class__ is str:
                    rejected[due] = rejected.get(due, 0) + 1
                    continue
                series = st.series
                series.readings += 1
                series.last_ts = r.ts
                gap = dt > st.gap_limit and not self.feed.silent(
                    r.ts - dt, r.ts, st.gap_limit, (w.last_ts for w in windows.sensors.values())
                )
                self.feed.saw(r.ts)
                if maint and r.sensor in maint:
                    scored = st.phase == SCORED  # maintenance, fault: scored, never learned
                else:
                    scored = life.observe(r.sensor, st, r.value, dt)
                if scored and due:
                    sensors.append(r.sensor)
                    states.append(st)
                    arrivals.append(arrived)
                    ends.append(r.ts)
                    gaps.append(gap)
                    if per_reading:
                        rows.append(r.value)
                    else:
                        rows.append(sw.window().copy())
                        stamps.append(sw.window_stamps().copy())
        for reason, n in rejected.items():
            self.metrics.rejected.labels(reason).inc(n)
        if windows.restarts != restarts:
            self.metrics.window_restarts.inc(windows.restarts - restarts)
        events: list[AlertEvent] = resumed
        if rows:
            x = np.array(rows, dtype=np.float64).reshape(len(rows), -1)
            events += self._score(
                det, sensors, x, stamps, ends, states, np.asarray(arrivals), np.asarray(gaps)
            )
        if groups is not None:
            events += groups.flush()
        # Only now: a sensor evicted by later readings of this batch still has its due window
        # scored with the state it had (issue 12, item 1: it raised KeyError, losing the batch).
        self._evicted()
        return events

    def _score(
        self,
        det: Detector,
        sensors: list[str],
        x: np.ndarray,
        stamps: list[np.ndarray],
        ends: list[float],
        states: list[SensorState],
        arrivals: np.ndarray,
        gaps: np.ndarray,
    ) -> list[AlertEvent]:
        cap = self.cfg.engine.max_batch
        if len(sensors) <= cap:
            scores = det.score(sensors, x)
        else:
            scores = np.concatenate(
                [det.score(sensors[i : i + cap], x[i : i + cap]) for i in range(0, len(x), cap)]
            )
        thr = np.fromiter((st.threshold for st in states), dtype=np.float64, count=len(states))
        faults = self.faults
        codes = faults.check(sensors, states, x, scores <= thr)
        verdicts = (scores > thr) | gaps | (codes > 0)
        muted, maint = self.muted, self.maintenance
        if faults.faulted:
            maint = maint | faults.faulted  # kept out of learning like maintenance
        if muted:  # no new raise while muted; a raised alert may still clear
            for i, s in enumerate(sensors):
                if s in muted and not states[i].alert.raised:
                    verdicts[i] = False
        events: list[AlertEvent] = []
        raised_rows: list[tuple[int, int]] = []  # (event index, row index)
        life = self.lifecycle
        learn = life.collecting
        follow: list[int] = []  # rows normal enough to adapt to
        guard = self._follow_guard
        rebased: set[str] = set()  # re-baselined in this batch: later windows scored anew
        recheck = set(np.flatnonzero(codes).tolist()) if codes.any() else None
        for i, st in enumerate(states):
            if rebased and sensors[i] in rebased:
                scores[i] = det.score([sensors[i]], x[i : i + 1])[0]
                verdicts[i] = scores[i] > thr[i] or gaps[i] or codes[i] > 0
            series = st.series
            series.score = float(scores[i])
            alert = st.alert
            # A dropout or a sensor fault (its check spans readings already) raises alone.
            change = alert.update(bool(verdicts[i]), ends[i], bool(gaps[i] or codes[i]))
            if verdicts[i]:
                st.quiet = 0
            else:
                st.quiet += 1
                in_maintenance = bool(maint) and sensors[i] in maint
                if st.quiet > guard and not alert.raised and not in_maintenance:
                    follow.append(i)
            if learn and not codes[i] and not (maint and sensors[i] in maint):
                # auto-training learns only from readings judged normal, outside alerts
                life.collect_scored(sensors[i], float(x[i, -1]), not (verdicts[i] or alert.raised))
            if (
                change is None
                and self._lasting_s
                and verdicts[i]
                and not codes[i]  # a faulty sensor is not a new normal
                and alert.raised
                and ends[i] - st.raised_at >= self._lasting_s
            ):
                if raised_rows:  # explained at the level they were raised at
                    self._explain(det, sensors, x, stamps, events, raised_rows, thr, gaps)
                    raised_rows = []
                start = float(stamps[i][0]) if stamps else ends[i]
                ev = self._rebaseline(
                    det, sensors[i], st, x[i], float(scores[i]), float(thr[i]), start, ends[i]
                )
                if ev is not None:
                    events.append(ev)
                    rebased.add(sensors[i])
                continue
            if change is None:
                if recheck and i in recheck and alert.raised:
                    ev = faults.reclassified(
                        sensors[i], st, int(codes[i]), ends[i], float(scores[i]), det.name
                    )
                    if ev is not None:
                        events.append(ev)
                        self._raised_changed = True  # the saved fault labels changed
                continue
            state, alert_id = change
            self._raised_changed = True
            if state == RAISED:
                self.raised[sensors[i]] = alert_id
                st.raised_at = ends[i]
                series.raised += 1
                series.active = 1
                raised_rows.append((len(events), i))
            else:
                self.raised.pop(sensors[i], None)
                series.cleared += 1
                series.active = 0
            end = ends[i]
            start = float(stamps[i][0]) if stamps else end
            score, t = float(scores[i]), float(thr[i])
            ev = AlertEvent(sensors[i], state, end, score, t, det.name, start, end, alert_id)
            if state == RAISED:
                faults.raised(ev, st, int(codes[i]), bool(gaps[i]))
            else:
                faults.cleared(ev, st)
            events.append(ev)
        if raised_rows:
            self._explain(det, sensors, x, stamps, events, raised_rows, thr, gaps)
        if follow and self._follow_rate:
            # Protected adaptation: only verdicts judged normal, outside an alert and clear
            # of the last anomalous one by the guard, ever move the normal level.
            det.follow([sensors[i] for i in follow], x[follow, -1], self._follow_rate)
        self.metrics.windows_scored.inc(len(sensors))
        if self.on_scores is not None:
            self.on_scores(sensors, ends, scores, thr)
        done = time.time()
        self.metrics.latency.observe(done - arrivals)
        self.metrics.margin.observe(scores - thr)
        for ev in events:
            self.sink(ev)
        return events

    def _rebaseline(
        self,
        det: Detector,
        sensor: str,
        st: SensorState,
        window: np.ndarray,
        score: float,
        threshold: float,
        start: float,
        ts: float,
    ) -> AlertEvent | None:
        """A lasting change (``learning.lasting_s``): the shift became the sensor's normal.
        Its level is re-learned from the latest window and the alert cleared, saying so
        (``reason: rebaselined``, the level before and after), if the window is normal at the
        new level. Otherwise (not a change of level alone), or where the detector has no
        level to move, the alert holds: it stays raised until the signal returns."""
        moved = det.rebaseline(sensor, window)
        if moved is not None and det.score([sensor], window[None, :])[0] > threshold:
            # Not a change of level alone (its spread or movement is off too): put the
            # level back; re-baselining would only raise again.
            det.rebaseline(sensor, np.array([moved[0]]))
            moved = None
        if moved is None:
            st.raised_at = math.inf  # holds: asked once per alert
            return None
        alert_id = st.alert.end()
        assert alert_id is not None
        self.raised.pop(sensor, None)
        self._raised_changed = True
        st.series.cleared += 1
        st.series.active = 0
        st.quiet = 0
        st.raised_at = math.inf
        log.info("sensor %s: lasting change, normal level %.6g -> %.6g", sensor, *moved)
        return AlertEvent(
            sensor,
            CLEARED,
            ts,
            float(score),
            float(threshold),
            det.name,
            start,
            ts,
            alert_id,
            reason="rebaselined",
            baseline={"from": moved[0], "to": moved[1]},
        )

    def _explain(
        self,
        det: Detector,
        sensors: list[str],
        x: np.ndarray,
        stamps: list[np.ndarray],
        events: list[AlertEvent],
        which: list[tuple[int, int]],
        thr: np.ndarray,
        gaps: np.ndarray,
    ) -> None:
        """Say why each raise happened (off the hot path: raises are rare): the window steps
        that weigh most, and for a combined score each part's share of the threshold."""
        rows = [r for _, r in which]
        names = [sensors[r] for r in rows]
        if det.kind == "window":
            contrib = det.explain(names, x[rows])
            for (j, r), c in zip(which, contrib, strict=True):
                top = np.argsort(c)[::-1][:TOP_STEPS]
                events[j].top_steps = [
                    {"index": int(k), "ts": float(stamps[r][k]), "contribution": float(c[k])}
                    for k in top
                ]
        parts = det.parts(names, x[rows]) if det.part_names else None
        for n, (j, r) in enumerate(which):
            shares = (
                {
                    p: round(float(v / thr[r]), 4)
                    for p, v in zip(det.part_names, parts[n], strict=True)
                }
                if parts is not None
                else {}
            )
            if gaps[r]:
                shares["gap"] = 1.0
            events[j].parts = shares or None

    # -- per-sensor bookkeeping -----------------------------------------------------------

    def new_state(self, sensor: str) -> SensorState:
        """A new sensor's state, resuming its alert if one is raised (``raised``)."""
        a = self.cfg.alerts
        alert = AlertState(a.raise_k, a.raise_n, a.clear_m, a.clear_hold_s, a.refractory)
        st = self.lifecycle.new_state(sensor, alert)
        alert_id = self.raised.get(sensor)
        if alert_id is not None:
            alert.restore(alert_id)  # raised before a restart or eviction: not raised twice
            st.series.active = 1
        return st

    def _evicted(self) -> None:
        gone = self.windows.evicted_ids
        if not gone:
            return
        for sensor, sw in gone:
            st: SensorState | None = sw.state
            if st is not None and st.alert.raised and sensor not in self.windows.sensors:
                self._clear_gone(sensor, st)
            if st is not None and sensor not in self.windows.sensors:
                self.faults.forget(sensor, st)
        self.lifecycle.evicted(
            ((sensor, sw.state) for sensor, sw in gone), lambda s: s in self.windows.sensors
        )
        self.metrics.evicted.inc(len(gone))
        gone.clear()

    def _clear_gone(self, sensor: str, st: SensorState) -> None:
        """An evicted sensor's raised alert is cleared (``reason: evicted``), not left raised
        in the state file and on the retained topic forever."""
        alert_id = st.alert.alert_id
        assert alert_id is not None
        st.alert.restore(None)
        self.raised.pop(sensor, None)
        self._raised_changed = True
        ts = st.series.last_ts
        ev = AlertEvent(
            sensor,
            CLEARED,
            ts,
            math.nan,
            st.threshold or math.nan,
            self.detector.name,
            ts,
            ts,
            alert_id,
            reason="evicted",
        )
        self.faults.cleared(ev, st)
        self.sink(ev)

    def relearn(self, sensor: str, reason: str) -> AlertEvent | None:
        """Accept ``sensor``'s current behaviour as normal: forget what was learned about it
        (it warms up again on its next readings) and clear its raised alert with ``reason``
        (the event is also sent to the sink). KeyError if the sensor is not tracked."""
        sw = self.windows.sensors[sensor]
        st: SensorState | None = sw.state
        if st is None:
            raise KeyError(sensor)
        ev = None
        alert_id = st.alert.alert_id
        if alert_id is not None:
            st.alert.restore(None)
            st.alert.history = 0
            self.raised.pop(sensor, None)
            self._raised_changed = True
            st.series.cleared += 1
            st.series.active = 0
            ts = st.series.last_ts
            ev = AlertEvent(
                sensor,
                CLEARED,
                ts,
                st.series.score,
                st.threshold or math.nan,
                self.detector.name,
                ts,
                ts,
                alert_id,
                reason=reason,
            )
            self.faults.cleared(ev, st)
        self.faults.forget(sensor, st)
        self.lifecycle.relearn(sensor, st)
        sw.restart()
        if ev is not None:
            self.sink(ev)
        return ev

    def _silence(self, marker: Silence) -> None:
        """Sensors that went silent (a Sparkplug death): their partial windows restart, so
        no window spans the silence; their alert state is kept."""
        windows = self.windows
        restarted = 0
        for sensor in marker.sensors:
            sw = windows.sensors.get(sensor)
            if sw is not None and sw.filled:
                sw.restart()
                restarted += 1
        windows.restarts += restarted
        self.metrics.silenced.inc(len(marker.sensors))
        log.info("%d sensor(s) went silent (device or node death)", len(marker.sensors))

    def _resumed(self, sensor: str, st: SensorState, ts: float) -> list[AlertEvent]:
        ev = self.faults.resumed(sensor, st, ts, self.detector.name)
        if ev is None:
            return []
        self.raised.pop(sensor, None)
        self._raised_changed = True
        self.sink(ev)
        return [ev]

    def evict_idle(self, now: float) -> list[AlertEvent]:
        """Raise ``silent`` for sensors past their silence limit, then drop sensors (and
        groups) idle longer than ``windows.idle_evict_s``; returns the silent raises."""
        quiet = self.muted | self.maintenance
        events = self.faults.sweep(now, self.windows, quiet, self.detector.name)
        for ev in events:
            self.raised[ev.sensor] = ev.alert_id
            self._raised_changed = True
            self.sink(ev)
        self.windows.evict_idle(now)
        self._evicted()
        if self.groups is not None:
            self.groups.evict_idle(now, self.cfg.windows.idle_evict_s)
        return events

    def close(self) -> None:
        """Stop the background fitter (pending fits are dropped)."""
        self.lifecycle.close()
