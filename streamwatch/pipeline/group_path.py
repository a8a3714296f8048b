"""The engine's path for groups (machines): members aligned onto a grid, windows of
``time x members`` scored in one batched call per member count, one alert state per group.

It sits beside the per-sensor path (:mod:`streamwatch.pipeline.engine` hands it every reading
whose sensor a ``[groups]`` pattern matches) and uses the same pieces: the one calibration
policy (:func:`streamwatch.pipeline.threshold.sensor_threshold`, thresholds keyed by group id),
the alert state machine, the per-sensor metric records (the group id as the label, under the
same cap). A group without a trained model warms up on its first ``learning.warmup`` steps,
as a sensor does. A group's alert goes out on ``<alert_prefix>/<group id>`` and names the
members, ranked by their share of the score, with their values.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamwatch.config import Config, MahalanobisConfig
from streamwatch.detectors import bundle
from streamwatch.detectors.base import NotTrained
from streamwatch.detectors.bundle import Model
from streamwatch.outputs.metrics import Metrics, SensorSeries
from streamwatch.pipeline.alerts import CLEARED, RAISED, AlertEvent, AlertState
from streamwatch.pipeline.align import Aligner, Step
from streamwatch.pipeline.groups import Grouper
from streamwatch.pipeline.threshold import CalibrationError, sensor_threshold

log = logging.getLogger(__name__)

TOP_MEMBERS = 8
"""How many members a group alert names, ranked by contribution."""


@dataclass(slots=True, kw_only=True)
class GroupAlertEvent(AlertEvent):
    """A group's transition: ``sensor`` is the group id; ``sensors`` ranks its members."""

    group: str
    sensors: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The payload, with ``group`` and the ranked ``sensors``."""
        doc = AlertEvent.to_json(self)
        doc["group"] = self.group
        doc["sensors"] = self.sensors
        return doc


@dataclass(slots=True)
class GroupState:
    """One group's alignment, window, warm-up and alert state."""

    aligner: Aligner
    alert: AlertState
    series: SensorSeries
    threshold: float | None = None
    rows: list[np.ndarray] = field(default_factory=list)
    """The last ``window`` aligned steps (values per member)."""
    stamps: list[float] = field(default_factory=list)
    warm: list[np.ndarray] = field(default_factory=list)
    """Warm-up steps (empty once scored)."""
    last_seen: float = 0.0
    """Wall-clock time of the group's last reading (for idle eviction)."""


def learned_groups_dir(cfg: Config) -> Path | None:
    """Where the daemon keeps the groups it learned online (under ``state_dir``)."""
    return cfg.state_dir / "groups-model" if cfg.state_dir else None


def load_group_model(cfg: Config) -> Model:
    """The group model: the bundle at ``groups.bundle_dir`` where one is there; else what the
    daemon learned online before a restart (:func:`learned_groups_dir`); else a fresh one
    that warms each group up. An unusable ``bundle_dir`` bundle is a :class:`ModelError`."""
    g = cfg.groups
    path: Path | None = g.bundle_dir(cfg.model_dir)
    if path is not None and path.exists():
        return bundle.load(path, expect=g.detector)
    model = bundle.fresh(g.detector, g.window, g.threshold.false_alarm_rate)
    if model.detector.shared_weights:
        log.warning(
            "no trained %s group model (train one with `streamwatch train` and [groups]); "
            "each group warms up with the mahalanobis detector meanwhile",
            g.detector.type,
        )
        model = bundle.fresh(MahalanobisConfig(), g.window, g.threshold.false_alarm_rate)
    learned = learned_groups_dir(cfg)
    if learned is not None and (learned / bundle.MANIFEST).exists():
        try:
            kept = bundle.load(learned)
        except bundle.ModelError as exc:
            log.warning("ignoring the groups learned before the restart: %s", exc)
            return model
        if kept.detector.config == model.detector.config and kept.detector.window == (
            model.detector.window
        ):
            log.info(
                "resuming %d group(s) learned before the restart from %s",
                len(kept.trained_on.get("groups", {})),
                learned,
            )
            kept.trained_on["learned_online"] = True
            return kept
        log.info("the groups learned before the restart used other settings; learning afresh")
    return model


