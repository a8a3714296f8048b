"""The detector contract, run against every detector, plus detector-specific checks."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from streamwatch.config import (
    GaussianConfig,
    GMMConfig,
    LSTMVAEConfig,
    MahalanobisConfig,
    RobustConfig,
    RVAEConfig,
)
from streamwatch.detectors import base, bundle, lstm_vae_train
from streamwatch.detectors.base import Detector, ModelError, NotTrained
from streamwatch.detectors.bundle import Model
from streamwatch.pipeline.threshold import Thresholds, calibrate

WINDOW = 20
FAR = 1e-3
SENSORS = ("s1", "s2")

CONFIGS: dict[str, Any] = {
    "gaussian": GaussianConfig(),
    "gmm": GMMConfig(max_components=3, steps=150),
    "robust": RobustConfig(),
    "lstm-vae": LSTMVAEConfig(
        hidden=16, latent=4, epochs=10, min_steps=0, batch_size=64, learning_rate=5e-3, patience=3
    ),
    "mahalanobis": MahalanobisConfig(span=10, point=True),
    "rvae": RVAEConfig(
        hidden=16, latent=4, epochs=10, min_steps=0, batch_size=64, learning_rate=5e-3, patience=3
    ),
}


def sine(n: int, seed: int, offset: int = 0) -> np.ndarray:
    """sin(2πt) + sin(4πt) + N(0, 0.1²), 50 readings per period of the slow component."""
    t = (np.arange(n) + offset) / 50.0
    rng = np.random.default_rng(seed)
    return np.sin(2 * np.pi * t) + np.sin(4 * np.pi * t) + rng.normal(0.0, 0.1, n)


def scores_of(det: Detector, sensor: str, values: np.ndarray) -> np.ndarray:
    """Score every window (stride 1) of one sensor's series."""
    w = det.windows_of(values)
    return det.score([sensor] * len(w), w)


class Fitted:
    """A detector fitted on normal data, with its calibrated threshold."""

    def __init__(self, name: str) -> None:
        self.det = base.create(CONFIGS[name], WINDOW)
        self.det.fit({s: sine(1500, seed=i) for i, s in enumerate(SENSORS)})
        held_out = np.concatenate(
            [
                scores_of(self.det, s, sine(1000, seed=10 + i, offset=1500))
                for i, s in enumerate(SENSORS)
            ]
        )
        self.threshold = calibrate(held_out, FAR)
        self.model = Model(self.det, Thresholds(FAR, pooled=self.threshold))


_FITTED: dict[str, Fitted] = {}


def fitted_detector(name: str) -> Fitted:
    """Fit each detector once per test session."""
    if name not in _FITTED:
        _FITTED[name] = Fitted(name)
    return _FITTED[name]


@pytest.fixture(params=list(CONFIGS))
def fitted(request: pytest.FixtureRequest) -> Fitted:
    return fitted_detector(request.param)


# -- the contract ---------------------------------------------------------------------------

SEGMENT = slice(300, 360)


def _spike(v: np.ndarray) -> np.ndarray:
    v[SEGMENT.start] += 4.0
    return v


def _level_shift(v: np.ndarray) -> np.ndarray:
    v[SEGMENT] += 1.0
    return v


def _noise_burst(v: np.ndarray) -> np.ndarray:
    v[SEGMENT] += np.random.default_rng(7).normal(0.0, 1.0, SEGMENT.stop - SEGMENT.start)
    return v


@pytest.mark.parametrize("inject", [_spike, _level_shift, _noise_burst], ids=lambda f: f.__name__)
def test_anomalies_score_above_threshold_and_normal(fitted: Fitted, inject: Any) -> None:
    det = fitted.det
    clean = sine(600, seed=99)
    normal = scores_of(det, "s1", clean)
    anomalous = scores_of(det, "s1", inject(clean.copy()))
    # Windows that contain at least one injected reading.
    touched = anomalous[max(0, SEGMENT.start - det.window + 1) : SEGMENT.stop]
    assert touched.max() > fitted.threshold
    assert touched.max() > normal.max()
    # The clean series hardly ever crosses a threshold calibrated for 1 in 1000.
    assert (normal > fitted.threshold).mean() <= 0.01


