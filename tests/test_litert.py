"""LiteRT scoring of the LSTM-VAE: export at training, checked against TensorFlow on held-out
windows; the bundle lists and checksums the models; batches are cut into buckets; ``auto``
prefers LiteRT where the bundle has it and ``ai_edge_litert`` imports, else numpy (without
TensorFlow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from streamwatch.config import Config
from streamwatch.detectors import bundle, litert
from streamwatch.detectors.base import ModelError
from streamwatch.detectors.bundle import Model
from streamwatch.detectors.litert import LiteNet, max_rel_diff, plan
from streamwatch.training import fit_calibrated

pytest.importorskip("ai_edge_litert")

WINDOW = 12
BUCKETS = (1, 8)
"""Two buckets keep the export short (each is a conversion of the unrolled graph)."""


def wave(n: int, seed: int, phase: float = 0.0) -> np.ndarray:
    """A noisy sine around 10."""
    rng = np.random.default_rng(seed)
    return 10.0 + np.sin(np.arange(n) / 9.0 + phase) + rng.normal(0.0, 0.05, n)


def config(**engine: Any) -> Config:
    """A small LSTM-VAE, two latent samples (the sampled path)."""
    return Config.model_validate(
        {
            "detector": {
                "type": "lstm-vae",
                "hidden": 8,
                "latent": 2,
                "epochs": 2,
                "min_steps": 0,
                "batch_size": 64,
                "latent_samples": 2,
            },
            "windows": {"length": WINDOW},
            "engine": engine,
        }
    )


def series() -> dict[str, tuple[np.ndarray, np.ndarray, None]]:
    """Two sensors' normal readings, as ``fit_calibrated`` takes them."""
    return {
        s: (np.arange(600, dtype=np.float64), wave(600, i, float(i)), None)
        for i, s in enumerate(("a", "b"))
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Model, Path]:
    """A trained model exported to LiteRT (buckets 1 and 8), saved to a bundle."""
    model = fit_calibrated(config(), series())
    held_out = {s: v[-150:] for s, (_, v, _) in series().items()}
    model.detector.export_litert(held_out, BUCKETS)  # type: ignore[attr-defined]
    path = tmp_path_factory.mktemp("litert") / "bundle"
    bundle.save(model, path)
    return model, path


