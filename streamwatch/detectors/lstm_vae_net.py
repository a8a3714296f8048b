"""The LSTM-VAE's Keras networks and their traced scoring functions (see
:mod:`streamwatch.detectors.lstm_vae` for the model, the score and the hot path)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from streamwatch.config import LSTMVAEConfig

log = logging.getLogger(__name__)

_SCALE_EPS = 1e-3
"""Smallest decoder σ in standardised units, so a perfectly predictable step has finite NLL."""
_LOGVAR_CLIP = 10.0


def _configure_threads(tf: Any) -> None:
    """Apply TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS unless threads are already set."""
    threading = tf.config.threading
    for env, get, put in (
        (
            "TF_NUM_INTRAOP_THREADS",
            threading.get_intra_op_parallelism_threads,
            threading.set_intra_op_parallelism_threads,
        ),
        (
            "TF_NUM_INTEROP_THREADS",
            threading.get_inter_op_parallelism_threads,
            threading.set_inter_op_parallelism_threads,
        ),
    ):
        value = os.environ.get(env)
        if not value or get() != 0:
            continue
        try:
            put(int(value))
        except (RuntimeError, ValueError) as exc:  # runtime already started, or not a number
            log.debug("cannot apply %s=%s: %s", env, value, exc)


def tf_module() -> Any:
    import tensorflow as tf

    _configure_threads(tf)
    return tf


def build_model(
    window: int, hidden: int, latent: int, seed: int, features: int = 1
) -> tuple[Any, Any, Any]:
    """The (vae, encoder, decoder) Keras models; ``vae`` holds every weight, for saving.
    ``features`` > 1: windows of ``time x features`` (a group's members), the decoder giving
    a (loc, scale) pair per step and feature; 1 is the single-sensor model, layer for layer."""
    tf_module()
    import keras
    from keras import layers

    def init(i: int) -> Any:
        return keras.initializers.GlorotUniform(seed=seed * 100 + i)

    def orth(i: int) -> Any:
        return keras.initializers.Orthogonal(seed=seed * 100 + i)

    x = keras.Input((window, features), name="window")
    h = layers.LSTM(hidden, kernel_initializer=init(0), recurrent_initializer=orth(1))(x)
    mean = layers.Dense(latent, kernel_initializer=init(2), name="z_mean")(h)
    logvar = layers.Dense(latent, kernel_initializer=init(3), name="z_logvar")(h)
    encoder = keras.Model(x, [mean, logvar], name="encoder")

    z = keras.Input((latent,), name="z")
    r = layers.RepeatVector(window)(z)
    d = layers.LSTM(
        hidden,
        return_sequences=True,
        kernel_initializer=init(4),
        recurrent_initializer=orth(5),
    )(r)
    out = layers.TimeDistributed(
        layers.Dense(2 * features, kernel_initializer=init(6)), name="loc_raw"
    )(d)
    decoder = keras.Model(z, out, name="decoder")

    m, _ = encoder(x)
    vae = keras.Model(x, decoder(m), name="lstm_vae")
    return vae, encoder, decoder


class Net:
    """One VAE with its compiled scoring functions (one per XLA setting)."""

    def __init__(self, cfg: LSTMVAEConfig, window: int, init_seed: int, features: int = 1) -> None:
        self.window = window
        self.features = features
        """1: inputs (B, W), per-step NLL (B, W); more: inputs and NLL (B, W, features)."""
        self.vae, self.encoder, self.decoder = build_model(
            window, cfg.hidden, cfg.latent, init_seed, features
        )
        self.latent = cfg.latent
        self.samples = cfg.latent_samples
        rng = np.random.default_rng(cfg.seed)
        # Fixed ε_s: deterministic, batch-independent averaging over latent samples.
        self.eps = (
            np.zeros((1, cfg.latent), np.float32)
            if cfg.latent_samples == 1
            else rng.standard_normal((cfg.latent_samples, cfg.latent)).astype(np.float32)
        )
        self._fns: dict[bool, Callable[[Any], Any]] = {}

    def step_nll(self, z: Any, x: Any) -> Any:
        """Per-step reconstruction NLL of standardised ``x`` (B, W) decoded from ``z``
        ((B, W, features) for several features)."""
        tf = tf_module()
        import tensorflow_probability as tfp

        out = self.decoder(z, training=False)
        if self.features > 1:
            out = tf.reshape(out, [-1, self.window, self.features, 2])
        normal = tfp.distributions.Normal(
            loc=out[..., 0], scale=tf.nn.softplus(out[..., 1]) + _SCALE_EPS
        )
        return -normal.log_prob(x)

    def encode(self, x: Any, training: bool = False) -> tuple[Any, Any]:
        """Posterior mean and (clipped) log-variance of standardised ``x`` (B, W), or
        (B, W, features)."""
        tf = tf_module()
        mean, logvar = self.encoder(x[..., None] if self.features == 1 else x, training=training)
        return mean, tf.clip_by_value(logvar, -_LOGVAR_CLIP, _LOGVAR_CLIP)

    def scorer(self, jit: bool) -> Callable[[Any], Any]:
        """The traced function: standardised (B, W) float32 -> (per-step NLL (B, W), KL (B,));
        with several features (B, W, F) -> ((B, W, F), (B,))."""
        fn = self._fns.get(jit)
        if fn is not None:
            return fn
        tf = tf_module()
        eps = tf.constant(self.eps)
        w = self.window
        shape = [w] if self.features == 1 else [w, self.features]

        def run(x: Any) -> tuple[Any, Any]:
            mean, logvar = self.encode(x)
            kl = 0.5 * tf.reduce_sum(tf.exp(logvar) + tf.square(mean) - 1.0 - logvar, axis=-1)
            if self.samples == 1:
                steps = self.step_nll(mean, x)
            else:
                std = tf.exp(0.5 * logvar)
                z = mean[None] + std[None] * eps[:, None, :]  # (S, B, latent)
                b = tf.shape(x)[0]
                flat = tf.reshape(z, [-1, self.latent])
                xs = tf.tile(x, [self.samples] + [1] * len(shape))
                nll = self.step_nll(flat, xs)
                steps = tf.reduce_mean(tf.reshape(nll, [-1, b, *shape]), axis=0)
            return steps, kl

        fn = tf.function(
            run, input_signature=[tf.TensorSpec([None, *shape], tf.float32)], jit_compile=jit
        )
        self._fns[jit] = fn
        return fn
