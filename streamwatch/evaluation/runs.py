"""Running detectors on a data set: ours through the daemon's engine, the baselines beside it.

Our detector runs through :func:`streamwatch.replay.replay`, exactly the daemon's engine, at
its shipped (calibrated) threshold; its alerts are the ``raised`` transitions. Each baseline
(:mod:`streamwatch.evaluation.baselines`) scores the same windows, gets its threshold by the same
calibration rule at the same false-alarm rate, and goes through the same alert state
machine. :func:`evaluate` then scores all of them the same way
(:mod:`streamwatch.evaluation.scoring`), and on NAB data also by the NAB score
(:mod:`streamwatch.evaluation.nab`) for its three profiles.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamwatch.evaluation.datasets import Dataset, subset
from streamwatch.evaluation.nab import STANDARD_PROFILES, CostMatrix, NabScore, score_alarms
from streamwatch.evaluation.scoring import (
    Event,
    GroupScores,
    Transition,
    alert_onsets,
    event_scores,
    group_event_scores,
)

log = logging.getLogger(__name__)

OURS = "streamwatch"


@dataclass
class Run:
    """One detector's output on a data set."""

    detector: str
    alerts: dict[str, np.ndarray]
    score: dict[str, np.ndarray]
    threshold: dict[str, float | None]
    seconds: float
    transitions: dict[str, list[Transition]] = field(default_factory=dict)
    """Every alert transition per sensor, ``(ts, "raised" | "cleared")`` (our detector only)."""
    protocol: str = "warmup"


PROTOCOLS = ("warmup", "train")
"""``warmup``: the engine learns each sensor from its own first readings; ``train``: one model
fitted on every sensor's training prefix at once (``streamwatch train``), then replayed."""
TrainSeries = Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]


def with_seed(cfg: Any, seed: int | None) -> Any:
    """The config with ``detector.seed = seed``, where the detector has a seed at all."""
    if seed is None or "seed" not in type(cfg.detector).model_fields:
        return cfg
    return cfg.model_copy(update={"detector": cfg.detector.model_copy(update={"seed": seed})})


def _collect(run: Run, c: Any, model: Any, transitions: list[Any], ds: Dataset) -> None:
    """Fill ``run`` with the alerts, transitions, thresholds and scores of ``ds``'s sensors
    (its training readings unscored) from one replay."""
    per: dict[str, list[Transition]] = {}
    for e in transitions:
        if e.reason == "reclassified":  # the same alert, published again as a sensor fault
            continue
        per.setdefault(e.sensor, []).append((float(e.ts), str(e.state)))
    for s in ds.sensors:
        if s not in ds.n_train:
            continue
        run.transitions[s] = per.get(s, [])
        run.alerts[s] = np.asarray([t for t, st in run.transitions[s] if st == "raised"])
        run.threshold[s] = model.thresholds.get(s)
        run.score[s] = _reading_scores(model.detector, s, ds.value[s], c.engine.max_batch)
        run.score[s][: ds.n_train[s]] = np.nan  # training readings are never scored


def run_streamwatch(cfg: Any, ds: Dataset, model_dir: Path | None = None) -> Run:
    """The ``warmup`` protocol (or a given bundle): replay the data set through the daemon's
    engine, which learns each sensor from its first ``n_train`` readings; a detector that
    needs shared weights is first trained on those same readings by ``fit_calibrated``."""
    from streamwatch.detectors import bundle
    from streamwatch.replay import replay
    from streamwatch.training import fit_calibrated

    t_begin = time.perf_counter()
    groups: dict[int, list[str]] = {}
    for s in ds.sensors:
        groups.setdefault(ds.n_train[s], []).append(s)
    run = Run(f"{OURS}:{cfg.detector.type}", {}, {}, {}, 0.0, protocol="warmup")
    for warmup, sensors in sorted(groups.items()):
        learning = cfg.learning.model_copy(update={"warmup": max(10, warmup)})
        c = cfg.model_copy(update={"learning": learning})
        if model_dir:
            model = bundle.load(model_dir, c.detector, inference=c.engine.inference)
        else:
            model = bundle.fresh(c.detector, c.windows.length, c.threshold.false_alarm_rate)
        if not model.detector.trained:
            log.info(
                "training %s on the first %d readings of %d sensors",
                run.detector,
                warmup,
                len(sensors),
            )
            train = {s: (ds.ts[s][:warmup], ds.value[s][:warmup], None) for s in sensors}
            model = fit_calibrated(c, train, source=f"{ds.name} training readings")
        transitions = replay(c, model, {s: (ds.ts[s], ds.value[s]) for s in sensors})
        _collect(run, c, model, transitions, subset(ds, sensors, ds.split))
    run.seconds = time.perf_counter() - t_begin
    return run


def without_groups(cfg: Any) -> Any:
    """The config with no ``[groups]`` patterns: every sensor scored alone."""
    if not cfg.groups.patterns:
        return cfg
    return cfg.model_copy(update={"groups": cfg.groups.model_copy(update={"patterns": []})})