def probe() -> tuple[list[str], np.ndarray]:
    """Normal windows and a few with a spike, from both sensors (21 rows: 8 + 8 + 5)."""
    x = np.lib.stride_tricks.sliding_window_view(wave(40, 9), WINDOW)[:21].copy()
    x[::4, WINDOW // 2] += 6.0
    return ["a", "b"] * 10 + ["a"], x


def test_the_bundle_lists_and_checksums_one_model_per_bucket(
    exported: tuple[Model, Path],
) -> None:
    _, path = exported
    manifest = json.loads((path / bundle.MANIFEST).read_text())
    entry = manifest["litert"]["networks"]["shared"]
    assert manifest["litert"]["tolerance"] == litert.TOLERANCE
    assert manifest["litert"]["buckets"] == list(BUCKETS)
    assert entry["files"] == [litert.file_name("shared", b) for b in BUCKETS]
    assert set(entry["files"]) <= set(manifest["files"])
    assert entry["windows"] > 0 and 0.0 <= entry["max_rel_diff"] <= litert.TOLERANCE
    assert "refused" not in entry


def test_litert_scores_agree_with_tensorflow_and_numpy(exported: tuple[Model, Path]) -> None:
    _, path = exported
    sensors, x = probe()
    scores = {}
    for kind in ("litert", "numpy", "tensorflow"):
        model = bundle.load(path, inference=kind)
        assert model.detector.scoring_with == kind  # type: ignore[attr-defined]
        scores[kind] = model.detector.score(sensors, x)
    assert scores["litert"][::4].min() > np.median(scores["litert"])  # the spikes stand out
    assert max_rel_diff(scores["tensorflow"], scores["litert"]) <= litert.TOLERANCE
    assert max_rel_diff(scores["numpy"], scores["litert"]) <= litert.TOLERANCE
    explained = bundle.load(path, inference="litert").detector.explain(sensors, x)
    assert np.allclose(explained.sum(axis=1), scores["litert"], rtol=1e-9)


def test_auto_prefers_litert_and_a_resaved_bundle_keeps_it(
    exported: tuple[Model, Path], tmp_path: Path
) -> None:
    _, path = exported
    model = bundle.load(path, inference="auto")
    assert model.detector.scoring_with == "litert"  # type: ignore[attr-defined]
    bundle.save(model, tmp_path / "again")  # as the daemon saves what it learned
    again = bundle.load(tmp_path / "again", inference="litert")
    sensors, x = probe()
    assert again.detector.litert_report == model.detector.litert_report
    assert max_rel_diff(model.detector.score(sensors, x), again.detector.score(sensors, x)) < 1e-6


def test_buckets_cover_a_batch_in_order() -> None:
    assert plan(0) == []
    assert plan(1) == [(1, 1)]
    assert plan(2) == [(2, 8)]
    assert plan(7) == [(7, 8)]
    assert plan(65) == [(64, 64), (1, 1)]
    assert plan(21, (1, 8)) == [(8, 8), (8, 8), (5, 8)]
    assert plan(1024) == [(512, 512), (512, 512)]
    for n in (1, 5, 9, 63, 64, 65, 100, 600, 700):
        chunks = plan(n)
        assert sum(rows for rows, _ in chunks) == n
        assert all(rows <= size for rows, size in chunks)
        assert sum(size for _, size in chunks) < 2 * n + 1


def test_padding_and_splitting_give_the_scores_of_single_rows(
    exported: tuple[Model, Path],
) -> None:
    _, path = exported
    net = bundle.load(path, inference="litert").detector._nets["shared"]  # type: ignore[attr-defined]
    assert isinstance(net, LiteNet) and net.buckets == BUCKETS
    z = np.random.default_rng(3).standard_normal((21, WINDOW)).astype(np.float32)
    steps, kl = net(z)  # 8 + 8 + 5 padded to 8
    one = [net(z[i : i + 1]) for i in range(len(z))]  # bucket 1 each
    np.testing.assert_allclose(steps, np.concatenate([s for s, _ in one]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kl, np.concatenate([k for _, k in one]), rtol=1e-5, atol=1e-5)
    assert net(z[:0])[0].shape == (0, WINDOW)


def test_a_litert_file_that_fails_its_checksum_is_refused(
    exported: tuple[Model, Path], tmp_path: Path
) -> None:
    _, path = exported
    copy = tmp_path / "b"
    bundle.save(bundle.load(path), copy)
    victim = copy / litert.file_name("shared", 8)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch"):
        bundle.load(copy, inference="numpy")


def test_an_export_past_the_tolerance_is_refused_and_scoring_falls_back(
    exported: tuple[Model, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = exported
    monkeypatch.setattr(litert, "TOLERANCE", -1.0)  # any difference is past it
    held_out = {s: v[-150:] for s, (_, v, _) in series().items()}
    report = model.detector.export_litert(held_out, (1,))  # type: ignore[attr-defined]
    monkeypatch.undo()
    entry = report["networks"]["shared"]
    assert "exceeds the tolerance" in entry["refused"] and "files" not in entry
    bundle.save(model, tmp_path / "refused")
    assert not list((tmp_path / "refused").glob("*.tflite"))
    loaded = bundle.load(tmp_path / "refused", inference="litert")
    assert loaded.detector.scoring_with == "numpy"  # type: ignore[attr-defined]
    assert json.loads((tmp_path / "refused" / bundle.MANIFEST).read_text())["litert"] == report


HIDE = """
import sys

class _Hide:
    HIDDEN = tuple(sys.argv[2].split(","))

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Hide())
from pathlib import Path
from streamwatch.detectors import bundle
model = bundle.load(Path(sys.argv[1]), inference=sys.argv[3])
print(model.detector.scoring_with)
assert not any(m.split(".")[0] in _Hide.HIDDEN for m in sys.modules), "a hidden module loaded"
"""
TF = "tensorflow,tensorflow_probability,tf_keras,keras"


@pytest.mark.parametrize(
    ("hidden", "inference", "want"),
    [
        (TF, "auto", "litert"),
        (f"{TF},ai_edge_litert", "auto", "numpy"),
        ("ai_edge_litert", "auto", "tensorflow"),
        (TF, "litert", "litert"),
    ],
    ids=["lean-with-litert", "lean-without-litert", "tf-without-litert", "litert-asked"],
)
def test_what_scores_depends_on_what_is_installed(
    exported: tuple[Model, Path], hidden: str, inference: str, want: str
) -> None:
    _, path = exported
    r = subprocess.run(
        [sys.executable, "-c", HIDE, str(path), hidden, inference],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [want]


def test_litert_asked_for_without_ai_edge_litert_is_a_model_error(
    exported: tuple[Model, Path],
) -> None:
    _, path = exported
    r = subprocess.run(
        [sys.executable, "-c", HIDE, str(path), f"{TF},ai_edge_litert", "litert"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "ModelError" in r.stderr and "streamwatch-edge[litert]" in r.stderr


def test_the_group_rvae_exports_and_scores_alike(tmp_path: Path) -> None:
    """The multivariate network (three members) through the same export, check and load;
    with LiteRT it scores without TensorFlow."""
    from streamwatch.config import RVAEConfig

    rng = np.random.default_rng(5)

    def pump(n: int) -> np.ndarray:
        flow = np.sin(np.arange(n) / 6.0) + rng.normal(0, 0.05, n)
        return np.stack([flow, 5.0 + flow, 100.0 - 10.0 * flow], axis=1)

    cfg = Config.model_validate(
        {
            "groups": {
                "patterns": ["plant/+/#"],
                "window": WINDOW,
                "detector": RVAEConfig(
                    hidden=8, latent=2, epochs=2, min_steps=0, batch_size=64
                ).model_dump(),
            }
        }
    )
    from streamwatch.group_training import group_config

    data = {g: (np.arange(500.0), pump(500), None) for g in ("plant/a", "plant/b")}
    model = fit_calibrated(group_config(cfg), data)
    held = {g: v[-120:] for g, (_, v, _) in data.items()}
    report = model.detector.export_litert(held, BUCKETS)  # type: ignore[attr-defined]
    assert report["networks"]["f3"]["files"], report
    bundle.save(model, tmp_path / "g")
    lite = bundle.load(tmp_path / "g", inference="auto")
    tf = bundle.load(tmp_path / "g", inference="tensorflow")
    assert lite.detector.scoring_with == "litert"  # type: ignore[attr-defined]
    assert tf.detector.scoring_with == "tensorflow"  # type: ignore[attr-defined]
    x = np.lib.stride_tricks.sliding_window_view(pump(40), WINDOW, axis=0).transpose(0, 2, 1).copy()
    x[::3, WINDOW // 2, 1] -= 3.0  # member 1 breaks from the others
    groups = ["plant/a"] * len(x)
    a, b = tf.detector.parts(groups, x), lite.detector.parts(groups, x)
    assert max_rel_diff(a.sum(axis=1), b.sum(axis=1)) <= litert.TOLERANCE
    assert max_rel_diff(a[:, 1], b[:, 1]) <= litert.TOLERANCE
    lean = subprocess.run(  # an install without TensorFlow scores the group bundle too
        [sys.executable, "-c", HIDE, str(tmp_path / "g"), TF, "auto"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert lean.returncode == 0, lean.stderr
    assert lean.stdout.split() == ["litert"]


def test_threads_scoring_at_once_get_their_own_scores(exported: tuple[Model, Path]) -> None:
    """The interpreters are shared by the threads that score (a lock serialises each
    network's calls): concurrent batches of different sizes get the scores they get alone."""
    from concurrent.futures import ThreadPoolExecutor

    _, path = exported
    det = bundle.load(path, inference="litert").detector
    rng = np.random.default_rng(11)
    batches = [10.0 + rng.standard_normal((n, WINDOW)) for n in (1, 5, 8, 21, 3, 17)]
    alone = [det.score(["a"] * len(x), x) for x in batches]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda x: det.score(["a"] * len(x), x), batches * 5))
    for i, got in enumerate(together):
        np.testing.assert_allclose(got, alone[i % len(batches)], rtol=1e-6)
