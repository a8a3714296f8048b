"""The plant simulator: coupled members, coupling faults inside the normal range, labels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simulators import plant
from simulators.generate import Simulated, read_csv
from simulators.plant import COUPLING_KINDS, MEMBERS, PlantFaults, simulate_plant
from streamwatch.evaluation.datasets import from_plant

HOURS = 4 * 3600.0


@pytest.fixture(scope="module")
def pair() -> tuple[Simulated, Simulated]:
    """The same pumps with and without faults (coupling faults only, often)."""
    faults = PlantFaults(kinds=COUPLING_KINDS, rate_per_hour=4.0)
    return (
        simulate_plant(2, HOURS, seed=3, faults=faults),
        simulate_plant(2, HOURS, seed=3, faults=None),
    )


def members(sim: Simulated, pump: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for m in MEMBERS:
        ts, v, _ = sim.series(f"plant/{pump}/{m}")
        out[m] = (ts, v)
    return out


def residuals(x: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """How far each coupled member is from what the flow (as read) says it should be."""
    q = x["flow"][1]
    p = x["pressure"][1]
    return {
        "pressure": p - (plant.A - plant.B * q**2),
        "current": x["current"][1] - (plant.C + plant.D * q * p),
        "vibration": x["vibration"][1] - (plant.V0 + plant.V1 * q),
    }


def test_same_seed_same_data_and_normal_members_are_coupled(pair: tuple) -> None:
    faulty, clean = pair
    again = simulate_plant(2, HOURS, seed=3, faults=PlantFaults(COUPLING_KINDS, 4.0))
    assert np.array_equal(again.value, faulty.value) and again.events == faulty.events
    x = members(clean, "pump00")
    r = residuals(x)
    # The members follow the flow closely: the residuals are the sensors' noise, and much
    # smaller than the members' own spread across the demand range.
    assert np.std(r["pressure"]) < 0.25 * np.std(x["pressure"][1])
    assert np.std(r["vibration"]) < 0.4 * np.std(x["vibration"][1])
    assert np.std(r["current"]) < 0.5 * np.std(x["current"][1])
    # the demand sweeps the range
    assert np.ptp(x["flow"][1]) > 40.0


def test_coupling_faults_stay_in_range_and_break_the_relation(pair: tuple) -> None:
    faulty, clean = pair
    kinds_seen: dict[str, list[float]] = {k: [] for k in COUPLING_KINDS}
    for pump in ("pump00", "pump01"):
        x, c = members(faulty, pump), members(clean, pump)
        r, rc = residuals(x), residuals(c)
        spread = {k: np.std(v) for k, v in rc.items()}
        events = [e for e in faulty.events if e.sensor == f"plant/{pump}/flow"]
        assert events
        for e in events:
            ts = x["flow"][0]
            during = (ts >= e.start) & (ts <= e.end)
            # every member stays inside the range it sweeps in normal operation
            for m in MEMBERS:
                lo, hi = c[m][1].min(), c[m][1].max()
                v = x[m][1][during]
                assert v.min() >= lo and v.max() <= hi, (e, m)
            # ... but the relation between members breaks (judged on the fault's full-strength
            # part, in units of the normal residual's spread)
            n = int(during.sum())
            full = np.flatnonzero(during)[int(0.25 * n) : int(0.75 * n)]
            which = {"valve_closing": "pressure", "cavitation": "pressure"}.get(e.kind, "vibration")
            kinds_seen[e.kind].append(float(np.mean(np.abs(r[which][full]))) / spread[which])
    for kind, shifts in kinds_seen.items():
        assert shifts, f"no {kind} fault simulated"
        # on average far outside the normal residual (a per-sensor detector sees none of it)
        assert np.mean(shifts) > 4.0, (kind, shifts)


def test_labels_per_sensor_and_per_pump() -> None:
    sim = simulate_plant(1, HOURS, seed=2, faults=PlantFaults(rate_per_hour=6.0), stagger_s=0.1)
    coupling = [e for e in sim.events if e.kind in COUPLING_KINDS]
    single = [e for e in sim.events if e.kind not in COUPLING_KINDS]
    assert coupling and single
    for e in coupling:  # on every member of the pump, each at its own staggered times
        on = sorted(x.sensor for x in sim.events if x.kind == e.kind and abs(x.start - e.start) < 1)
        assert on == sorted(f"plant/pump00/{m}" for m in MEMBERS)
    for s in sim.sensors:  # a row is labelled exactly when it lies in one of its own events
        ts, _, lab = sim.series(s)
        want = np.zeros(ts.size, dtype=bool)
        for e in sim.events:
            if e.sensor == s:
                want |= (ts >= e.start) & (ts <= e.end)
        assert np.array_equal(lab.astype(bool), want), s
    # staggered: member k is k * 0.1 s after the flow
    t_flow = sim.series("plant/pump00/flow")[0]
    t_vib = sim.series("plant/pump00/vibration")[0]
    assert t_vib[0] - t_flow[0] == pytest.approx(0.4)
    assert simulate_plant(1, 600.0, seed=5, faults=None).events == []


def test_dataset_has_pumps_as_groups_and_fault_free_training() -> None:
    ds = plant.plant_dataset(seed=2, n_pumps=2, duration_s=2 * 3600.0)
    assert ds.groups == {
        f"plant/{p}": [f"plant/{p}/{m}" for m in sorted(MEMBERS)] for p in ("pump00", "pump01")
    }
    start = ds.start()
    assert all(e.start >= start[e.sensor] for e in ds.events)
    assert all(ds.label[s][: ds.n_train[s]].sum() == 0 for s in ds.sensors)
    sim = simulate_plant(1, 3600.0, seed=1)
    assert from_plant(sim, 100).groups == {"plant/pump00": sorted(sim.sensors)}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        PlantFaults(kinds=("meltdown",))
    with pytest.raises(ValueError):
        simulate_plant(0, 100.0)
    with pytest.raises(ValueError):
        simulate_plant(1, 100.0, stagger_s=0.5)


def test_cli_writes_the_plant_and_refuses_sparkplug_without_plant(tmp_path: Path) -> None:
    out, ev = tmp_path / "p.csv", tmp_path / "e.csv"
    base = [sys.executable, "-m", "streamwatch", "simulate"]
    args = ["--plant", "2", "--duration", "3600", "--warmup", "600", "--seed", "4"]
    res = subprocess.run(
        [*base, *args, "--csv", str(out), "--events", str(ev)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "36000 readings from 2 pumps" in res.stdout
    again = simulate_plant(2, 3600.0, 1.0, 4, 1.7e9, PlantFaults(), warmup_s=600.0)
    back = read_csv(out, ev)
    for s in again.sensors:
        np.testing.assert_array_equal(back.series(s)[1], again.series(s)[1])
    assert back.events == again.events
    bad = subprocess.run([*base, "--sparkplug"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--sparkplug needs --plant" in bad.stderr
    bad = subprocess.run([*base, "--plant", "1", "--sparkplug"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--sparkplug needs --broker" in bad.stderr
