"""Labelled sensor streams: the documents' sine-plus-noise signal with injected anomalies.

Each sensor's normal signal, with ``t`` in units of its period, is

    offset + amplitude · (sin(2πt + φ) + sin(4πt + 2φ)) + N(0, noise²) + random walk

which with the defaults is the documents' ``sin(2πt) + sin(4πt)`` with σ = 0.1.

Anomalies are placed per sensor as a Poisson process (``rate_per_hour``) after an
anomaly-free lead-in (``warmup_s``), never overlapping, at least ``min_gap_s`` apart. Their
magnitudes scale with ``AnomalySpec.size`` and the sensor's amplitude; at size 1:

=============  ======================================================================
spike          one reading moved by ±5 (``SPIKE_HEIGHT``)
level_shift    +1.0 for the event's span (the documents' level shift)
noise_burst    extra N(0, 1.0²) noise (the documents' σ = 1.0 burst)
stuck          the value freezes at the last reading before the event (no noise)
drift          a ramp from 0 up to +2.0 (``DRIFT_HEIGHT``) at the event's end
frequency      the signal runs 2× as fast (phase stays continuous)
dropout        readings are missing; the first reading after the gap is labelled
=============  ======================================================================

Labelling invariant: a row is labelled 1 exactly when its timestamp lies in
``[start, end]`` of one of its own sensor's events. For a dropout, ``start`` is the first
missing timestamp and ``end`` the first reading after the gap.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np

from streamwatch.evaluation.scoring import Event

log = logging.getLogger(__name__)

ALL_KINDS: Final = (
    "spike",
    "level_shift",
    "noise_burst",
    "stuck",
    "drift",
    "frequency",
    "dropout",
)
SPIKE_HEIGHT: Final = 5.0
LEVEL_SHIFT: Final = 1.0
NOISE_BURST_SIGMA: Final = 1.0
DRIFT_HEIGHT: Final = 2.0
FREQUENCY_FACTOR: Final = 2.0


@dataclass(frozen=True)
class SensorSpec:
    """Shape of one sensor's normal signal.

    ``walk`` is the random walk's standard deviation per √second (0 = none); ``phase`` is in
    periods.
    """

    period_s: float = 10.0
    amplitude: float = 1.0
    offset: float = 0.0
    noise: float = 0.1
    walk: float = 0.0
    phase: float = 0.0

    def __post_init__(self) -> None:
        if not self.period_s > 0:
            raise ValueError(f"period_s must be > 0, got {self.period_s}")
        if self.noise < 0 or self.walk < 0:
            raise ValueError("noise and walk must be >= 0")


@dataclass(frozen=True)
class AnomalySpec:
    """Which anomalies to inject, how often, how big and how long.

    ``rate_per_hour`` is per sensor. ``duration_s`` bounds each event's length (a spike is
    always one reading). ``min_gap_s`` is the least normal time between two events of one
    sensor, so detectors can settle.
    """

    kinds: tuple[str, ...] = ALL_KINDS
    rate_per_hour: float = 6.0
    size: float = 1.0
    duration_s: tuple[float, float] = (30.0, 120.0)
    min_gap_s: float = 60.0

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in ALL_KINDS]
        if bad:
            raise ValueError(f"unknown anomaly kinds {bad}; choose from {', '.join(ALL_KINDS)}")
        if not self.kinds:
            raise ValueError("kinds must not be empty")
        lo, hi = self.duration_s
        if not 0 < lo <= hi:
            raise ValueError(f"duration_s must satisfy 0 < min <= max, got {self.duration_s}")
        if self.rate_per_hour < 0 or self.min_gap_s < 0 or self.size <= 0:
            raise ValueError("rate_per_hour and min_gap_s must be >= 0, size > 0")


@dataclass
class Simulated:
    """A labelled multi-sensor stream, rows sorted by ``ts`` and interleaved across sensors."""

    ts: np.ndarray
    sensor: np.ndarray
    value: np.ndarray
    label: np.ndarray
    events: list[Event] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.ts.size)

    @property
    def sensors(self) -> list[str]:
        """The distinct sensor ids, sorted."""
        return sorted({str(s) for s in self.sensor})

    def series(self, sensor: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One sensor's ``(ts, value, label)`` in time order."""
        m = self.sensor == sensor
        return self.ts[m], self.value[m], self.label[m]

    def to_csv(self, path: Path | str) -> None:
        """Write ``timestamp,sensor,value,label`` rows (full float precision)."""
        with Path(path).open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["timestamp", "sensor", "value", "label"])
            for t, s, v, lab in zip(
                self.ts.tolist(),
                self.sensor.tolist(),
                self.value.tolist(),
                self.label.tolist(),
                strict=True,
            ):
                w.writerow([repr(t), s, repr(v), lab])

    def events_to_csv(self, path: Path | str) -> None:
        """Write ``sensor,start,end,kind`` rows."""
        write_events(self.events, path)


