"""``streamwatch evaluate``: honest detection figures on labelled data, beside baselines.

Our detector runs through :func:`streamwatch.replay.replay`, exactly the daemon's engine, at
its shipped (calibrated) threshold; its alerts are the ``raised`` transitions. Each baseline
(:mod:`streamwatch.evaluation.baselines`) scores the same windows, gets its threshold by the same
calibration rule at the same false-alarm rate, and goes through the same alert state
machine. All of them are then scored the same way:

- **event recall**: the fraction of labelled events with at least one alert on the same
  sensor within ``[start, end + tolerance]``;
- **alert precision**: the fraction of alerts that fall in some event's
  ``[start, end + tolerance]``; **event F1** is their harmonic mean. No point adjustment:
  one alert is one alert, however long the event;
- **false alarms per 100,000 normal readings**: alerts matching no event, per 10⁵ readings
  labelled normal (readings in an event's tolerance tail are not counted as normal). Pooled
  over sensors this is also the rate per sensor per 10⁵ of its normal readings, the unit of
  the quality target; ``report.json`` keeps the per-10⁴ figure too;
- **mean detection delay**: first matching alert minus event start, seconds;
- **AUC-PR**: average precision of the per-reading scores against the per-reading labels,
  threshold-free (tolerance tails left out); compare it with the positive rate shown beside
  it, which is what a random scorer gets.

Everything is also given per anomaly kind (recall, delay, AUC-PR: precision has no kind).
The first ``n_train`` readings of every sensor (the detector's warm-up) are training data:
never scored, for any detector. On NAB data the training readings are the probationary
period, and the NAB score (:mod:`streamwatch.evaluation.nab`) is reported for its three profiles.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simulators.generate import Event, Simulated
from streamwatch.evaluation.nab import STANDARD_PROFILES, CostMatrix, NabScore, score_alarms

log = logging.getLogger(__name__)

OURS = "streamwatch"

# -- scoring maths (pure) -----------------------------------------------------------------


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
    ts: np.ndarray, verdicts: np.ndarray, k: int, n: int, m: int, hold_s: float = 0.0
) -> np.ndarray:
    """Times at which the daemon's alert state machine (k of n up; m down, after an off-delay
    of ``hold_s``) would raise."""
    from streamwatch.pipeline.alerts import RAISED, AlertState

    state = AlertState(k, n, m, hold_s)
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


# -- data sets ------------------------------------------------------------------------------


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


def from_simulated(sim: Simulated, name: str, n_train: int, tolerance_s: float) -> Dataset:
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


# -- running detectors ------------------------------------------------------------------------


@dataclass
class Run:
    """One detector's output on a data set."""

    detector: str
    alerts: dict[str, np.ndarray]
    score: dict[str, np.ndarray]
    threshold: dict[str, float | None]
    seconds: float


def run_streamwatch(cfg: Any, ds: Dataset, model_dir: Path | None = None) -> Run:
    """Replay the data set through the daemon's engine with the configured detector."""
    from streamwatch.detectors import bundle
    from streamwatch.replay import replay
    from streamwatch.training import fit_calibrated

    t_begin = time.perf_counter()
    alerts: dict[str, np.ndarray] = {}
    score: dict[str, np.ndarray] = {}
    threshold: dict[str, float | None] = {}
    groups: dict[int, list[str]] = {}
    for s in ds.sensors:
        groups.setdefault(ds.n_train[s], []).append(s)
    name = f"{OURS}:{cfg.detector.type}"
    for warmup, sensors in sorted(groups.items()):
        learning = cfg.learning.model_copy(update={"warmup": max(10, warmup)})
        c = cfg.model_copy(update={"learning": learning})
        if model_dir:
            model = bundle.load(model_dir, c.detector)
        else:
            model = bundle.fresh(c.detector, c.windows.length, c.threshold.false_alarm_rate)
        if not model.detector.trained:
            log.info(
                "training %s on the first %d readings of %d sensors", name, warmup, len(sensors)
            )
            train = {s: (ds.ts[s][:warmup], ds.value[s][:warmup], None) for s in sensors}
            model = fit_calibrated(c, train, source=f"{ds.name} training readings")
        transitions = replay(c, model, {s: (ds.ts[s], ds.value[s]) for s in sensors})
        for s in sensors:
            alerts[s] = np.asarray(
                [e.ts for e in transitions if e.sensor == s and e.state == "raised"]
            )
            threshold[s] = model.thresholds.get(s)
            score[s] = _reading_scores(model.detector, s, ds.value[s], c.engine.max_batch)
            score[s][:warmup] = np.nan  # the engine scores nothing while warming up
    return Run(name, alerts, score, threshold, time.perf_counter() - t_begin)


