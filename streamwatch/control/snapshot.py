"""What the live page shows, built on the worker thread and handed to the HTTP thread whole.

The worker owns the engine's state, so the HTTP thread never reads it: it asks for a
snapshot (:meth:`Snapshots.want`) and reads the latest one the worker built
(:meth:`Snapshots.latest`), a plain dict replaced by assignment (atomic in CPython). The worker
builds one at most every ``every_s`` seconds, and only while someone asks.

Recent scores: :class:`RecentScores` keeps each scored batch's arrays as they are (one append
per batch, nothing per reading), dropped by age and capped in rows; the snapshot groups them
by sensor and thins each sensor's series to at most ``points``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from streamwatch.control.state import ControlState
from streamwatch.pipeline.engine import Engine
from streamwatch.pipeline.faults import NAMES as FAULT_NAMES
from streamwatch.pipeline.lifecycle import SCORED

HORIZON_S = 600.0
"""How far back the page's score charts reach (in reading time)."""
MAX_ROWS = 200_000
"""At most this many (sensor, ts, score, threshold) rows are kept for the charts."""
POINTS = 120
"""At most this many points per sensor in a snapshot..."""
SNAPSHOT_POINTS = 24_000
"""... and about this many in all (fewer per sensor when many are tracked, down to
``MIN_POINTS``), so that ``/api/state`` stays around a megabyte with 1,000 sensors."""
MIN_POINTS = 10
RECENT_ALERTS = 50


class RecentScores:
    """A ring of scored batches: (sensors, window ends, scores, thresholds)."""

    def __init__(self, horizon_s: float = HORIZON_S, max_rows: int = MAX_ROWS) -> None:
        self.horizon_s = horizon_s
        self.max_rows = max_rows
        self._batches: deque[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]] = deque()
        self._rows = 0

    def add(
        self, sensors: list[str], ends: list[float], scores: np.ndarray, thr: np.ndarray
    ) -> None:
        """Keep one scored batch (the engine's ``on_scores`` hook; worker thread)."""
        b = (sensors, np.asarray(ends, dtype=np.float64), scores, thr)
        self._batches.append(b)
        self._rows += len(sensors)
        newest = float(b[1].max()) if len(sensors) else -math.inf
        batches = self._batches
        while batches and (
            self._rows > self.max_rows or float(batches[0][1].max()) < newest - self.horizon_s
        ):
            self._rows -= len(batches.popleft()[0])

    def by_sensor(self, points: int = POINTS) -> dict[str, list[list[float | None]]]:
        """Each sensor's recent [ts, score, threshold] rows, oldest first, thinned to
        ``points`` (the newest row always kept); grouped in numpy."""
        if not self._batches:
            return {}
        names: list[str] = []
        for sensors, *_ in self._batches:
            names.extend(sensors)
        uniq = list(set(names))
        index = {n: i for i, n in enumerate(uniq)}
        code = np.fromiter(map(index.__getitem__, names), dtype=np.int64, count=len(names))
        ts = np.concatenate([b[1] for b in self._batches])
        sc = np.concatenate([b[2] for b in self._batches])
        th = np.concatenate([b[3] for b in self._batches])
        order = np.argsort(code, kind="stable")  # by sensor, in arrival order within each
        bounds = np.searchsorted(code[order], np.arange(len(index) + 1))
        rows = np.stack([ts, np.round(sc, 4), np.round(th, 4)], axis=1)[order]
        out: dict[str, list[list[float | None]]] = {}
        for name, k in index.items():
            mine = rows[bounds[k] : bounds[k + 1]]
            step = max(1, math.ceil(len(mine) / points))
            picked = mine[::-1][::step][::-1]
            if np.isfinite(picked).all():
                out[name] = picked.tolist()
            else:  # JSON has no NaN
                out[name] = [[t, _num(v), _num(h)] for t, v, h in picked.tolist()]
        return out


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


