"""A multivariate plant: pumps whose five sensors are physically coupled, with faults that
break the coupling while every sensor stays within its normal range.

Each pump is driven by a slowly varying demand ``d`` in ``[DEMAND_LO, DEMAND_HI]`` (two slow
sines with random periods and phases plus a mean-reverting wander). Its members, with
``Q`` the flow:

==============  =====================================================================
flow            ``Q = Q_MAX · d``                                        (m³/h)
pressure        ``P = A − B·Q²``: the pump curve                         (bar)
current         ``I = C + D·Q·P``: the motor follows hydraulic power     (A)
temperature     first-order lag (``TEMP_TAU_S``) towards ``T_AMB + K·I²``  (°C)
vibration       ``V = V0 + V1·Q``: a flow-dependent component            (mm/s)
==============  =====================================================================

each plus Gaussian noise (``NOISE``). Faults that break the coupling (``COUPLING_KINDS``),
each rising to full strength over the first fifth of its span and easing off over the last
fifth (a fault that started or ended in one step would be a jump any per-sensor detector
sees), and kept inside the member's normal range (the range the demand sweeps):

- ``valve_closing``: the flow reading drops (up to ``VALVE_DROP``), but pressure, current,
  temperature and vibration stay where the old flow put them;
- ``cavitation``: pressure drops (up to ``CAVITATION_DROP``) at steady flow, vibration rises
  (up to ``CAVITATION_VIBRATION``) and gets half as noisy again;
- ``bearing_wear``: vibration no longer follows flow: it mirrors it (high at low flow).

The per-sensor kinds of :mod:`simulators.generate` (spike, level_shift, noise_burst, stuck,
drift, dropout) hit one member, sized by that member's ``SCALE``.

Labels as :mod:`simulators.generate` writes them: a coupling fault is an event on every
member of its pump (like a SKAB experiment's anomaly), a per-sensor fault on its member only;
a row is labelled 1 when its timestamp lies in one of its own sensor's events. Sensor ids are
``plant/<pump>/<member>`` (``[groups] patterns = ["plant/+/#"]`` groups a pump). Seeded and
deterministic: the demand and noise come from their own random streams, so the same seed gives
the same normal signal with or without faults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from simulators.generate import Simulated
from streamwatch.evaluation.datasets import Dataset, from_plant
from streamwatch.evaluation.scoring import Event

MEMBERS: Final = ("flow", "pressure", "current", "temperature", "vibration")
COUPLING_KINDS: Final = ("valve_closing", "cavitation", "bearing_wear")
SENSOR_KINDS: Final = ("spike", "level_shift", "noise_burst", "stuck", "drift", "dropout")
PLANT_KINDS: Final = COUPLING_KINDS + SENSOR_KINDS
PLANT_PATTERN: Final = "plant/+/#"
"""The ``[groups] patterns`` entry that makes each pump a group."""

DEMAND_LO: Final = 0.45
DEMAND_HI: Final = 1.0
Q_MAX: Final = 100.0
A: Final = 6.0
B: Final = 3.0e-4
C: Final = 5.0
D: Final = 0.03
T_AMB: Final = 25.0
K: Final = 0.12
TEMP_TAU_S: Final = 300.0
V0: Final = 0.5
V1: Final = 0.02
NOISE: Final = {
    "flow": 1.0,
    "pressure": 0.04,
    "current": 0.12,
    "temperature": 0.08,
    "vibration": 0.06,
}
SCALE: Final = {"flow": 15.0, "pressure": 0.7, "current": 0.8, "temperature": 1.5, "vibration": 0.3}
"""Each member's typical normal spread: the size of a per-sensor fault at ``size`` 1."""
VALVE_DROP: Final = 30.0
CAVITATION_DROP: Final = 0.9
CAVITATION_VIBRATION: Final = 0.35
RAMP_SHARE: Final = 0.2
"""The share of a coupling fault's span spent rising to full strength, and easing off."""


@dataclass(frozen=True)
class PlantFaults:
    """Which faults to inject, how often (per pump per hour) and how long."""

    kinds: tuple[str, ...] = PLANT_KINDS
    rate_per_hour: float = 2.0
    size: float = 1.0
    duration_s: tuple[float, float] = (120.0, 400.0)
    min_gap_s: float = 300.0

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in PLANT_KINDS]
        if bad or not self.kinds:
            raise ValueError(
                f"unknown plant fault kinds {bad}; choose from {', '.join(PLANT_KINDS)}"
            )
        lo, hi = self.duration_s
        if not 0 < lo <= hi:
            raise ValueError(f"duration_s must satisfy 0 < min <= max, got {self.duration_s}")
        if self.rate_per_hour < 0 or self.min_gap_s < 0 or self.size <= 0:
            raise ValueError("rate_per_hour and min_gap_s must be >= 0, size > 0")


def pump_name(i: int) -> str:
    """The id of the i-th pump: ``pump00``, ``pump01``, ..."""
    return f"pump{i:02d}"


