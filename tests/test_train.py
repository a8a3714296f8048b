"""``streamwatch train`` and the CSV reader it shares with ``replay``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from streamwatch.commands import main
from streamwatch.commands.common import EXIT_OK, EXIT_USAGE
from streamwatch.dataset import DatasetError, read_csv
from streamwatch.detectors import bundle

T0 = 1_700_000_000.0


def write_csv(path: Path, n: int = 400, label_from: int | None = None) -> Path:
    """Two sine sensors at 1 Hz, interleaved; rows from ``label_from`` on are labelled 1."""
    rng = np.random.default_rng(0)
    lines = ["timestamp,sensor,value,label,comment"]
    for i in range(n):
        for k, sensor in enumerate(("pump", "fan")):
            v = (k + 1) * np.sin(2 * np.pi * i / 25) + rng.normal(0, 0.1)
            label = int(label_from is not None and i >= label_from)
            if label:
                v += 100.0
            lines.append(f"{T0 + i},{sensor},{v:.6f},{label},x")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_gaussian_bundle_loads_with_thresholds(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "in.csv", label_from=350)
    model = tmp_path / "model"
    rc = main(["train", "--data", str(data), "--model-dir", str(model), "--detector", "gaussian"])
    assert rc == EXIT_OK
    m = bundle.load(model)
    det, thr = m.detector, m.thresholds
    assert det.name == "gaussian"
    assert set(thr.per_sensor) == {"pump", "fan"}
    assert thr.pooled is not None
    on = m.trained_on
    assert on["sensors"] == ["fan", "pump"]
    assert on["readings"] == 2 * 350  # the labelled rows are not trained on
    assert on["anomalous_rows_dropped"] == 2 * 50
    assert on["first_ts"] == T0 and on["last_ts"] == T0 + 349
    # Thresholds come from held-out normal data: normal readings rarely cross them.
    x = np.sin(2 * np.pi * np.arange(200) / 25)[:, None]
    assert (det.score(["pump"] * 200, x) > thr.get("pump")).mean() < 0.05
    assert det.score(["pump"], np.array([[100.0]]))[0] > thr.get("pump")


def test_train_lstm_vae_with_config_file(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "in.csv", n=300)
    conf = tmp_path / "c.toml"
    conf.write_text(
        '[detector]\ntype = "lstm-vae"\nhidden = 4\nlatent = 2\nepochs = 1\nmin_steps = 0\n'
        "batch_size = 64\n"
        "[windows]\nlength = 10\n"
    )
    model = tmp_path / "model"
    args = ["--model-dir", str(model), "--config", str(conf), "--no-litert"]
    assert main(["train", "--data", str(data), *args]) == 0
    manifest = json.loads((model / bundle.MANIFEST).read_text())
    assert manifest["window"] == 10 and "shared.weights.npz" in manifest["files"]
    assert not any(name.endswith(".tflite") for name in manifest["files"])  # --no-litert
    assert "warmup" not in manifest["hyper"] and "auto_train" not in manifest["hyper"]
    m = bundle.load(model)
    assert m.detector.trained and set(m.thresholds.per_sensor) == {"pump", "fan"}


def test_train_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_csv(tmp_path / "in.csv", n=20)
    assert main(["train", "--data", str(data), "--model-dir", str(tmp_path / "m")]) == EXIT_USAGE
    assert "no sensor has enough normal readings" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    assert main(["train", "--data", str(tmp_path / "nope.csv"), "--model-dir", "m"]) == EXIT_USAGE
    assert main(["train", "--data", str(data)]) == EXIT_USAGE
    assert "--model-dir" in capsys.readouterr().err


def test_read_csv_iso_timestamps_sorted_and_no_labels(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text(
        "sensor,value,timestamp\n"
        "a,2.0,2024-01-01T00:00:01Z\n"
        "a,1.0,2024-01-01T00:00:00\n"
        "b,3.5,2024-01-01T01:00:00+01:00\n"
    )
    data = read_csv(p)
    ts, v, labels = data["a"]
    assert labels is None
    assert v.tolist() == [1.0, 2.0]
    assert ts.tolist() == [1704067200.0, 1704067201.0]
    assert data["b"][0].tolist() == [1704067200.0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("timestamp,sensor\n1,a\n", "lacks column(s) value"),
        ("timestamp,sensor,value\n1,a,1.0\n2,a,oops\n", ":3: bad value 'oops'"),
        ("timestamp,sensor,value\nyesterday,a,1.0\n", ":2: bad timestamp"),
        ("timestamp,sensor,value\n1,a\n", ":2: 2 columns"),
        ("timestamp,sensor,value,label\n1,a,1.0,x\n", ":2: bad label"),
        ("timestamp,sensor,value\n1,a,nan\n", "not finite"),
        ("timestamp,sensor,value\n", "no readings"),
        ("", "empty file"),
    ],
)
def test_read_csv_errors_name_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(body)
    with pytest.raises(DatasetError, match=r"bad\.csv") as err:
        read_csv(p)
    assert message in str(err.value)


def test_train_skips_a_sensor_with_too_few_readings(tmp_path: Path) -> None:
    """One short sensor is reported and skipped; the others are trained (not a whole abort)."""
    data = write_csv(tmp_path / "in.csv", n=400)
    with data.open("a") as f:
        f.writelines(f"{T0 + i},short,{i % 3}.0,0,x\n" for i in range(15))
    model_dir = tmp_path / "model"
    rc = main(["train", "--data", str(data), "--model-dir", str(model_dir), "--detector", "gmm"])
    assert rc == EXIT_OK
    model = bundle.load(model_dir)
    assert set(model.thresholds.per_sensor) == {"pump", "fan"}
    assert "short" in model.trained_on["skipped_sensors"]