def run_groups(cfg: Any, ds: Dataset) -> Run:
    """The ``groups`` protocol: replay the data set through the daemon's engine with the
    config's ``[groups]``; each group warms up on the aligned steps of its first ``n_train``
    readings and is scored as one. A group's alert transitions count for each of its members
    (so per-sensor event figures apply), and for the group in the SKAB figures."""
    from streamwatch.detectors import bundle
    from streamwatch.pipeline.groups import Grouper
    from streamwatch.replay import replay

    t_begin = time.perf_counter()
    g = cfg.groups
    grouper = Grouper(g.patterns)
    by_warmup: dict[int, list[str]] = {}
    for s in ds.sensors:
        by_warmup.setdefault(ds.n_train[s], []).append(s)
    run = Run(f"{OURS}:groups:{g.detector.type}", {}, {}, {}, 0.0, protocol="groups")
    trained = None
    if bundle.fresh(g.detector, g.window, 0.01).detector.shared_weights:
        # Shared weights (rvae): trained first, as `streamwatch train` would, on every
        # group's training rows plus the extra normal series (SKAB's anomaly-free run).
        from streamwatch.group_training import fit_groups, split_groups

        train_groups, _ = split_groups(cfg, training_series(ds))
        trained = fit_groups(cfg, train_groups, f"{ds.name} training rows")
    for warmup, sensors in sorted(by_warmup.items()):
        learning = cfg.learning.model_copy(update={"warmup": max(10, warmup)})
        c = cfg.model_copy(update={"learning": learning})
        model = bundle.fresh(c.detector, c.windows.length, c.threshold.false_alarm_rate)
        group_model = trained or bundle.fresh(g.detector, g.window, g.threshold.false_alarm_rate)
        transitions = replay(
            c, model, {s: (ds.ts[s], ds.value[s]) for s in sensors}, group_model=group_model
        )
        per: dict[str, list[Transition]] = {}
        for e in transitions:
            per.setdefault(e.sensor, []).append((float(e.ts), str(e.state)))
        for s in sensors:
            m = grouper.match(s)
            key = m[0] if m is not None else s
            run.transitions[s] = per.get(key, [])
            run.alerts[s] = np.asarray([t for t, st in run.transitions[s] if st == "raised"])
            run.threshold[s] = group_model.thresholds.get(key) if m is not None else None
            run.score[s] = np.full(ds.value[s].size, np.nan)  # a group scores no one sensor
    run.seconds = time.perf_counter() - t_begin
    return run


def training_series(ds: Dataset) -> dict[str, tuple[np.ndarray, np.ndarray, None]]:
    """What the ``train`` protocol fits on: every sensor's training prefix, plus the data
    set's extra normal series (SKAB's anomaly-free run) under their own names."""
    out = {s: (ds.ts[s][: ds.n_train[s]], ds.value[s][: ds.n_train[s]], None) for s in ds.sensors}
    out |= {s: (t, v, None) for s, (t, v) in ds.extra_train.items()}
    return out


def run_trained(
    cfg: Any, ds: Dataset, train: TrainSeries | None = None, seed: int | None = None
) -> Run:
    """The ``train`` protocol, as ``streamwatch train`` then ``replay`` do it: ONE model fitted
    and calibrated on ``train`` (default: :func:`training_series`) by ``fit_calibrated``,
    then every whole series replayed through the engine with it. ``seed`` sets
    ``detector.seed`` where the detector has one."""
    from streamwatch.replay import replay
    from streamwatch.training import fit_calibrated

    t_begin = time.perf_counter()
    c = with_seed(cfg, seed)
    data = training_series(ds) if train is None else train
    log.info("train protocol: fitting %s on %d series", c.detector.type, len(data))
    model = fit_calibrated(c, data, source=f"{ds.name} training series")
    transitions = replay(c, model, {s: (ds.ts[s], ds.value[s]) for s in ds.sensors})
    run = Run(f"{OURS}:{c.detector.type}@train", {}, {}, {}, 0.0, protocol="train")
    _collect(run, c, model, transitions, ds)
    run.seconds = time.perf_counter() - t_begin
    return run


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
            ds.ts[s][n:],
            verdict[n:],
            a.raise_k,
            a.raise_n,
            a.clear_m,
            a.clear_hold_s,
            a.refractory,
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


def group_scores(ds: Dataset, run: Run) -> GroupScores:
    """SKAB figures of one run: events found on any sensor of their experiment, false raises,
    point-wise F1 of the alert spans (see :func:`group_event_scores`). A ``groups`` run's
    alerts are the group's, copied onto each member: counted once per group."""
    assert ds.groups is not None
    members = ds.groups
    if run.protocol == "groups":
        members = {g: m[:1] for g, m in ds.groups.items()}
    first = {g: m[0] for g, m in ds.groups.items() if m}
    start = ds.start()
    events = sorted(
        {
            Event(g, e.start, e.end, e.kind)
            for g, s in first.items()
            for e in ds.events
            if e.sensor == s
        },
        key=lambda e: (e.sensor, e.start),
    )
    return group_event_scores(
        members,
        events,
        run.transitions,
        {g: ds.ts[s] for g, s in first.items()},
        {g: ds.label[s] for g, s in first.items()},
        {g: start[s] for g, s in first.items()},
    )


