"""Gaussian detector: each reading's negative log-probability under its sensor's Normal.

The maximum-likelihood Normal has a closed form, and its log-density is evaluated in
vectorised numpy: ``-log N(x; μ, σ) = ½((x-μ)/σ)² + log σ + ½ log 2π``. This is exactly
``-tfd.Normal(μ, σ).log_prob(x)`` (a test holds the two equal), without importing TensorFlow
into the daemon's per-reading path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from streamwatch.detectors.base import Detector, finite_values
from streamwatch.detectors.table import SensorTable

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_REL_SIGMA_FLOOR = 1e-6


def sigma_floor(mean: float) -> float:
    """Smallest σ allowed, so a perfectly constant sensor still gets a finite score."""
    return _REL_SIGMA_FLOOR * max(1.0, abs(mean))


class GaussianDetector(Detector):
    """Per-sensor Normal; scores readings (windows of length 1)."""

    name = "gaussian"
    kind = "reading"
    uses_tensorflow = False

    def __init__(self, config: Any, window: int) -> None:
        super().__init__(config, window)
        self._table = SensorTable({"mu": ((), 0.0), "sigma": ((), 1.0)})

    def adapt(self, sensor: str, values: np.ndarray) -> None:
        """Fit one sensor's Normal from its warm-up values."""
        v = finite_values(sensor, values)
        with np.errstate(over="ignore", invalid="ignore"):
            mu = float(v.mean())
            sigma = max(float(v.std()), sigma_floor(mu))
        if not (math.isfinite(mu) and math.isfinite(sigma)):
            # Values near ±1.8e308 are finite but their moments overflow. Refuse rather than
            # keep NaN parameters: the sensor would look known and never calibrate.
            raise ValueError(f"sensor {sensor!r}: mean/std overflow; values too large")
        self._set(sensor, mu, sigma)

    def _set(self, sensor: str, mu: float, sigma: float) -> None:
        self._table.set(sensor, mu=mu, sigma=sigma)

    def forget(self, sensor: str) -> None:
        """Free the sensor's Normal (its row is reused by the next new sensor)."""
        self._table.forget(sensor)

    def knows(self, sensor: str) -> bool:
        """Whether the sensor has a fitted Normal."""
        return sensor in self._table

    def params(self, sensor: str) -> tuple[float, float]:
        """(μ, σ) of a sensor's Normal."""
        r, cols = self._table.row(sensor), self._table.cols
        return float(cols["mu"][r]), float(cols["sigma"][r])

    def score(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """Negative log-probability of each reading, shape (B,)."""
        rows, cols = self._table.rows(sensors), self._table.cols
        sigma = cols["sigma"][rows]
        z = np.asarray(x, dtype=np.float64).reshape(len(sensors), -1)[:, -1] - cols["mu"][rows]
        z /= sigma
        return 0.5 * z * z + np.log(sigma) + _HALF_LOG_2PI

    def _sensor_state(self) -> dict[str, Any]:
        return {s: dict(zip(("mean", "std"), self.params(s), strict=True)) for s in self._table}

    def _restore_sensor_state(self, state: dict[str, Any]) -> None:
        for sensor, p in state.items():
            mu, sigma = float(p["mean"]), float(p["std"])
            if not (math.isfinite(mu) and math.isfinite(sigma) and sigma > 0):
                raise ValueError(f"sensor {sensor!r}: invalid mean/std")
            self._set(sensor, mu, sigma)
