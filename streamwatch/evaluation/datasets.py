"""Labelled data sets for the evaluation: simulator output and NAB files, one shape for both.

The simulator is not imported here (``simulators`` depends on ``streamwatch``, never the
reverse): :func:`from_simulated` takes anything shaped like ``simulators.generate.Simulated``
(:class:`LabelledStreams`), and the command layer passes the simulator's object.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np

from streamwatch.evaluation.scoring import Event, events_from_labels

log = logging.getLogger(__name__)


class LabelledStreams(Protocol):
    """What :func:`from_simulated` uses of a labelled multi-sensor stream
    (``simulators.generate.Simulated`` is one)."""

    @property
    def sensors(self) -> Sequence[str]:
        """The distinct sensor ids, sorted."""
        ...

    @property
    def events(self) -> Sequence[Event]:
        """The labelled events (may be empty: then they are derived from the labels)."""
        ...

    def series(self, sensor: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One sensor's ``(ts, value, label)`` in time order."""
        ...


@dataclass
class Dataset:
    """Labelled readings, per sensor, with their events and the training prefix of each."""

    name: str
    ts: dict[str, np.ndarray]
    value: dict[str, np.ndarray]
    label: dict[str, np.ndarray]
    events: list[Event]
    n_train: dict[str, int]
    tolerance_s: float
    nab_windows: dict[str, list[tuple[int, int]]] | None = None
    """Row spans of the NAB windows per series; None for non-NAB data."""
    groups: dict[str, list[str]] | None = None
    """Sensors that share events (a SKAB experiment's 8 columns), by group; each group's events
    are copied onto every sensor of it in ``events``. None where each sensor stands alone."""
    extra_train: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """Extra normal ``(ts, values)`` series, fitted on by the ``train`` protocol only (SKAB's
    anomaly-free run), under their own sensor names."""
    split: str = "all"
    """Which part of the data this is (``all``, NAB ``even``/``odd``, SKAB ``0-7``...)."""

    @property
    def sensors(self) -> list[str]:
        """Sensor (or series) names, sorted."""
        return sorted(self.ts)

    def start(self) -> dict[str, float]:
        """The first evaluated timestamp of each sensor (after its training readings)."""
        return {
            s: float(self.ts[s][self.n_train[s]]) if self.n_train[s] < self.ts[s].size else math.inf
            for s in self.ts
        }

    @property
    def readings(self) -> int:
        """Total readings."""
        return sum(v.size for v in self.ts.values())


def from_simulated(sim: LabelledStreams, name: str, n_train: int, tolerance_s: float) -> Dataset:
    """A data set from simulator output (events derived from labels if it has none)."""
    ts, value, label = {}, {}, {}
    for s in sim.sensors:
        ts[s], value[s], label[s] = sim.series(s)
    events = list(sim.events) or events_from_labels(ts, label)
    early = [e for e in events if e.start < ts[e.sensor][min(n_train, ts[e.sensor].size - 1)]]
    if early:
        log.warning(
            "%d events start within the first %d readings of their sensor, which every "
            "detector trains on: the figures will be pessimistic",
            len(early),
            n_train,
        )
    return Dataset(name, ts, value, label, events, {s: n_train for s in ts}, tolerance_s)


def from_plant(
    sim: LabelledStreams,
    n_train: int,
    tolerance_s: float = 0.0,
    name: str = "plant",
    split: str = "all",
) -> Dataset:
    """A data set from the plant simulator's output (``simulators.plant.simulate_plant``):
    like :func:`from_simulated`, with each pump (``plant/<pump>``, a sensor id less its last
    level) a group. A coupling fault is an event on every member of its pump, a per-sensor
    fault on its member only; ``Event.kind`` says which."""
    ds = from_simulated(sim, name, n_train, tolerance_s)
    groups: dict[str, list[str]] = {}
    for s in ds.sensors:
        groups.setdefault(s.rpartition("/")[0], []).append(s)
    ds.groups = groups
    ds.split = split
    return ds


def from_nab(root: Path, only: Sequence[str] = ()) -> Dataset:
    """A data set from NAB files: one sensor per series, the probation as training data."""
    from streamwatch.evaluation.nab import load_corpus

    ts, value, label, n_train, rows = {}, {}, {}, {}, {}
    events: list[Event] = []
    for series in load_corpus(root, only):
        s = series.name
        ts[s], value[s], label[s] = series.ts, series.value, series.labels()
        n_train[s] = series.probation
        rows[s] = series.window_rows
        category = s.split("/")[0]
        events += [Event(s, float(series.ts[a]), float(series.ts[b]), category) for a, b in rows[s]]
    return Dataset("nab", ts, value, label, events, n_train, 0.0, rows)


# -- splits -----------------------------------------------------------------------------------

NAB_SPLITS = ("even", "odd", "all")
SKAB_SPLITS = ("0-7", "8-15", "all")