def _reading_scores(det: Any, sensor: str, values: np.ndarray, batch: int) -> np.ndarray:
    """The detector's score of the window ending at each reading (NaN where none ends)."""
    out = np.full(values.size, np.nan)
    if not det.knows(sensor):
        return out
    x = det.windows_of(values)
    if x.shape[0]:
        parts = [
            det.score([sensor] * len(x[i : i + batch]), x[i : i + batch])
            for i in range(0, len(x), batch)
        ]
        out[det.window - 1 :] = np.concatenate(parts)
    return out


def run_baseline(name: str, cfg: Any, ds: Dataset, seed: int = 0) -> Run:
    """Fit, calibrate and alert with one baseline, as the engine would with our detector."""
    from streamwatch.evaluation.baselines import score_series
    from streamwatch.pipeline.threshold import calibrate

    t_begin = time.perf_counter()
    alerts: dict[str, np.ndarray] = {}
    score: dict[str, np.ndarray] = {}
    threshold: dict[str, float | None] = {}
    a = cfg.alerts
    for s in ds.sensors:
        n = ds.n_train[s]
        sc, calib = score_series(name, ds.value[s], n, cfg.windows.length, seed)
        thr = calibrate(calib, cfg.threshold.false_alarm_rate)
        verdict = np.nan_to_num(sc, nan=-np.inf) > thr
        alerts[s] = alert_onsets(
            ds.ts[s][n:], verdict[n:], a.raise_k, a.raise_n, a.clear_m, a.clear_hold_s
        )
        sc[:n] = np.nan  # training readings, as for our detector
        score[s] = sc
        threshold[s] = thr
    return Run(name, alerts, score, threshold, time.perf_counter() - t_begin)


def nab_scores(
    ds: Dataset, run: Run, profiles: Mapping[str, CostMatrix] = STANDARD_PROFILES
) -> dict[str, dict[str, float]]:
    """NAB score per profile over the whole data set, alarms = the run's alert onsets."""
    assert ds.nab_windows is not None
    out: dict[str, dict[str, float]] = {}
    for pname, cost in profiles.items():
        total: NabScore | None = None
        for s in ds.sensors:
            flags = np.zeros(ds.ts[s].size, dtype=bool)
            rows = np.searchsorted(ds.ts[s], run.alerts.get(s, np.empty(0)))
            flags[rows[rows < flags.size]] = True
            part = score_alarms(flags, ds.nab_windows[s], cost, ds.n_train[s])
            total = part if total is None else total + part
        assert total is not None
        out[pname] = {
            "score": total.normalised,
            "raw": total.raw,
            "null": total.null,
            "perfect": total.perfect,
        }
    return out


# -- the whole evaluation ---------------------------------------------------------------------


