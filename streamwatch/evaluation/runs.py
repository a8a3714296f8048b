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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamwatch.evaluation.datasets import Dataset
from streamwatch.evaluation.nab import STANDARD_PROFILES, CostMatrix, NabScore, score_alarms
from streamwatch.evaluation.scoring import alert_onsets, event_scores

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
