"""The one detector interface, and the model-bundle directory every detector saves to.

A detector turns a batch of windows (or single readings: windows of length 1) from many
sensors into one score per row; a higher score is more anomalous (a negative
log-likelihood). It does not decide what is anomalous: that is the threshold's job
(:mod:`streamwatch.pipeline.threshold`), though the calibrated thresholds travel in the bundle.

Bundle layout (a directory, never a pickle)::

    manifest.json     format version, detector type and config, config hash, library
                      versions, training range, and a sha256 of every other file
    sensors.json      per-sensor state: normalisation or fitted parameters
    thresholds.json   calibrated thresholds
    <weights>         detector-specific, e.g. model.weights.h5 for the LSTM-VAE

Loading verifies every checksum, so a truncated or edited file is a clear
:class:`ModelError`, not a crash deep in the model.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import platform
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from streamwatch.config import DetectorConfig
from streamwatch.pipeline.threshold import Thresholds

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SENSORS = "sensors.json"
THRESHOLDS = "thresholds.json"

_IMPLEMENTATIONS: dict[str, str] = {
    "gaussian": "streamwatch.detectors.gaussian:GaussianDetector",
    "gmm": "streamwatch.detectors.gmm:GMMDetector",
    "lstm-vae": "streamwatch.detectors.lstm_vae:LSTMVAEDetector",
}


class ModelError(Exception):
    """A model bundle is missing, corrupt, or does not match what was asked for."""


class NotTrained(RuntimeError):
    """The detector has no trained model yet, so it cannot adapt to or score a sensor."""


class Detector(ABC):
    """Base class of every detector. Subclasses set ``name`` and ``kind``."""

    name: ClassVar[str]
    kind: ClassVar[Literal["reading", "window"]]
    slow_adapt: ClassVar[bool] = False
    """Whether :meth:`adapt` takes long enough (seconds) that the daemon runs it off the
    worker thread, through :meth:`adapted_state` and :meth:`install_state`."""

    def __init__(self, config: DetectorConfig, window: int) -> None:
        self.config = config
        self.window = 1 if self.kind == "reading" else window
        self.max_batch = 4096
        """The most rows one :meth:`score` call gets (the engine sets it from its config)."""
        self.thresholds = Thresholds(false_alarm_rate=1e-5)
        self.trained_on: dict[str, Any] = {}

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

    def forget(self, sensor: str) -> None:
        """Drop what was learned online for one sensor (the engine evicted it), so topic
        churn cannot grow the detector without bound. Subclasses with per-sensor state extend
        this; a sensor that comes back warms up again."""
        self.thresholds.per_sensor.pop(sensor, None)

    def warm_up(self) -> None:  # noqa: B027  (an optional hook)
        """Prepare for fast scoring (e.g. compile); called off the hot path. Optional."""

    @abstractmethod
    def knows(self, sensor: str) -> bool:
        """Whether this sensor can be scored now."""

    @property
    def comparable_scores(self) -> bool:
        """Whether a score means the same on every sensor (one shared model on standardised
        data). Then the pooled threshold, calibrated on every sensor's scores together, is a
        floor under each sensor's own: one sensor's few hundred calibration scores can put its
        threshold far too low, and a floor costs no recall when anomalies score far above."""
        return False

    def sensor_threshold(self, own: float) -> float:
        """A sensor's threshold from its own calibration, floored by the pooled one where
        scores are comparable across sensors."""
        pooled = self.thresholds.pooled
        if self.comparable_scores and pooled is not None:
            return max(own, pooled)
        return own

    @property
    def trained(self) -> bool:
        """Whether shared weights exist (always true for per-sensor detectors)."""
        return True

    @abstractmethod
    def score(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """Score a batch: ``x`` is (B, window) raw values, one row per entry of ``sensors``.

        Every sensor must be known. Returns (B,) float64 scores, higher = more anomalous.
        """

    def explain(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """Per-step contribution to each row's score, shape (B, window). Off the hot path."""
        return self.score(sensors, x)[:, None]

    def windows_of(self, values: np.ndarray) -> np.ndarray:
        """All windows (stride 1) of a 1-D series, shape (N - window + 1, window)."""
        v = np.asarray(values, dtype=np.float64)
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

    def save(self, path: Path) -> None:
        """Write the whole bundle to ``path`` (created if needed)."""
        path.mkdir(parents=True, exist_ok=True)
        files = {
            SENSORS: json.dumps(self._sensor_state(), sort_keys=True),
            THRESHOLDS: json.dumps(self.thresholds.to_json(), sort_keys=True),
        }
        for fname, text in files.items():
            (path / fname).write_text(text, encoding="utf-8")
        names = [*files, *self._save_weights(path)]
        manifest = {
            "format_version": FORMAT_VERSION,
            "detector": self.name,
            "window": self.window,
            "config": self.config.model_dump(mode="json"),
            "config_hash": config_hash(self.config, self.window),
            "trained_on": self.trained_on,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": library_versions(self.kind == "window"),
            "files": {n: _sha256(path / n) for n in names},
        }
        tmp = path / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        tmp.replace(path / MANIFEST)  # the manifest lands last: a half-written bundle won't load
        log.info("saved %s model to %s", self.name, path)


