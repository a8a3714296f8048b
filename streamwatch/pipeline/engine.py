"""The worker: readings in, alert events out. The daemon and ``replay`` share it exactly.

One thread owns all of this state, so it needs no locks. Per drained batch it:

1. pushes each reading into its sensor's window (order and gap checks, warm-up);
2. scores every window that came due, from all sensors, in one detector call;
3. compares each score with its sensor's calibrated threshold;
4. feeds the verdicts to the sensors' alert state machines;
5. hands the transitions to a sink (MQTT in the daemon, a list in replay).

A sensor the model does not know yet collects ``detector.warmup`` readings first; the detector
then adapts to it (fits its Normal, or learns its normalisation) and its threshold is
calibrated from those warm-up scores. Scoring never waits on this: other sensors go on.

Auto-training: a window detector with no trained model (and ``auto_train`` on) is stood in for
by a Gaussian detector, which scores as soon as warm-up ends. Meanwhile the engine collects
each sensor's readings; once one sensor has ``auto_train_readings``, the collected series go
to the ``on_training_data`` hook (the daemon trains in a background thread, replay inline),
and the trained model is swapped in with :meth:`Engine.request_swap`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamwatch.config import Config
from streamwatch.detectors.base import Detector, NotTrained
from streamwatch.ingest.parse import Reading
from streamwatch.logutil import RateLimited
from streamwatch.outputs.metrics import Metrics, SensorSeries
from streamwatch.pipeline.alerts import RAISED, AlertEvent, AlertState
from streamwatch.pipeline.threshold import MIN_SCORES, CalibrationError, calibrate
from streamwatch.pipeline.windows import Windows

log = logging.getLogger(__name__)
_limited = RateLimited(log)  # per-sensor warnings that hostile data could repeat endlessly

TOP_STEPS = 3
"""How many of a window's steps an alert names as contributing most to its score."""


@dataclass(slots=True)
class SensorState:
    """What the engine keeps per sensor beside its window buffer."""

    alert: AlertState
    series: SensorSeries
    threshold: float | None = None
    warm: list[float] | None = field(default_factory=list)
    """Warm-up readings; None once the sensor is scored."""
    fitting: bool = False
    """A background fit of this sensor is under way."""


Item = tuple[Sequence[Reading], float]
"""A message's readings and the wall-clock time it arrived."""

LINGER_S = 0.002
"""How long the worker waits for a fuller batch once a message is in (see :class:`Handoff`)."""
BATCH_HINT = 256
"""Readings waiting that end the linger at once."""
_NEVER = 1 << 62


class Handoff:
    """The bounded queue between the MQTT thread and the worker.

    ``put`` never blocks (the network thread must not stall). Past ``max_readings`` waiting,
    the oldest messages are shed and counted, so memory stays bounded under overload and the
    freshest data is scored first.

    Batching: once the first message of a batch has arrived, :meth:`drain` lingers up to
    ``linger_s`` for more, unless ``batch_hint`` readings are already waiting. ``put`` only
    wakes the worker when it waits for a first message or the hint is reached, so at a
    steady rate the worker turns a few hundred times a second instead of once per message;
    each turn took the GIL from the network thread and scored a one-row batch.
    """

    def __init__(
        self, max_readings: int, linger_s: float = LINGER_S, batch_hint: int = BATCH_HINT
    ) -> None:
        self.max_readings = max_readings
        self.linger_s = linger_s
        self.batch_hint = batch_hint
        self._items: deque[Item] = deque()
        self._count = 0
        self._cond = threading.Condition()
        self._wake_at = _NEVER
        """``put`` notifies once this many readings wait (1 while the worker waits idle)."""
        self.shed = 0

    def __len__(self) -> int:
        return self._count

    def put(self, readings: Sequence[Reading], arrived: float) -> int:
        """Queue one message's readings; returns how many old readings were shed for it."""
        shed = 0
        with self._cond:
            self._items.append((readings, arrived))
            self._count += len(readings)
            while self._count > self.max_readings and len(self._items) > 1:
                old, _ = self._items.popleft()
                self._count -= len(old)
                shed += len(old)
            self.shed += shed
            if self._count >= self._wake_at:
                self._wake_at = _NEVER
                self._cond.notify()
        return shed

    def drain(self, timeout: float) -> list[Item]:
        """Everything waiting, after waiting up to ``timeout`` seconds for anything (and then
        up to ``linger_s`` for a fuller batch; never with ``timeout`` 0)."""
        with self._cond:
            if not self._items:
                self._wake_at = 1
                self._cond.wait(timeout)
            if timeout > 0 and self.linger_s > 0 and 0 < self._count < self.batch_hint:
                self._wake_at = self.batch_hint
                self._cond.wait(self.linger_s)
            self._wake_at = _NEVER
            items = list(self._items)
            self._items.clear()
            self._count = 0
        return items


