"""Config validation: defaults, errors that name the key, overrides, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamwatch.config import Config, ConfigError, from_mapping, load, override


def errors(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        from_mapping(data, "f.toml")
    return exc.value.lines


def test_defaults_are_valid_and_documented() -> None:
    c = Config()
    assert c.mqtt.broker == "mqtt://localhost:1883" and c.mqtt.topics == ["sensors/#"]
    assert c.metrics.port == 19847
    assert load(None) == c


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"mqtt": {"brokr": "x"}}, "f.toml: mqtt.brokr: unknown key"),
        ({"nonsense": 1}, "f.toml: nonsense: unknown key"),
        ({"mqtt": {"broker": "http://x"}}, "f.toml: mqtt.broker:"),
        ({"mqtt": {"topics": ["a/#/b"]}}, "f.toml: mqtt.topics:"),
        ({"windows": {"length": 1}}, "f.toml: windows.length:"),
        ({"windows": {"length": 5, "stride": 6}}, "f.toml: windows:"),
        ({"detector": {"type": "lstm-vae", "hidden": 0}}, "f.toml: detector.hidden:"),
        ({"detector": {"type": "gaussian", "hidden": 4}}, "f.toml: detector.hidden: unknown key"),
        ({"detector": {"type": "svm"}}, "f.toml: detector:"),
        ({"alerts": {"raise_k": 4, "raise_n": 3}}, "f.toml: alerts:"),
        ({"threshold": {"false_alarm_rate": 0}}, "f.toml: threshold.false_alarm_rate:"),
        ({"metrics": {"port": 70000}}, "f.toml: metrics.port:"),
    ],
)
def test_errors_name_the_key(data: dict, expected: str) -> None:
    lines = errors(data)
    assert any(line.startswith(expected) for line in lines), lines


def test_every_error_is_reported_at_once() -> None:
    assert len(errors({"mqtt": {"brokr": 1, "qos": 2}, "windows": {"stride": 0}})) == 3


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt\nbroker = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)


def test_overrides_revalidate_and_switch_detector_defaults() -> None:
    c = from_mapping({"detector": {"type": "gaussian"}, "learning": {"warmup": 50}})
    o = override(c, {"detector.type": "lstm-vae", "mqtt.topics": ["a/#", "b/+"]})
    assert o.detector.type == "lstm-vae" and o.learning.warmup == 50
    assert o.mqtt.topics == ["a/#", "b/+"]
    with pytest.raises(ConfigError, match=r"mqtt\.broker"):
        override(c, {"mqtt.broker": "nope"})


def test_password_from_env_and_file_is_secret(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SW_PW", "hunter2")
    c = from_mapping({"mqtt": {"username": "u", "password_env": "SW_PW"}})
    pw = c.mqtt.password()
    assert pw is not None and pw.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(c) and "hunter2" not in str(pw)
    f = tmp_path / "pw"
    f.write_text("s3cret\n")
    c2 = from_mapping({"mqtt": {"password_file": str(f)}})
    assert c2.mqtt.password().get_secret_value() == "s3cret"  # type: ignore[union-attr]
    monkeypatch.delenv("SW_PW")
    with pytest.raises(ConfigError, match=r"mqtt\.password_env"):
        c.mqtt.password()


def test_both_password_sources_is_an_error() -> None:
    assert errors({"mqtt": {"password_env": "A", "password_file": "/x"}})


def test_metrics_bind_is_local_by_default_and_a_flag_overrides_it(tmp_path: Path) -> None:
    import argparse

    from streamwatch.commands.common import add_config_args, config_from_args

    assert Config().metrics.host == "127.0.0.1"
    p = argparse.ArgumentParser()
    add_config_args(p)
    cfg = config_from_args(p.parse_args(["--metrics-bind", "0.0.0.0", "--metrics-port", "0"]))
    assert cfg.metrics.host == "0.0.0.0" and cfg.metrics.port == 0
    assert config_from_args(p.parse_args([])).metrics.host == "127.0.0.1"
