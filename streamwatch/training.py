"""Training: fit a detector on normal readings, calibrate its thresholds, save a model bundle.

Each sensor's series (only ``label == 0`` rows where the file has labels) trains the
detector and calibrates its threshold through the one calibration policy
(:func:`streamwatch.pipeline.threshold.calibrate_all`). A per-sensor detector learns and is
calibrated on the whole series, as the daemon's warm-up does; a detector with shared weights
is fitted on the first part, and the last :data:`CALIBRATION_FRACTION` is held out to
calibrate on. The normal scores of all sensors, pooled, calibrate
``thresholds.pooled``, which serves sensors the model later meets without their own, and,
for a shared model whose scores mean the same on every sensor, floors each sensor's own
(see :attr:`Detector.comparable_scores`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from streamwatch.config import Config
from streamwatch.dataset import Series
from streamwatch.detectors import bundle
from streamwatch.detectors.base import create
from streamwatch.detectors.bundle import Model
from streamwatch.pipeline.threshold import MIN_SCORES, CalibrationError, calibrate_all

log = logging.getLogger(__name__)

CALIBRATION_FRACTION = 0.25
"""Shared-weight detectors: the last fraction of each sensor's normal series held out to
calibrate its threshold."""


class TrainError(ValueError):
    """The data cannot train a model (too little of it, or nothing to calibrate on)."""


def train(
    cfg: Config,
    data: Mapping[str, Series],
    model_dir: Path,
    source: str | None = None,
    litert: bool = True,
) -> Model:
    """Fit, calibrate and save; returns the trained model (with LiteRT models in the bundle
    where the detector exports them, unless ``litert`` is False)."""
    model = fit_calibrated(cfg, data, source, litert=litert)
    bundle.save(model, model_dir)
    return model


def train_in_place(cfg: Config, data: Mapping[str, np.ndarray]) -> Model:
    """Fit and calibrate the configured detector on readings the engine collected (the
    daemon's auto-training and replay's)."""
    series = {s: (np.arange(v.size, dtype=np.float64), v, None) for s, v in data.items()}
    return fit_calibrated(cfg, series, source="auto-train")


def fit_calibrated(
    cfg: Config, data: Mapping[str, Series], source: str | None = None, litert: bool = False
) -> Model:
    """Fit the configured detector and calibrate its thresholds on normal data.

    A model with shared weights (the LSTM-VAE) is fitted on the first part of each sensor's
    series and calibrated on the held-out rest. A per-sensor detector learns each sensor from
    its whole series and is calibrated on the same readings: exactly what the daemon's
    warm-up does, so ``train`` + ``replay`` and the warm-up give the same thresholds for the
    same readings. A sensor with too few readings, or one its detector cannot fit, is skipped
    and reported; the others are trained. With ``litert``, a detector that exports LiteRT
    models (the LSTM-VAE) does, checked on the held-out calibration readings.
    """
    det = create(cfg.detector, cfg.windows.length)
    min_cal = det.window - 1 + MIN_SCORES
    min_fit = max(2 * det.window + 2, 10)
    fit_part: dict[str, np.ndarray] = {}
    cal_part: dict[str, np.ndarray] = {}
    stamps: dict[str, np.ndarray] = {}
    dropped = 0
    skipped: dict[str, str] = {}
    for sensor, (ts, values, labels) in data.items():
        if labels is not None:
            normal = labels == 0
            dropped += int((~normal).sum())
            ts, values = ts[normal], values[normal]
        if det.shared_weights:
            n_cal = max(round(len(values) * CALIBRATION_FRACTION), min_cal)
            need = n_cal + min_fit
        else:
            n_cal, need = 0, min_cal
        if len(values) < need:
            skipped[sensor] = f"{len(values)} normal readings, need {need}"
            log.warning(
                "sensor %s: %d normal readings are too few to train and calibrate on (need "
                "%d); skipped",
                sensor,
                len(values),
                need,
            )
            continue
        fit_part[sensor] = values[:-n_cal] if n_cal else values
        cal_part[sensor] = values[-n_cal:] if n_cal else values
        stamps[sensor] = ts
    if not fit_part:
        raise TrainError("no sensor has enough normal readings to train on")

    started = time.monotonic()
    log.info("fitting %s on %d sensors", det.name, len(fit_part))
    if det.shared_weights:
        try:
            det.fit(fit_part)
        except ValueError as exc:
            raise TrainError(str(exc)) from None
    else:
        for sensor, values in fit_part.items():
            try:
                det.adapt(sensor, values)
            except ValueError as exc:
                skipped[sensor] = str(exc)
                log.warning("sensor %s: cannot be fitted; skipped: %s", sensor, exc)
        for sensor in [s for s in fit_part if not det.knows(s)]:
            del fit_part[sensor], cal_part[sensor], stamps[sensor]
        if not fit_part:
            raise TrainError("no sensor could be fitted")
    log.info("fitted in %.1fs; calibrating thresholds", time.monotonic() - started)

    normal_scores = {s: det.score_series(s, v) for s, v in cal_part.items()}
    try:
        thresholds, failed = calibrate_all(
            normal_scores, cfg.threshold, det.score_kind, det.comparable_scores
        )
    except CalibrationError as exc:
        raise TrainError(f"cannot calibrate the pooled threshold: {exc}") from None
    for sensor, why in failed.items():
        log.warning("sensor %s: no threshold of its own: %s", sensor, why)

    all_ts = np.concatenate(list(stamps.values()))
    trained_on = {
        "sensors": sorted(fit_part),
        "readings": int(sum(t.size for t in stamps.values())),
        "calibration_readings": int(sum(len(v) for v in cal_part.values())),
        "calibrated_in_sample": not det.shared_weights,
        "anomalous_rows_dropped": dropped,
        "skipped_sensors": skipped,
        "first_ts": float(all_ts.min()),
        "last_ts": float(all_ts.max()),
        "source": source,
    }
    export = getattr(det, "export_litert", None)
    if litert and getattr(det, "exports_litert", False) and callable(export):
        started = time.monotonic()
        export(cal_part)
        log.info("LiteRT export in %.1fs", time.monotonic() - started)
    report = getattr(det, "training_report", None)
    if callable(report) and (training := report()) is not None:
        trained_on["training"] = training
    return Model(det, thresholds, trained_on)


def on_plateau(model: Model) -> bool:
    """Whether the model's training ended on the LSTM-VAE plateau (per its ``trained_on``)."""
    training = model.trained_on.get("training")
    return isinstance(training, dict) and bool(training.get("plateau"))
