"""The recurrent VAE over group windows (time x members): shared networks per member count,
a coupling break, member shares, the bundle round trip, the training report."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from streamwatch.config import RVAEConfig
from streamwatch.detectors import base, bundle
from streamwatch.detectors.base import NotTrained
from streamwatch.detectors.bundle import Model
from streamwatch.pipeline.threshold import Thresholds, calibrate

WINDOW = 12
CFG = RVAEConfig(
    hidden=16, latent=4, epochs=12, min_steps=0, batch_size=64, learning_rate=5e-3, patience=3
)


def pump(n: int, seed: int, broken: slice | None = None) -> np.ndarray:
    """(n, 3): flow; current follows it; pressure falls with it. In ``broken`` current runs
    against flow, inside its normal range."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    flow = np.sin(2 * np.pi * t / 37.0) + rng.normal(0, 0.05, n)
    current = flow + rng.normal(0, 0.05, n)
    pressure = -flow + rng.normal(0, 0.05, n)
    if broken is not None:
        current[broken] = -flow[broken] + rng.normal(0, 0.05, broken.stop - broken.start)
    return np.stack([flow, 5.0 + current, 100.0 + 10.0 * pressure], axis=1)


@pytest.fixture(scope="module")
def fitted() -> tuple[base.Detector, float]:
    det = base.create(CFG, WINDOW)
    det.fit({"plant/a": pump(800, 0), "plant/b": pump(800, 1)})
    held_out = det.score_series("plant/a", pump(400, 2))
    return det, calibrate(held_out, 1e-3)


def test_one_network_per_member_count_and_a_report(fitted: tuple[base.Detector, float]) -> None:
    det, _ = fitted
    assert set(det._nets) == {"f3"}  # type: ignore[attr-defined]
    report = det.training_report()  # type: ignore[attr-defined]
    assert report is not None and "plateau" in report and report["models"]["f3"]["steps"] > 0


def test_coupling_break_scores_high_and_names_the_member(
    fitted: tuple[base.Detector, float],
) -> None:
    det, thr = fitted
    broken = pump(400, 3, broken=slice(200, 260))
    scores = det.score_series("plant/b", broken)
    hit = scores[200 - WINDOW + 1 : 260]
    assert hit.max() > thr
    clean = det.score_series("plant/b", pump(400, 4))
    assert (clean > thr).mean() <= 0.02
    w = det.windows_of(broken)[240:241]
    shares = det.member_shares(["plant/b"], w)  # type: ignore[attr-defined]
    assert shares.shape == (1, 3) and shares.sum() == pytest.approx(1.0)
    assert int(np.argmax(shares[0])) == 1  # current
    parts = det.parts(["plant/b"], w)
    assert parts.shape == (1, 2)
    assert det.score(["plant/b"], w)[0] == pytest.approx(parts.sum())


def test_adapt_learns_a_new_group_of_the_same_size_only(
    fitted: tuple[base.Detector, float],
) -> None:
    det, _ = fitted
    det.adapt("plant/c", pump(300, 5))
    assert det.knows("plant/c")
    with pytest.raises(NotTrained):
        det.adapt("plant/d", pump(300, 5)[:, :2])
    det.forget("plant/c")
    assert not det.knows("plant/c")


def test_bundle_round_trip(fitted: tuple[base.Detector, float], tmp_path: Path) -> None:
    det, thr = fitted
    bundle.save(Model(det, Thresholds(1e-3, {"plant/a": thr})), tmp_path / "m")
    loaded = bundle.load(tmp_path / "m", expect=CFG)
    x = pump(120, 6)
    np.testing.assert_allclose(
        loaded.detector.score_series("plant/a", x), det.score_series("plant/a", x), rtol=1e-5
    )
    assert loaded.thresholds.per_sensor == {"plant/a": thr}
    # Scoring in one batch or row by row gives the same scores (stable signatures, padding).
    w = det.windows_of(x)
    one = np.concatenate([det.score(["plant/a"], w[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(one, det.score(["plant/a"] * 5, w[:5]), rtol=1e-5)


def test_train_with_groups_fits_the_rvae_and_replay_uses_it(tmp_path: Path) -> None:
    from streamwatch.commands import main
    from streamwatch.commands.common import EXIT_OK

    lines = ["timestamp,sensor,value"]
    for g, seed in (("a", 0), ("b", 1)):
        steps = pump(500, seed)
        for i, row in enumerate(steps):  # members at their own times, not sharing stamps
            lines += [
                f"{1e9 + i + 0.2 * k!r},plant/{g}/m{k},{float(v)!r}" for k, v in enumerate(row)
            ]
    data = tmp_path / "normal.csv"
    data.write_text("\n".join(lines) + "\n")
    conf = tmp_path / "c.toml"
    conf.write_text(
        '[groups]\npatterns = ["plant/+/#"]\nwindow = 12\n[groups.detector]\ntype = "rvae"\n'
        "hidden = 16\nlatent = 4\nepochs = 8\nmin_steps = 0\nbatch_size = 64\n"
        "learning_rate = 0.005\n"
    )
    model = tmp_path / "model"
    args = ["--config", str(conf), "--model-dir", str(model), "--no-litert"]
    assert main(["train", "--data", str(data), *args]) == EXIT_OK
    groups = bundle.load(tmp_path / "model.groups")
    assert groups.name == "rvae"
    assert set(groups.trained_on["groups"]) == {"plant/a", "plant/b"}
    assert groups.trained_on["groups"]["plant/a"]["members"] == ["m0", "m1", "m2"]
    assert "plateau" in groups.trained_on["training"]
    # Shared weights: the last quarter of each group's steps calibrated its threshold.
    assert groups.trained_on["calibrated_in_sample"] is False
    assert set(groups.thresholds.per_sensor) == {"plant/a", "plant/b"}
    out = tmp_path / "alerts.jsonl"
    rc = main(
        [
            "replay",
            "--data",
            str(data),
            "--alerts-out",
            str(out),
            "--config",
            str(conf),
            "--model-dir",
            str(model),
        ]
    )
    assert rc == EXIT_OK