class Snapshots:
    """The live page's view of the engine, rebuilt on request by the worker."""

    def __init__(
        self,
        engine: Engine,
        control: ControlState,
        every_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.control = control
        self.every_s = every_s
        self.clock = clock
        self.scores = RecentScores()
        engine.on_scores = self.scores.add
        self.alerts: deque[dict[str, Any]] = deque(maxlen=RECENT_ALERTS)
        self._latest: dict[str, Any] | None = None
        self._built_at = -math.inf
        self._wanted = threading.Event()
        self._fresh = threading.Condition()

    # -- HTTP thread ------------------------------------------------------------------------

    def want(self) -> None:
        """Ask the worker for a fresh snapshot."""
        self._wanted.set()

    def latest(self, wait_s: float = 0.0) -> dict[str, Any] | None:
        """A snapshot at most ``every_s`` old, waiting up to ``wait_s`` for the worker to
        build one (else the newest there is, or None)."""
        asked = self.clock()
        self.want()
        with self._fresh:
            if wait_s > 0:
                self._fresh.wait_for(
                    lambda: self._latest is not None and self._built_at >= asked - self.every_s,
                    wait_s,
                )
            return self._latest

    # -- worker thread ----------------------------------------------------------------------

    def alert(self, doc: dict[str, Any]) -> None:
        """Remember a published alert payload (newest last)."""
        self.alerts.append(doc)

    def tick(self, now: float | None = None) -> None:
        """Build a snapshot if one was asked for and the last is older than ``every_s``."""
        now = self.clock() if now is None else now
        if not self._wanted.is_set() or now - self._built_at < self.every_s:
            return
        self._wanted.clear()
        snap = self.build(now)
        with self._fresh:
            self._latest = snap
            self._built_at = now
            self._fresh.notify_all()

    def build(self, now: float) -> dict[str, Any]:
        """The snapshot: every sensor and held id, recent alerts (worker thread only)."""
        eng, ctl = self.engine, self.control
        tracked = max(1, len(eng.windows.sensors))
        series = self.scores.by_sensor(max(MIN_POINTS, min(POINTS, SNAPSHOT_POINTS // tracked)))
        rows: dict[str, dict[str, Any]] = {}
        for sensor, sw in eng.windows.sensors.items():
            st = sw.state
            if st is None:
                continue
            alert_id = st.alert.alert_id
            doc: dict[str, Any] = {
                "id": sensor,
                "kind": "sensor",
                "phase": st.phase,
                "score": _num(st.series.score),
                "threshold": _num(st.threshold) if st.threshold is not None else None,
                "readings": st.series.readings,
                "last_ts": _num(st.series.last_ts),
                "alert_id": alert_id,
                "history": series.get(sensor, []),
            }
            doc.update(ctl.describe(sensor))
            fault = st.fault.current if st.fault is not None else 0
            doc["fault"] = FAULT_NAMES.get(fault)
            doc["state"] = status(doc, st.phase == SCORED)
            rows[sensor] = doc
        for target in ctl.holds:  # held ids with no sensor behind them yet (a group, say)
            if target not in rows:
                doc = {"id": target, "kind": "id", "phase": None, "alert_id": None, "history": []}
                doc.update(ctl.describe(target))
                doc["state"] = status(doc, False)
                rows[target] = doc
        return {
            "now": now,
            "detector": eng.detector.name,
            "sensors": [rows[k] for k in sorted(rows)],
            "alerts": list(reversed(self.alerts)),
        }


def status(doc: dict[str, Any], armed: bool) -> str:
    """One word for the page: maintenance, muted, fault (a sensor fault now), alert, armed
    or warming."""
    if doc.get("maintenance"):
        return "maintenance"
    if doc.get("muted"):
        return "muted"
    if doc.get("fault"):
        return "fault"
    if doc.get("alert_id"):
        return "alert"
    return "armed" if armed else "warming"
