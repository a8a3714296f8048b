"""Exporting a trained LSTM-VAE network to LiteRT (needs TensorFlow; run by ``train``).

The Keras model does not convert as it is: a Keras 3 LSTM with a dynamic batch needs
``TensorListReserve``, a TF select op. So the scoring pass is written again here as a
``tf.function`` over the network's weight arrays (the ``.npz`` layout of
:mod:`streamwatch.detectors.lstm_numpy`) with the recurrence unrolled over the window and a
fixed batch, one function per bucket: fully-connected, element-wise and reshape ops only,
converted with ``TFLITE_BUILTINS`` alone (no select ops, no quantisation: float32 as trained).

Each export is checked before it is kept (:func:`check`): held-out windows scored by
TensorFlow and by the LiteRT models must agree within :data:`litert.TOLERANCE`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from streamwatch.detectors import litert, lstm_numpy
from streamwatch.detectors.lstm_numpy import LOGVAR_CLIP, SCALE_EPS
from streamwatch.tfquiet import filtered_native_stderr

log = logging.getLogger(__name__)


def _scoring_function(
    tf: Any, weights: dict[str, np.ndarray], eps: np.ndarray, window: int, features: int
) -> Callable[[Any], tuple[Any, Any]]:
    """The scoring pass (same arithmetic as NumpyNet and Net's scorer) on constant weights."""
    w = {k: tf.constant(np.asarray(v, np.float32)) for k, v in weights.items()}
    hidden = int(weights["enc_recurrent"].shape[0])
    latent = int(weights["mean_kernel"].shape[1])
    samples = int(eps.shape[0])
    use_mean = samples == 1 and not np.asarray(eps).any()
    epsc = tf.constant(np.asarray(eps, np.float32))
    half_log_2pi = 0.5 * math.log(2.0 * math.pi)

    def cell(g: Any, c: Any) -> tuple[Any, Any]:
        i = tf.sigmoid(g[:, :hidden])
        f = tf.sigmoid(g[:, hidden : 2 * hidden])
        cand = tf.tanh(g[:, 2 * hidden : 3 * hidden])
        o = tf.sigmoid(g[:, 3 * hidden :])
        c = f * c + i * cand
        return o * tf.tanh(c), c

    def softplus(r: Any) -> Any:
        return tf.maximum(r, 0.0) + tf.math.log(1.0 + tf.exp(-tf.abs(r)))

    def run(x: Any) -> tuple[Any, Any]:
        b = x.shape[0]
        xin = tf.reshape(x, [b, window, features])
        h = tf.zeros([b, hidden])
        c = tf.zeros([b, hidden])
        for t in range(window):
            g = tf.matmul(xin[:, t, :], w["enc_kernel"]) + w["enc_bias"]
            h, c = cell(g + tf.matmul(h, w["enc_recurrent"]), c)
        mean = tf.matmul(h, w["mean_kernel"]) + w["mean_bias"]
        logvar = tf.clip_by_value(
            tf.matmul(h, w["logvar_kernel"]) + w["logvar_bias"], -LOGVAR_CLIP, LOGVAR_CLIP
        )
        kl = 0.5 * tf.reduce_sum(tf.exp(logvar) + tf.square(mean) - 1.0 - logvar, axis=-1)
        if use_mean:
            z, xs, rows = mean, xin, b
        else:
            std = tf.exp(0.5 * logvar)
            z = tf.reshape(mean[None] + std[None] * epsc[:, None, :], [samples * b, latent])
            xs = tf.tile(xin, [samples, 1, 1])
            rows = samples * b
        proj = tf.matmul(z, w["dec_kernel"]) + w["dec_bias"]
        h = tf.zeros([rows, hidden])
        c = tf.zeros([rows, hidden])
        nll = []
        for t in range(window):
            h, c = cell(proj + tf.matmul(h, w["dec_recurrent"]), c)
            out = tf.reshape(tf.matmul(h, w["out_kernel"]) + w["out_bias"], [rows, features, 2])
            loc, scale = out[:, :, 0], softplus(out[:, :, 1]) + SCALE_EPS
            nll.append(0.5 * tf.square((xs[:, t, :] - loc) / scale) + tf.math.log(scale))
        steps = tf.stack(nll, axis=1) + half_log_2pi  # (rows, W, F)
        if not use_mean:
            steps = tf.reduce_mean(tf.reshape(steps, [samples, b, window, features]), axis=0)
        if features == 1:
            steps = tf.reshape(steps, [b, window])
        return steps, kl

    return run


def convert(
    weights: dict[str, np.ndarray],
    eps: np.ndarray,
    window: int,
    features: int = 1,
    buckets: tuple[int, ...] = litert.BUCKETS,
) -> dict[int, bytes]:
    """One LiteRT flatbuffer per bucket for a network's weights (builtin ops only)."""
    from streamwatch.detectors.lstm_vae_net import tf_module

    tf = tf_module()
    run = _scoring_function(tf, weights, eps, window, features)
    shape = [window] if features == 1 else [window, features]
    out: dict[int, bytes] = {}
    absl = logging.getLogger("absl")  # "Using new converter" at INFO, once per conversion
    level = absl.level
    absl.setLevel(max(level, logging.WARNING))
    try:
        for size in buckets:
            out[size] = _convert_one(tf, run, [size, *shape])
    finally:
        absl.setLevel(level)
    return out


def _convert_one(tf: Any, run: Callable[[Any], tuple[Any, Any]], shape: list[int]) -> bytes:
    fn = tf.function(run, input_signature=[tf.TensorSpec(shape, tf.float32)])
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with filtered_native_stderr():
        return bytes(conv.convert())


def check(
    models: dict[int, bytes],
    reference: Callable[[np.ndarray], tuple[Any, Any]],
    z: np.ndarray,
    window: int,
    features: int = 1,
) -> float:
    """The largest relative difference between ``reference`` (TensorFlow's scorer) and the
    LiteRT models' window scores (per-step NLL summed, plus KL) on standardised windows
    ``z``, scored in one batch each (the LiteRT side through its buckets)."""
    interpreter = None
    if not litert.installed():  # training install without the litert extra: TF's own runtime
        from streamwatch.detectors.lstm_vae_net import tf_module

        interpreter = tf_module().lite.Interpreter
    ref = _window_scores(*reference(z))
    with filtered_native_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tf.lite.Interpreter's deprecation notice
        net = litert.LiteNet(models, window, features, interpreter)
        lite = _window_scores(*net(z))
    return litert.max_rel_diff(ref, lite)


def _window_scores(steps: Any, kl: Any) -> np.ndarray:
    s = np.asarray(steps, np.float64)
    out: np.ndarray = s.sum(axis=tuple(range(1, s.ndim))) + np.asarray(kl, np.float64)
    return out


def _numpy_diff(
    net: lstm_numpy.NumpyNet, reference: Callable[[np.ndarray], tuple[Any, Any]], z: np.ndarray
) -> float:
    """The numpy twin's largest relative difference from ``reference`` on windows ``z``."""
    return litert.max_rel_diff(_window_scores(*reference(z)), _window_scores(*net(z)))


def export(
    nets: Mapping[str, Any],
    held_out: Callable[[str], np.ndarray],
    window: int,
    buckets: Sequence[int] = litert.BUCKETS,
) -> tuple[dict[str, dict[int, bytes]], dict[str, Any]]:
    """Convert and check every TensorFlow network in ``nets`` (by key); ``held_out(key)``
    gives the standardised windows to check one on. Returns the kept models by key and
    bucket, and the manifest's ``litert`` entry: per network its check (``max_rel_diff``
    over ``windows``) and ``files``, or why it was ``refused``."""
    from streamwatch.detectors.lstm_vae_net import Net

    kept: dict[str, dict[int, bytes]] = {}
    networks: dict[str, dict[str, Any]] = {}
    for key, net in sorted(nets.items()):
        if not isinstance(net, Net):
            networks[key] = {"refused": "not trained in this process (no TensorFlow model)"}
            continue
        z = held_out(key)
        entry: dict[str, Any] = {"windows": len(z)}
        networks[key] = entry
        if not len(z):
            entry["refused"] = "no held-out windows to check it on"
            log.warning("LiteRT export of network %s refused: %s", key, entry["refused"])
            continue
        weights = lstm_numpy.keras_weights(net.vae)
        if net.features == 1:  # how far the numpy twin is, for scale
            entry["numpy_max_rel_diff"] = _numpy_diff(
                lstm_numpy.NumpyNet(weights, net.eps, window), net.scorer(False), z
            )
        try:
            models = convert(weights, net.eps, window, net.features, tuple(buckets))
            diff = check(models, net.scorer(False), z, window, net.features)
        except Exception as exc:  # a converter or runtime failure: score without LiteRT
            entry["refused"] = f"export failed: {type(exc).__name__}: {exc}"
            log.warning("LiteRT export of network %s failed: %s", key, exc)
            continue
        entry["max_rel_diff"] = diff
        if not diff <= litert.TOLERANCE:
            entry["refused"] = (
                f"max relative score difference {diff:.3g} from TensorFlow exceeds the "
                f"tolerance {litert.TOLERANCE:g}"
            )
            log.warning("LiteRT export of network %s refused: %s", key, entry["refused"])
            continue
        kept[key] = models
        entry["files"] = [litert.file_name(key, b) for b in sorted(models)]
        log.info(
            "LiteRT export of network %s: buckets %s, max relative difference %.2g on %d "
            "held-out windows",
            key,
            sorted(models),
            diff,
            len(z),
        )
    report = {"tolerance": litert.TOLERANCE, "buckets": sorted(buckets), "networks": networks}
    return kept, report