def nab_split(names: Sequence[str], which: str) -> list[str]:
    """The series of a NAB split: sorted by name, those at ``even`` or ``odd`` index, or ``all``."""
    ordered = sorted(names)
    if which == "all":
        return ordered
    if which not in NAB_SPLITS:
        raise ValueError(f"NAB split {which!r}: choose from {', '.join(NAB_SPLITS)}")
    return ordered[which == "odd" :: 2]


def subset(ds: Dataset, sensors: Sequence[str], split: str) -> Dataset:
    """The same data set restricted to some sensors (and their events and groups)."""
    keep = set(sensors)
    groups = (
        None if ds.groups is None else {g: m for g, m in ds.groups.items() if keep.intersection(m)}
    )
    return replace(
        ds,
        ts={s: v for s, v in ds.ts.items() if s in keep},
        value={s: v for s, v in ds.value.items() if s in keep},
        label={s: v for s, v in ds.label.items() if s in keep},
        events=[e for e in ds.events if e.sensor in keep],
        n_train={s: v for s, v in ds.n_train.items() if s in keep},
        nab_windows=(
            None
            if ds.nab_windows is None
            else {s: v for s, v in ds.nab_windows.items() if s in keep}
        ),
        groups=groups,
        split=split,
    )


# -- SKAB -------------------------------------------------------------------------------------

SKAB_TRAIN_ROWS = 400
"""SKAB's protocol: each experiment's first 400 rows are training data."""
_SKAB_FILE = re.compile(r"^(?P<family>[a-z_]+\d*)_(?P<num>\d+)\.csv$")
_LABEL_COLUMNS = ("anomaly", "changepoint")


def _skab_range(which: str) -> range | None:
    """The experiment numbers of a SKAB split (``0-7``, ``8-15``), or None for ``all``."""
    if which == "all":
        return None
    m = re.fullmatch(r"(\d+)-(\d+)", which)
    if not m:
        raise ValueError(f"SKAB split {which!r}: give all or FIRST-LAST, e.g. 0-7")
    return range(int(m.group(1)), int(m.group(2)) + 1)


def read_skab_csv(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """One SKAB file: epoch seconds (its local ``datetime`` read as UTC: only differences
    matter), each sensor column, and the ``anomaly`` column (None where the file has none)."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=";"))
    if not rows or rows[0][0] != "datetime":
        raise ValueError(f"{path}: not a SKAB file (no datetime column first)")
    head, body = rows[0], [r for r in rows[1:] if r]
    ts = np.asarray(
        [datetime.strptime(r[0], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp() for r in body]
    )
    if ts.size > 1 and np.any(np.diff(ts) <= 0):
        raise ValueError(f"{path}: timestamps are not strictly increasing")
    cols = {
        name: np.asarray([float(r[i]) for r in body])
        for i, name in enumerate(head)
        if i > 0 and name not in _LABEL_COLUMNS
    }
    label = None
    if "anomaly" in head:
        i = head.index("anomaly")
        label = np.asarray([round(float(r[i])) for r in body], dtype=np.int64)
    return ts, cols, label


def from_skab(root: Path, split: str = "all", n_train: int = SKAB_TRAIN_ROWS) -> Dataset:
    """SKAB experiments as a data set: one sensor per column, named ``skab/<experiment>/<column>``.

    Each experiment is a group: its ``anomaly`` spans are its events, copied onto all of its
    sensors. Its first ``n_train`` rows are training data, cut short before its first
    labelled row so no anomalous row is ever trained on. ``anomaly-free.csv``, when present,
    becomes extra normal training data (``skab/anomaly-free/<column>``) for the ``train``
    protocol.
    """
    numbers = _skab_range(split)
    found = []
    for p in sorted(root.glob("*.csv")):
        m = _SKAB_FILE.match(p.name)
        if m and (numbers is None or int(m.group("num")) in numbers):
            found.append((m.group("family"), int(m.group("num")), p))
    if not found:
        raise ValueError(f"{root}: no SKAB experiment files (<family>_<n>.csv) for split {split}")
    ts, value, label, train = {}, {}, {}, {}
    events: list[Event] = []
    groups: dict[str, list[str]] = {}
    for family, num, path in sorted(found):
        t, cols, y = read_skab_csv(path)
        if y is None:
            raise ValueError(f"{path}: no anomaly column")
        g = f"skab/{family}_{num}"
        bad = np.flatnonzero(y)
        n = min(n_train, int(bad[0])) if bad.size else n_train
        if n < n_train:
            log.warning("%s: anomalous from row %d: trains on %d rows, not %d", g, n, n, n_train)
        groups[g] = []
        for col, v in cols.items():
            s = f"{g}/{col}"
            ts[s], value[s], label[s], train[s] = t, v, y, n
            groups[g].append(s)
        spans = events_from_labels({g: t}, {g: y}, family)
        events += [Event(s, e.start, e.end, e.kind) for e in spans for s in groups[g]]
    extra: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    free = root / "anomaly-free.csv"
    if free.is_file():
        t, cols, _ = read_skab_csv(free)
        extra = {f"skab/anomaly-free/{c}": (t, v) for c, v in cols.items()}
    return Dataset(
        "skab", ts, value, label, events, train, 0.0, groups=groups, extra_train=extra, split=split
    )
