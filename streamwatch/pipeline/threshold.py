"""Calibrate a threshold from the scores of normal data, and turn scores into verdicts.

A target false-alarm rate α of 1e-5 cannot be read off a few thousand normal scores as an
empirical quantile: too few scores lie beyond it. Where ``n·α`` is small the tail is
extrapolated instead, by peaks-over-threshold (the SPOT method of Siffer et al., KDD 2017): the
excesses over a high empirical quantile ``t0`` follow a generalised Pareto law, whose shape ξ
and scale σ are fitted by the method of moments, and

    threshold = t0 + σ/ξ · ((α/p0)^(-ξ) - 1)        (→ t0 + σ·ln(p0/α) as ξ → 0)

where ``p0`` is the fraction of scores above ``t0``.

Scores that are negative log-densities almost always have exponential tails (ξ = 0): the log
of even a power-law density tail is exponential. So ξ is kept only as far as the data insist
on it: the moment estimate less one standard error (≈ 1/√k for k tail points), clamped to
[0, 0.45]. Measured on Normal and Student-t scores, the raw moment estimate from a few dozen
tail points put half the thresholds many times further out than the target rate asked for,
costing sensitivity for nothing.

σ is taken at its one-sigma upper confidence bound, σ·(1 + 1/√k): a short warm-up gives a
more cautious threshold, and the margin fades as data grow. The extrapolation is bounded: no
further past the largest normal score than twice that score's distance from the median.

Ratio scores (the robust detector's: a deviation over the largest normal one) need no tail
model: their threshold is ``threshold.margin`` times the largest normal score.
:func:`sensor_threshold` is the one policy every path (train, warm-up, auto-training) uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from streamwatch.config import ThresholdConfig

MIN_SCORES = 20
_EMPIRICAL_MIN_TAIL = 10  # use the plain quantile when at least this many scores lie beyond it
_MIN_TAIL_POINTS = 20
_TAIL_FRACTION = 0.05
_MAX_REACH = 2.0


class CalibrationError(ValueError):
    """Too little or unusable data to set a threshold."""


def calibrate(scores: np.ndarray, false_alarm_rate: float) -> float:
    """The score above which a fraction ``false_alarm_rate`` of normal scores is expected."""
    if not 0.0 < false_alarm_rate < 0.5:
        raise CalibrationError(f"false_alarm_rate must be in (0, 0.5), got {false_alarm_rate}")
    s = np.asarray(scores, dtype=np.float64).ravel()
    s = s[np.isfinite(s)]
    n = s.size
    if n < MIN_SCORES:
        raise CalibrationError(f"need at least {MIN_SCORES} finite normal scores, got {n}")
    if n * false_alarm_rate >= _EMPIRICAL_MIN_TAIL:
        return float(np.quantile(s, 1.0 - false_alarm_rate, method="higher"))
    s.sort()
    k = min(max(_MIN_TAIL_POINTS, int(n * _TAIL_FRACTION)), n // 4)
    t0 = s[n - k - 1]
    excess = s[n - k :] - t0
    p0 = k / n
    mean = float(excess.mean())
    if mean <= 0.0:
        # A flat tail (e.g. a constant signal): nothing to extrapolate.
        return float(t0 + max(abs(t0), 1.0) * 1e-6)
    var = float(excess.var(ddof=1)) if k > 1 else 0.0
    xi = 0.5 * (1.0 - mean * mean / var) if var > 0 else 0.0
    xi = min(max(xi - 1.0 / math.sqrt(k), 0.0), 0.45)
    sigma = mean * (1.0 - xi) * (1.0 + 1.0 / math.sqrt(k))
    if xi < 1e-6:
        thr = t0 + sigma * math.log(p0 / false_alarm_rate)
    else:
        thr = t0 + sigma / xi * ((false_alarm_rate / p0) ** (-xi) - 1.0)
    # Bound the extrapolation: a tail fitted to a few dozen points can reach absurdly far
    # (NAB: 0.02 to 1.3 million nats from 100-200 scores). Past the largest normal score by
    # more than _MAX_REACH times its distance from the median, it is guesswork.
    top, med = float(s[-1]), float(s[n // 2])
    return float(min(thr, top + _MAX_REACH * (top - med)))


@dataclass
class Thresholds:
    """Calibrated thresholds: one per sensor, and a pooled one for sensors without their own."""

    false_alarm_rate: float
    per_sensor: dict[str, float] = field(default_factory=dict)
    pooled: float | None = None

    def get(self, sensor: str) -> float | None:
        """The sensor's threshold, the pooled one, or None if neither exists."""
        t = self.per_sensor.get(sensor)
        return self.pooled if t is None else t

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "false_alarm_rate": self.false_alarm_rate,
            "pooled": self.pooled,
            "per_sensor": self.per_sensor,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Thresholds:
        """Inverse of :meth:`to_json`; raises ValueError on bad content."""
        far = float(data["false_alarm_rate"])  # type: ignore[arg-type]
        pooled = data.get("pooled")
        per = data.get("per_sensor", {})
        if not isinstance(per, dict):
            raise ValueError("per_sensor must be an object")
        return cls(
            far,
            {str(k): float(v) for k, v in per.items()},
            None if pooled is None else float(pooled),  # type: ignore[arg-type]
        )


