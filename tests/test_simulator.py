"""The simulator: determinism, layout, and each anomaly kind exactly where its label says."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simulators.generate import (
    ALL_KINDS,
    DRIFT_HEIGHT,
    LEVEL_SHIFT,
    SPIKE_HEIGHT,
    AnomalySpec,
    SensorSpec,
    Simulated,
    read_csv,
    read_events,
    simulate,
)
from simulators.publish import _batches, _payload

START = 1_700_000_000.0


def _sim(
    kinds: Sequence[str] = ALL_KINDS,
    seed: int = 3,
    n_sensors: int = 2,
    duration: float = 7200.0,
    rate: float = 1.0,
    **kw: Any,
) -> Simulated:
    spec = AnomalySpec(kinds=tuple(kinds), rate_per_hour=20.0)
    return simulate(n_sensors, duration, rate, seed, START, anomalies=spec, **kw)


def test_same_seed_same_data_and_other_seed_differs() -> None:
    a, b, c = _sim(seed=1), _sim(seed=1), _sim(seed=2)
    for f in ("ts", "sensor", "value", "label"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert a.events == b.events
    assert a.events != c.events


def test_layout_sorted_interleaved_and_sensor_ids() -> None:
    sim = _sim(n_sensors=3, duration=600.0, warmup_s=600.0)
    assert sim.sensors == ["s000", "s001", "s002"]
    assert np.all(np.diff(sim.ts) >= 0)
    assert list(sim.sensor[:3]) == ["s000", "s001", "s002"]
    assert len(sim) == 3 * 600 and not sim.events and sim.label.sum() == 0


def test_default_stream_is_the_documents_sine_pair() -> None:
    sim = simulate(1, 100.0, 5.0, 0, START, SensorSpec(noise=0.0), anomalies=None)
    t = np.arange(500) * 0.2 / 10.0
    np.testing.assert_allclose(sim.value, np.sin(2 * np.pi * t) + np.sin(4 * np.pi * t), atol=1e-9)
    noisy = simulate(1, 20000.0, 1.0, 0, START, anomalies=None)
    t = np.arange(20000) / 10.0
    resid = noisy.value - (np.sin(2 * np.pi * t) + np.sin(4 * np.pi * t))
    assert abs(resid.std() - 0.1) < 0.005


def test_no_anomaly_during_warmup_and_labels_match_events() -> None:
    sim = _sim(warmup_s=900.0)
    assert sim.events and min(e.start for e in sim.events) >= START + 900.0
    expect = np.zeros(len(sim), dtype=bool)
    for e in sim.events:
        expect |= (sim.sensor == e.sensor) & (sim.ts >= e.start) & (sim.ts <= e.end)
    np.testing.assert_array_equal(sim.label.astype(bool), expect)
    by_sensor: dict[str, list] = {}
    for e in sim.events:
        by_sensor.setdefault(e.sensor, []).append(e)
    for evs in by_sensor.values():
        evs.sort(key=lambda e: e.start)
        assert all(x.end + 60.0 <= y.start for x, y in itertools.pairwise(evs))


def _pair(kind: str, **kw: Any) -> tuple[Simulated, Simulated]:
    """A one-sensor stream with only ``kind`` injected, and the same stream clean."""
    sim = _sim([kind], n_sensors=1, **kw)
    clean = simulate(1, 7200.0, kw.get("rate", 1.0), 3, START, kw.get("sensor", SensorSpec()), None)
    assert sim.events, f"no {kind} event was injected"
    assert {e.kind for e in sim.events} == {kind}
    return sim, clean


@pytest.mark.parametrize("kind", ["spike", "level_shift", "noise_burst", "drift", "stuck"])
def test_additive_kinds_change_exactly_the_labelled_rows(kind: str) -> None:
    sim, clean = _pair(kind)
    diff = sim.value - clean.value
    lab = sim.label == 1
    np.testing.assert_array_equal(diff[~lab], 0.0)
    assert np.all(diff[lab] != 0.0)
    for e in sim.events:
        span = (sim.ts >= e.start) & (sim.ts <= e.end)
        d = diff[span]
        if kind == "spike":
            assert span.sum() == 1 and abs(d[0]) == pytest.approx(SPIKE_HEIGHT)
        elif kind == "level_shift":
            np.testing.assert_allclose(d, LEVEL_SHIFT)
        elif kind == "drift":
            assert np.all(np.diff(d) > 0) and d[-1] == pytest.approx(DRIFT_HEIGHT)
        elif kind == "stuck":
            assert np.ptp(sim.value[span]) == 0.0
    if kind == "noise_burst":
        assert 0.8 < diff[lab].std() < 1.2


def test_frequency_kind_doubles_the_frequency_inside_its_events() -> None:
    spec = SensorSpec(noise=0.0)
    sim, clean = _pair("frequency", rate=10.0, sensor=spec)
    first = sim.events[0].start
    before = sim.ts < first
    np.testing.assert_array_equal(sim.value[before], clean.value[before])
    for e in sim.events:
        span = (sim.ts >= e.start) & (sim.ts <= e.end)
        crossings = np.count_nonzero(np.diff(np.sign(sim.value[span])) != 0)
        periods = (e.end - e.start) / spec.period_s
        assert crossings == pytest.approx(8 * periods, abs=3)  # 4 zero crossings per period, x2


def test_dropout_rows_are_absent_and_the_next_reading_is_labelled() -> None:
    sim, clean = _pair("dropout")
    assert len(sim) < len(clean)
    for e in sim.events:
        span = (sim.ts >= e.start) & (sim.ts <= e.end)
        assert list(sim.ts[span]) == [e.end]
        assert sim.label[span][0] == 1
        gone = (clean.ts >= e.start) & (clean.ts < e.end)
        assert gone.sum() >= 29 and not np.isin(clean.ts[gone], sim.ts).any()
    assert sim.label.sum() == len(sim.events)


def test_size_scales_magnitudes() -> None:
    sim = simulate(1, 7200.0, 1.0, 5, START, anomalies=AnomalySpec(("level_shift",), 20.0, 2.5))
    clean = simulate(1, 7200.0, 1.0, 5, START, anomalies=None)
    lab = sim.label == 1
    np.testing.assert_allclose((sim.value - clean.value)[lab], 2.5 * LEVEL_SHIFT)


def test_csv_round_trip(tmp_path: Path) -> None:
    sim = _sim(duration=1800.0, warmup_s=60.0)
    sim.to_csv(tmp_path / "r.csv")
    sim.events_to_csv(tmp_path / "e.csv")
    header = (tmp_path / "r.csv").read_text().splitlines()[0]
    assert header == "timestamp,sensor,value,label"
    assert (tmp_path / "e.csv").read_text().splitlines()[0] == "sensor,start,end,kind"
    back = read_csv(tmp_path / "r.csv", tmp_path / "e.csv")
    for f in ("ts", "sensor", "value", "label"):
        np.testing.assert_array_equal(getattr(back, f), getattr(sim, f))
    assert back.events == sim.events == read_events(tmp_path / "e.csv")


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown anomaly kinds"):
        AnomalySpec(kinds=("spikes",))
    with pytest.raises(ValueError):
        SensorSpec(period_s=0)
    with pytest.raises(ValueError):
        simulate(2, 10.0, 1.0, 0, START, sensor=[SensorSpec()])


def test_payload_shapes_and_batches_keep_per_sensor_order() -> None:
    sim = _sim(n_sensors=3, duration=50.0, warmup_s=50.0)
    msgs = list(_batches(sim, 4))
    assert sum(len(r) for _, r in msgs) == len(sim)
    for s in sim.sensors:
        rows = [i for sensor, r in msgs if sensor == s for i in r]
        assert rows == sorted(rows) and all(sim.sensor[i] == s for i in rows)
    one = json.loads(_payload(sim.ts, sim.value, [0], "value", False, False))
    assert one == {"value": float(sim.value[0]), "ts": START}
    arr = json.loads(_payload(sim.ts, sim.label, [0, 3], "label", True, True))
    assert arr == [{"label": 0, "ts": START}, {"label": 0, "ts": START + 1.0}]


def test_cli_writes_files_and_help_explains_every_option(tmp_path: Path) -> None:
    out, ev = tmp_path / "s.csv", tmp_path / "e.csv"
    cmd = [
        sys.executable,
        "-m",
        "streamwatch",
        "simulate",
        "--sensors",
        "2",
        "--duration",
        "900",
        "--warmup",
        "60",
        "--seed",
        "4",
        "--csv",
        str(out),
        "--events",
        str(ev),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "1800 readings from 2 sensors" in res.stdout
    again = simulate(2, 900.0, 1.0, 4, 1.7e9, anomalies=AnomalySpec(), warmup_s=60.0)
    np.testing.assert_array_equal(read_csv(out).value, again.value)
    helptext = subprocess.run(
        [sys.executable, "-m", "streamwatch", "simulate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for opt in (
        "--sensors",
        "--duration",
        "--rate",
        "--seed",
        "--kinds",
        "--csv",
        "--events",
        "--broker",
        "--publish-rate",
        "--batch",
        "--realtime",
        "--label-topic",
    ):
        assert opt in helptext
    assert (
        "tensorflow"
        not in subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, streamwatch.commands as c; c.build_parser(); "
                "print(sorted(sys.modules))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
