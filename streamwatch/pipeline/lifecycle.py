"""A sensor's life in the engine, from its first reading to being scored, and the model it
is scored with.

Every sensor is in one phase:

- **warming**: the model does not know it yet; it collects ``learning.warmup`` readings, then
  the detector adapts to it (fits its Normal, learns its normalisation) and its threshold is
  calibrated from those readings' scores by the one calibration policy
  (:func:`streamwatch.pipeline.threshold.sensor_threshold`);
- **fitting**: a slow fit (the GMM's) runs on the fitter thread, adopted between batches;
- **scored**: it has a threshold and its windows are scored.

:meth:`SensorLifecycle.mark_scored` is the one way into the scored phase, and
:meth:`SensorLifecycle.mark_warming` the one way back (a model swap that does not know the
sensor), so the count of warming sensors and each sensor's metrics cannot drift apart.

Auto-training: a window detector with no trained model (and ``learning.auto_train`` on) is
stood in for by a Gaussian, which scores as soon as warm-up ends. Meanwhile every sensor's
readings are collected; once one sensor has ``learning.auto_train_readings``, the collected
series go to the ``on_training_data`` hook (the daemon trains in a background thread,
replay inline), and the trained model comes back through the engine's swap.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamwatch.config import Config, GaussianConfig
from streamwatch.detectors.base import Detector, NotTrained
from streamwatch.detectors.bundle import Model
from streamwatch.logutil import RateLimited
from streamwatch.outputs.metrics import Metrics, SensorSeries
from streamwatch.pipeline.alerts import AlertState
from streamwatch.pipeline.threshold import (
    MIN_SCORES,
    CalibrationError,
    Thresholds,
    sensor_threshold,
)

log = logging.getLogger(__name__)
_limited = RateLimited(log)  # per-sensor warnings that hostile data could repeat endlessly

WARMING = "warming"
FITTING = "fitting"
SCORED = "scored"


@dataclass(slots=True)
class SensorState:
    """What the engine keeps per sensor beside its window buffer."""

    alert: AlertState
    series: SensorSeries
    threshold: float | None = None
    phase: str = WARMING
    warm: list[float] = field(default_factory=list)
    """Warm-up readings (empty once scored)."""
    intervals: int = 0
    """Intervals between readings seen so far (counted up to ``learning.warmup``)."""
    max_dt: float = 0.0
    """The longest of them."""
    gap_limit: float = math.inf
    """A reading after a longer gap is anomalous (a dropout); set after ``warmup`` readings."""
    dts: list[float] = field(default_factory=list)
    """The intervals counted so far (emptied once the cadence is learned)."""
    cadence: float = math.nan
    """The sensor's median interval between readings, once learned."""
    quiet: int = 0
    """Verdicts since the last anomalous one (protected adaptation waits for a clear run)."""
    raised_at: float = math.inf
    """When the sensor's alert was raised (a lasting change is measured from it)."""
    fault: Any = None
    """The sensor-fault checks' state (:class:`streamwatch.pipeline.faults.FaultState`)."""