class GroupPath:
    """Every group's state, fed reading by reading, scored once per batch (:meth:`flush`)."""

    def __init__(
        self,
        cfg: Config,
        model: Model,
        metrics: Metrics,
        sink: Callable[[AlertEvent], None],
        raised: dict[str, str],
        on_raised_change: Callable[[], None],
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.metrics = metrics
        self.sink = sink
        self.raised = raised
        self._changed = on_raised_change
        self.grouper = Grouper(cfg.groups.patterns)
        self.groups: OrderedDict[str, GroupState] = OrderedDict()
        self.window = model.detector.window
        self._due: list[tuple[str, GroupState, np.ndarray, float, float]] = []
        self._learned: set[str] = (
            set(model.trained_on.get("groups", {}))
            if model.trained_on.get("learned_online")
            else set()
        )
        """Groups learned online (here, or before a restart): forgotten again when evicted
        (bounded memory)."""
        self.version = 0
        """Moves whenever the groups learned online change (what the daemon saves)."""
        half_life = cfg.groups.follow_half_life
        self._follow_rate = 1.0 - 0.5 ** (1.0 / half_life) if half_life else 0.0
        self._follow_guard = cfg.groups.follow_guard
        self._clear_ratio = cfg.groups.clear_ratio
        self.missing_steps = 0
        self.restarts = 0
        self.evicted = 0
        self.scored = 0

    # -- readings in ----------------------------------------------------------------------

    def add(self, group: str, member: str, ts: float, value: float, now: float) -> None:
        """Take one member's reading (arrived at ``now``); any grid steps it completes are
        queued for scoring."""
        gs = self.groups.get(group)
        if gs is None:
            gs = self._new(group)
        else:
            self.groups.move_to_end(group)
        gs.last_seen = now
        al = gs.aligner
        missing, unknown = al.missing_steps, al.unknown
        steps = al.add(member, ts, value)
        if al.unknown != unknown:  # not a member the group was learned with (or over the cap)
            self.metrics.rejected.labels("unknown_member").inc()
        if al.missing_steps != missing:
            self.metrics.group_missing_steps.inc(al.missing_steps - missing)
            self.missing_steps += al.missing_steps - missing
        gs.series.readings += 1
        gs.series.last_ts = ts
        for step in steps:
            self._step(group, gs, step)

    def _new(self, group: str) -> GroupState:
        g = self.cfg.groups
        while len(self.groups) >= g.max_groups:
            old, st = self.groups.popitem(last=False)
            log.info("group %s evicted (over groups.max_groups)", old)
            self._evict(old, st)
        a = self.cfg.alerts
        alert = AlertState(a.raise_k, a.raise_n, a.clear_m, a.clear_hold_s, a.refractory)
        series = self.metrics.series(group)
        if group in self.raised:
            alert.restore(self.raised[group])
            series.active = 1
        gs = self._state(group, alert, series, None)
        self.groups[group] = gs
        return gs

    def _state(
        self, group: str, alert: AlertState, series: SensorSeries, old: GroupState | None
    ) -> GroupState:
        """A group's state under the current model: scored from its trained members and
        threshold where the model knows the group, else warming up. ``old`` (a model swap)
        keeps its aligned steps where the members stay the same."""
        g = self.cfg.groups
        known = self.model.trained_on.get("groups", {}).get(group)
        members = list(known["members"]) if known and self.model.detector.knows(group) else None
        period = g.period_s or (float(known["period_s"]) if members and known else None)
        if old is not None and (members is None or members == old.aligner.members):
            aligner = old.aligner
        else:
            aligner = Aligner(members, period, g.max_age_s, g.missing, max_members=g.max_members)
        gs = GroupState(aligner, alert, series)
        if old is not None:
            gs.last_seen = old.last_seen
            if aligner is old.aligner:
                gs.rows, gs.stamps = old.rows[-self.window :], old.stamps[-self.window :]
        thr = self.model.thresholds.get(group)
        if members is not None and thr is not None:
            self._mark_scored(gs, thr)
        else:
            series.threshold = math.nan
        return gs

    def swap(self, model: Model) -> None:
        """Take a reloaded group model (SIGHUP) between batches. Each tracked group the new
        model knows is scored with its threshold from the next full window (its aligned
        steps kept where its members stay the same); any other group warms up again. Alert
        states carry over: a raised alert is cleared by the new model, not raised again."""
        self.model = model
        self.window = model.detector.window
        self._due = []
        self._learned = (
            set(model.trained_on.get("groups", {}))
            if model.trained_on.get("learned_online")
            else set()
        )
        self.version += 1
        for group, gs in list(self.groups.items()):
            self.groups[group] = self._state(group, gs.alert, gs.series, gs)

    def evict_idle(self, now: float, idle_s: float) -> None:
        """Drop groups whose last reading arrived more than ``idle_s`` before ``now``."""
        while self.groups:
            group, gs = next(iter(self.groups.items()))  # least recently seen first
            if now - gs.last_seen <= idle_s:
                break
            del self.groups[group]
            log.info("group %s evicted (idle %.0fs)", group, now - gs.last_seen)
            self._evict(group, gs)

    def _evict(self, group: str, gs: GroupState) -> None:
        """Forget a group; a raised alert is cleared (``reason: evicted``), not left raised
        on its retained topic and in the state file."""
        self.evicted += 1
        self.metrics.evicted.inc()
        alert_id = gs.alert.alert_id
        if alert_id is not None:
            self.raised.pop(group, None)
            self._changed()
            ts = gs.series.last_ts
            ev = GroupAlertEvent(
                group,
                CLEARED,
                ts,
                math.nan,
                gs.threshold if gs.threshold is not None else math.nan,
                self.model.detector.name,
                ts,
                ts,
                alert_id,
                reason="evicted",
                group=group,
                sensors=[],
            )
            self.sink(ev)
        self.metrics.release(group)
        if group in self._learned:
            self.version += 1
            self._learned.discard(group)
            self.model.detector.forget(group)
            self.model.thresholds.per_sensor.pop(group, None)
            self.model.trained_on.get("groups", {}).pop(group, None)

    def _mark_scored(self, gs: GroupState, thr: float) -> None:
        gs.threshold = thr
        gs.warm = []
        gs.series.warming = 0
        gs.series.threshold = thr

    def _step(self, group: str, gs: GroupState, step: Step) -> None:
        if step.restart:
            gs.rows.clear()
            gs.stamps.clear()
            self.restarts += 1
            self.metrics.window_restarts.inc()
        gs.rows.append(step.values)
        gs.stamps.append(step.ts)
        if len(gs.rows) > self.window:
            del gs.rows[0], gs.stamps[0]
        if gs.threshold is None:
            gs.warm.append(step.values)
            if len(gs.warm) >= self.cfg.learning.warmup:
                self._warm_up(group, gs)
            return
        if len(gs.rows) == self.window:
            self._due.append((group, gs, np.stack(gs.rows), gs.stamps[0], step.ts))

    def _warm_up(self, group: str, gs: GroupState) -> None:
        """Learn the group from its warm-up steps and calibrate its threshold."""
        det = self.model.detector
        steps = np.stack(gs.warm)
        try:
            det.adapt(group, steps)
            scores = det.score_series(group, steps)
            thr = sensor_threshold(scores, self.cfg.groups.threshold, det.score_kind)
        except (ValueError, CalibrationError, NotTrained) as exc:
            log.warning("group %s: cannot learn from %d steps: %s", group, len(steps), exc)
            gs.warm = gs.warm[len(gs.warm) // 2 :]  # keep learning from the newer half
            return
        al = gs.aligner
        self._learned.add(group)
        self.version += 1
        self.model.trained_on["learned_online"] = True
        self.model.thresholds.per_sensor[group] = thr
        self.model.trained_on.setdefault("groups", {})[group] = {
            "members": list(al.members or ()),
            "period_s": al.period_s,
        }
        self._mark_scored(gs, thr)
        log.info(
            "group %s: learned from %d steps of %d members (period %.3gs); threshold %.4g",
            group,
            len(steps),
            steps.shape[1],
            al.period_s or 0.0,
            thr,
        )

    # -- scoring --------------------------------------------------------------------------

    def flush(self) -> list[AlertEvent]:
        """Score every queued group window, one detector call per member count; feed the
        verdicts to the groups' alerts; hand the transitions to the sink and return them."""
        due, self._due = self._due, []
        if not due:
            return []
        det = self.model.detector
        by_width: dict[int, list[int]] = {}
        for i, (_, _, x, _, _) in enumerate(due):
            by_width.setdefault(x.shape[1], []).append(i)
        scores = np.empty(len(due))
        cap = self.cfg.engine.max_batch
        for rows in by_width.values():
            for k in range(0, len(rows), cap):
                part = rows[k : k + cap]
                x = np.stack([due[i][2] for i in part])
                scores[part] = det.score([due[i][0] for i in part], x)
        self.scored += len(due)
        self.metrics.windows_scored.inc(len(due))
        events: list[AlertEvent] = []
        follow: list[int] = []  # windows normal enough to adapt to
        for i, (group, gs, x, start, end) in enumerate(due):
            thr = gs.threshold
            assert thr is not None
            gs.series.score = float(scores[i])
            # Hysteresis: a raised alert counts a window as normal only well below the
            # threshold, so it ends when the event ends, not on the event's tail and again.
            limit = thr * self._clear_ratio if gs.alert.raised else thr
            change = gs.alert.update(bool(scores[i] > limit), end)
            if not gs.alert.raised and gs.alert.normal_run > self._follow_guard:
                follow.append(i)
            if change is None:
                continue
            state, alert_id = change
            if state == RAISED:
                self.raised[group] = alert_id
                gs.series.raised += 1
                gs.series.active = 1
            else:
                self.raised.pop(group, None)
                gs.series.cleared += 1
                gs.series.active = 0
            self._changed()
            ev = GroupAlertEvent(
                group,
                state,
                end,
                float(scores[i]),
                thr,
                det.name,
                start,
                end,
                alert_id,
                group=group,
                sensors=self._ranked(group, gs, x),
            )
            events.append(ev)
        if follow and self._follow_rate:
            self._follow(det, [due[i] for i in follow])
        for out in events:
            self.sink(out)
        return events

    def _follow(
        self, det: Any, due: list[tuple[str, GroupState, np.ndarray, float, float]]
    ) -> None:
        """Protected adaptation: only windows judged normal, outside an alert and clear of the
        group's last anomalous verdict by ``groups.follow_guard`` steps move its normal level
        (each window's newest step, in order). A detector without a level ignores it."""
        follow = getattr(det, "follow", None)
        if not callable(follow):
            return
        by_width: dict[int, list[int]] = {}
        for i, d in enumerate(due):
            by_width.setdefault(d[2].shape[1], []).append(i)
        for rows in by_width.values():  # one call per member count, in window order
            follow(
                [due[i][0] for i in rows],
                np.stack([due[i][2][-1] for i in rows]),
                self._follow_rate,
            )

    def _ranked(self, group: str, gs: GroupState, x: np.ndarray) -> list[dict[str, Any]]:
        """The members by their share of the score (most first), with their last values
        (None where imputed) and how many of the window's steps imputed them."""
        det = self.model.detector
        members = gs.aligner.members or []
        shares_of = getattr(det, "member_shares", None)
        if callable(shares_of):
            shares = np.asarray(shares_of([group], x[None]))[0]
        else:
            shares = np.full(len(members), 1.0 / max(len(members), 1))
        order = np.argsort(-shares, kind="stable")[:TOP_MEMBERS]
        last = x[-1]
        return [
            {
                "sensor": f"{group}/{members[j]}",
                "member": members[j],
                "value": float(last[j]) if np.isfinite(last[j]) else None,
                "contribution": round(float(shares[j]), 4),
                "imputed": int(np.count_nonzero(~np.isfinite(x[:, j]))),
            }
            for j in order
        ]