class Engine:
    """Windows → batched scores → thresholds → alert transitions, for every sensor."""

    def __init__(
        self,
        cfg: Config,
        detector: Detector,
        metrics: Metrics,
        sink: Callable[[AlertEvent], None],
        on_training_data: Callable[[dict[str, np.ndarray]], None] | None = None,
        background_fits: bool = False,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.sink = sink
        self._pending: Detector | None = None
        self._pending_lock = threading.Lock()
        self.warming = 0
        self.raised: dict[str, str] = {}
        """Sensor -> alert id of every raised alert (persisted by the daemon)."""
        self.raised_changed = False
        self._learned: set[str] = set()
        """Sensors whose detector state was learned here, online: freed when evicted."""
        self.on_training_data = on_training_data
        self.background_fits = background_fits
        """Fit slow per-sensor models off the worker thread (the daemon); replay fits inline
        so that it stays deterministic."""
        self._pool: ThreadPoolExecutor | None = None
        self._fits: list[tuple[Detector, str, np.ndarray, Future[dict[str, Any]]]] = []
        self._collect: dict[str, list[float]] | None = None
        if needs_stand_in(detector) and on_training_data is not None:
            self._collect = {}
            log.info(
                "no trained %s model: a Gaussian stands in until one is trained on %d "
                "readings per sensor",
                detector.name,
                self._train_after,
            )
            detector = stand_in(cfg)
        detector.max_batch = cfg.engine.max_batch
        self.detector = detector
        self.windows = self._new_windows(detector)

    @property
    def learning(self) -> bool:
        """Whether auto-training is collecting data, or a new model waits to be swapped in."""
        return self._collect is not None or self._pending is not None

    @property
    def _train_after(self) -> int:
        return int(getattr(self.cfg.detector, "auto_train_readings", 0))

    def _new_windows(self, detector: Detector) -> Windows:
        w = self.cfg.windows
        stride = 1 if detector.kind == "reading" else w.stride
        return Windows(detector.window, stride, w.max_gap_s, w.max_sensors, w.idle_evict_s)

    # -- model swap (SIGHUP reload, background training) ------------------------------------

    def request_swap(self, detector: Detector) -> None:
        """Swap in a new detector before the next batch (thread-safe)."""
        with self._pending_lock:
            self._pending = detector

    def _apply_swap(self) -> None:
        with self._pending_lock:
            new, self._pending = self._pending, None
        if new is None:
            return
        old = self.detector
        new.max_batch = self.cfg.engine.max_batch
        self.detector = new
        if new.window != old.window or new.kind != old.kind:
            # The window shape changed: keep alert state, restart the buffers.
            carried = {s: sw.state for s, sw in self.windows.sensors.items()}
            self.windows = self._new_windows(new)
            now = time.time()
            for sensor, carried_state in carried.items():
                self.windows.get(sensor, now).state = carried_state
        self.warming = 0
        self._learned.clear()  # the new detector learns its own
        for sensor, sw in self.windows.sensors.items():
            st: SensorState | None = sw.state
            if st is None:
                continue
            st.threshold = new.thresholds.get(sensor)
            if new.knows(sensor) and st.threshold is not None:
                st.warm = None
                st.series.warming = 0
                st.series.threshold = st.threshold
            else:
                st.warm = []
                st.fitting = False
                st.series.warming = 1
                self.warming += 1
        log.info("swapped in %s model (%d sensors warming)", new.name, self.warming)

    # -- the hot path ---------------------------------------------------------------------

    def process(self, items: Iterable[Item], now: float | None = None) -> list[AlertEvent]:
        """Run a drained batch of messages through the pipeline; return the transitions."""
        self._apply_swap()
        self._install_fits()
        now = time.time() if now is None else now
        det = self.detector
        windows = self.windows
        per_reading = det.kind == "reading"
        rejected: dict[str, int] = {}
        sensors: list[str] = []
        rows: list[Any] = []  # windows, or single values for per-reading detectors
        stamps: list[np.ndarray] = []  # each window's timestamps (window detectors)
        ends: list[float] = []
        states: list[SensorState] = []
        arrivals: list[float] = []
        restarts = windows.restarts
        for readings, arrived in items:
            for r in readings:
                sw = windows.get(r.sensor, now)
                st: SensorState | None = sw.state
                if st is None:
                    st = sw.state = self._new_state(r.sensor)
                due = windows.add(sw, r.ts, r.value)
                if due.__class__ is str:
                    rejected[due] = rejected.get(due, 0) + 1
                    continue
                series = st.series
                series.readings += 1
                series.last_ts = r.ts
                if self._collect is not None:  # until training data is complete
                    self._collect_reading(r.sensor, r.value)
                if st.warm is not None:
                    self._warm_up(r.sensor, st, r.value)
                    continue
                if due:
                    sensors.append(r.sensor)
                    states.append(st)
                    arrivals.append(arrived)
                    ends.append(r.ts)
                    if per_reading:
                        rows.append(r.value)
                    else:
                        rows.append(sw.window().copy())
                        stamps.append(sw.window_stamps().copy())
        for reason, n in rejected.items():
            self.metrics.rejected.labels(reason).inc(n)
        if windows.restarts != restarts:
            self.metrics.window_restarts.inc(windows.restarts - restarts)
        self._evicted()
        if not rows:
            return []
        x = np.array(rows, dtype=np.float64).reshape(len(rows), -1)
        return self._score(det, sensors, x, stamps, ends, states, np.asarray(arrivals))

    def _score(
        self,
        det: Detector,
        sensors: list[str],
        x: np.ndarray,
        stamps: list[np.ndarray],
        ends: list[float],
        states: list[SensorState],
        arrivals: np.ndarray,
    ) -> list[AlertEvent]:
        cap = self.cfg.engine.max_batch
        if len(sensors) <= cap:
            scores = det.score(sensors, x)
        else:
            scores = np.concatenate(
                [det.score(sensors[i : i + cap], x[i : i + cap]) for i in range(0, len(x), cap)]
            )
        thr = np.fromiter((st.threshold for st in states), dtype=np.float64, count=len(states))
        verdicts = scores > thr
        events: list[AlertEvent] = []
        raised_rows: list[tuple[int, int]] = []  # (event index, row index)
        for i, st in enumerate(states):
            series = st.series
            series.score = float(scores[i])
            change = st.alert.update(bool(verdicts[i]), ends[i])
            if change is None:
                continue
            state, alert_id = change
            self.raised_changed = True
            if state == RAISED:
                self.raised[sensors[i]] = alert_id
                series.raised += 1
                series.active = 1
                if det.kind == "window":
                    raised_rows.append((len(events), i))
            else:
                self.raised.pop(sensors[i], None)
                series.cleared += 1
                series.active = 0
            end = ends[i]
            start = float(stamps[i][0]) if stamps else end
            events.append(
                AlertEvent(
                    sensors[i],
                    state,
                    end,
                    float(scores[i]),
                    float(thr[i]),
                    det.name,
                    start,
                    end,
                    alert_id,
                )
            )
        if raised_rows:
            self._explain(det, sensors, x, stamps, events, raised_rows)
        self.metrics.windows_scored.inc(len(sensors))
        done = time.time()
        self.metrics.latency.observe(done - arrivals)
        self.metrics.margin.observe(scores - thr)
        for ev in events:
            self.sink(ev)
        return events

    def _explain(
        self,
        det: Detector,
        sensors: list[str],
        x: np.ndarray,
        stamps: list[np.ndarray],
        events: list[AlertEvent],
        which: list[tuple[int, int]],
    ) -> None:
        rows = [r for _, r in which]
        contrib = det.explain([sensors[r] for r in rows], x[rows])
        for (j, r), c in zip(which, contrib, strict=True):
            top = np.argsort(c)[::-1][:TOP_STEPS]
            events[j].top_steps = [
                {"index": int(k), "ts": float(stamps[r][k]), "contribution": float(c[k])}
                for k in top
            ]

    # -- per-sensor bookkeeping -----------------------------------------------------------

    def _new_state(self, sensor: str) -> SensorState:
        a = self.cfg.alerts
        st = SensorState(
            AlertState(a.raise_k, a.raise_n, a.clear_m, a.clear_hold_s), self.metrics.series(sensor)
        )
        alert_id = self.raised.get(sensor)
        if alert_id is not None:
            st.alert.restore(alert_id)  # raised before a restart or eviction: not raised twice
            st.series.active = 1
        thr = self.detector.thresholds.get(sensor)
        if self.detector.knows(sensor) and thr is not None:
            st.threshold = thr
            st.warm = None
            st.series.warming = 0
            st.series.threshold = thr
        else:
            self.warming += 1
        return st

    def _warm_up(self, sensor: str, st: SensorState, value: float) -> None:
        warm = st.warm
        assert warm is not None
        warm.append(value)
        det = self.detector
        # Calibration needs MIN_SCORES scores, i.e. window - 1 + MIN_SCORES readings: a smaller
        # warmup would fail, halve its data and fail again, never warming up.
        if len(warm) < max(det.config.warmup, det.window - 1 + MIN_SCORES) or st.fitting:
            return
        values = np.asarray(warm)
        if det.slow_adapt and not det.knows(sensor) and self.background_fits:
            # A slow fit (seconds) must not hold up every other sensor: fit a scratch copy
            # on the fitter thread; _install_fits() adopts the result between batches.
            st.fitting = True
            future = self._fitter().submit(det.adapted_state, sensor, values)
            self._fits.append((det, sensor, values, future))
            return
        try:
            if not det.knows(sensor):
                det.adapt(sensor, values)
                self._learned.add(sensor)
        except NotTrained:
            del warm[: len(warm) - det.config.warmup + 1]  # keep the newest, bounded
            return
        except ValueError as exc:
            self._fit_failed(sensor, st, exc)
            return
        self._calibrated(sensor, st, values)

    def _calibrated(self, sensor: str, st: SensorState, values: np.ndarray) -> None:
        """Set a sensor's threshold from its warm-up scores (unless the model has one)."""
        det = self.detector
        thr = det.thresholds.per_sensor.get(sensor)
        if thr is None:
            x = det.windows_of(values)
            try:
                thr = calibrate(
                    det.score([sensor] * len(x), x), self.cfg.threshold.false_alarm_rate
                )
            except CalibrationError as exc:
                self._fit_failed(sensor, st, exc)
                return
            det.thresholds.per_sensor[sensor] = thr
        st.threshold = thr
        st.warm = None
        st.series.warming = 0
        st.series.threshold = thr
        self.warming -= 1
        log.info("sensor %s warmed up on %d readings; threshold %.3f", sensor, len(values), thr)

    def _fit_failed(self, sensor: str, st: SensorState, exc: Exception) -> None:
        _limited.log(
            logging.WARNING,
            "warm_up_failed",
            "sensor %s: warm-up failed, collecting more data: %s",
            sensor,
            exc,
        )
        if st.warm is not None:
            del st.warm[: len(st.warm) // 2]

    def _fitter(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fitter")
        return self._pool

    def _install_fits(self) -> None:
        """Adopt the background fits that have finished (worker thread only)."""
        if not self._fits or not any(f.done() for *_, f in self._fits):
            return
        waiting = []
        for det, sensor, values, future in self._fits:
            if not future.done():
                waiting.append((det, sensor, values, future))
                continue
            sw = self.windows.sensors.get(sensor)
            st: SensorState | None = sw.state if sw is not None else None
            if st is None or det is not self.detector:
                continue  # evicted, or the model was swapped meanwhile: it warms up afresh
            st.fitting = False
            try:
                det.install_state(future.result())
            except (ValueError, NotTrained) as exc:
                self._fit_failed(sensor, st, exc)
                continue
            self._learned.add(sensor)
            self._calibrated(sensor, st, values)
        self._fits = waiting

    def close(self) -> None:
        """Stop the background fitter (pending fits are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _collect_reading(self, sensor: str, value: float) -> None:
        assert self._collect is not None
        buf = self._collect.get(sensor)
        if buf is None:
            buf = self._collect[sensor] = []
        buf.append(value)
        if len(buf) < self._train_after:
            return
        enough = self._train_after // 2
        data = {s: np.asarray(v) for s, v in self._collect.items() if len(v) >= enough}
        self._collect = None
        log.info(
            "collected training data: %d sensors, %d readings",
            len(data),
            sum(len(v) for v in data.values()),
        )
        assert self.on_training_data is not None
        self.on_training_data(data)

    def _evicted(self) -> None:
        gone = self.windows.evicted_ids
        if not gone:
            return
        det = self.detector
        for sensor, sw in gone:
            if sw.state is not None and sw.state.warm is not None:
                self.warming -= 1
            if sensor in self.windows.sensors:
                continue  # evicted and back within one batch: its label and model state stay
            self.metrics.release(sensor)
            if sensor in self._learned:  # bounded memory under topic churn
                self._learned.discard(sensor)
                det.forget(sensor)
            if self._collect is not None:
                self._collect.pop(sensor, None)
        self.metrics.evicted.inc(len(gone))
        gone.clear()

    def evict_idle(self, now: float) -> None:
        """Drop sensors idle longer than ``windows.idle_evict_s``."""
        self.windows.evict_idle(now)
        self._evicted()


def needs_stand_in(detector: Detector) -> bool:
    """Whether a Gaussian must score until this detector has a trained model."""
    return not detector.trained and bool(getattr(detector.config, "auto_train", False))


def stand_in(cfg: Config) -> Detector:
    """The Gaussian that scores while the configured model trains."""
    from streamwatch.config import GaussianConfig
    from streamwatch.detectors.gaussian import GaussianDetector

    det = GaussianDetector(GaussianConfig(warmup=cfg.detector.warmup), 1)
    det.thresholds.false_alarm_rate = cfg.threshold.false_alarm_rate
    return det
