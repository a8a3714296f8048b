"""The command line: exit codes, error lines, and no TensorFlow where it isn't needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from streamwatch.commands import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamwatch", *args], capture_output=True, text=True, timeout=120
    )


def test_check_config_names_every_bad_key(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[mqtt]\nbrokr = "x"\n[windows]\nstride = 0\n')
    assert main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "mqtt.brokr: unknown key" in err and "windows.stride" in err
    assert "Traceback" not in err


def test_check_config_ok_and_secret_not_printed(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SW_SECRET", "pa55word")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[mqtt]\nusername = "u"\npassword_env = "SW_SECRET"\n')
    assert main(["check-config", str(cfg)]) == 0
    out = capsys.readouterr()
    assert "OK" in out.out and "pa55word" not in out.out + out.err


def test_check_message(capsys) -> None:
    assert main(["check-message", "sensors/a", '{"value": 1.5}']) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["readings"][0]["sensor"] == "a" and doc["readings"][0]["value"] == 1.5
    assert main(["check-message", "sensors/a", "NaN"]) == 1
    assert json.loads(capsys.readouterr().out)["rejected"] == ["non_finite"]


def test_run_with_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[detector]\ntype = 'gaussian'\n[learning]\nwarmup = -1\n")
    r = run("run", "--config", str(cfg))
    assert r.returncode == 2
    assert "learning.warmup" in r.stderr and "Traceback" not in r.stderr


def test_missing_model_dir_exits_2(tmp_path: Path) -> None:
    r = run("run", "--model-dir", str(tmp_path / "nope"), "--metrics-port", "0")
    assert r.returncode == 2
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_help_and_config_check_do_not_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "from streamwatch.commands import main\n"
        "from streamwatch import daemon, replay  # the Gaussian path\n"
        "for argv in (['check-config'], ['check-message', 'sensors/a', '1']):\n"
        "    main(argv)\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_replay_writes_alert_lines(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = ["timestamp,sensor,value,label"]
    for i in range(1200):
        v = 5 + rng.normal(0, 0.2) + (4.0 if i == 1000 else 0.0)
        rows.append(f"{1700000000 + i},m1,{v:.4f},{int(i == 1000)}")
    data = tmp_path / "in.csv"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "alerts.jsonl"
    assert main(["replay", "--data", str(data), "--alerts-out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["state"] for d in lines] == ["raised", "cleared"]
    # A 1 Hz sensor confirms a raise (alerts.confirm_s): the spike's second anomalous window,
    # one reading later, raises it.
    assert lines[0]["ts"] == 1700001001 and lines[0]["sensor"] == "m1"