def finite_values(sensor: str, values: np.ndarray, least: int = 2) -> np.ndarray:
    """A series' finite values as 1-D float64; ValueError naming the sensor if too few."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < least:
        raise ValueError(f"sensor {sensor!r}: need at least {least} values to fit, got {v.size}")
    return v


def config_hash(config: DetectorConfig, window: int) -> str:
    """A short stable hash of what shapes a model: the detector config and window length."""
    blob = json.dumps({"config": config.model_dump(mode="json"), "window": window}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def library_versions(with_tf: bool) -> dict[str, str]:
    """Versions recorded in a manifest (TensorFlow only where the detector used it)."""
    out = {"python": platform.python_version(), "numpy": np.__version__}
    if with_tf:
        import tensorflow as tf
        import tensorflow_probability as tfp

        out |= {"tensorflow": tf.__version__, "tensorflow_probability": tfp.__version__}
    try:
        from importlib.metadata import version

        out["streamwatch"] = version("streamwatch")
    except Exception:
        out["streamwatch"] = "unknown"
    return out


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(path: Path) -> dict[str, Any]:
    """Read and verify a bundle's manifest and file checksums; ModelError on any problem."""
    if not path.is_dir():
        raise ModelError(f"model directory {path} does not exist")
    mpath = path / MANIFEST
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{mpath}: missing (not a streamwatch model directory?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{mpath}: unreadable or corrupt: {exc}") from None
    if not isinstance(manifest, dict):
        raise ModelError(f"{mpath}: corrupt: not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(
            f"{mpath}: format_version {version!r}, this streamwatch reads {FORMAT_VERSION}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ModelError(f"{mpath}: corrupt: no file list")
    for name, digest in files.items():
        fpath = path / name
        if not fpath.is_file():
            raise ModelError(f"{fpath}: missing from the model directory")
        if _sha256(fpath) != digest:
            raise ModelError(f"{fpath}: checksum mismatch (corrupt or edited)")
    return manifest


def load(path: Path, expect: DetectorConfig | None = None) -> Detector:
    """Load a bundle. With ``expect``, its detector type must match the configured one."""
    from pydantic import TypeAdapter, ValidationError

    manifest = read_manifest(path)
    name = manifest.get("detector")
    if expect is not None and name != expect.type:
        raise ModelError(f"{path}: holds a {name!r} model but the config asks for {expect.type!r}")
    cls = detector_class(str(name))
    try:
        config = TypeAdapter(DetectorConfig).validate_python(manifest["config"])
        window = int(manifest["window"])
    except (KeyError, ValueError, TypeError, ValidationError) as exc:
        raise ModelError(f"{path / MANIFEST}: bad detector config: {exc}") from None
    if manifest.get("config_hash") != config_hash(config, window):
        raise ModelError(f"{path / MANIFEST}: config_hash does not match its config")
    if config.type != name:
        raise ModelError(f"{path / MANIFEST}: detector {name!r} but config type {config.type!r}")
    det = cls(config, window)
    det.trained_on = dict(manifest.get("trained_on") or {})
    try:
        det._restore_sensor_state(json.loads((path / SENSORS).read_text(encoding="utf-8")))
        det.thresholds = Thresholds.from_json(
            json.loads((path / THRESHOLDS).read_text(encoding="utf-8"))
        )
        det._load_weights(path)
    except ModelError:
        raise
    except Exception as exc:  # any decoding failure of a verified file is still a model error
        raise ModelError(f"{path}: cannot load {name} model: {exc}") from exc
    log.info("loaded %s model from %s (%d sensors)", name, path, len(det.thresholds.per_sensor))
    return det