def write_events(events: Sequence[Event], path: Path | str) -> None:
    """Write events as ``sensor,start,end,kind`` CSV."""
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sensor", "start", "end", "kind"])
        for e in events:
            w.writerow([e.sensor, repr(e.start), repr(e.end), e.kind])


def read_csv(path: Path | str, events_path: Path | str | None = None) -> Simulated:
    """Read labelled readings (``timestamp,sensor,value[,label]``) and optionally events.

    Parsing is :func:`streamwatch.dataset.read_csv`'s (ISO or epoch timestamps, errors
    that name the line); a missing ``label`` column reads as all zeros.
    """
    from streamwatch.dataset import read_csv as read_readings

    data = read_readings(Path(path))
    names = sorted(data)
    ts = np.concatenate([data[s][0] for s in names])
    value = np.concatenate([data[s][1] for s in names])
    label = np.concatenate(
        [
            np.zeros(data[s][0].size, dtype=np.int64) if data[s][2] is None else data[s][2] != 0
            for s in names
        ]
    ).astype(np.int64)
    sensor = np.concatenate([np.full(data[s][0].size, s) for s in names])
    order = np.argsort(ts, kind="stable")
    events = read_events(events_path) if events_path is not None else []
    return Simulated(ts[order], sensor[order], value[order], label[order], events)


