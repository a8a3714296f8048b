"""Gaussian-mixture detector: each reading's negative log-probability under its sensor's mixture.

A sensor that alternates between states (idle and running, say) has a multi-modal value
distribution; a single Normal would put its mean between the modes and call every reading of
the rarer state an anomaly. A mixture of ``k`` Normals covers each mode.

Fitting (TensorFlow, imported lazily): on standardised values, the mixture
``tfd.MixtureSameFamily(tfd.Categorical(logits), tfd.Normal(loc, softplus(raw) + ε))`` is
fitted by maximum likelihood with Adam, inside one ``tf.function`` that runs the whole
optimisation as a ``tf.while_loop``. All candidate sizes ``k = 1..max_components`` are fitted
at once, as a batch of mixtures where the unused components of the smaller ones are masked
out; each starts from a 1-D k-means of the data (centroids at quantiles, refined by Lloyd
steps). The size with the lowest BIC, ``2·NLL + (3k - 1)·ln n``, wins.

Scoring (the hot path) is vectorised numpy, no TensorFlow:
``-log p(x) = -logsumexp_j(log w_j - ½((x-μ_j)/σ_j)² - log σ_j - ½ log 2π)``, which equals
``-MixtureSameFamily.log_prob(x)`` (a test holds them equal).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from streamwatch.config import GMMConfig
from streamwatch.detectors.base import Detector, finite_values
from streamwatch.detectors.gaussian import sigma_floor
from streamwatch.detectors.table import SensorTable

log = logging.getLogger(__name__)

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_SCALE_EPS = 1e-3
"""Smallest component σ in standardised units (a fraction of the sensor's overall σ): keeps a
component from collapsing onto a run of identical readings, where the likelihood is unbounded."""
_MASKED_LOGIT = -1e30
_LR_START = 0.05
_LR_END = 5e-4
_KMEANS_STEPS = 10
_MAX_FIT_VALUES = 50_000
"""Longer series are thinned evenly to this many values for fitting."""


class GMMDetector(Detector):
    """Per-sensor Gaussian mixture; scores readings (windows of length 1)."""

    name = "gmm"
    kind = "reading"
    slow_adapt = True

    def __init__(self, config: GMMConfig, window: int) -> None:
        super().__init__(config, window)
        self.cfg = config
        k = config.max_components
        # Padded to max_components; a padded component has log-weight -inf, loc 0, scale 1.
        self._table = SensorTable(
            {"logw": ((k,), -np.inf), "loc": ((k,), 0.0), "scale": ((k,), 1.0)}
        )

    # -- fitting -------------------------------------------------------------------------

    def adapt(self, sensor: str, values: np.ndarray) -> None:
        """Fit one sensor's mixture from its values (warm-up or training data)."""
        v = finite_values(sensor, values)
        if v.size > _MAX_FIT_VALUES:
            v = v[np.linspace(0, v.size - 1, _MAX_FIT_VALUES).astype(np.intp)]
        mean = float(v.mean())
        std = max(float(v.std()), sigma_floor(mean))
        z = (v - mean) / std
        weights, loc, scale, bic = fit_mixture(z, self.cfg.max_components, self.cfg.steps)
        log.debug(
            "sensor %s: BIC %s -> %d components", sensor, np.round(bic, 1).tolist(), weights.size
        )
        self._set(sensor, np.log(weights / weights.sum()), mean + std * loc, std * scale)

    def _set(self, sensor: str, logw: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> None:
        """Store a mixture by its log-weights: the very numbers the scorer uses, so a bundle
        round-trips them exactly (weights -> log -> exp -> log does not)."""
        k = self.cfg.max_components
        n = logw.size
        if not 1 <= n <= k or loc.shape != (n,) or scale.shape != (n,):
            raise ValueError(f"sensor {sensor!r}: need 1..{k} components of equal length")
        if not (np.all(np.isfinite(loc)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise ValueError(f"sensor {sensor!r}: invalid loc/scale")
        if not (np.all(np.isfinite(logw)) and abs(float(np.exp(logw).sum()) - 1.0) < 1e-6):
            raise ValueError(f"sensor {sensor!r}: weights must be positive and sum to 1")
        row_logw = np.full(k, -np.inf)
        row_loc = np.zeros(k)
        row_scale = np.ones(k)
        row_logw[:n] = logw
        row_loc[:n] = loc
        row_scale[:n] = scale
        self._table.set(sensor, logw=row_logw, loc=row_loc, scale=row_scale)

    def forget(self, sensor: str) -> None:
        """Free the sensor's mixture (its row is reused by the next new sensor)."""
        self._table.forget(sensor)

    # -- scoring -------------------------------------------------------------------------

    def knows(self, sensor: str) -> bool:
        """Whether the sensor has a fitted mixture."""
        return sensor in self._table

    def params(self, sensor: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(weights, loc, scale) of a sensor's mixture, one entry per used component."""
        r, cols = self._table.row(sensor), self._table.cols
        used = np.isfinite(cols["logw"][r])
        return np.exp(cols["logw"][r, used]), cols["loc"][r, used], cols["scale"][r, used]

    def score(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """Negative log-probability of each reading (the last value of each row), shape (B,)."""
        rows, cols = self._table.rows(sensors), self._table.cols
        v = np.asarray(x, dtype=np.float64).reshape(len(sensors), -1)[:, -1]
        return -mixture_log_prob(v, cols["logw"][rows], cols["loc"][rows], cols["scale"][rows])

    # -- persistence ---------------------------------------------------------------------

    def _sensor_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for sensor in self._table:
            r, cols = self._table.row(sensor), self._table.cols
            used = np.isfinite(cols["logw"][r])
            out[sensor] = {
                "log_weights": cols["logw"][r, used].tolist(),
                "loc": cols["loc"][r, used].tolist(),
                "scale": cols["scale"][r, used].tolist(),
            }
        return out

    def _restore_sensor_state(self, state: dict[str, Any]) -> None:
        for sensor, p in state.items():
            self._set(
                sensor,
                np.asarray(p["log_weights"], dtype=np.float64),
                np.asarray(p["loc"], dtype=np.float64),
                np.asarray(p["scale"], dtype=np.float64),
            )


def mixture_log_prob(
    x: np.ndarray, logw: np.ndarray, loc: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    """log p(x) of a batch of 1-D Gaussian mixtures: ``x`` (B,), parameters (B, K).

    Components with log-weight -inf are ignored.
    """
    z = (x[:, None] - loc) / scale
    comp = logw - 0.5 * z * z - np.log(scale) - _HALF_LOG_2PI
    top = comp.max(axis=1)
    return top + np.log(np.exp(comp - top[:, None]).sum(axis=1))


def _kmeans_init(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights, centroids and spreads of a 1-D k-means started at the quantiles."""
    centres = np.quantile(z, (np.arange(k) + 0.5) / k)
    for _ in range(_KMEANS_STEPS):
        assign = np.abs(z[:, None] - centres[None, :]).argmin(axis=1)
        for j in range(k):
            members = z[assign == j]
            if members.size:
                centres[j] = members.mean()
    assign = np.abs(z[:, None] - centres[None, :]).argmin(axis=1)
    weights = np.empty(k)
    spread = np.empty(k)
    for j in range(k):
        members = z[assign == j]
        weights[j] = max(members.size, 1) / z.size
        spread[j] = members.std() if members.size > 1 else 0.1
    return weights / weights.sum(), centres, np.maximum(spread, 0.05)


def fit_mixture(
    z: np.ndarray, max_components: int, steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit mixtures of 1..max_components Normals to standardised ``z`` and keep the best by BIC.

    Returns (weights, loc, scale) of the chosen mixture and the BIC of every candidate size.
    """
    kmax = max_components
    logits0 = np.full((kmax, kmax), _MASKED_LOGIT)
    loc0 = np.zeros((kmax, kmax))
    scale0 = np.ones((kmax, kmax))
    for k in range(1, kmax + 1):
        w, c, s = _kmeans_init(z, k)
        logits0[k - 1, :k] = np.log(w)
        loc0[k - 1, :k] = c
        scale0[k - 1, :k] = s
    mask = np.arange(kmax)[None, :] < np.arange(1, kmax + 1)[:, None]
    # Inverse of softplus(raw) + eps, so the optimiser starts exactly at the k-means init.
    raw0 = np.log(np.expm1(np.maximum(scale0 - _SCALE_EPS, 1e-6)))

    import tensorflow as tf

    fit = _fit_function()
    logits, loc, raw, nll = (
        t.numpy()
        for t in fit(
            tf.constant(z, tf.float64),
            tf.constant(logits0),
            tf.constant(loc0),
            tf.constant(raw0),
            tf.constant(mask),
            tf.constant(steps, tf.int32),
        )
    )
    n = z.size
    ks = np.arange(1, kmax + 1)
    bic = 2.0 * nll + (3 * ks - 1) * math.log(n)
    bic = np.where(np.isfinite(bic), bic, np.inf)
    best = int(np.argmin(bic))
    k = best + 1
    lg = logits[best, :k]
    w = np.exp(lg - lg.max())
    w /= w.sum()
    scale = np.logaddexp(0.0, raw[best, :k]) + _SCALE_EPS
    keep = w > 1e-12  # a component the optimiser emptied out carries no information
    return w[keep] / w[keep].sum(), loc[best, :k][keep], scale[keep], bic


@functools.cache
def _fit_function() -> Callable[..., Any]:
    """The traced Adam loop (built once per process, with a shape-agnostic signature)."""
    import tensorflow as tf
    import tensorflow_probability as tfp

    tfd = tfp.distributions
    f64 = tf.float64

    def nll_per_candidate(
        z: tf.Tensor, logits: tf.Tensor, loc: tf.Tensor, raw: tf.Tensor, mask: tf.Tensor
    ) -> tf.Tensor:
        masked = tf.where(mask, logits, tf.constant(_MASKED_LOGIT, f64))
        mix = tfd.MixtureSameFamily(
            mixture_distribution=tfd.Categorical(logits=masked),
            components_distribution=tfd.Normal(loc=loc, scale=tf.nn.softplus(raw) + _SCALE_EPS),
        )
        return -tf.reduce_sum(mix.log_prob(z[:, None]), axis=0)  # (candidates,)

    spec = tf.TensorSpec([None, None], f64)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], f64),
            spec,
            spec,
            spec,
            tf.TensorSpec([None, None], tf.bool),
            tf.TensorSpec([], tf.int32),
        ],
        reduce_retracing=True,
    )
    def fit(
        z: tf.Tensor,
        logits: tf.Tensor,
        loc: tf.Tensor,
        raw: tf.Tensor,
        mask: tf.Tensor,
        steps: tf.Tensor,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        n = tf.cast(tf.shape(z)[0], f64)
        total = tf.cast(steps, f64)
        beta1, beta2, adam_eps = 0.9, 0.999, 1e-8
        params = [logits, loc, raw]
        m0 = [tf.zeros_like(p) for p in params]
        v0 = [tf.zeros_like(p) for p in params]

        def body(
            i: tf.Tensor, ps: list[tf.Tensor], ms: list[tf.Tensor], vs: list[tf.Tensor]
        ) -> tuple[tf.Tensor, list[tf.Tensor], list[tf.Tensor], list[tf.Tensor]]:
            with tf.GradientTape() as tape:
                tape.watch(ps)
                # The candidates are independent, so one summed loss trains them all.
                loss = tf.reduce_sum(nll_per_candidate(z, ps[0], ps[1], ps[2], mask)) / n
            grads = tape.gradient(loss, ps)
            t = tf.cast(i + 1, f64)
            lr = _LR_START * (_LR_END / _LR_START) ** (t / total)
            new_p, new_m, new_v = [], [], []
            for p, g, m, v in zip(ps, grads, ms, vs, strict=True):
                m = beta1 * m + (1.0 - beta1) * g
                v = beta2 * v + (1.0 - beta2) * g * g
                m_hat = m / (1.0 - beta1**t)
                v_hat = v / (1.0 - beta2**t)
                new_p.append(p - lr * m_hat / (tf.sqrt(v_hat) + adam_eps))
                new_m.append(m)
                new_v.append(v)
            return i + 1, new_p, new_m, new_v

        _, ps, _, _ = tf.while_loop(lambda i, *_: i < steps, body, [tf.constant(0), params, m0, v0])
        return ps[0], ps[1], ps[2], nll_per_candidate(z, ps[0], ps[1], ps[2], mask)

    return fit
