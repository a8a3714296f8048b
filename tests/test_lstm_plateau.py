"""The LSTM-VAE's plateau check, its training report, repeatable training, and what the
daemon and the metrics make of a model that ended on the plateau."""

from __future__ import annotations

import logging
import math
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from streamwatch.config import Config, GaussianConfig, LSTMVAEConfig
from streamwatch.daemon import Daemon
from streamwatch.detectors import bundle
from streamwatch.detectors.bundle import Model
from streamwatch.detectors.gaussian import GaussianDetector
from streamwatch.detectors.lstm_vae_train import on_plateau, plateau_level
from streamwatch.outputs.metrics import Metrics
from streamwatch.pipeline.threshold import Thresholds
from streamwatch.training import on_plateau as model_on_plateau
from streamwatch.training import train_in_place

TINY = LSTMVAEConfig(
    hidden=4, latent=2, epochs=1, min_steps=0, batch_size=64, learning_rate=1e-3, seed=3
)


def tiny_config(**update: Any) -> Config:
    """A config that trains the tiny LSTM-VAE on windows of 10."""
    return Config.model_validate(
        {
            "detector": TINY.model_copy(update=update).model_dump(),
            "windows": {"length": 10},
        }
    )


def noise(n: int, seed: int) -> np.ndarray:
    """White noise: nothing beyond the marginal to learn."""
    return np.random.default_rng(seed).normal(5.0, 2.0, n)


def test_plateau_level_is_the_marginal_nll_of_standardised_steps() -> None:
    rng = np.random.default_rng(0)
    train, val = rng.standard_normal((4000, 20)), rng.standard_normal((2000, 20))
    level = plateau_level(train, val)
    assert level == pytest.approx(20 * 0.5 * math.log(2 * math.pi * math.e), rel=0.01)
    assert on_plateau(level - 0.5, level, 20)
    assert not on_plateau(level - 5.0, level, 20)
    assert on_plateau(math.nan, level, 20)


def test_a_model_that_cannot_leave_the_plateau_is_flagged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = {"a": noise(300, 1), "b": noise(300, 2)}
    with caplog.at_level(logging.INFO, logger="streamwatch"):
        model = train_in_place(tiny_config(), data)
    training = model.trained_on["training"]
    assert training["plateau"] is True
    assert model_on_plateau(model)
    assert set(training) >= {"plateau", "val_loss", "plateau_level", "steps", "seed", "seconds"}
    assert training["seed"] == 3 and training["rounds"] == 3  # two escape rounds, in vain
    assert training["val_loss"] > training["plateau_level"] - 10 * 0.05
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("NOT BELOW THE PLATEAU" in r.getMessage() for r in warnings)


def test_the_report_lands_in_the_manifest_and_loads_back(tmp_path: Path) -> None:
    model = train_in_place(tiny_config(shared=False), {"a": noise(300, 1), "b": noise(300, 2)})
    bundle.save(model, tmp_path / "m")
    loaded = bundle.load(tmp_path / "m")
    training = loaded.trained_on["training"]
    assert training["plateau"] is True and set(training["models"]) == {"a", "b"}
    assert model_on_plateau(loaded)


def test_same_seed_same_training() -> None:
    data = {"a": noise(300, 1), "b": noise(300, 2)}
    one = train_in_place(tiny_config(), data)
    two = train_in_place(tiny_config(), data)
    assert one.thresholds.to_json() == two.thresholds.to_json()
    r1, r2 = dict(one.trained_on["training"]), dict(two.trained_on["training"])
    r1.pop("seconds")
    r2.pop("seconds")
    assert r1 == r2


class _Engine:
    def __init__(self) -> None:
        self.swapped: list[Model] = []

        self.recollects = 0

    def request_swap(self, model: Model) -> None:
        self.swapped.append(model)

    def request_recollect(self) -> None:
        self.recollects += 1


def _daemon(tmp_path: Path) -> Any:
    """What Daemon.adopt_trained uses of a daemon, without a broker."""
    cfg = Config.model_validate({"state_dir": str(tmp_path / "state")})
    return SimpleNamespace(
        cfg=cfg,
        engine=_Engine(),
        metrics=Metrics(CollectorRegistry()),
        adopt_trained=None,
        _saving_model=threading.Lock(),
    )


def _gaussian(training: dict[str, Any] | None) -> Model:
    det = GaussianDetector(GaussianConfig(), 1)
    det.fit({"a": noise(100, 1)})
    on = {} if training is None else {"training": training}
    return Model(det, Thresholds(1e-3, {"a": 5.0}, 5.0), on)


def test_the_daemon_does_not_swap_in_a_plateaued_model(tmp_path: Path) -> None:
    d = _daemon(tmp_path)
    stuck = _gaussian({"plateau": True, "val_loss": 28.4, "plateau_level": 28.4, "steps": 9})
    assert Daemon.adopt_trained(cast(Daemon, d), stuck) is False
    assert d.engine.swapped == []
    assert d.engine.recollects == 1  # collect afresh and retry
    assert not (tmp_path / "state" / "model").exists()
    assert b"streamwatch_model_on_plateau 1.0" in generate_latest(d.metrics.registry)

    good = _gaussian({"plateau": False})
    assert Daemon.adopt_trained(cast(Daemon, d), good) is True
    assert d.engine.swapped == [good]
    assert (tmp_path / "state" / "model" / bundle.MANIFEST).exists()
    assert b"streamwatch_model_on_plateau 0.0" in generate_latest(d.metrics.registry)


def test_the_plateau_gauge_follows_the_model_in_use() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.set_model("lstm-vae", "abc", "/models/x", on_plateau=True)
    text = generate_latest(metrics.registry).decode()
    assert "# TYPE streamwatch_model_on_plateau gauge" in text
    assert "streamwatch_model_on_plateau 1.0" in text
    metrics.set_model("lstm-vae", "abc", "/models/y")
    assert "streamwatch_model_on_plateau 0.0" in generate_latest(metrics.registry).decode()