def read_events(path: Path | str) -> list[Event]:
    """Read an events CSV (``sensor,start,end,kind``)."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        return [
            Event(r["sensor"], float(r["start"]), float(r["end"]), r["kind"])
            for r in csv.DictReader(f)
        ]


def sensor_name(i: int) -> str:
    """The id of the i-th simulated sensor: ``s000``, ``s001``, ..."""
    return f"s{i:03d}"


def simulate(
    n_sensors: int,
    duration_s: float,
    rate_hz: float,
    seed: int,
    start_ts: float = 1_700_000_000.0,
    sensor: SensorSpec | Sequence[SensorSpec] = SensorSpec(),
    anomalies: AnomalySpec | None = AnomalySpec(),
    warmup_s: float = 600.0,
) -> Simulated:
    """Simulate ``n_sensors`` labelled streams of ``duration_s`` seconds at ``rate_hz``.

    ``sensor`` is one spec for all sensors or one per sensor. ``anomalies=None`` gives clean
    data. No anomaly starts before ``start_ts + warmup_s``. The result depends only on the
    arguments: the same seed gives the same rows, bit for bit.
    """
    if n_sensors < 1 or duration_s <= 0 or rate_hz <= 0:
        raise ValueError("n_sensors >= 1, duration_s > 0 and rate_hz > 0 are required")
    specs = [sensor] * n_sensors if isinstance(sensor, SensorSpec) else list(sensor)
    if len(specs) != n_sensors:
        raise ValueError(f"got {len(specs)} sensor specs for {n_sensors} sensors")
    n = math.floor(duration_s * rate_hz)
    if n < 1:
        raise ValueError("duration_s * rate_hz must give at least one reading")
    dt = 1.0 / rate_hz
    root = np.random.SeedSequence(seed)
    children = root.spawn(n_sensors)

    parts_ts: list[np.ndarray] = []
    parts_sensor: list[np.ndarray] = []
    parts_value: list[np.ndarray] = []
    parts_label: list[np.ndarray] = []
    events: list[Event] = []
    for i, (spec, ss) in enumerate(zip(specs, children, strict=True)):
        name = sensor_name(i)
        rng_signal, rng_events = (np.random.default_rng(s) for s in ss.spawn(2))
        idx = np.arange(n)
        ts = start_ts + idx * dt
        planned = (
            _plan_events(rng_events, anomalies, n, dt, math.ceil(warmup_s * rate_hz))
            if anomalies is not None and anomalies.rate_per_hour > 0
            else []
        )
        value, keep, spans = _render(rng_signal, rng_events, spec, anomalies, planned, n, dt)
        label = np.zeros(n, dtype=np.int64)
        for (kind, a, b), (la, lb) in zip(planned, spans, strict=True):
            label[la : lb + 1] = 1
            events.append(Event(name, float(ts[a]), float(ts[max(b, lb)]), kind))
        parts_ts.append(ts[keep])
        parts_sensor.append(np.full(int(keep.sum()), name))
        parts_value.append(value[keep])
        parts_label.append(label[keep])

    ts_all = np.concatenate(parts_ts)
    order = np.argsort(ts_all, kind="stable")  # stable: ties keep sensor order
    events.sort(key=lambda e: (e.start, e.sensor))
    sim = Simulated(
        ts=ts_all[order],
        sensor=np.concatenate(parts_sensor)[order],
        value=np.concatenate(parts_value)[order],
        label=np.concatenate(parts_label)[order],
        events=events,
    )
    log.debug("simulated %d rows, %d events", len(sim), len(events))
    return sim


def _plan_events(
    rng: np.random.Generator, spec: AnomalySpec, n: int, dt: float, first: int
) -> list[tuple[str, int, int]]:
    """Non-overlapping ``(kind, first_index, last_index)`` events for one sensor."""
    out: list[tuple[str, int, int]] = []
    mean_gap_s = 3600.0 / spec.rate_per_hour
    gap_n = math.ceil(spec.min_gap_s / dt)
    pos = float(first)
    while True:
        pos += rng.exponential(mean_gap_s) / dt
        a = int(pos)
        kind = str(spec.kinds[int(rng.integers(len(spec.kinds)))])
        length = 1 if kind == "spike" else max(2, int(rng.uniform(*spec.duration_s) / dt))
        b = a + length - 1
        # A dropout needs one reading after its gap, to carry the label.
        if b + (1 if kind == "dropout" else 0) >= n:
            break
        out.append((kind, a, b))
        pos = float(b + 1 + gap_n)
    return out


def _render(
    rng: np.random.Generator,
    rng_events: np.random.Generator,
    spec: SensorSpec,
    anomalies: AnomalySpec | None,
    planned: list[tuple[str, int, int]],
    n: int,
    dt: float,
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Values, a keep mask (False = dropped) and the labelled index span of each event."""
    step = np.full(n, dt / spec.period_s)  # phase advance per reading, in periods
    size = anomalies.size if anomalies is not None else 1.0
    for kind, a, b in planned:
        if kind == "frequency":
            step[a : b + 1] *= 1.0 + (FREQUENCY_FACTOR - 1.0) * size
    phase = spec.phase + np.concatenate(([0.0], np.cumsum(step[:-1])))
    base = np.sin(2 * np.pi * phase) + np.sin(4 * np.pi * phase)
    noise = rng.normal(0.0, 1.0, n) * spec.noise
    walk = (
        np.cumsum(rng.normal(0.0, spec.walk * math.sqrt(dt), n)) if spec.walk > 0 else np.zeros(n)
    )
    value = spec.offset + walk + spec.amplitude * base + noise
    keep = np.ones(n, dtype=bool)
    spans: list[tuple[int, int]] = []
    amp = spec.amplitude * size
    for kind, a, b in planned:
        sl = slice(a, b + 1)
        m = b + 1 - a
        if kind == "spike":
            value[a] += amp * SPIKE_HEIGHT * (1.0 if rng_events.random() < 0.5 else -1.0)
        elif kind == "level_shift":
            value[sl] += amp * LEVEL_SHIFT
        elif kind == "noise_burst":
            value[sl] += rng_events.normal(0.0, amp * NOISE_BURST_SIGMA, m)
        elif kind == "stuck":
            value[sl] = value[a - 1] if a > 0 else value[a]
        elif kind == "drift":
            value[sl] += amp * DRIFT_HEIGHT * np.arange(1, m + 1) / m
        elif kind == "dropout":
            keep[sl] = False
            spans.append((b + 1, b + 1))
            continue
        spans.append((a, b))
    return value, keep, spans
