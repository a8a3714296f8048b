"""The inference install: every command that does not need TensorFlow works without it, and
one that does stops with a one-line error naming the `train` extra.

TensorFlow is hidden from a child interpreter by an import hook that raises
``ModuleNotFoundError`` for it, as on an install made without ``[train]``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

HIDE_TF = """
import os
import sys

class _NoTensorFlow:
    HIDDEN = ("tensorflow", "tensorflow_probability", "tf_keras", "keras") + tuple(
        m for m in os.environ.get("HIDE_ALSO", "").split(",") if m
    )

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoTensorFlow())
from streamwatch.commands import main
code = main(sys.argv[1:])
assert not any(m.split(".")[0] in _NoTensorFlow.HIDDEN for m in sys.modules), "TF was loaded"
sys.exit(code)
"""


def without_tf(*args: str, cwd: Path, hide_also: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``streamwatch ARGS`` in a child interpreter that cannot import TensorFlow (nor the
    modules named in ``hide_also``, comma-separated)."""
    return subprocess.run(
        [sys.executable, "-c", HIDE_TF, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "HIDE_ALSO": hide_also},
    )


@pytest.fixture
def series_csv(tmp_path: Path) -> Path:
    """Two sensors, 1,200 readings of a noisy sine, a spike in one near the end; the first
    1,000 readings also in ``normal.csv``."""
    path, normal = tmp_path / "data.csv", tmp_path / "normal.csv"
    with path.open("w", newline="") as f, normal.open("w", newline="") as g:
        w, wn = csv.writer(f), csv.writer(g)
        w.writerow(["timestamp", "sensor", "value"])
        wn.writerow(["timestamp", "sensor", "value"])
        for i in range(1200):
            for s, phase in (("a", 0.0), ("b", 1.0)):
                v = 10.0 + math.sin(i / 20.0 + phase) + 0.05 * ((i * 7919) % 13 - 6)
                if s == "a" and 1100 <= i < 1110:
                    v += 25.0
                w.writerow([1_700_000_000 + i, s, f"{v:.4f}"])
                if i < 1000:
                    wn.writerow([1_700_000_000 + i, s, f"{v:.4f}"])
    return path


def test_train_and_replay_with_the_robust_detector_need_no_tensorflow(
    tmp_path: Path, series_csv: Path
) -> None:
    bundle = tmp_path / "bundle"
    normal = str(series_csv.with_name("normal.csv"))
    r = without_tf("train", "--data", normal, "--model-dir", str(bundle), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "trained robust" in r.stdout
    out = tmp_path / "alerts.jsonl"
    r = without_tf(
        "replay", "--data", str(series_csv), "--model-dir", str(bundle), "--alerts-out", str(out),
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    raised = [e for e in map(json.loads, out.read_text().splitlines()) if e["state"] == "raised"]
    assert raised and {e["sensor"] for e in raised} == {"a"}
    # Warm-up only (no bundle), the Gaussian as well.
    r = without_tf(
        "replay", "--data", str(series_csv), "--detector", "gaussian", "--alerts-out", str(out),
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("train", "--data", "DATA", "--model-dir", "BUNDLE", "--detector", "lstm-vae"),
        ("replay", "--data", "DATA", "--detector", "gmm", "--alerts-out", "OUT"),
        ("run", "--detector", "lstm-vae", "--broker", "mqtt://127.0.0.1:9", "--metrics-port", "0"),
    ],
    ids=["train-lstm-vae", "replay-gmm", "run-lstm-vae"],
)
def test_a_tensorflow_detector_names_the_train_extra_in_one_line(
    args: tuple[str, ...], tmp_path: Path, series_csv: Path
) -> None:
    subst = {"DATA": str(series_csv), "BUNDLE": str(tmp_path / "b"), "OUT": str(tmp_path / "o")}
    r = without_tf(*(subst.get(a, a) for a in args), cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "streamwatch-edge[train]" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()


def test_an_lstm_vae_bundle_replays_without_tensorflow_with_the_same_verdicts(
    tmp_path: Path, series_csv: Path
) -> None:
    """Trained with TensorFlow (which exports LiteRT models into the bundle), replayed on an
    install without it, with LiteRT (where installed) and without (numpy scoring): the same
    alerts as TensorFlow gives."""
    from streamwatch.commands import main

    conf = tmp_path / "c.toml"
    conf.write_text(
        '[detector]\ntype = "lstm-vae"\nhidden = 8\nlatent = 2\nepochs = 2\nmin_steps = 0\n'
        "batch_size = 64\n"
    )
    bundle = tmp_path / "bundle"
    normal = series_csv.with_name("normal.csv")
    args = ["--config", str(conf), "--model-dir", str(bundle)]
    assert main(["train", "--data", str(normal), *args]) == 0
    with_tf, no_tf = tmp_path / "tf.jsonl", tmp_path / "np.jsonl"
    tf_conf = tmp_path / "tf.toml"
    tf_conf.write_text(conf.read_text() + '[engine]\ninference = "tensorflow"\n')
    replay = ["replay", "--data", str(series_csv), "--model-dir", str(bundle)]
    assert main([*replay, "--config", str(tf_conf), "--alerts-out", str(with_tf)]) == 0
    r = without_tf(
        *replay, "--config", str(conf), "--alerts-out", str(no_tf), cwd=tmp_path,
        hide_also="ai_edge_litert",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    lite = tmp_path / "lite.jsonl"
    if importlib.util.find_spec("ai_edge_litert") is not None:
        assert manifest["litert"]["networks"]["shared"]["files"]
        lite_conf = tmp_path / "lite.toml"
        lite_conf.write_text(conf.read_text() + '[engine]\ninference = "litert"\n')
        r = without_tf(
            *replay, "--config", str(lite_conf), "--alerts-out", str(lite), cwd=tmp_path
        )  # fmt: skip
        assert r.returncode == 0, r.stderr

    def verdicts(path: Path) -> list[tuple[str, str, float]]:
        events = map(json.loads, path.read_text().splitlines())
        return [(e["sensor"], e["state"], e["ts"]) for e in events]

    assert verdicts(no_tf) == verdicts(with_tf)
    if lite.exists():
        assert verdicts(lite) == verdicts(with_tf)
    raised = [float(t) for s, st, t in verdicts(no_tf) if (s, st) == ("a", "raised")]
    assert raised and 1_700_001_100.0 <= raised[0] < 1_700_001_110.0  # the spike's readings
