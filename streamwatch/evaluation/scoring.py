"""Scoring maths, pure: labelled events, event-level figures, average precision, alert onsets.

The metric definitions are in the package docstring (:mod:`streamwatch.evaluation`). Nothing
here runs a detector or reads files; the only import beyond NumPy is the daemon's alert state
machine, inside :func:`alert_onsets`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Event:
    """One labelled anomaly: a sensor, a closed time span (epoch seconds) and a kind."""

    sensor: str
    start: float
    end: float
    kind: str


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the precision-recall curve, as the step sum Σ (Rₙ - Rₙ₋₁)·Pₙ.

    Tied scores form one threshold. None when there is no positive label.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last row of each distinct score
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass
class KindScores:
    """Per anomaly kind: what can be attributed to a kind."""

    events: int
    detected: int
    recall: float | None
    mean_delay_s: float | None
    auc_pr: float | None
    positive_rate: float | None


@dataclass
class Scores:
    """Event-level and threshold-free figures for one detector on one data set."""

    events: int
    detected: int
    recall: float | None
    alerts: int
    true_alerts: int
    false_alerts: int
    precision: float | None
    f1: float | None
    normal_readings: int
    false_alarms_per_10k: float | None
    false_alarms_per_100k: float | None
    mean_delay_s: float | None
    median_delay_s: float | None
    auc_pr: float | None
    positive_rate: float | None
    per_kind: dict[str, KindScores] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def event_scores(
    events: Sequence[Event],
    alerts: Mapping[str, Sequence[float] | np.ndarray],
    ts: Mapping[str, np.ndarray],
    label: Mapping[str, np.ndarray],
    score: Mapping[str, np.ndarray] | None = None,
    start: Mapping[str, float] | None = None,
    tolerance_s: float = 0.0,
) -> Scores:
    """Score one detector's alerts and per-reading scores against labelled events.

    ``alerts`` holds each sensor's alert times; ``ts``/``label``/``score`` its readings.
    Readings, alerts and events that end before ``start[sensor]`` (training data) are left
    out.
    """
    begin = start or {}
    events = [e for e in events if e.end >= begin.get(e.sensor, -math.inf)]
    by_sensor: dict[str, list[Event]] = {}
    for e in events:
        by_sensor.setdefault(e.sensor, []).append(e)
    first_hit: dict[int, float] = {}
    event_ids = {id(e): i for i, e in enumerate(events)}
    n_alerts = n_true = n_normal = 0
    all_s: list[np.ndarray] = []
    all_y: list[np.ndarray] = []
    all_k: list[np.ndarray] = []
    for sensor in sorted(set(ts) | set(alerts)):
        t0 = begin.get(sensor, -math.inf)
        evs = sorted(by_sensor.get(sensor, []), key=lambda e: e.start)
        a = np.sort(np.asarray(alerts.get(sensor, ()), dtype=np.float64))
        a = a[a >= t0]
        matched = np.zeros(a.size, dtype=bool)
        for e in evs:
            inside = (a >= e.start) & (a <= e.end + tolerance_s)
            matched |= inside
            if inside.any():
                first_hit[event_ids[id(e)]] = float(a[inside][0]) - e.start
        n_alerts += a.size
        n_true += int(matched.sum())
        if sensor not in ts:
            continue
        t = np.asarray(ts[sensor], dtype=np.float64)
        y = np.asarray(label[sensor]).astype(bool)
        kind = np.full(t.size, "", dtype=object)
        tail = np.zeros(t.size, dtype=bool)
        for e in evs:
            kind[(t >= e.start) & (t <= e.end)] = e.kind
            tail |= (t > e.end) & (t <= e.end + tolerance_s)
        kind[y & (kind == "")] = "unlabelled"
        use = (t >= t0) & ~(tail & ~y)
        n_normal += int((use & ~y).sum())
        if score is not None and sensor in score:
            s = np.asarray(score[sensor], dtype=np.float64)
            ok = use & np.isfinite(s)
            all_s.append(s[ok])
            all_y.append(y[ok])
            all_k.append(kind[ok])
    scores = np.concatenate(all_s) if all_s else np.empty(0)
    ys = np.concatenate(all_y) if all_y else np.empty(0, dtype=bool)
    kinds = np.concatenate(all_k) if all_k else np.empty(0, dtype=object)
    delays = np.asarray(list(first_hit.values()))
    n_events = len(events)
    recall = _ratio(len(first_hit), n_events)
    precision = _ratio(n_true, n_alerts)
    if recall is None:
        f1 = None
    elif not precision or not recall:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    per_kind: dict[str, KindScores] = {}
    for k in sorted({e.kind for e in events}):
        ids = [i for i, e in enumerate(events) if e.kind == k]
        hits = [first_hit[i] for i in ids if i in first_hit]
        sel = (kinds == k) | ~ys
        has_pos = bool(np.any(kinds == k))
        per_kind[k] = KindScores(
            events=len(ids),
            detected=len(hits),
            recall=_ratio(len(hits), len(ids)),
            mean_delay_s=float(np.mean(hits)) if hits else None,
            auc_pr=average_precision(scores[sel], ys[sel]) if has_pos else None,
            positive_rate=_ratio(int((kinds == k).sum()), int(sel.sum())) if has_pos else None,
        )
    return Scores(
        events=n_events,
        detected=len(first_hit),
        recall=recall,
        alerts=n_alerts,
        true_alerts=n_true,
        false_alerts=n_alerts - n_true,
        precision=precision,
        f1=f1,
        normal_readings=n_normal,
        false_alarms_per_10k=(1e4 * (n_alerts - n_true) / n_normal if n_normal else None),
        false_alarms_per_100k=(1e5 * (n_alerts - n_true) / n_normal if n_normal else None),
        mean_delay_s=float(delays.mean()) if delays.size else None,
        median_delay_s=float(np.median(delays)) if delays.size else None,
        auc_pr=average_precision(scores, ys) if ys.any() else None,
        positive_rate=_ratio(int(ys.sum()), int(ys.size)) if ys.size else None,
        per_kind=per_kind,
    )


def alert_onsets(
    ts: np.ndarray,
    verdicts: np.ndarray,
    k: int,
    n: int,
    m: int,
    hold_s: float = 0.0,
    refractory: int = 0,
) -> np.ndarray:
    """Times at which the daemon's alert state machine (k of n up; m down, after an off-delay
    of ``hold_s``; no raise within ``refractory`` verdicts of the last) would raise."""
    from streamwatch.pipeline.alerts import RAISED, AlertState

    state = AlertState(k, n, m, hold_s, refractory)
    out = []
    for t, v in zip(np.asarray(ts).tolist(), np.asarray(verdicts).tolist(), strict=True):
        change = state.update(bool(v), t)
        if change is not None and change[0] == RAISED:
            out.append(t)
    return np.asarray(out, dtype=np.float64)


def events_from_labels(
    ts: Mapping[str, np.ndarray], label: Mapping[str, np.ndarray], kind: str = "unknown"
) -> list[Event]:
    """One event per run of consecutive 1-labels, for data that has no events file."""
    out: list[Event] = []
    for sensor in sorted(ts):
        y = np.r_[0, np.asarray(label[sensor], dtype=np.int64), 0]
        d = np.diff(y)
        for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1, strict=True):
            out.append(Event(sensor, float(ts[sensor][a]), float(ts[sensor][b]), kind))
    return out


# -- events on a group of sensors (a SKAB experiment) -----------------------------------------

Transition = tuple[float, str]
"""One alert transition of one sensor: ``(ts, "raised" | "cleared")``."""


def alert_spans(
    transitions: Sequence[Transition], end: float = math.inf
) -> list[tuple[float, float]]:
    """Half-open ``[raised, cleared)`` spans from one sensor's transitions in time order.

    A raise while already raised, or a clear while clear, changes nothing; an alert still
    raised at the last transition runs to ``end``.
    """
    spans: list[tuple[float, float]] = []
    opened: float | None = None
    for t, state in transitions:
        if state == "raised" and opened is None:
            opened = t
        elif state == "cleared" and opened is not None:
            spans.append((opened, t))
            opened = None
    if opened is not None:
        spans.append((opened, end))
    return spans


@dataclass
class GroupScores:
    """Figures for events that belong to a group of sensors (one SKAB experiment: 8 sensors).

    An event is *found* when any sensor of its group raises inside ``[start, end]``; a raise
    on any sensor of a group outside every event of that group is a *false raise*. The
    point-wise figures compare, row by row, "some sensor of the group has an alert raised and
    not yet cleared" with the group's label, pooled over groups.
    """

    events: int
    found: int
    recall: float | None
    raises: int
    false_raises: int
    point_precision: float | None
    point_recall: float | None
    point_f1: float | None
    scored_rows: int
    mean_delay_s: float | None
    median_delay_s: float | None
    found_per_group: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def group_event_scores(
    groups: Mapping[str, Sequence[str]],
    events: Sequence[Event],
    transitions: Mapping[str, Sequence[Transition]],
    ts: Mapping[str, np.ndarray],
    label: Mapping[str, np.ndarray],
    start: Mapping[str, float] | None = None,
) -> GroupScores:
    """Score alert transitions against events that belong to groups of sensors.

    ``groups`` maps a group to its sensors; each event's ``sensor`` is its group's name;
    ``transitions`` holds each sensor's alert transitions; ``ts``/``label`` are each group's
    row times and labels. Rows, raises and events before ``start[group]`` (training data) are
    left out.
    """
    begin = start or {}
    n_events = found = raises = false_raises = tp = fp = fn = rows = 0
    delays: list[float] = []
    per_group: dict[str, int] = {}
    for g, sensors in sorted(groups.items()):
        t0 = begin.get(g, -math.inf)
        evs = [e for e in events if e.sensor == g and e.end >= t0]
        up = np.sort(
            np.asarray(
                [t for s in sensors for t, st in transitions.get(s, ()) if st == "raised"],
                dtype=np.float64,
            )
        )
        up = up[up >= t0]
        inside = np.zeros(up.size, dtype=bool)
        per_group[g] = 0
        for e in evs:
            hit = (up >= e.start) & (up <= e.end)
            inside |= hit
            if hit.any():
                per_group[g] += 1
                delays.append(float(up[hit][0]) - e.start)
        n_events += len(evs)
        found += per_group[g]
        raises += up.size
        false_raises += int((~inside).sum())
        if g not in ts:
            continue
        t = np.asarray(ts[g], dtype=np.float64)
        y = np.asarray(label[g]).astype(bool)
        pred = np.zeros(t.size, dtype=bool)
        for s in sensors:
            for a, b in alert_spans(list(transitions.get(s, ()))):
                pred |= (t >= a) & (t < b)
        use = t >= t0
        rows += int(use.sum())
        tp += int((pred & y & use).sum())
        fp += int((pred & ~y & use).sum())
        fn += int((~pred & y & use).sum())
    p = _ratio(tp, tp + fp)
    r = _ratio(tp, tp + fn)
    if r is None:
        f1 = None
    elif not p or not r:
        f1 = 0.0  # no row predicted, or none right
    else:
        f1 = 2 * p * r / (p + r)
    return GroupScores(
        events=n_events,
        found=found,
        recall=_ratio(found, n_events),
        raises=raises,
        false_raises=false_raises,
        point_precision=p,
        point_recall=r,
        point_f1=f1,
        scored_rows=rows,
        mean_delay_s=float(np.mean(delays)) if delays else None,
        median_delay_s=float(np.median(delays)) if delays else None,
        found_per_group=per_group,
    )