def normal_range(member: str) -> tuple[float, float]:
    """A member's noiseless range over the demand range (temperature: its steady state)."""
    q = np.linspace(DEMAND_LO, DEMAND_HI, 1001) * Q_MAX
    p = A - B * q**2
    i = C + D * q * p
    values = {
        "flow": q,
        "pressure": p,
        "current": i,
        "temperature": T_AMB + K * i**2,
        "vibration": V0 + V1 * q,
    }[member]
    return float(values.min()), float(values.max())


def simulate_plant(
    n_pumps: int,
    duration_s: float,
    rate_hz: float = 1.0,
    seed: int = 0,
    start_ts: float = 1_700_000_000.0,
    faults: PlantFaults | None = PlantFaults(),
    warmup_s: float = 1800.0,
    stagger_s: float = 0.0,
) -> Simulated:
    """Simulate ``n_pumps`` pumps of five coupled sensors for ``duration_s`` at ``rate_hz``.

    No fault starts before ``start_ts + warmup_s``. ``stagger_s`` offsets member ``k``'s
    timestamps by ``k · stagger_s`` (members not sharing timestamps). The result depends only
    on the arguments.
    """
    if n_pumps < 1 or duration_s <= 0 or rate_hz <= 0:
        raise ValueError("n_pumps >= 1, duration_s > 0 and rate_hz > 0 are required")
    n = math.floor(duration_s * rate_hz)
    if n < 2:
        raise ValueError("duration_s * rate_hz must give at least two readings")
    if not 0 <= stagger_s * (len(MEMBERS) - 1) < 1.0 / rate_hz:
        raise ValueError("stagger_s * 4 must be below the interval between readings")
    dt = 1.0 / rate_hz
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    events: list[Event] = []
    for i, ss in enumerate(np.random.SeedSequence(seed).spawn(n_pumps)):
        pump = pump_name(i)
        rng_signal, rng_events = (np.random.default_rng(s) for s in ss.spawn(2))
        values = _normal(rng_signal, n, dt)
        t = start_ts + np.arange(n) * dt
        keep = {m: np.ones(n, dtype=bool) for m in MEMBERS}
        label = {m: np.zeros(n, dtype=np.int64) for m in MEMBERS}
        if faults is not None and faults.rate_per_hour > 0:
            for kind, member, a, b in _plan(
                rng_events, faults, n, dt, math.ceil(warmup_s * rate_hz)
            ):
                hit = list(MEMBERS) if member is None else [member]
                la, lb = _inject(rng_events, kind, member, values, keep, a, b, faults.size)
                for m in hit:
                    label[m][la : lb + 1] = 1
                    shift = MEMBERS.index(m) * stagger_s
                    start, end = float(t[a]) + shift, float(t[max(b, lb)]) + shift
                    events.append(Event(f"plant/{pump}/{m}", start, end, kind))
        for k, m in enumerate(MEMBERS):
            mk = keep[m]
            parts.append(
                (
                    t[mk] + k * stagger_s,
                    np.full(int(mk.sum()), f"plant/{pump}/{m}"),
                    values[m][mk],
                    label[m][mk],
                )
            )
    ts = np.concatenate([p[0] for p in parts])
    order = np.argsort(ts, kind="stable")
    events.sort(key=lambda e: (e.start, e.sensor))
    return Simulated(
        ts=ts[order],
        sensor=np.concatenate([p[1] for p in parts])[order],
        value=np.concatenate([p[2] for p in parts])[order],
        label=np.concatenate([p[3] for p in parts])[order],
        events=events,
    )


def _normal(rng: np.random.Generator, n: int, dt: float) -> dict[str, np.ndarray]:
    """One pump's coupled members, before faults; ``"_q"`` holds the true flow."""
    t = np.arange(n) * dt
    p1, p2 = rng.uniform(1200.0, 2400.0), rng.uniform(180.0, 420.0)
    f1, f2 = rng.uniform(0.0, 2 * np.pi, 2)
    wander = np.empty(n)
    x = 0.0
    shocks = rng.normal(0.0, 0.004 * math.sqrt(dt), n)
    for j in range(n):  # mean-reverting wander (an Ornstein-Uhlenbeck process, tau 120 s)
        x += -x * dt / 120.0 + shocks[j]
        wander[j] = x
    mid, half = (DEMAND_LO + DEMAND_HI) / 2, (DEMAND_HI - DEMAND_LO) / 2
    d = (
        mid
        + half * (0.75 * np.sin(2 * np.pi * t / p1 + f1) + 0.2 * np.sin(2 * np.pi * t / p2 + f2))
        + wander
    )
    d = np.clip(d, DEMAND_LO, DEMAND_HI)
    q = Q_MAX * d
    p = A - B * q**2
    cur = C + D * q * p
    target = T_AMB + K * cur**2
    temp = np.empty(n)
    alpha = 1.0 - math.exp(-dt / TEMP_TAU_S)
    temp_now = float(target[0])
    for j in range(n):
        temp_now += alpha * (target[j] - temp_now)
        temp[j] = temp_now
    vib = V0 + V1 * q
    noise = {m: rng.normal(0.0, NOISE[m], n) for m in MEMBERS}
    return {
        "_q": q,
        "_vib_noise": noise["vibration"],
        "flow": q + noise["flow"],
        "pressure": p + noise["pressure"],
        "current": cur + noise["current"],
        "temperature": temp + noise["temperature"],
        "vibration": vib + noise["vibration"],
    }