# -- the calibration policy: one function for train, warm-up and adaptation ------------------


def calibrate_ratio(scores: np.ndarray, margin: float) -> float:
    """``margin`` times the largest normal score: for ratio scores (a deviation over its
    normal largest), where "half as far again as anything normal" means the same on every
    sensor and needs no tail model. Raises :class:`CalibrationError` on too few scores."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    s = s[np.isfinite(s)]
    if s.size < MIN_SCORES:
        raise CalibrationError(f"need at least {MIN_SCORES} finite normal scores, got {s.size}")
    top = float(s.max())
    if top <= 0.0:
        raise CalibrationError("every normal score is zero: nothing to scale a threshold by")
    return margin * top


def sensor_threshold(
    scores: np.ndarray,
    policy: ThresholdConfig,
    kind: Literal["nll", "ratio"],
    pooled: float | None = None,
    comparable: bool = False,
) -> float:
    """One sensor's threshold from its normal scores.

    The one calibration policy: ``streamwatch train``, the daemon's warm-up and auto-training
    all set a sensor's threshold here. Likelihood scores (``kind`` "nll") are calibrated at
    ``policy.false_alarm_rate`` (:func:`calibrate`); ratio scores at ``policy.margin`` above
    the largest (:func:`calibrate_ratio`). Where scores are ``comparable`` across sensors (one
    shared model on standardised data) the model's ``pooled`` threshold, calibrated on every
    sensor's scores together, is a floor under a sensor's own: one sensor's few hundred
    calibration scores can put its threshold far too low, and a floor costs no recall when
    anomalies score far above. Raises :class:`CalibrationError`.
    """
    if kind == "ratio":
        own = calibrate_ratio(scores, policy.margin)
    else:
        own = calibrate(scores, policy.false_alarm_rate)
    if comparable and pooled is not None:
        return max(own, pooled)
    return own


def calibrate_all(
    scores: Mapping[str, np.ndarray],
    policy: ThresholdConfig,
    kind: Literal["nll", "ratio"],
    comparable: bool,
) -> tuple[Thresholds, dict[str, str]]:
    """Thresholds for a model from each sensor's normal scores: the pooled one over all of
    them, then each sensor's by :func:`sensor_threshold`. Returns the thresholds and, for
    each sensor left without one of its own, why. Raises :class:`CalibrationError` if not
    even the pooled threshold can be set."""
    thresholds = Thresholds(policy.false_alarm_rate)
    every = [s for s in scores.values() if len(s)]
    thresholds.pooled = sensor_threshold(
        np.concatenate(every) if every else np.empty(0), policy, kind
    )
    failed: dict[str, str] = {}
    for sensor, s in scores.items():
        try:
            thresholds.per_sensor[sensor] = sensor_threshold(
                s, policy, kind, thresholds.pooled, comparable
            )
        except CalibrationError as exc:
            failed[sensor] = str(exc)
    return thresholds, failed