def test_save_load_gives_identical_scores(fitted: Fitted, tmp_path: Path) -> None:
    bundle.save(fitted.model, tmp_path / "m")
    model = bundle.load(tmp_path / "m", expect=fitted.det.config)
    loaded = model.detector
    assert type(loaded) is type(fitted.det)
    assert model.thresholds.pooled == fitted.threshold
    # The bundle round-trips every stored number exactly (JSON floats are repr-exact) ...
    assert loaded._sensor_state() == fitted.det._sensor_state()
    # ... and scores agree to rounding: the same function on equal inputs, but numpy's SIMD
    # kernels may take another path for another memory layout (seen: 8.9e-16 apart).
    x = sine(200, seed=5)
    for s in SENSORS:
        np.testing.assert_allclose(
            scores_of(loaded, s, x), scores_of(fitted.det, s, x), rtol=1e-12, atol=1e-12
        )


def _bundle(fitted: Fitted, tmp_path: Path) -> Path:
    path = tmp_path / "m"
    bundle.save(fitted.model, path)
    return path


def test_edited_weights_is_model_error(fitted: Fitted, tmp_path: Path) -> None:
    path = _bundle(fitted, tmp_path)
    files = json.loads((path / bundle.MANIFEST).read_text())["files"]
    weights = [f for f in files if f.endswith(".h5")] or [bundle.SENSORS]
    target = path / weights[0]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        bundle.load(path)