def seed_spread(
    cfg: Any, ds: Dataset, seeds: Sequence[int], train: TrainSeries | None = None
) -> dict[str, Any]:
    """The ``train`` protocol once per seed: per-sensor threshold ratio (max/min over seeds,
    where all are positive) and spread, and the events found per seed."""
    runs = {seed: run_trained(cfg, ds, train, seed) for seed in seeds}
    ratios: dict[str, float | None] = {}
    spreads: dict[str, float] = {}
    for s in ds.sensors:
        thr = [r.threshold.get(s) for r in runs.values()]
        vals = np.asarray([t for t in thr if t is not None], dtype=np.float64)
        if vals.size < len(thr) or not vals.size:
            continue
        spreads[s] = float(vals.max() - vals.min())
        ratios[s] = float(vals.max() / vals.min()) if (vals > 0).all() else None
    good = np.asarray([r for r in ratios.values() if r is not None])
    found: dict[str, Any] = {}
    start = ds.start()
    for seed, r in runs.items():
        sc = event_scores(ds.events, r.alerts, ds.ts, ds.label, None, start, ds.tolerance_s)
        found[str(seed)] = {"found": sc.detected, "events": sc.events, "false": sc.false_alerts}
        if ds.groups is not None:
            g = group_scores(ds, r)
            found[str(seed)] |= {"group_found": g.found, "group_events": g.events}
    return {
        "dataset": ds.name,
        "seeds": list(seeds),
        "detector_has_seed": "seed" in type(cfg.detector).model_fields,
        "sensors": len(ratios),
        "threshold_ratio": ratios,
        "threshold_spread": spreads,
        "ratio_median": float(np.median(good)) if good.size else None,
        "ratio_worst": float(good.max()) if good.size else None,
        "ratio_undefined": sum(r is None for r in ratios.values()),
        "found_per_seed": found,
    }


def evaluate(
    cfg: Any,
    ds: Dataset,
    baselines: Sequence[str],
    model_dir: Path | None = None,
    seed: int = 0,
    protocols: Sequence[str] = ("warmup",),
) -> tuple[dict[str, Any], dict[str, Run]]:
    """Run our detector under each protocol (``warmup``, ``train``; see :data:`PROTOCOLS`) and
    the baselines on one data set; return the results and the runs."""
    from streamwatch.evaluation.baselines import BaselineUnavailable

    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        raise ValueError(f"unknown protocols {bad}; choose from {', '.join(PROTOCOLS)}")
    runs: dict[str, Run] = {}
    skipped: dict[str, str] = {}
    alone = without_groups(cfg)  # the per-sensor detectors, reported beside the groups
    if cfg.groups.patterns:
        run = run_groups(cfg, ds)
        runs[run.detector] = run
    for p in protocols:
        run = run_streamwatch(alone, ds, model_dir) if p == "warmup" else run_trained(alone, ds)
        runs[run.detector] = run
    for b in baselines:
        try:
            runs[b] = run_baseline(b, alone, ds, seed)
        except BaselineUnavailable as exc:
            log.warning("%s", exc)
            skipped[b] = str(exc)
    start = ds.start()
    detectors: dict[str, Any] = {}
    for name, r in runs.items():
        sc = event_scores(ds.events, r.alerts, ds.ts, ds.label, r.score, start, ds.tolerance_s)
        doc = sc.to_json()
        doc["seconds"] = round(r.seconds, 3)
        if name.startswith(OURS):
            doc["protocol"] = r.protocol
        if ds.nab_windows is not None:
            doc["nab"] = nab_scores(ds, r)
        if ds.groups is not None and name.startswith(OURS):
            doc["skab"] = group_scores(ds, r).to_json()
        detectors[name] = doc
        log.info("%s on %s: recall %s precision %s", name, ds.name, sc.recall, sc.precision)
    ours = {r.protocol: n for n, r in runs.items() if n.startswith(OURS)}
    result: dict[str, Any] = {
        "dataset": ds.name,
        "split": ds.split,
        "sensors": len(ds.sensors),
        "readings": ds.readings,
        "events": len(ds.events),
        "training_readings_per_sensor": sorted(set(ds.n_train.values())),
        "extra_training_series": sorted(ds.extra_train),
        "tolerance_s": ds.tolerance_s,
        "protocols": ours,
        "detectors": detectors,
        "skipped": skipped,
    }
    if ds.nab_windows is not None and all(p in ours for p in PROTOCOLS):
        a, b = (detectors[ours[p]]["nab"]["standard"]["score"] for p in PROTOCOLS)
        result["nab_standard_abs_diff"] = abs(a - b)
    return result, runs
