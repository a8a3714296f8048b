"""Training: fit a detector on normal readings, calibrate its thresholds, save a model bundle.

Each sensor's series (only ``label == 0`` rows where the file has labels) is split in time:
the first part trains the detector, the last :data:`CALIBRATION_FRACTION` is held out, and
the detector's scores on that held-out normal data calibrate the sensor's threshold at the
configured false-alarm rate. The held-out scores of all sensors, pooled, calibrate
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
"""The last fraction of each sensor's normal series held out to calibrate its threshold."""


class TrainError(ValueError):
    """The data cannot train a model (too little of it, or nothing to calibrate on)."""


def train(
    cfg: Config, data: Mapping[str, Series], model_dir: Path, source: str | None = None
) -> Model:
    """Fit, calibrate and save; returns the trained model."""
    model = fit_calibrated(cfg, data, source)
    bundle.save(model, model_dir)
    return model


def train_in_place(cfg: Config, data: Mapping[str, np.ndarray]) -> Model:
    """Fit and calibrate the configured detector on readings the engine collected (the
    daemon's auto-training and replay's)."""
    series = {s: (np.arange(v.size, dtype=np.float64), v, None) for s, v in data.items()}
    return fit_calibrated(cfg, series, source="auto-train")


def fit_calibrated(cfg: Config, data: Mapping[str, Series], source: str | None = None) -> Model:
    """Fit the configured detector and calibrate its thresholds on held-out normal data."""
    det = create(cfg.detector, cfg.windows.length)
    far = cfg.threshold.false_alarm_rate
    min_cal = det.window - 1 + MIN_SCORES
    min_fit = max(2 * det.window + 2, 10)
    fit_part: dict[str, np.ndarray] = {}
    cal_part: dict[str, np.ndarray] = {}
    stamps: list[np.ndarray] = []
    dropped = 0
    skipped: dict[str, str] = {}
    for sensor, (ts, values, labels) in data.items():
        if labels is not None:
            normal = labels == 0
            dropped += int((~normal).sum())
            ts, values = ts[normal], values[normal]
        n_cal = max(round(values.size * CALIBRATION_FRACTION), min_cal)
        if values.size - n_cal < min_fit:
            skipped[sensor] = f"{values.size} normal readings, need {n_cal + min_fit}"
            log.warning(
                "sensor %s: %d normal readings are too few to train and calibrate on; skipped",
                sensor,
                values.size,
            )
            continue
        fit_part[sensor] = values[:-n_cal]
        cal_part[sensor] = values[-n_cal:]
        stamps.append(ts)
    if not fit_part:
        raise TrainError("no sensor has enough normal readings to train on")

    started = time.monotonic()
    log.info("fitting %s on %d sensors", det.name, len(fit_part))
    try:
        det.fit(fit_part)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    log.info("fitted in %.1fs; calibrating thresholds at %g", time.monotonic() - started, far)

    held_out = {s: det.score_series(s, v) for s, v in cal_part.items()}
    try:
        thresholds, failed = calibrate_all(held_out, far, det.comparable_scores)
    except CalibrationError as exc:
        raise TrainError(f"cannot calibrate the pooled threshold: {exc}") from None
    for sensor, why in failed.items():
        log.warning("sensor %s: no threshold of its own: %s", sensor, why)

    all_ts = np.concatenate(stamps)
    trained_on = {
        "sensors": sorted(fit_part),
        "readings": int(sum(v.size for v in (*fit_part.values(), *cal_part.values()))),
        "calibration_readings": int(sum(v.size for v in cal_part.values())),
        "anomalous_rows_dropped": dropped,
        "skipped_sensors": skipped,
        "first_ts": float(all_ts.min()),
        "last_ts": float(all_ts.max()),
        "source": source,
    }
    report = getattr(det, "training_report", None)
    if callable(report) and (training := report()) is not None:
        trained_on["training"] = training
    return Model(det, thresholds, trained_on)


def on_plateau(model: Model) -> bool:
    """Whether the model's training ended on the LSTM-VAE plateau (per its ``trained_on``)."""
    training = model.trained_on.get("training")
    return isinstance(training, dict) and bool(training.get("plateau"))
