"""Training group models: the long CSV's grouped sensors aligned per group, then fitted and
calibrated by the same :func:`streamwatch.training.fit_calibrated` as single sensors.

Each group's members are put on one grid by the engine's own aligner
(:mod:`streamwatch.pipeline.align`, the same period, maximum age and missing policy), so a
model is trained on exactly the steps the daemon will score; members may or may not share
timestamps. Labelled rows (``label != 0``) are left out, as for single sensors. The steps of
each group, ``(N, members)``, are one "series" to ``fit_calibrated``, with the group detector,
window and threshold settings of ``[groups]``. The bundle records each group's members and
period (``trained_on["groups"]``), so the daemon aligns them the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from streamwatch.config import Config
from streamwatch.dataset import Series
from streamwatch.detectors import bundle
from streamwatch.detectors.bundle import Model
from streamwatch.pipeline.align import Aligner
from streamwatch.pipeline.groups import Grouper
from streamwatch.training import TrainError, fit_calibrated

log = logging.getLogger(__name__)


def split_groups(
    cfg: Config, data: Mapping[str, Series]
) -> tuple[dict[str, dict[str, Series]], dict[str, Series]]:
    """The data's grouped sensors as ``{group: {member: series}}``, and the rest."""
    grouper = Grouper(cfg.groups.patterns)
    groups: dict[str, dict[str, Series]] = {}
    alone: dict[str, Series] = {}
    for sensor, series in data.items():
        m = grouper.match(sensor)
        if m is None:
            alone[sensor] = series
        else:
            groups.setdefault(m[0], {})[m[1]] = series
    return groups, alone


def align_group(cfg: Config, members: Mapping[str, Series]) -> tuple[Series, dict[str, Any]]:
    """One group's normal readings on its grid: ``(step times, (N, members) values, None)``
    and what the daemon needs to align it alike (members, period, missing steps)."""
    g = cfg.groups
    readings: list[tuple[float, str, float]] = []
    for member, (ts, values, labels) in members.items():
        keep = np.ones(ts.size, dtype=bool) if labels is None else labels == 0
        readings += zip(
            ts[keep].tolist(), [member] * int(keep.sum()), values[keep].tolist(), strict=True
        )
    readings.sort(key=lambda r: r[0])
    al = Aligner(None, g.period_s, g.max_age_s, g.missing, max_members=g.max_members)
    stamps: list[float] = []
    rows: list[np.ndarray] = []
    for t, member, v in readings:
        for step in al.add(member, t, v):
            stamps.append(step.ts)
            rows.append(step.values)
    m = len(al.members or ())
    values = np.stack(rows) if rows else np.empty((0, m))
    meta = {
        "members": list(al.members or ()),
        "period_s": al.period_s,
        "missing_steps": al.missing_steps,
    }
    return (np.asarray(stamps, dtype=np.float64), values, None), meta


def group_config(cfg: Config) -> Config:
    """The config with ``[groups]``'s detector, window and threshold in the single-sensor
    places, for :func:`fit_calibrated`."""
    g = cfg.groups
    return cfg.model_copy(
        update={
            "detector": g.detector,
            "windows": cfg.windows.model_copy(update={"length": g.window, "stride": 1}),
            "threshold": g.threshold,
        }
    )


def fit_groups(
    cfg: Config,
    groups: Mapping[str, Mapping[str, Series]],
    source: str | None,
    litert: bool = False,
) -> Model:
    """Align each group, then fit and calibrate the group detector on all of them. A group
    with too few steps is skipped and reported (``fit_calibrated``'s rule). ``litert``: export
    the networks to LiteRT where the detector does (the RVAE), as ``streamwatch train``."""
    aligned: dict[str, Series] = {}
    meta: dict[str, dict[str, Any]] = {}
    for group, members in sorted(groups.items()):
        aligned[group], meta[group] = align_group(cfg, members)
        log.info(
            "group %s: %d members on a %.3gs grid, %d steps (%d with a member missing)",
            group,
            len(meta[group]["members"]),
            meta[group]["period_s"] or 0.0,
            aligned[group][1].shape[0],
            meta[group]["missing_steps"],
        )
    model = fit_calibrated(group_config(cfg), aligned, source, litert=litert)
    known = set(model.trained_on.get("sensors", ()))
    model.trained_on["groups"] = {g: m for g, m in meta.items() if g in known}
    return model


def train_with_groups(
    cfg: Config,
    data: Mapping[str, Series],
    model_dir: Path,
    source: str | None = None,
    litert: bool = True,
) -> tuple[Model | None, Model | None]:
    """``streamwatch train`` with ``[groups]``: sensors in no group train the configured
    detector into ``model_dir`` (as without groups), groups train the group detector into
    ``groups.bundle_dir`` (with LiteRT models unless ``litert`` is False). Returns
    (single-sensor model, group model), None where there was nothing of that kind. Raises
    :class:`TrainError` if neither could be trained."""
    from streamwatch.training import train

    groups, alone = split_groups(cfg, data)
    single = group_model = None
    errors = []
    if alone:
        try:
            single = train(cfg, alone, model_dir, source, litert=litert)
        except TrainError as exc:
            errors.append(f"sensors in no group: {exc}")
    if groups:
        path = cfg.groups.bundle_dir(model_dir)
        assert path is not None
        try:
            group_model = fit_groups(cfg, groups, source, litert=litert)
        except TrainError as exc:
            errors.append(f"groups: {exc}")
        else:
            bundle.save(group_model, path)
    if single is None and group_model is None:
        raise TrainError("; ".join(errors) or "no readings")
    if not alone and not (model_dir / bundle.MANIFEST).exists():
        # Every sensor is in a group: an empty single-sensor bundle still marks model_dir
        # as trained, so `run` and `replay` load it; a sensor met later warms up.
        empty = bundle.fresh(cfg.detector, cfg.windows.length, cfg.threshold.false_alarm_rate)
        if not empty.detector.shared_weights:
            empty.trained_on = {"sensors": [], "source": source, "note": "every sensor in a group"}
            bundle.save(empty, model_dir)
    for e in errors:
        log.warning("%s", e)
    return single, group_model
