"""The LSTM-VAE's scoring pass in numpy, for an install without TensorFlow.

Same arithmetic as :class:`streamwatch.detectors.lstm_vae_net.Net`'s traced scorer (Keras 3
LSTM: gates in the order input, forget, cell, output; ``tanh`` and ``sigmoid``), on the same
weights, which a bundle also keeps as a plain ``.npz`` (no pickle). Scores agree with
TensorFlow's to float32 rounding; tests hold them to a stated tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SCALE_EPS = 1e-3
"""Smallest decoder σ (as in lstm_vae_net)."""
LOGVAR_CLIP = 10.0
_HALF_LOG_2PI = np.float32(0.5 * np.log(2.0 * np.pi))

WEIGHT_NAMES = (
    "enc_kernel",
    "enc_recurrent",
    "enc_bias",
    "mean_kernel",
    "mean_bias",
    "logvar_kernel",
    "logvar_bias",
    "dec_kernel",
    "dec_recurrent",
    "dec_bias",
    "out_kernel",
    "out_bias",
)
"""The arrays of one network, in the order :func:`keras_weights` lists the Keras model's."""


def keras_weights(vae: object) -> dict[str, np.ndarray]:
    """The named float32 arrays of a built ``lstm_vae`` Keras model (lstm_vae_net layout)."""
    arrays = [np.asarray(w, np.float32) for w in vae.get_weights()]  # type: ignore[attr-defined]
    if len(arrays) != len(WEIGHT_NAMES):
        raise ValueError(f"expected {len(WEIGHT_NAMES)} weight arrays, got {len(arrays)}")
    return dict(zip(WEIGHT_NAMES, arrays, strict=True))


def save_npz(path: Path, weights: dict[str, np.ndarray], eps: np.ndarray) -> None:
    """Write the arrays and the fixed latent samples ``eps`` to ``path`` (.npz, no pickle)."""
    with path.open("wb") as f:
        np.savez(f, eps=eps, **weights)


def load_npz(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The named arrays and ``eps`` written by :func:`save_npz` (never unpickles; ValueError
    if the file is not such a set)."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    eps = arrays.pop("eps", None)
    if eps is None:
        raise ValueError(f"{path.name}: no eps array")
    missing = [n for n in WEIGHT_NAMES if n not in arrays]
    if missing:
        raise ValueError(f"{path.name}: weights lack {', '.join(missing)}")
    return arrays, eps


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(np.float32(0.0), x)


class NumpyNet:
    """One trained LSTM-VAE as numpy arrays: ``scorer()(z)`` -> (per-step NLL, KL)."""

    def __init__(self, weights: dict[str, np.ndarray], eps: np.ndarray, window: int) -> None:
        missing = [n for n in WEIGHT_NAMES if n not in weights]
        if missing:
            raise ValueError(f"weights lack {', '.join(missing)}")
        self.w = {n: np.asarray(weights[n], np.float32) for n in WEIGHT_NAMES}
        self.hidden = self.w["enc_recurrent"].shape[0]
        self.features = 1
        """Inputs per step: the numpy twin serves the one-feature LSTM-VAE."""
        self.eps = np.asarray(eps, np.float32)
        self.window = window
        self._check_shapes()

    @classmethod
    def load(cls, path: Path, window: int) -> NumpyNet:
        """Read a network saved by :func:`save_npz` (ValueError if it is not one)."""
        weights, eps = load_npz(path)
        return cls(weights, eps, window)

    def _check_shapes(self) -> None:
        h, w = self.hidden, self.w
        latent = w["mean_kernel"].shape[1]
        want = {
            "enc_kernel": (1, 4 * h),
            "enc_recurrent": (h, 4 * h),
            "enc_bias": (4 * h,),
            "mean_kernel": (h, latent),
            "mean_bias": (latent,),
            "logvar_kernel": (h, latent),
            "logvar_bias": (latent,),
            "dec_kernel": (latent, 4 * h),
            "dec_recurrent": (h, 4 * h),
            "dec_bias": (4 * h,),
            "out_kernel": (h, 2),
            "out_bias": (2,),
        }
        bad = [n for n, shape in want.items() if w[n].shape != shape]
        if bad or self.eps.ndim != 2 or self.eps.shape[1] != latent:
            raise ValueError(f"weight shapes do not fit an LSTM-VAE: {', '.join(bad) or 'eps'}")

    def _lstm(self, proj: np.ndarray, recurrent: np.ndarray, steps: int) -> np.ndarray:
        """Hidden states (B, T, H) of a Keras LSTM, given its inputs already projected by the
        kernel plus bias, ``proj`` (B, T, 4H), or (B, 1, 4H) for the same input every step."""
        h = self.hidden
        b = proj.shape[0]
        hs = np.empty((b, steps, h), np.float32)
        state = np.zeros((b, h), np.float32)
        cell = np.zeros((b, h), np.float32)
        last = proj.shape[1] - 1
        for step in range(steps):
            g = proj[:, min(step, last)] + state @ recurrent
            i = _sigmoid(g[:, :h])
            f = _sigmoid(g[:, h : 2 * h])
            c = np.tanh(g[:, 2 * h : 3 * h])
            o = _sigmoid(g[:, 3 * h :])
            cell = f * cell + i * c
            state = o * np.tanh(cell)
            hs[:, step] = state
        return hs

    def _step_nll(self, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        w = self.w
        # RepeatVector: the same input every step, so it is projected once.
        proj = (z @ w["dec_kernel"] + w["dec_bias"])[:, None, :]
        d = self._lstm(proj, w["dec_recurrent"], self.window)
        out = d @ w["out_kernel"] + w["out_bias"]
        loc, scale = out[..., 0], _softplus(out[..., 1]) + np.float32(SCALE_EPS)
        return 0.5 * np.square((x - loc) / scale) + np.log(scale) + _HALF_LOG_2PI

    def scorer(self, jit: bool = False) -> NumpyNet:
        """The scoring callable (itself; ``jit`` is accepted for the TF twin's signature)."""
        return self

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-step NLL (B, W) and KL (B,) of standardised windows ``x`` (B, W)."""
        w = self.w
        x = np.asarray(x, np.float32)
        proj = x[..., None] * w["enc_kernel"][0] + w["enc_bias"]  # (B, W, 4H): one input
        h = self._lstm(proj, w["enc_recurrent"], x.shape[1])[:, -1]
        mean = h @ w["mean_kernel"] + w["mean_bias"]
        logvar = np.clip(h @ w["logvar_kernel"] + w["logvar_bias"], -LOGVAR_CLIP, LOGVAR_CLIP)
        kl = 0.5 * np.sum(np.exp(logvar) + np.square(mean) - 1.0 - logvar, axis=-1)
        samples = self.eps.shape[0]
        if samples == 1 and not self.eps.any():
            steps = self._step_nll(mean, x)
        else:
            z = mean[None] + np.exp(0.5 * logvar)[None] * self.eps[:, None, :]  # (S, B, L)
            flat = z.reshape(-1, z.shape[-1])
            xs = np.tile(x, (samples, 1))
            steps = self._step_nll(flat, xs).reshape(samples, x.shape[0], -1).mean(axis=0)
        return steps, kl
