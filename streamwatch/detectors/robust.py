"""Robust combined detector: five deviations of a window from its sensor's normal.

For each window (the newest readings of a sensor) it measures, against a baseline learned
from the sensor's normal readings with robust statistics (median and MAD, so a few outliers
in the learning data do not widen it):

- ``point``: how far the newest reading lies from the normal level, ``|x - loc| / s``;
- ``level``: how far the mean of the last ``span`` readings lies from it, in units of the
  normal spread of such means (catches level shifts and drifts a single reading hides in
  noise);
- ``spread``: ``|log(sd / sd₀)|`` of the standard deviation of the last ``span`` first
  differences against its normal value: both tails, so a noise burst or a faster signal
  (too much movement) and a stuck or flat-lined transmitter (too little) both score;
- ``jump``: the newest first difference against the normal spread of differences;
- ``stuck``: how many readings in a row, up to the newest, repeat the same value. A sensor
  that repeats values in normal operation (a logger holding its last sample, a coarse
  quantiser: ``run0``, the longest such run in its learning data, is 2 or more) is judged
  stuck by this part alone, against the runs it showed, and its ``spread`` part counts only
  too much movement; for any other sensor a flat window is "too little movement" either way.

Each part is divided by its *scale*: the largest value the part took on the learning data
(at least a floor, so a perfectly clean signal is not armed at a hair trigger). The score is
the largest of the five ratios: 1.0 is "as far out as the worst normal window seen, in the
worst respect". The calibration policy (:mod:`streamwatch.pipeline.threshold`) sets the
threshold at a margin above the normal scores. :meth:`RobustDetector.parts` gives the five
ratios, which alerts carry so an operator sees which respect tripped.

Numpy only: no TensorFlow, a few microseconds a window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from streamwatch.config import RobustConfig
from streamwatch.detectors.base import Detector, finite_values
from streamwatch.detectors.table import SensorTable

PARTS = ("point", "level", "spread", "jump", "stuck")
_MAD_TO_SD = 1.4826
_STATE = (
    "loc",
    "s",
    "sm",
    "sd1",
    "d0",
    "k_point",
    "k_level",
    "k_spread",
    "k_jump",
    "run0",
    "k_stuck",
)
_OPTIONAL = ("run0", "k_stuck")
"""State a bundle saved before the ``stuck`` part lacks (then: no repeats, the floor)."""
REPEATS = 2
"""A sensor whose learning data repeat one value this many readings in a row repeats."""


def _trailing_repeats(w: np.ndarray) -> np.ndarray:
    """For each row, how many of its newest first differences are exactly zero in a row."""
    same = (np.diff(w, axis=1) == 0)[:, ::-1]
    return np.where(same.all(axis=1), same.shape[1], same.argmin(axis=1)).astype(np.float64)


def _longest_run(v: np.ndarray) -> int:
    """The longest run of exactly zero first differences in ``v``."""
    same = np.concatenate(([False], np.diff(v) == 0, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(same))
    return int((edges[1::2] - edges[::2]).max()) if edges.size else 0


def _robust_scale(x: np.ndarray, floor: float) -> tuple[float, float]:
    """(median, 1.4826·MAD) with the MAD floored at a tenth of the standard deviation and
    at ``floor`` (constant data)."""
    med = float(np.median(x))
    mad = _MAD_TO_SD * float(np.median(np.abs(x - med)))
    return med, max(mad, 0.1 * float(np.std(x)), floor)


class RobustDetector(Detector):
    """Per-sensor robust baseline; score = the worst of five deviation ratios."""

    name = "robust"
    kind = "window"
    score_kind = "ratio"
    uses_tensorflow = False
    part_names = PARTS

    def __init__(self, config: RobustConfig, window: int) -> None:
        if window < config.span + 1:
            raise ValueError(
                f"the robust detector needs windows.length >= span + 1 = {config.span + 1}, "
                f"got {window}"
            )
        super().__init__(config, window)
        self.cfg = config
        self._table = SensorTable({name: ((), 1.0) for name in _STATE})

    # -- learning --------------------------------------------------------------------------

    def adapt(self, sensor: str, values: np.ndarray) -> None:
        """Learn one sensor's baseline and part scales from its normal values."""
        span = self.cfg.span
        v = finite_values(sensor, values, least=span + 2)
        with np.errstate(over="ignore", invalid="ignore"):
            tiny = 1e-9 * max(1.0, float(np.max(np.abs(v))))
            loc, s = _robust_scale(v, tiny)
            d = np.diff(v)
            means = np.lib.stride_tricks.sliding_window_view(v, span).mean(axis=1)
            _, sm = _robust_scale(means, tiny)
            sm = max(sm, self.cfg.min_mean_spread * s / math.sqrt(span))
            _, sd1 = _robust_scale(d, tiny)
            d_sd = np.lib.stride_tricks.sliding_window_view(d, span).std(axis=1)
            d0 = float(np.median(d_sd))
        if not all(math.isfinite(x) for x in (loc, s, sm, sd1, d0)):
            raise ValueError(f"sensor {sensor!r}: baseline overflows; values too large")
        d0 = max(d0, tiny)
        self._table.set(
            sensor,
            loc=loc,
            s=s,
            sm=sm,
            sd1=sd1,
            d0=d0,
            k_point=1.0,
            k_level=1.0,
            k_spread=1.0,
            k_jump=1.0,
            run0=float(_longest_run(v)),
            k_stuck=1.0,
        )
        # Part scales: the worst each part was on the learning data, floored.
        x = self.windows_of(v)
        raw = self._raw_parts([sensor] * len(x), x) if len(x) else None
        floors = (
            self.cfg.min_scale,
            self.cfg.min_scale,
            self.cfg.min_scale_spread,
            self.cfg.min_scale,
            self.cfg.min_scale_stuck,
        )
        scales = {
            f"k_{name}": max(
                float(np.max(raw[:, i])) if raw is not None and raw.size else 0.0, floor
            )
            for i, (name, floor) in enumerate(zip(PARTS, floors, strict=True))
        }
        self._table.set(sensor, **scales)

    def follow(self, sensors: Sequence[str], values: np.ndarray, rate: float) -> None:
        """Move each sensor's normal level (``loc``) a fraction ``rate`` toward its reading:
        slow drift of a thermocouple is followed, not alarmed on. The spreads and part
        scales stay as learned, so a fast change still scores as far out as before."""
        if not len(sensors):
            return
        rows, loc = self._table.rows(sensors), self._table.cols["loc"]
        v = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(v)
        if not ok.all():
            rows, v = rows[ok], v[ok]
        if np.unique(rows).size == rows.size:
            loc[rows] += rate * (v - loc[rows])
            return
        # A sensor with several readings in the batch: the same running mean, in order.
        keep = 1.0 - rate
        for r in np.unique(rows):
            mine = v[rows == r]
            m = mine.size
            weights = rate * keep ** np.arange(m - 1, -1, -1, dtype=np.float64)
            loc[r] = keep**m * loc[r] + float(weights @ mine)

    def rebaseline(self, sensor: str, window: np.ndarray) -> tuple[float, float] | None:
        """Take the median of ``window`` as the sensor's normal level (spreads and scales
        stay as learned); returns the level (before, after)."""
        w = np.asarray(window, dtype=np.float64)
        w = w[np.isfinite(w)]
        if not w.size or sensor not in self._table:
            return None
        row = self._table.row(sensor)
        loc = self._table.cols["loc"]
        before, loc[row] = float(loc[row]), float(np.median(w))
        return before, float(loc[row])

    def forget(self, sensor: str) -> None:
        """Free the sensor's baseline (its row is reused by the next new sensor)."""
        self._table.forget(sensor)

    def knows(self, sensor: str) -> bool:
        """Whether the sensor has a baseline."""
        return sensor in self._table

    # -- scoring ---------------------------------------------------------------------------

    def _raw_parts(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """(B, 5) unscaled deviations of each window."""
        rows, c = self._table.rows(sensors), self._table.cols
        span = self.cfg.span
        w = np.asarray(x, dtype=np.float64).reshape(len(sensors), self.window)
        loc = c["loc"][rows]
        last = w[:, -1]
        point = np.abs(last - loc) / c["s"][rows]
        level = np.abs(w[:, -span:].mean(axis=1) - loc) / c["sm"][rows]
        d = np.diff(w[:, -(span + 1) :], axis=1)
        d0 = c["d0"][rows]
        eps = 0.05 * d0
        spread = np.log((d.std(axis=1) + eps) / (d0 + eps))
        repeats = c["run0"][rows] >= REPEATS
        spread = np.where(repeats, np.maximum(spread, 0.0), np.abs(spread))
        jump = np.abs(d[:, -1]) / c["sd1"][rows]
        stuck = _trailing_repeats(w)
        return np.stack([point, level, spread, jump, stuck], axis=1)

    def parts(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """(B, 5) each part's deviation over its scale (columns in :data:`PARTS` order)."""
        rows, c = self._table.rows(sensors), self._table.cols
        scales = np.stack([c[f"k_{name}"][rows] for name in PARTS], axis=1)
        return self._raw_parts(sensors, x) / scales

    def score(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """The worst part ratio of each window, shape (B,)."""
        if len(sensors) == 0:
            return np.empty(0)
        return self.parts(sensors, x).max(axis=1)

    def explain(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """Per-step share: the newest step carries the score (the parts say more)."""
        out = np.zeros((len(sensors), self.window))
        out[:, -1] = self.score(sensors, x)
        return out

    # -- persistence -----------------------------------------------------------------------

    def _sensor_state(self) -> dict[str, Any]:
        c = self._table.cols
        return {
            s: {name: float(c[name][self._table.row(s)]) for name in _STATE} for s in self._table
        }

    def _stored(self, p: dict[str, Any], name: str) -> float:
        """One saved value; a bundle from before the ``stuck`` part gets its defaults."""
        if name in p or name not in _OPTIONAL:
            return float(p[name])
        return 0.0 if name == "run0" else float(self.cfg.min_scale_stuck)

    def _restore_sensor_state(self, state: dict[str, Any]) -> None:
        for sensor, p in state.items():
            values = {name: self._stored(p, name) for name in _STATE}
            if (
                not all(math.isfinite(v) for v in values.values())
                or min(values[n] for n in _STATE if n not in ("loc", "run0")) <= 0
                or values["run0"] < 0
            ):
                raise ValueError(f"sensor {sensor!r}: invalid baseline")
            self._table.set(sensor, **values)