def evaluate(
    cfg: Any,
    ds: Dataset,
    baselines: Sequence[str],
    model_dir: Path | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, Run]]:
    """Run our detector and the baselines on one data set; return the results and the runs."""
    from streamwatch.evaluation.baselines import BaselineUnavailable

    runs: dict[str, Run] = {}
    skipped: dict[str, str] = {}
    run = run_streamwatch(cfg, ds, model_dir)
    runs[run.detector] = run
    for b in baselines:
        try:
            runs[b] = run_baseline(b, cfg, ds, seed)
        except BaselineUnavailable as exc:
            log.warning("%s", exc)
            skipped[b] = str(exc)
    start = ds.start()
    detectors: dict[str, Any] = {}
    for name, r in runs.items():
        sc = event_scores(ds.events, r.alerts, ds.ts, ds.label, r.score, start, ds.tolerance_s)
        doc = sc.to_json()
        doc["seconds"] = round(r.seconds, 3)
        if ds.nab_windows is not None:
            doc["nab"] = nab_scores(ds, r)
        detectors[name] = doc
        log.info("%s on %s: recall %s precision %s", name, ds.name, sc.recall, sc.precision)
    result = {
        "dataset": ds.name,
        "sensors": len(ds.sensors),
        "readings": ds.readings,
        "events": len(ds.events),
        "training_readings_per_sensor": sorted(set(ds.n_train.values())),
        "tolerance_s": ds.tolerance_s,
        "detectors": detectors,
        "skipped": skipped,
    }
    return result, runs


# -- report -----------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(results: Sequence[Mapping[str, Any]], header: Mapping[str, Any]) -> str:
    """The Markdown report for every evaluated data set."""
    lines = ["# streamwatch evaluation", ""]
    lines += [f"- {k}: `{v}`" for k, v in header.items()]
    for res in results:
        dets: Mapping[str, Any] = res["detectors"]
        lines += [
            "",
            f"## {res['dataset']}",
            "",
            f"{res['sensors']} sensors/series, {res['readings']} readings, {res['events']} "
            f"labelled events; training (warm-up) readings per sensor: "
            f"{res['training_readings_per_sensor']}; alert tolerance after an event: "
            f"{res['tolerance_s']:g} s.",
            "",
        ]
        nab = any("nab" in d for d in dets.values())
        cols = [
            "detector",
            "event recall",
            "alert precision",
            "event F1",
            "false alarms / 100k",
            "mean delay (s)",
            "AUC-PR",
        ]
        if nab:
            cols += ["NAB standard", "NAB low FP", "NAB low FN"]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for name, d in dets.items():
            row = [
                f"`{name}`",
                f"{_f(d['recall'])} ({d['detected']}/{d['events']})",
                f"{_f(d['precision'])} ({d['true_alerts']}/{d['alerts']})",
                _f(d["f1"]),
                f"{_f(d['false_alarms_per_100k'], 2)} ({d['false_alerts']})",
                _f(d["mean_delay_s"], 1),
                _f(d["auc_pr"]),
            ]
            if nab:
                n = d["nab"]
                row += [
                    _f(n[p]["score"], 1)
                    for p in ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
                ]
            lines.append("| " + " | ".join(row) + " |")
        first = next(iter(dets.values()), None)
        if first is not None and first["positive_rate"] is not None:
            lines += [
                "",
                f"AUC-PR of a random scorer = positive rate = {first['positive_rate']:.3f}.",
            ]
        kinds = sorted({k for d in dets.values() for k in d["per_kind"]})
        if kinds:
            for title, key, digits in (
                ("Event recall by kind", "recall", 2),
                ("AUC-PR by kind", "auc_pr", 3),
                ("Mean detection delay by kind (s)", "mean_delay_s", 1),
            ):
                lines += [
                    "",
                    f"### {title}",
                    "",
                    "| detector | " + " | ".join(kinds) + " |",
                    "|" + "---|" * (len(kinds) + 1),
                ]
                for name, d in dets.items():
                    pk = d["per_kind"]
                    lines.append(
                        f"| `{name}` | "
                        + " | ".join(_f(pk[k][key], digits) if k in pk else "–" for k in kinds)
                        + " |"
                    )
            counts = first["per_kind"] if first is not None else {}
            lines += [
                "",
                "Events per kind: "
                + ", ".join(f"{k} {counts[k]['events']}" for k in kinds if k in counts)
                + ".",
            ]
        for name, why in res["skipped"].items():
            lines += ["", f"Skipped `{name}`: {why}"]
    return "\n".join(lines) + "\n"


