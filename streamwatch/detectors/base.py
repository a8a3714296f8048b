"""The one detector interface.

A detector turns a batch of windows (or single readings: windows of length 1) from many
sensors into one score per row; a higher score is more anomalous (a negative
log-likelihood). It does not decide what is anomalous, and holds no thresholds: those are
the calibration policy's (:mod:`streamwatch.pipeline.threshold`), and a trained detector
travels with its thresholds as a :class:`streamwatch.detectors.bundle.Model`.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from streamwatch.config import DetectorConfig

log = logging.getLogger(__name__)

_IMPLEMENTATIONS: dict[str, str] = {
    "gaussian": "streamwatch.detectors.gaussian:GaussianDetector",
    "gmm": "streamwatch.detectors.gmm:GMMDetector",
    "robust": "streamwatch.detectors.robust:RobustDetector",
    "lstm-vae": "streamwatch.detectors.lstm_vae:LSTMVAEDetector",
    "mahalanobis": "streamwatch.detectors.mahalanobis:MahalanobisDetector",
    "rvae": "streamwatch.detectors.rvae:RVAEDetector",
}


class ModelError(Exception):
    """A model bundle is missing, corrupt, or does not match what was asked for."""


class NotTrained(RuntimeError):
    """The detector has no trained model yet, so it cannot adapt to or score a sensor."""


class Detector(ABC):
    """Base class of every detector. Subclasses set ``name`` and ``kind``."""

    name: ClassVar[str]
    kind: ClassVar[Literal["reading", "window"]]
    score_kind: ClassVar[Literal["nll", "ratio"]] = "nll"
    """What a score is, which decides how it is calibrated: ``nll`` a negative
    log-likelihood (a tail at a false-alarm rate), ``ratio`` a deviation over its normal
    largest (a margin above the largest normal score)."""
    shared_weights: ClassVar[bool] = False
    """Whether :meth:`fit` trains weights shared by sensors (then training holds data out to
    calibrate on); per-sensor detectors learn and calibrate on the same readings, exactly as
    a warm-up does."""
    uses_tensorflow: ClassVar[bool] = True
    """Whether fitting or scoring imports TensorFlow (an inference-only install lacks it)."""
    scores_without_tensorflow: ClassVar[bool] = False
    """Whether a trained bundle can score with numpy alone (``engine.inference``)."""
    slow_adapt: ClassVar[bool] = False
    """Whether :meth:`adapt` takes long enough (seconds) that the daemon runs it off the
    worker thread, through :meth:`adapted_state` and :meth:`install_state`."""

    def __init__(self, config: DetectorConfig, window: int) -> None:
        self.config = config
        self.window = 1 if self.kind == "reading" else window
        self.max_batch = 4096
        """The most rows one :meth:`score` call gets (the engine sets it from its config)."""
        self.inference = "auto"
        """``engine.inference``: how a loaded bundle scores, where there is a choice."""
        self.litert_report: dict[str, Any] | None = None
        """The manifest's ``litert`` entry (exported LiteRT models and their check), if any."""

    # -- model ----------------------------------------------------------------------------

    def fit(self, series: Mapping[str, np.ndarray]) -> None:
        """Fit on normal data: one 1-D array of raw values per sensor, in time order. By
        default each sensor is fitted on its own (:meth:`adapt`); shared models override."""
        for sensor, values in series.items():
            self.adapt(sensor, values)

    @abstractmethod
    def adapt(self, sensor: str, values: np.ndarray) -> None:
        """Learn one sensor's own state (normalisation or parameters) from its warm-up values.

        Shared weights are not retrained. Raises :class:`NotTrained` where the detector needs
        a trained model first.
        """

    def adapted_state(self, sensor: str, values: np.ndarray) -> dict[str, Any]:
        """:meth:`adapt` on a scratch detector: the sensor's state, with ``self`` untouched,
        so it is safe on another thread while ``self`` scores."""
        scratch = type(self)(self.config, self.window)
        scratch.adapt(sensor, values)
        return scratch._sensor_state()

    def install_state(self, state: dict[str, Any]) -> None:
        """Adopt per-sensor state from :meth:`adapted_state`."""
        self._restore_sensor_state(state)

    @abstractmethod
    def forget(self, sensor: str) -> None:
        """Drop what was learned online for one sensor (the engine evicted it), so topic
        churn cannot grow the detector without bound; a sensor that comes back warms up
        again."""

    def warm_up(self) -> None:  # noqa: B027  (an optional hook)
        """Prepare for fast scoring (e.g. compile); called off the hot path. Optional."""

    @abstractmethod
    def knows(self, sensor: str) -> bool:
        """Whether this sensor can be scored now."""

    @property
    def comparable_scores(self) -> bool:
        """Whether a score means the same on every sensor (one shared model on standardised
        data), so that a threshold pooled over sensors means something for each."""
        return False

    @property
    def trained(self) -> bool:
        """Whether shared weights exist (always true for per-sensor detectors)."""
        return True

    @abstractmethod
    def score(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """Score a batch: ``x`` is (B, window) raw values, one row per entry of ``sensors``.

        Every sensor must be known. Returns (B,) float64 scores, higher = more anomalous.
        """

    part_names: ClassVar[tuple[str, ...]] = ()
    """The parts of a combined score, if the score is one (see :meth:`parts`)."""

    def parts(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """(B, len(part_names)) each part's score, of which :meth:`score` is the largest.
        Only for detectors with :attr:`part_names`."""
        raise NotImplementedError(f"{self.name} has no parts")

    def follow(self, sensors: Sequence[str], values: np.ndarray, rate: float) -> None:  # noqa: B027
        """Protected adaptation: move each sensor's normal level a fraction ``rate`` of the
        way toward its reading in ``values``. The engine calls it only with readings judged
        normal, outside an alert and clear of any anomalous verdict. Optional: a detector
        without a level to follow ignores it."""

    def rebaseline(self, sensor: str, window: np.ndarray) -> tuple[float, float] | None:
        """A lasting change: take the level of ``window`` (the sensor's latest readings) as
        its normal level from now on; returns the level (before, after), or None where the
        detector has no level to move (the alert then holds)."""
        return None

    def explain(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """Per-step contribution to each row's score, shape (B, window). Off the hot path."""
        return self.score(sensors, x)[:, None]

    def score_series(self, sensor: str, values: np.ndarray) -> np.ndarray:
        """Scores of every window (stride 1) of one sensor's 1-D series."""
        x = self.windows_of(values)
        return self.score([sensor] * len(x), x)

    def windows_of(self, values: np.ndarray) -> np.ndarray:
        """All windows (stride 1) of a 1-D series, shape (N - window + 1, window); of a
        group's (N, members) steps, shape (N - window + 1, window, members)."""
        v = np.asarray(values, dtype=np.float64)
        if v.ndim == 2:
            if v.shape[0] < self.window:
                return np.empty((0, self.window, v.shape[1]))
            view = np.lib.stride_tricks.sliding_window_view(v, self.window, axis=0)
            return view.transpose(0, 2, 1)
        if v.size < self.window:
            return np.empty((0, self.window))
        return np.lib.stride_tricks.sliding_window_view(v, self.window)

    # -- persistence ----------------------------------------------------------------------

    @abstractmethod
    def _sensor_state(self) -> dict[str, Any]:
        """Per-sensor state as JSON-ready data."""

    @abstractmethod
    def _restore_sensor_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`_sensor_state`; raise ValueError/KeyError on bad content."""

    def _save_weights(self, path: Path) -> list[str]:
        """Write weight files into ``path``; return their names. None by default."""
        return []

    def _load_weights(self, path: Path) -> None:  # noqa: B027  (an optional hook)
        """Read the files written by :meth:`_save_weights`."""


def finite_values(sensor: str, values: np.ndarray, least: int = 2) -> np.ndarray:
    """A series' finite values as 1-D float64; ValueError naming the sensor if too few."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < least:
        raise ValueError(f"sensor {sensor!r}: need at least {least} values to fit, got {v.size}")
    return v


def detector_class(name: str) -> type[Detector]:
    """The class for a detector type, imported on demand (so TensorFlow loads only if needed)."""
    try:
        target = _IMPLEMENTATIONS[name]
    except KeyError:
        raise ModelError(f"unknown detector type {name!r}") from None
    module, attr = target.split(":")
    cls: type[Detector] = getattr(importlib.import_module(module), attr)
    return cls


def create(config: DetectorConfig, window: int) -> Detector:
    """A fresh, unfitted detector of the configured type."""
    return detector_class(config.type)(config, window)
