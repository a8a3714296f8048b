"""Aligning a group's members, which report at their own times, onto one time grid.

Each member's last value is held; the group is sampled every ``period`` seconds (configured,
or inferred from the members' own cadences: the slowest member's median interval, so every
step can have a fresh value of every member). A grid step ``t`` is emitted once some member
has a reading *after* ``t``, so readings that share a timestamp all land in the step of that
timestamp, whatever order they arrive in.

A member whose held value is older than ``max_age_s`` at a step (or that has not reported
yet) is *missing* there, and the policy decides, explicitly:

- ``impute``: the step is emitted with NaN for that member and flagged; the detector fills
  in the member's normal mean (0 in its normalised units);
- ``restart``: the step is not emitted, and the group's window starts afresh (a window never
  spans a hole).

Either way the step is counted (:attr:`Aligner.missing_steps`). The module is pure: no clock,
no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

MissingPolicy = Literal["impute", "restart"]
MAX_AGE_PERIODS = 3.0
"""Default ``max_age_s``: this many grid periods."""
DISCOVERY_READINGS = 4096
"""Inference of the period and members ends after at most this many buffered readings."""
MAX_STEPS_PER_READING = 10_000
"""A reading far ahead of the grid (a long silence) does not emit steps for all of it: the
grid jumps forward and the window restarts."""


@dataclass(slots=True)
class Step:
    """One grid step of a group: its time, one value per member (NaN where missing), and
    whether the window must start afresh before it."""

    ts: float
    values: np.ndarray
    missing: tuple[int, ...] = ()
    restart: bool = False


@dataclass
class Aligner:
    """One group's alignment state. ``members`` fixed (from a trained model), or None to
    learn them (and the period, if not given) from the first readings."""

    members: list[str] | None = None
    period_s: float | None = None
    max_age_s: float | None = None
    policy: MissingPolicy = "impute"
    max_members: int = 64
    """Members past this many (while learning them) are counted as unknown and ignored."""
    discover_periods: float = 4.0
    """Inference lasts until the buffered readings span this many of the slowest cadence."""
    missing_steps: int = 0
    """Steps with a member missing longer than ``max_age_s`` (imputed or restarted)."""
    late: int = 0
    """Readings at or before the last emitted step (held as the member's latest value)."""
    unknown: int = 0
    """Readings of a member the group does not have (after the members were fixed)."""
    _index: dict[str, int] = field(default_factory=dict)
    _value: np.ndarray = field(default_factory=lambda: np.empty(0))
    _seen: np.ndarray = field(default_factory=lambda: np.empty(0))
    _next: float = math.nan
    _latest: float = -math.inf
    _buffer: list[tuple[str, float, float]] = field(default_factory=list)
    _restart_next: bool = False
    _names: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.members is not None:
            self._fix(list(self.members))

    @property
    def ready(self) -> bool:
        """Whether the members and the period are known (steps are being emitted)."""
        return self.members is not None and self.period_s is not None

    @property
    def max_age(self) -> float:
        """The oldest a held value may be at a step (seconds)."""
        if self.max_age_s is not None:
            return self.max_age_s
        return MAX_AGE_PERIODS * (self.period_s or math.inf)

    def _fix(self, members: list[str]) -> None:
        self.members = members
        self._index = {m: i for i, m in enumerate(members)}
        self._value = np.full(len(members), np.nan)
        self._seen = np.full(len(members), -math.inf)

    def add(self, member: str, ts: float, value: float) -> list[Step]:
        """Take one reading; return the grid steps it completes (often none, or one)."""
        if not self.ready:
            return self._discover(member, ts, value)
        return self._take(member, ts, value)

    def _take(self, member: str, ts: float, value: float) -> list[Step]:
        i = self._index.get(member)
        if i is None:
            self.unknown += 1
            return []
        steps: list[Step] = []
        if math.isnan(self._next):
            if ts >= self._seen[i]:
                self._value[i], self._seen[i] = value, ts
            if np.isfinite(self._seen).all():  # the grid starts once every member reported
                self._next = ts
            return steps
        if ts > self._next:
            steps = self._emit_until(ts)
        elif ts < self._next - (self.period_s or 0.0):
            self.late += 1
        if ts >= self._seen[i]:
            self._value[i] = value
            self._seen[i] = ts
        self._latest = max(self._latest, ts)
        return steps

    def _emit_until(self, ts: float) -> list[Step]:
        """Emit every grid step strictly before ``ts``."""
        period = self.period_s
        assert period is not None
        steps: list[Step] = []
        n = math.ceil((ts - self._next) / period)
        if n > MAX_STEPS_PER_READING:
            # A long silence: skip to the last step before ts, and start the window afresh.
            self._next += (n - 1) * period
            self._restart_next = True
            n = 1
        max_age = self.max_age
        for _ in range(n):
            t = self._next
            self._next = t + period
            age = t - self._seen
            gone = np.flatnonzero(~(age <= max_age))  # never seen: age is inf
            restart, self._restart_next = self._restart_next, False
            if gone.size:
                self.missing_steps += 1
                if self.policy == "restart":
                    self._restart_next = True
                    continue
                values = self._value.copy()
                values[gone] = np.nan
                steps.append(Step(t, values, tuple(int(g) for g in gone), restart))
            else:
                steps.append(Step(t, self._value.copy(), (), restart))
        return steps

    # -- learning the members and the period from the first readings ------------------------

    def _discover(self, member: str, ts: float, value: float) -> list[Step]:
        buf = self._buffer
        if self.members is None and member not in self._names:
            if len(self._names) >= self.max_members:
                self.unknown += 1
                return []
            self._names.add(member)
        buf.append((member, ts, value))
        stamps: dict[str, list[float]] = {}
        for m, t, _ in buf:
            stamps.setdefault(m, []).append(t)
        cadence = self.period_s or infer_period(stamps)
        if len(buf) < DISCOVERY_READINGS:
            if cadence is None:
                return []
            span = max(t for _, t, _ in buf) - min(t for _, t, _ in buf)
            if span < self.discover_periods * cadence:
                return []
        if cadence is None:  # every member reported once, within one instant: no cadence
            cadence = 1.0
        if self.members is None:
            self._fix(sorted(stamps))
        if self.period_s is None:
            self.period_s = cadence
        self._buffer = []
        # Start the grid once every member has a value, then replay what was buffered.
        first = [min(stamps[m]) for m in self.members or () if m in stamps]
        start = max(first) if first else buf[0][1]
        steps: list[Step] = []
        for m, t, v in sorted(buf, key=lambda r: r[1]):
            if t < start:
                i = self._index.get(m)
                if i is not None and t >= self._seen[i]:
                    self._value[i], self._seen[i] = v, t
                continue
            steps += self._take(m, t, v)
        return steps


def infer_period(stamps: dict[str, list[float]]) -> float | None:
    """The grid period from members' reading times: the slowest member's median interval.
    None until every member seen has at least two distinct timestamps."""
    medians = []
    for ts in stamps.values():
        d = np.diff(np.unique(np.asarray(ts, dtype=np.float64)))
        if d.size == 0:
            return None
        medians.append(float(np.median(d)))
    if not medians:
        return None
    period = max(medians)
    return period if period > 0 else None
