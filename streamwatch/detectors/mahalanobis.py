"""A cheap multivariate detector for groups: Mahalanobis distances over the members.

Each row is a window of ``time x members`` (a group's aligned steps; a single sensor's window
is one member). Each member is standardised by its normal mean and standard deviation; a
missing value (NaN, imputed by the aligner) becomes the member's normal mean, 0. Two parts:

- ``point``: the Mahalanobis distance of the window's last step from the normal steps;
- ``level``: the Mahalanobis distance of the mean of the last ``span`` steps from the normal
  means of ``span`` steps (noise averages out; a shift of the members' joint level, or of
  their relation, does not).

Each part's covariance is the normal one, ridge-regularised, so members that move together
normally (flow and current of one pump) make a break in that relation far, while each member
stays within its own range. Each part is divided by its largest value on the normal data, and
the score is the larger ratio (``score_kind = "ratio"``, as the robust detector's): the
calibration policy then puts the threshold at ``threshold.margin`` times the normal largest.

:meth:`member_shares` says how much each member contributes to a row's score: how far each
member is from what the other members predict for it (its conditional residual, ``(P d)_j /
sqrt(P_jj)`` with ``P`` the precision matrix), squared, as shares that sum to 1. So in a
coupling break the member that left the relation comes first, not its partners.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np

from streamwatch.config import DetectorConfig, MahalanobisConfig
from streamwatch.detectors.base import Detector, NotTrained

log = logging.getLogger(__name__)

_MIN_SD = 1e-9
PARTS = ("point", "level")


def as_3d(x: np.ndarray) -> np.ndarray:
    """A batch of windows as (B, window, members): a (B, window) batch is one member."""
    a = np.asarray(x, dtype=np.float64)
    return a[:, :, None] if a.ndim == 2 else a


def standardised_rows(values: np.ndarray) -> np.ndarray:
    """Training values as (N, members) float64: a 1-D series is one member."""
    v = np.asarray(values, dtype=np.float64)
    return v[:, None] if v.ndim == 1 else v


class MahalanobisDetector(Detector):
    """Per-group normal means and covariances; see the module docstring."""

    name: ClassVar[str] = "mahalanobis"
    kind: ClassVar[Literal["reading", "window"]] = "window"
    score_kind: ClassVar[Literal["nll", "ratio"]] = "ratio"
    uses_tensorflow = False
    part_names: ClassVar[tuple[str, ...]] = PARTS

    def __init__(self, config: DetectorConfig, window: int) -> None:
        super().__init__(config, window)
        assert isinstance(config, MahalanobisConfig)
        self.span = min(config.span, self.window)
        self.ridge = config.ridge
        self.use_point = config.point
        self.groups: dict[str, dict[str, np.ndarray]] = {}

    # -- model ----------------------------------------------------------------------------

    def adapt(self, sensor: str, values: np.ndarray) -> None:
        """Learn one group's (or sensor's) normal means, scales and covariances from its
        aligned normal steps, (N,) or (N, members); ValueError if too few."""
        v = standardised_rows(values)
        n = v.shape[0]
        if n < self.window + 10:
            raise ValueError(f"{sensor!r}: need at least {self.window + 10} steps to fit, got {n}")
        finite = np.isfinite(v)
        if not finite.any(axis=0).all():
            raise ValueError(f"{sensor!r}: a member has no finite value")
        mean = np.nanmean(v, axis=0)
        sd = np.nanstd(v, axis=0)
        sd = np.where(sd > _MIN_SD, sd, np.maximum(np.abs(mean) * 1e-6, _MIN_SD))
        z = np.where(finite, (v - mean) / sd, 0.0)
        levels = _trailing_means(z, self.span)
        state: dict[str, np.ndarray] = {"mean": mean, "sd": sd}
        for part, rows in (("point", z), ("level", levels)):
            center = rows.mean(axis=0)
            prec = self._precision(rows - center)
            d = _distance(rows - center, prec)
            top = float(d.max()) if d.size else 0.0
            state[f"{part}_center"] = center
            state[f"{part}_precision"] = prec
            state[f"{part}_top"] = np.asarray([top if top > 0 else 1.0])
        self.groups[sensor] = state

    def _precision(self, centred: np.ndarray) -> np.ndarray:
        m = centred.shape[1]
        cov = centred.T @ centred / max(centred.shape[0] - 1, 1)
        cov += (self.ridge * float(np.trace(cov)) / m + _MIN_SD) * np.eye(m)
        inv: np.ndarray = np.linalg.inv(cov)
        return inv

    def follow(self, sensors: Sequence[str], values: np.ndarray, rate: float) -> None:
        """Protected adaptation (the engine's ``Detector.follow`` contract): move each group's
        normal member means a fraction ``rate`` of the way toward its step in ``values``
        (B, members), in order where a group has several. Only the level moves: the scales,
        covariances and part scales stay as learned, so a break in how members move together
        scores as far out as before. A missing (NaN) member's mean stays."""
        if not len(sensors):
            return
        v = standardised_rows(values)
        keep = 1.0 - rate
        for sensor, row in zip(sensors, v, strict=True):
            state = self.groups.get(sensor)
            if state is None:
                continue
            mean = state["mean"]
            ok = np.isfinite(row)
            mean[ok] = keep * mean[ok] + rate * row[ok]

    def forget(self, sensor: str) -> None:
        """Drop a group's state."""
        self.groups.pop(sensor, None)

    def knows(self, sensor: str) -> bool:
        """Whether the group (or sensor) was fitted."""
        return sensor in self.groups

    def members_of(self, sensor: str) -> int:
        """How many members the fitted group has."""
        return int(self.groups[sensor]["mean"].size)

    # -- scoring --------------------------------------------------------------------------

    def _stacked(self, sensors: Sequence[str], key: str) -> np.ndarray:
        try:
            return np.stack([self.groups[s][key] for s in sensors])
        except KeyError as exc:
            raise NotTrained(f"{exc.args[0]!r} is not fitted") from None

    def _deviations(self, sensors: Sequence[str], x: np.ndarray) -> dict[str, np.ndarray]:
        """Each part's centred deviation, (B, members)."""
        w = as_3d(x)
        mean, sd = self._stacked(sensors, "mean"), self._stacked(sensors, "sd")
        z = (w - mean[:, None, :]) / sd[:, None, :]
        z = np.where(np.isfinite(z), z, 0.0)
        return {
            "point": z[:, -1, :] - self._stacked(sensors, "point_center"),
            "level": z[:, -self.span :, :].mean(axis=1) - self._stacked(sensors, "level_center"),
        }

    def parts(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """(B, 2): the point and level distances over their normal largest."""
        if len(sensors) == 0:
            return np.empty((0, len(PARTS)))
        dev = self._deviations(sensors, x)
        cols = []
        for part in PARTS:
            prec = self._stacked(sensors, f"{part}_precision")
            top = self._stacked(sensors, f"{part}_top")[:, 0]
            cols.append(_batched_distance(dev[part], prec) / top)
        out = np.stack(cols, axis=1)
        if not self.use_point:
            out[:, 0] = 0.0  # the point part left out: the level part decides
        return out

    def score(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """The larger of the two ratios per row (B,)."""
        if len(sensors) == 0:
            return np.empty(0)
        out: np.ndarray = self.parts(sensors, x).max(axis=1)
        return out

    def member_shares(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """(B, members): each member's share of the row's larger part (shares sum to 1)."""
        dev = self._deviations(sensors, x)
        which = self.parts(sensors, x).argmax(axis=1)
        out = np.empty(dev["point"].shape)
        for k, part in enumerate(PARTS):
            rows = which == k
            if not rows.any():
                continue
            d = dev[part][rows]
            prec = self._stacked(
                [s for s, r in zip(sensors, rows, strict=True) if r], part + "_precision"
            )
            # Member j's residual given the others: (P d)_j / sqrt(P_jj), squared.
            pd = np.einsum("bij,bj->bi", prec, d)
            diag = np.diagonal(prec, axis1=1, axis2=2)
            terms = pd * pd / diag
            out[rows] = terms / np.maximum(terms.sum(axis=1, keepdims=True), 1e-300)
        return out

    # -- persistence ----------------------------------------------------------------------

    def _sensor_state(self) -> dict[str, Any]:
        return {g: {k: v.tolist() for k, v in st.items()} for g, st in self.groups.items()}

    def _restore_sensor_state(self, state: dict[str, Any]) -> None:
        groups = {}
        for g, st in state.items():
            arrays = {k: np.asarray(v, dtype=np.float64) for k, v in st.items()}
            m = arrays["mean"].size
            for part in PARTS:
                if arrays[f"{part}_precision"].shape != (m, m):
                    raise ValueError(f"{g!r}: {part}_precision is not {m}x{m}")
            groups[str(g)] = arrays
        self.groups = groups


def _trailing_means(z: np.ndarray, span: int) -> np.ndarray:
    """Means of every ``span`` consecutive rows of (N, M): (N - span + 1, M)."""
    c = np.cumsum(np.vstack([np.zeros((1, z.shape[1])), z]), axis=0)
    out: np.ndarray = (c[span:] - c[:-span]) / span
    return out


def _distance(d: np.ndarray, prec: np.ndarray) -> np.ndarray:
    """Mahalanobis distances of rows (N, M) under one precision matrix."""
    q = np.einsum("ij,jk,ik->i", d, prec, d)
    out: np.ndarray = np.sqrt(np.maximum(q, 0.0))
    return out


def _batched_distance(d: np.ndarray, prec: np.ndarray) -> np.ndarray:
    """Mahalanobis distances of rows (B, M), each under its own precision (B, M, M)."""
    q = np.einsum("bi,bij,bj->b", d, prec, d)
    out: np.ndarray = np.sqrt(np.maximum(q, 0.0))
    return out