class SensorLifecycle:
    """Owns the model in use and every sensor's way to being scored (worker thread only)."""

    def __init__(
        self,
        cfg: Config,
        model: Model,
        metrics: Metrics,
        on_training_data: Callable[[dict[str, np.ndarray]], None] | None = None,
        background_fits: bool = False,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self._warmup = cfg.learning.warmup  # read per reading: kept at hand
        self._gap_factor = cfg.learning.gap_factor
        self._confirm_s = cfg.alerts.confirm_s
        self.warming = 0
        """Sensors tracked and not yet scored."""
        self.on_training_data = on_training_data
        self.background_fits = background_fits
        """Fit slow per-sensor models off the worker thread (the daemon); replay fits inline
        so that it stays deterministic."""
        self._learned: set[str] = set()
        """Sensors whose detector state was learned here, online: freed when evicted."""
        self._pool: ThreadPoolExecutor | None = None
        self._fits: list[tuple[Detector, str, np.ndarray, Future[dict[str, Any]]]] = []
        self._collect: dict[str, list[float]] | None = None
        self._collect_target = cfg.learning.auto_train_readings
        self._retries_left = cfg.learning.auto_train_retries
        self.on_warmed: Callable[[str, SensorState, np.ndarray], None] | None = None
        """Called with a sensor's warm-up readings once it is scored (the fault checks)."""
        self.version = 0
        """Counts changes to what the model holds (sensors learned, forgotten, a swap)."""
        if needs_stand_in(model, cfg) and on_training_data is not None:
            self._collect = {}
            log.info(
                "no trained %s model: a Gaussian stands in until one is trained on %d "
                "readings per sensor",
                model.name,
                cfg.learning.auto_train_readings,
            )
            model = stand_in(cfg)
        model.detector.max_batch = cfg.engine.max_batch
        self.model = model

    @property
    def collecting(self) -> bool:
        """Whether auto-training is still collecting data."""
        return self._collect is not None

    # -- phases ---------------------------------------------------------------------------

    def new_state(self, sensor: str, alert: AlertState) -> SensorState:
        """A newly tracked sensor: scored at once if the model knows it, else warming."""
        st = SensorState(alert, self.metrics.series(sensor))
        self.warming += 1
        thr = self.model.thresholds.get(sensor)
        if self.model.detector.knows(sensor) and thr is not None:
            self.mark_scored(st, thr)
        return st

    def mark_scored(self, st: SensorState, threshold: float) -> None:
        """The one transition into the scored phase."""
        if st.phase != SCORED:
            self.warming -= 1
        st.phase = SCORED
        st.threshold = threshold
        st.warm = []
        st.series.warming = 0
        st.series.threshold = threshold

    def mark_warming(self, st: SensorState) -> None:
        """Back to warming (the model in use does not know the sensor)."""
        if st.phase == SCORED:
            self.warming += 1
        st.phase = WARMING
        st.threshold = None
        st.warm = []
        st.series.warming = 1

    def observe(self, sensor: str, st: SensorState, value: float, dt: float) -> bool:
        """Take one accepted reading, ``dt`` after the sensor's previous one, into learning;
        True if the sensor is scored.

        The sensor's first ``learning.warmup`` intervals set its gap limit, whichever phase
        it is in, so a sensor served by a trained model and one that warmed up detect
        dropouts alike."""
        if st.intervals < self._warmup and dt < math.inf:
            st.intervals += 1
            st.dts.append(dt)
            if dt > st.max_dt:
                st.max_dt = dt
            if st.intervals == self._warmup:
                self._cadence_learned(st)
        if st.phase == SCORED:
            return True
        if self._collect is not None:  # warm-up readings: no verdict, taken as normal
            self._collect_reading(sensor, value)
        st.warm.append(value)
        if st.phase == WARMING:
            self._warm_up(sensor, st)
        return False

    def _cadence_learned(self, st: SensorState) -> None:
        """The sensor's first ``warmup`` intervals are in: set its gap limit, and ask a fast
        sensor to confirm a raise (see :mod:`streamwatch.pipeline.alerts`) where windows are
        scored: a window detector sees a one-reading spike in two windows at least (the jump
        up and back), a per-reading detector in one verdict only."""
        if self._gap_factor > 0:
            st.gap_limit = self._gap_factor * st.max_dt
        st.cadence = float(np.median(st.dts))
        st.dts = []
        if (
            self._confirm_s > 0
            and 2.0 * st.cadence <= self._confirm_s
            and self.model.detector.kind == "window"  # a reading detector sees a spike once
        ):
            st.alert.confirm(2, 3)

    # -- warm-up --------------------------------------------------------------------------

    def _warm_up(self, sensor: str, st: SensorState) -> None:
        warm = st.warm
        det = self.model.detector
        warmup = self.cfg.learning.warmup
        # Calibration needs MIN_SCORES scores, i.e. window - 1 + MIN_SCORES readings: a smaller
        # warmup would fail, halve its data and fail again, never warming up.
        if len(warm) < max(warmup, det.window - 1 + MIN_SCORES):
            return
        values = np.asarray(warm)
        if det.slow_adapt and not det.knows(sensor) and self.background_fits:
            # A slow fit (seconds) must not hold up every other sensor: fit a scratch copy
            # on the fitter thread; install_fits() adopts the result between batches.
            st.phase = FITTING
            future = self._fitter().submit(det.adapted_state, sensor, values)
            self._fits.append((det, sensor, values, future))
            return
        try:
            if not det.knows(sensor):
                det.adapt(sensor, values)
                self._learned.add(sensor)
        except NotTrained:
            del warm[: len(warm) - warmup + 1]  # keep the newest, bounded
            return
        except ValueError as exc:
            self._fit_failed(sensor, st, exc)
            return
        self._calibrated(sensor, st, values)

    def _calibrated(self, sensor: str, st: SensorState, values: np.ndarray) -> None:
        """Score a sensor from now on, at the model's threshold for it or one calibrated on
        its warm-up readings."""
        model = self.model
        thr = model.thresholds.per_sensor.get(sensor)
        if thr is None:
            det = model.detector
            try:
                thr = sensor_threshold(
                    det.score_series(sensor, values),
                    self.cfg.threshold,
                    det.score_kind,
                    model.thresholds.pooled,
                    det.comparable_scores,
                )
            except CalibrationError as exc:
                self._fit_failed(sensor, st, exc)
                return
            model.thresholds.per_sensor[sensor] = thr
            self.version += 1
        self.mark_scored(st, thr)
        if self.on_warmed is not None:
            self.on_warmed(sensor, st, values)
        log.info("sensor %s warmed up on %d readings; threshold %.3f", sensor, len(values), thr)

    def _fit_failed(self, sensor: str, st: SensorState, exc: Exception) -> None:
        _limited.log(
            logging.WARNING,
            "warm_up_failed",
            "sensor %s: warm-up failed, collecting more data: %s",
            sensor,
            exc,
        )
        st.phase = WARMING
        del st.warm[: len(st.warm) // 2]

    def _fitter(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fitter")
        return self._pool

    def install_fits(self, state_of: Callable[[str], SensorState | None]) -> None:
        """Adopt the background fits that have finished (worker thread only)."""
        if not self._fits or not any(f.done() for *_, f in self._fits):
            return
        waiting = []
        for det, sensor, values, future in self._fits:
            if not future.done():
                waiting.append((det, sensor, values, future))
                continue
            st = state_of(sensor)
            if st is None or det is not self.model.detector:
                continue  # evicted, or the model was swapped meanwhile: it warms up afresh
            try:
                det.install_state(future.result())
            except (ValueError, NotTrained) as exc:
                self._fit_failed(sensor, st, exc)
                continue
            self._learned.add(sensor)
            self._calibrated(sensor, st, values)
        self._fits = waiting

    # -- model swap, auto-training, eviction ------------------------------------------------

    def swap(self, new: Model, states: Mapping[str, SensorState]) -> None:
        """Score with ``new`` from now on: sensors it knows are scored at its thresholds, the
        others warm up again."""
        new.detector.max_batch = self.cfg.engine.max_batch
        self.model = new
        self.version += 1
        self._learned.clear()  # the new model learns its own
        for sensor, st in states.items():
            thr = new.thresholds.get(sensor)
            if new.detector.knows(sensor) and thr is not None:
                self.mark_scored(st, thr)
            else:
                self.mark_warming(st)
        log.info("swapped in %s model (%d sensors warming)", new.name, self.warming)

    def collect_scored(self, sensor: str, value: float, normal: bool) -> None:
        """Offer a scored reading to auto-training, which keeps only those judged normal and
        outside an alert: a fault the stand-in flagged never becomes training data."""
        if normal and self._collect is not None:
            self._collect_reading(sensor, value)

    def _collect_reading(self, sensor: str, value: float) -> None:
        assert self._collect is not None
        buf = self._collect.get(sensor)
        if buf is None:
            buf = self._collect[sensor] = []
        buf.append(value)
        train_after = self._collect_target
        if len(buf) < train_after:
            return
        enough = train_after // 2
        data = {s: np.asarray(v) for s, v in self._collect.items() if len(v) >= enough}
        self._collect = None
        log.info(
            "collected training data: %d sensors, %d readings",
            len(data),
            sum(len(v) for v in data.values()),
        )
        assert self.on_training_data is not None
        self.on_training_data(data)

    def recollect(self) -> bool:
        """The auto-trained model was refused (its training ended on the plateau): collect
        twice as many readings afresh and train again, while retries
        (``learning.auto_train_retries``) last. True if collecting again."""
        if self._collect is not None or self.on_training_data is None:
            return False
        if self._retries_left <= 0:
            log.warning(
                "auto-training gave no usable model after %d retries; the %s stand-in "
                "carries on (train one with `streamwatch train` and set model_dir)",
                self.cfg.learning.auto_train_retries,
                self.model.name,
            )
            return False
        self._retries_left -= 1
        self._collect_target *= 2
        self._collect = {}
        self.metrics.auto_train_retries.inc()
        log.warning(
            "auto-training retried: collecting %d readings per sensor afresh (%d retries left)",
            self._collect_target,
            self._retries_left,
        )
        return True

    def evicted(
        self, gone: Iterable[tuple[str, SensorState | None]], tracked: Callable[[str], bool]
    ) -> None:
        """Forget sensors the windows evicted, unless back within the same batch (then their
        label and model state stay)."""
        for sensor, st in gone:
            if st is not None and st.phase != SCORED:
                self.warming -= 1
            if tracked(sensor):
                continue
            self.metrics.release(sensor)
            if sensor in self._learned:  # bounded memory under topic churn
                self._learned.discard(sensor)
                self.model.detector.forget(sensor)
                self.model.thresholds.per_sensor.pop(sensor, None)
                self.version += 1
            if self._collect is not None:
                self._collect.pop(sensor, None)

    def relearn(self, sensor: str, st: SensorState) -> None:
        """Forget what was learned about ``sensor`` (its detector state, threshold and
        cadence): it warms up again on its next readings (an operator's ``relearn``)."""
        self.model.detector.forget(sensor)
        self._fits = [f for f in self._fits if f[1] != sensor]  # a fit of the old behaviour
        self._learned.discard(sensor)
        self.model.thresholds.per_sensor.pop(sensor, None)
        self.version += 1
        self.mark_warming(st)
        st.intervals, st.max_dt, st.gap_limit = 0, 0.0, math.inf

    def close(self) -> None:
        """Stop the background fitter (pending fits are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def needs_stand_in(model: Model, cfg: Config) -> bool:
    """Whether a Gaussian must score until this model is trained."""
    return not model.detector.trained and cfg.learning.auto_train


def stand_in(cfg: Config) -> Model:
    """The Gaussian that scores while the configured model trains."""
    from streamwatch.detectors.gaussian import GaussianDetector

    return Model(GaussianDetector(GaussianConfig(), 1), Thresholds(cfg.threshold.false_alarm_rate))