def _plan(
    rng: np.random.Generator, spec: PlantFaults, n: int, dt: float, first: int
) -> list[tuple[str, str | None, int, int]]:
    """Non-overlapping ``(kind, member or None for the pump, first, last index)`` faults."""
    out: list[tuple[str, str | None, int, int]] = []
    mean_gap = 3600.0 / spec.rate_per_hour / dt
    gap_n = math.ceil(spec.min_gap_s / dt)
    pos = float(first)
    while True:
        pos += rng.exponential(mean_gap)
        a = int(pos)
        kind = str(spec.kinds[int(rng.integers(len(spec.kinds)))])
        member = None if kind in COUPLING_KINDS else str(MEMBERS[int(rng.integers(len(MEMBERS)))])
        length = 1 if kind == "spike" else max(2, int(rng.uniform(*spec.duration_s) / dt))
        b = a + length - 1
        if b + (1 if kind == "dropout" else 0) >= n:
            return out
        out.append((kind, member, a, b))
        pos = float(b + 1 + gap_n)


def _inject(
    rng: np.random.Generator,
    kind: str,
    member: str | None,
    v: dict[str, np.ndarray],
    keep: dict[str, np.ndarray],
    a: int,
    b: int,
    size: float,
) -> tuple[int, int]:
    """Apply one fault in place; returns the labelled index span."""
    sl = slice(a, b + 1)
    m = b + 1 - a
    k = np.arange(1, m + 1)
    edge = max(1.0, RAMP_SHARE * m)
    ramp = np.minimum(1.0, np.minimum(k, m + 1 - k) / edge) * min(size, 1.0)
    q = v["_q"][sl]
    if kind == "valve_closing":
        q_lo = Q_MAX * DEMAND_LO
        v["flow"][sl] -= np.clip(q - q_lo - 2 * NOISE["flow"], 0.0, VALVE_DROP) * ramp
    elif kind == "cavitation":
        p_lo = A - B * (Q_MAX * DEMAND_HI) ** 2
        p_now = A - B * q**2
        margin = 2 * NOISE["pressure"]
        v["pressure"][sl] -= np.clip(p_now - p_lo - margin, 0.0, CAVITATION_DROP) * ramp
        vib_now = V0 + V1 * q
        vib_hi = V0 + V1 * Q_MAX * DEMAND_HI - 3 * NOISE["vibration"]
        v["vibration"][sl] += np.clip(vib_hi - vib_now, 0.0, CAVITATION_VIBRATION) * ramp
        v["vibration"][sl] += 0.5 * v["_vib_noise"][sl] * ramp  # and half as noisy again
    elif kind == "bearing_wear":
        mirrored = V0 + V1 * (Q_MAX * (DEMAND_LO + DEMAND_HI) - q)
        v["vibration"][sl] += (mirrored - (V0 + V1 * q)) * ramp
    else:
        assert member is not None
        x = v[member]
        amp = SCALE[member] * size
        if kind == "spike":
            x[a] += amp * 4.0 * (1.0 if rng.random() < 0.5 else -1.0)
        elif kind == "level_shift":
            x[sl] += amp
        elif kind == "noise_burst":
            x[sl] += rng.normal(0.0, amp * 0.5, m)
        elif kind == "stuck":
            x[sl] = x[a - 1] if a > 0 else x[a]
        elif kind == "drift":
            x[sl] += amp * 2.0 * np.arange(1, m + 1) / m
        elif kind == "dropout":
            keep[member][sl] = False
            return b + 1, b + 1
    return a, b


def groups_of(sim: Simulated) -> dict[str, list[str]]:
    """Each pump's member sensor ids, by group id ``plant/<pump>``."""
    out: dict[str, list[str]] = {}
    for s in sim.sensors:
        out.setdefault(s.rpartition("/")[0], []).append(s)
    return out


TUNING_SEEDS: Final = (1, 2, 3)
"""Seeds to choose settings on; report on :data:`REPORT_SEED` (never tuned on)."""
REPORT_SEED: Final = 7


def plant_dataset(
    seed: int,
    n_pumps: int = 4,
    duration_s: float = 6 * 3600.0,
    faults: PlantFaults | None = PlantFaults(),
    n_train: int = 1800,
    stagger_s: float = 0.0,
) -> Dataset:
    """The plant as an evaluation data set (1 Hz; each pump a group; the first ``n_train``
    readings of every sensor, fault-free, are training data)."""
    sim = simulate_plant(
        n_pumps, duration_s, 1.0, seed, faults=faults, warmup_s=float(n_train), stagger_s=stagger_s
    )
    return from_plant(sim, n_train, name=f"plant-seed{seed}", split=f"seed {seed}")
