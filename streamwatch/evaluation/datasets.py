"""Labelled data sets for the evaluation: simulator output and NAB files, one shape for both.

The simulator is not imported here (``simulators`` depends on ``streamwatch``, never the
reverse): :func:`from_simulated` takes anything shaped like ``simulators.generate.Simulated``
(:class:`LabelledStreams`), and the command layer passes the simulator's object.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
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