def test_truncated_sensors_json_is_model_error(fitted: Fitted, tmp_path: Path) -> None:
    path = _bundle(fitted, tmp_path)
    text = (path / bundle.SENSORS).read_text()
    (path / bundle.SENSORS).write_text(text[: len(text) // 2])
    with pytest.raises(ModelError):
        bundle.load(path)


def test_missing_manifest_is_model_error(fitted: Fitted, tmp_path: Path) -> None:
    path = _bundle(fitted, tmp_path)
    (path / bundle.MANIFEST).unlink()
    with pytest.raises(ModelError, match="missing"):
        bundle.load(path)


def test_wrong_detector_type_is_model_error(fitted: Fitted, tmp_path: Path) -> None:
    path = _bundle(fitted, tmp_path)
    for name, other in CONFIGS.items():
        if name != fitted.det.name:
            with pytest.raises(ModelError, match="config asks for"):
                bundle.load(path, expect=other)
    # A manifest edited to claim another type does not load either.
    manifest = json.loads((path / bundle.MANIFEST).read_text())
    manifest["detector"] = "gmm" if fitted.det.name != "gmm" else "gaussian"
    (path / bundle.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelError):
        bundle.load(path)


# -- exact densities ------------------------------------------------------------------------


def test_numpy_densities_equal_tfp_log_prob() -> None:
    import tensorflow_probability as tfp

    from streamwatch.detectors.gaussian import GaussianDetector
    from streamwatch.detectors.gmm import GMMDetector

    tfd = tfp.distributions
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 4.0, 500)

    g = GaussianDetector(GaussianConfig(), 1)
    g.fit({"a": rng.normal(1.5, 2.0, 1000)})
    mu, sigma = g.params("a")
    expected = -tfd.Normal(np.float64(mu), np.float64(sigma)).log_prob(x).numpy()
    np.testing.assert_allclose(g.score(["a"] * x.size, x[:, None]), expected, rtol=1e-6)

    m = GMMDetector(GMMConfig(max_components=3, steps=150), 1)
    m.fit({"a": np.concatenate([rng.normal(-3.0, 0.5, 600), rng.normal(4.0, 1.0, 400)])})
    w, loc, scale = m.params("a")
    mix = tfd.MixtureSameFamily(tfd.Categorical(probs=w), tfd.Normal(loc=loc, scale=scale))
    np.testing.assert_allclose(
        m.score(["a"] * x.size, x[:, None]), -mix.log_prob(x).numpy(), rtol=1e-6
    )


# -- GMM ------------------------------------------------------------------------------------


def two_state(n: int, seed: int) -> np.ndarray:
    """A machine alternating between idle (≈0) and running (≈10) in blocks of 50..300."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    running = False
    while sum(len(part) for part in out) < n:
        k = int(rng.integers(50, 300))
        out.append(rng.normal(10.0, 0.5, k) if running else rng.normal(0.0, 0.05, k))
        running = not running
    return np.concatenate(out)[:n]


def test_gmm_two_state_signal() -> None:
    from streamwatch.detectors.gmm import GMMDetector

    det = GMMDetector(GMMConfig(max_components=4, steps=150), 1)
    det.fit({"m": two_state(3000, seed=1)})
    weights, loc, _ = det.params("m")
    assert len(weights) > 1
    assert np.any(np.abs(loc) < 0.5) and np.any(np.abs(loc - 10.0) < 0.5)

    threshold = calibrate(det.score(["m"] * 3000, two_state(3000, seed=2)[:, None]), FAR)
    fresh = two_state(3000, seed=3)
    alarms = det.score(["m"] * fresh.size, fresh[:, None]) > threshold
    # About 3 expected at 1e-3; a model blind to one state would flag hundreds.
    assert alarms.sum() <= 10
    assert alarms[fresh > 5.0].sum() <= 5 and alarms[fresh < 5.0].sum() <= 5
    # A reading between the states (where a single Normal has its mean) is anomalous.
    assert det.score(["m"], np.array([[5.0]]))[0] > threshold


def test_reading_detectors_score_loaded_model_without_tensorflow(tmp_path: Path) -> None:
    from streamwatch.detectors.gmm import GMMDetector

    det = GMMDetector(GMMConfig(max_components=2, steps=50), 1)
    det.fit({"a": np.r_[np.zeros(100), np.ones(100)] + np.linspace(0, 0.01, 200)})
    bundle.save(Model(det, Thresholds(FAR)), tmp_path / "m")
    code = (
        "import sys, numpy as np; from pathlib import Path; "
        "from streamwatch.detectors import bundle; "
        f"d = bundle.load(Path({str(tmp_path / 'm')!r})).detector; "
        "d.score(['a'], np.zeros((1, 1))); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- LSTM-VAE -------------------------------------------------------------------------------


@pytest.fixture
def vae() -> Fitted:
    return fitted_detector("lstm-vae")


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_lstm_vae_scores_do_not_depend_on_batching(vae: Fitted, jit: bool) -> None:
    det: Any = vae.det
    x = det.windows_of(sine(150, seed=11))
    sensors = ["s1", "s2"] * (len(x) // 2) + ["s1"] * (len(x) % 2)
    old = det.jit_compile, det.max_batch
    det.jit_compile = jit
    try:
        # 131 rows: a 256 bucket, in graph mode; the smaller parts below use XLA when on.
        reference = det.score(sensors, x)
        for size in (1, 7, 64):
            parts = [
                det.score(sensors[i : i + size], x[i : i + size]) for i in range(0, len(x), size)
            ]
            np.testing.assert_allclose(np.concatenate(parts), reference, rtol=1e-5, atol=1e-4)
        det.max_batch = 16  # chunks of 16, the last padded to a smaller bucket
        np.testing.assert_allclose(det.score(sensors, x), reference, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(
            det.explain(sensors, x).sum(axis=1), reference, rtol=1e-5, atol=1e-4
        )
    finally:
        det.jit_compile, det.max_batch = old
    # One trace serves every batch size and bucket.
    assert det._nets["shared"].scorer(jit).experimental_get_tracing_count() == 1


def test_lstm_vae_xla_agrees_with_graph_mode(vae: Fitted) -> None:
    det: Any = vae.det
    x = det.windows_of(sine(84, seed=12))
    sensors = ["s1"] * len(x)
    old = det.jit_compile
    try:
        det.jit_compile = False
        reference = det.score(sensors, x)
        det.jit_compile = True
        xla = det.score(sensors, x)
    finally:
        det.jit_compile = old
    np.testing.assert_allclose(xla, reference, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("samples", [1, 4])
def test_lstm_vae_numpy_scoring_agrees_with_tensorflow(
    vae: Fitted, samples: int, tmp_path: Path
) -> None:
    """The numpy twin (engine.inference = "numpy", an install without TensorFlow) scores a
    saved bundle as TensorFlow does, to float32 rounding: within 1e-4 relative (1e-3 nats)."""
    from streamwatch.detectors.lstm_numpy import NumpyNet

    if samples == 1:
        det: Any = vae.det
    else:
        cfg = CONFIGS["lstm-vae"].model_copy(update={"latent_samples": samples, "epochs": 1})
        det = base.create(cfg, WINDOW)
        det.fit({"s1": sine(400, seed=1)})
    bundle.save(Model(det, Thresholds(FAR)), tmp_path / "m")
    tf_det: Any = bundle.load(tmp_path / "m", inference="tensorflow").detector
    np_det: Any = bundle.load(tmp_path / "m", inference="numpy").detector
    assert isinstance(np_det._nets["shared"], NumpyNet)
    assert not isinstance(tf_det._nets["shared"], NumpyNet)
    normal = det.windows_of(sine(300, seed=12, offset=1500))
    odd = det.windows_of(_level_shift(_spike(sine(400, seed=13))))
    for x in (normal, odd):
        sensors = ["s1"] * len(x)
        tf_det.jit_compile = False
        reference = tf_det.score(sensors, x)
        np.testing.assert_allclose(np_det.score(sensors, x), reference, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(
            np_det.explain(sensors, x), tf_det.explain(sensors, x), rtol=1e-4, atol=1e-3
        )
    # Saved again from numpy (as the daemon saves what it learned), the arrays are unchanged.
    bundle.save(Model(np_det, Thresholds(FAR)), tmp_path / "again")
    with (
        np.load(tmp_path / "m" / "shared.weights.npz") as a,
        np.load(tmp_path / "again" / "shared.weights.npz") as b,
    ):
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_lstm_vae_adapt_needs_weights_and_learns_scaling(vae: Fitted) -> None:
    fresh = base.create(CONFIGS["lstm-vae"], WINDOW)
    assert not fresh.trained
    with pytest.raises(NotTrained):
        fresh.adapt("x", sine(100, seed=1))
    det = vae.det
    assert det.trained and not det.knows("new")
    # The same signal at another scale: standardisation maps it onto the known sensor's.
    det.adapt("new", 10.0 * sine(1500, seed=0) + 50.0)
    assert det.knows("new")
    x = sine(200, seed=13)
    np.testing.assert_allclose(
        scores_of(det, "new", 10.0 * x + 50.0), scores_of(det, "s1", x), rtol=1e-3, atol=1e-3
    )


def test_lstm_vae_per_sensor_models_round_trip(tmp_path: Path) -> None:
    cfg = CONFIGS["lstm-vae"].model_copy(update={"shared": False, "epochs": 1, "hidden": 4})
    det = base.create(cfg, WINDOW)
    det.fit({"a": sine(300, seed=1), "b": 3.0 * sine(300, seed=2)})
    bundle.save(Model(det, Thresholds(FAR)), tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").glob("*.weights.*")) == [
        "m0.weights.npz",
        "m1.weights.npz",
    ]
    loaded = bundle.load(tmp_path / "m").detector
    x = sine(100, seed=3)
    for s in ("a", "b"):
        np.testing.assert_array_equal(scores_of(loaded, s, x), scores_of(det, s, x))
    with pytest.raises(NotTrained):
        loaded.adapt("c", x)
    shutil.rmtree(tmp_path / "m")


def test_lstm_vae_min_steps_adds_epochs_on_small_data(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2 sensors x 100 readings: 2 x 61 training windows, 8 batches of 16 per epoch, so 30
    # steps need 4 epochs (early stopping may not end them sooner) although the config says 1;
    # while the validation loss still improves the round may run 30 steps (4 epochs) more.
    cfg = CONFIGS["lstm-vae"].model_copy(
        update={"epochs": 1, "min_steps": 30, "hidden": 4, "latent": 2, "batch_size": 16}
    )
    det = base.create(cfg, WINDOW)
    monkeypatch.setattr(lstm_vae_train, "ESCAPE_ROUNDS", 0)  # one round, plateau or not
    with caplog.at_level(logging.INFO, logger="streamwatch.detectors"):
        det.fit({"a": sine(100, seed=1), "b": sine(100, seed=2)})
    epochs = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    assert "4 epochs (8 steps each; up to 8 while it still improves)" in caplog.text
    assert 4 <= len(epochs) <= 8


@pytest.mark.parametrize("stage", ["new", "old"])
def test_a_save_interrupted_between_its_renames_still_loads(stage: str, tmp_path: Path) -> None:
    """``bundle.save`` writes ``.m.new``, renames ``m`` to ``.m.old``, then ``.m.new`` to ``m``.
    A crash between the renames leaves no ``m``: loading takes the complete new bundle, or,
    without it, the previous one."""
    model = fitted_detector("robust").model
    bundle.save(model, tmp_path / "m")
    (tmp_path / "m").rename(tmp_path / f".m.{stage}")
    loaded = bundle.load(tmp_path / "m")
    x = sine(100, seed=5)
    np.testing.assert_array_equal(
        scores_of(loaded.detector, "s1", x), scores_of(model.detector, "s1", x)
    )
    shutil.rmtree(tmp_path / f".m.{stage}")
    with pytest.raises(ModelError, match="does not exist"):
        bundle.load(tmp_path / "m")


def _repeating(n: int, seed: int, hold: int) -> np.ndarray:
    """A logger that holds each sample for 1..hold readings (runs of equal values)."""
    rng = np.random.default_rng(seed)
    out: list[float] = []
    while len(out) < n:
        out += [float(rng.normal(5.0, 0.1))] * int(rng.integers(1, hold + 1))
    return np.asarray(out[:n])


def test_robust_stuck_part_judges_a_repeating_sensor_by_the_runs_it_showed() -> None:
    """A sensor that repeats values in normal operation is not stuck for a run like those it
    showed (its spread counts only too much movement), but is for a run well beyond; a sensor
    that never repeated is stuck after a few equal readings."""
    from streamwatch.detectors.robust import PARTS, RobustDetector

    det = RobustDetector(RobustConfig(), 20)
    train = _repeating(600, 1, 4)
    det.adapt("rep", train)
    det.adapt("cont", np.random.default_rng(2).normal(5.0, 0.1, 600))
    stuck = PARTS.index("stuck")
    flat = np.r_[train[:10], np.full(10, 5.0)]  # 9 equal readings in a row at the end
    short = np.r_[train[:16], np.full(4, 5.0)]  # a run of 4, as in training
    p_rep = det.parts(["rep", "rep"], np.stack([short, flat]))
    assert p_rep[0].max() < 1.5  # a run like those it showed: nothing
    assert p_rep[1, stuck] > 1.5  # far beyond its longest run: stuck
    p_cont = det.parts(["cont"], flat[None, :])
    assert p_cont[0, stuck] > 1.5 and p_cont[0, PARTS.index("spread")] > 1.0


def test_robust_bundle_from_before_the_stuck_part_still_loads() -> None:
    from streamwatch.detectors.robust import RobustDetector

    det = RobustDetector(RobustConfig(), 20)
    det.adapt("a", np.random.default_rng(3).normal(5.0, 0.1, 300))
    state = det._sensor_state()
    for name in ("run0", "k_stuck"):
        del state["a"][name]
    old = RobustDetector(RobustConfig(), 20)
    old._restore_sensor_state(state)
    assert old.knows("a")
    assert old._sensor_state()["a"]["k_stuck"] == RobustConfig().min_scale_stuck
