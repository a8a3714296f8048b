"""A trained model and the directory it is saved to: the detector, its thresholds, what it
was trained on.

Bundle layout (a directory, never a pickle)::

    manifest.json     format version, detector type, its hyper-parameters and their hash,
                      library versions, what it was trained on, and a sha256 of every other
                      file
    sensors.json      per-sensor state: normalisation or fitted parameters
    thresholds.json   calibrated thresholds
    <weights>         detector-specific, e.g. shared.weights.npz for the LSTM-VAE (plain arrays)
                      and, from `train`, shared.b<batch>.tflite (LiteRT, one per batch bucket;
                      the manifest's ``litert`` entry says how they were checked)

The manifest holds the model's hyper-parameters only (``detector.*`` of the config): runtime
policy such as the warm-up length or auto-training is the running config's, never the
bundle's. Loading verifies every checksum, so a truncated or edited file is a clear
:class:`ModelError`, not a crash deep in the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamwatch import DIST_NAME, durable
from streamwatch.config import DetectorConfig
from streamwatch.detectors.base import Detector, ModelError, create, detector_class
from streamwatch.pipeline.threshold import Thresholds

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""2: hyper-parameters apart from runtime policy (``hyper``, ``hyper_hash``); GMM weights as
log-weights. Version 1 bundles (streamwatch 0.1) are refused with a message to retrain."""
MANIFEST = "manifest.json"
SENSORS = "sensors.json"
THRESHOLDS = "thresholds.json"


@dataclass
class Model:
    """A detector with its calibrated thresholds: what the engine scores and judges with."""

    detector: Detector
    thresholds: Thresholds
    trained_on: dict[str, Any] = field(default_factory=dict)
    """Where the model came from: sensors, readings, time range, source, training notes."""

    @property
    def name(self) -> str:
        """The detector type."""
        return self.detector.name

    @property
    def hyper_hash(self) -> str:
        """Short hash of the detector's hyper-parameters and window length."""
        return hyper_hash(self.detector.config, self.detector.window)


def fresh(config: DetectorConfig, window: int, false_alarm_rate: float) -> Model:
    """An untrained model of the configured type, with no thresholds yet."""
    return Model(create(config, window), Thresholds(false_alarm_rate))


def hyper_hash(config: DetectorConfig, window: int) -> str:
    """A short stable hash of what shapes a model: its hyper-parameters and window length."""
    blob = json.dumps({"hyper": config.model_dump(mode="json"), "window": window}, sort_keys=True)
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

        out["streamwatch"] = version(DIST_NAME)
    except Exception:
        out["streamwatch"] = "unknown"
    return out


def save(model: Model, path: Path) -> None:
    """Write the whole bundle to ``path``, replacing what was there.

    The bundle is written and synced in a sibling directory first, then renamed into place,
    so a crash leaves the old bundle or the new one, never a mix (the daemon saves what it
    learned while it runs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = path.with_name(f".{path.name}.new")
    old = path.with_name(f".{path.name}.old")
    for stale in (new, old):
        if stale.exists():
            shutil.rmtree(stale)
    _write(model, new)
    durable.fsync_dir(path.parent)
    if path.exists():
        path.rename(old)
    new.rename(path)
    durable.fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    log.info("saved %s model to %s", model.name, path)


def _write(model: Model, path: Path) -> None:
    det = model.detector
    path.mkdir()
    files = {
        SENSORS: json.dumps(det._sensor_state(), sort_keys=True),
        THRESHOLDS: json.dumps(model.thresholds.to_json(), sort_keys=True),
    }
    for fname, text in files.items():
        (path / fname).write_text(text, encoding="utf-8")
    names = [*files, *det._save_weights(path)]
    manifest = {
        "format_version": FORMAT_VERSION,
        "detector": det.name,
        "window": det.window,
        "hyper": det.config.model_dump(mode="json"),
        "hyper_hash": hyper_hash(det.config, det.window),
        "trained_on": model.trained_on,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": library_versions(det.uses_tensorflow),
        "files": {n: _sha256(path / n) for n in names},
    }
    if det.litert_report is not None:
        manifest["litert"] = det.litert_report
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    for f in path.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())


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
    if version == 1:
        raise ModelError(
            f"{mpath}: a format_version 1 bundle (streamwatch 0.1), which mixed runtime policy "
            f"into the model's settings; this streamwatch reads {FORMAT_VERSION}: retrain it "
            "with `streamwatch train`"
        )
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


def _after_interrupted_save(path: Path) -> Path:
    """``path``, or where :func:`save` left the bundle if a crash came between its two
    renames: the complete new one (``.NAME.new``), else the previous one (``.NAME.old``)."""
    if path.exists():
        return path
    for stage in ("new", "old"):
        alt = path.with_name(f".{path.name}.{stage}")
        if (alt / MANIFEST).is_file():
            log.warning("%s is missing; loading %s (a save was interrupted)", path, alt)
            return alt
    return path


def load(path: Path, expect: DetectorConfig | None = None, inference: str = "auto") -> Model:
    """Load a bundle. With ``expect``, its detector type must match the configured one (its
    hyper-parameters are the bundle's own). ``inference`` (``engine.inference``) picks how a
    detector that can score with or without TensorFlow does."""
    from pydantic import TypeAdapter, ValidationError

    path = _after_interrupted_save(Path(path))
    manifest = read_manifest(path)
    name = manifest.get("detector")
    if expect is not None and name != expect.type:
        raise ModelError(f"{path}: holds a {name!r} model but the config asks for {expect.type!r}")
    cls = detector_class(str(name))
    try:
        config = TypeAdapter(DetectorConfig).validate_python(manifest["hyper"])
        window = int(manifest["window"])
    except (KeyError, ValueError, TypeError, ValidationError) as exc:
        raise ModelError(f"{path / MANIFEST}: bad hyper-parameters: {exc}") from None
    if manifest.get("hyper_hash") != hyper_hash(config, window):
        raise ModelError(f"{path / MANIFEST}: hyper_hash does not match its hyper-parameters")
    if config.type != name:
        raise ModelError(f"{path / MANIFEST}: detector {name!r} but config type {config.type!r}")
    det = cls(config, window)
    det.inference = inference
    litert = manifest.get("litert")
    det.litert_report = litert if isinstance(litert, dict) else None
    try:
        det._restore_sensor_state(json.loads((path / SENSORS).read_text(encoding="utf-8")))
        thresholds = Thresholds.from_json(
            json.loads((path / THRESHOLDS).read_text(encoding="utf-8"))
        )
        det._load_weights(path)
    except ModelError:
        raise
    except Exception as exc:  # any decoding failure of a verified file is still a model error
        raise ModelError(f"{path}: cannot load {name} model: {exc}") from exc
    log.info("loaded %s model from %s (%d sensors)", name, path, len(thresholds.per_sensor))
    return Model(det, thresholds, dict(manifest.get("trained_on") or {}))