def _time_unit(span_s: float) -> tuple[float, str]:
    """Seconds per plotting unit, and its name, for a time span."""
    if span_s <= 6 * 3600:
        return 60.0, "minutes"
    if span_s <= 10 * 86400:
        return 3600.0, "hours"
    return 86400.0, "days"


def _wide_positive(x: np.ndarray) -> bool:
    """Whether positive values span enough orders of magnitude to want a log axis."""
    return x.size > 0 and float(x.min()) > 0 and float(x.max()) / float(x.min()) > 100


def plot(ds: Dataset, run: Run, sensor: str, path_prefix: Path) -> list[Path]:
    """Two PNG figures for one sensor: signal/score/threshold/alerts/labels, and histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = ds.ts[sensor]
    unit, unit_name = _time_unit(float(t[-1] - t[0]))

    def rel(x: np.ndarray | float) -> Any:
        return (np.asarray(x) - t[0]) / unit

    v, y, s = ds.value[sensor], ds.label[sensor].astype(bool), run.score[sensor]
    thr = run.threshold.get(sensor)
    n_train = ds.n_train[sensor]
    finite = s[np.isfinite(s)]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    ax1.plot(rel(t), v, lw=0.5, color="tab:blue", label="reading")
    for e in ds.events:
        if e.sensor != sensor:
            continue
        for ax in (ax1, ax2):
            ax.axvspan(rel(e.start), rel(e.end), color="tab:red", alpha=0.15, lw=0)
        ax1.text(rel(e.start), float(np.nanmax(v)), e.kind, fontsize=7, rotation=90, va="top")
    if n_train < t.size:
        ax1.axvline(rel(t[n_train]), color="grey", ls=":", label="end of training")
    ax1.set_ylabel("value")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.plot(rel(t), s, lw=0.5, color="tab:green", label="score")
    if thr is not None:
        ax2.axhline(thr, color="black", ls="--", lw=0.8, label=f"threshold {thr:.3g}")
    marks = run.alerts.get(sensor, np.empty(0))
    level = thr if thr is not None else (float(finite.max()) if finite.size else 0.0)
    ax2.plot(rel(marks), np.full(marks.size, level), "v", color="tab:red", label="alert raised")
    if _wide_positive(finite):
        ax2.set_yscale("log")
    ax2.set_ylabel("score")
    ax2.set_xlabel(f"{unit_name} (shaded: labelled anomalies)")
    ax2.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{ds.name} / {sensor} / {run.detector}")
    fig.tight_layout()
    safe = sensor.replace("/", "_").replace(".csv", "")
    p1 = path_prefix.with_name(f"{path_prefix.name}_{safe}_signal.png")
    fig.savefig(p1, dpi=110)
    plt.close(fig)

    use = np.isfinite(s) & (np.arange(t.size) >= n_train)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    both = s[use]
    if both.size:
        lo = float(both.min())
        hi = max(float(np.quantile(both, 0.999)), thr if thr is not None else -np.inf)
        log_x = _wide_positive(np.array([lo, hi]))
        bins = np.geomspace(lo, hi, 80) if log_x else np.linspace(lo, hi, 80)
        for mask, name in ((use & ~y, "normal"), (use & y, "anomalous")):
            ax.hist(
                np.clip(s[mask], lo, hi),
                bins=bins.tolist(),
                alpha=0.6,
                density=True,
                label=f"{name} ({int(mask.sum())} readings)",
            )
        if log_x:
            ax.set_xscale("log")
    if thr is not None:
        ax.axvline(thr, color="black", ls="--", label=f"threshold {thr:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("score (clipped at the 99.9th percentile)")
    ax.set_ylabel("density")
    ax.set_title(f"{ds.name} / {sensor} / {run.detector}\nscores after training", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p2 = path_prefix.with_name(f"{path_prefix.name}_{safe}_hist.png")
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [p1, p2]


# -- command line -------------------------------------------------------------------------------
