"""LSTM variational autoencoder over windows of one sensor's readings.

Model (Keras 3; distributions from ``tfp.distributions``, never ``tfp.layers``)::

    encoder  x (W, 1) -> LSTM(hidden) -> Dense: mean (latent), Dense: log-variance (latent)
    decoder  z -> RepeatVector(W) -> LSTM(hidden, sequences) -> TimeDistributed(Dense(2))
             -> per step Normal(loc, softplus(raw) + ε)

Training minimises the negative ELBO, ``-E_q[log p(x|z)] + KL(q(z|x) || N(0, I))``, with one
reparameterised sample per window, in a custom loop (a ``tf.function`` step, Adam). The last
``validation_split`` of every sensor's series is held out; training stops early when the
validation loss has not improved for ``patience`` epochs, and the best weights are restored.

Training runs at least ``min_steps`` optimiser steps (more epochs when the data are small),
and early stopping waits for them. The loss first sits on a plateau where the decoder ignores
``z`` and predicts each step's marginal Normal (about 1.42 nats a step); a model that stays
there is in effect a per-reading Gaussian, blind to flatlines, frequency changes and gaps.
The KL warm-up, the plateau check, the extra rounds for a model still on the plateau and the
training report are in :mod:`streamwatch.detectors.lstm_vae_train` (docs/evaluation.md).

Inputs are standardised per sensor (mean and std kept in ``sensors.json``), so one shared
model serves sensors of any scale; ``adapt`` learns a new sensor's standardisation.

Score. A window's score is its negative ELBO, evaluated deterministically:

    score = Σ_t -log N(x_t; loc_t, scale_t)  [decoded from the posterior mean]
            + KL(q(z|x) || N(0, I))

The reconstruction term catches windows the decoder cannot reproduce (spikes, noise bursts);
the KL term is the latent signal: it grows when the encoder must move far from the prior to
explain a window, which a level shift the decoder partly reconstructs still triggers. With
``latent_samples > 1`` the reconstruction term is averaged over ``mean + σ·ε_s`` for a fixed
set of ε_s drawn once from the seed, so a window always gets the same score whatever batch it
is scored in. The score is in standardised units (no ``log std`` Jacobian), so scores of
sensors with different scales are comparable and a pooled threshold means something.
:meth:`LSTMVAEDetector.explain` returns each step's reconstruction NLL plus an equal share of
the KL, so its rows sum to the score.

Hot path. :meth:`LSTMVAEDetector.score` standardises in numpy, cuts the batch into chunks of
at most ``max_batch`` rows and pads each to a bucket size (a power of two, from 8), and runs
each chunk through one ``tf.function`` with a fixed input signature: a handful of traces in
all, never one per call, and no eager model calls. With :attr:`LSTMVAEDetector.jit_compile`
(the default) buckets up to :data:`XLA_MAX_BUCKET` rows run through an XLA-compiled twin of
that function (``jit_compile=True``), larger ones through plain graph mode, which is also the
reference the tests hold XLA to. On our model (2 CPUs) XLA is about 20-25% faster up to 64
windows, about even to slower from 256, and about 20% slower at 4096
(docs/performance-models.md).
:meth:`LSTMVAEDetector.warm_up` traces and compiles every bucket ahead of the first windows.

Other scorers (``engine.inference``). A bundle keeps every network's weights as plain arrays
(``.npz``), which :mod:`streamwatch.detectors.lstm_numpy` scores without TensorFlow, and, from
``streamwatch train``, LiteRT models of the same pass (:mod:`streamwatch.detectors.litert`,
exported and checked against TensorFlow by :meth:`LSTMVAEDetector.export_litert`). ``auto``
scores with LiteRT where the bundle has it and ``ai-edge-litert`` is installed, else with
TensorFlow if installed, else with numpy.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from streamwatch.config import LSTMVAEConfig
from streamwatch.detectors import litert, lstm_numpy
from streamwatch.detectors.base import Detector, ModelError, NotTrained
from streamwatch.detectors.gaussian import sigma_floor
from streamwatch.detectors.litert import LiteNet
from streamwatch.detectors.lstm_numpy import NumpyNet
from streamwatch.tfquiet import filtered_native_stderr

if TYPE_CHECKING:
    from streamwatch.detectors.lstm_vae_net import Net
    from streamwatch.detectors.lstm_vae_train import TrainReport

log = logging.getLogger(__name__)

SHARED = "shared"
_MIN_BUCKET = 8
JIT_COMPILE_DEFAULT = True
"""Whether scoring uses XLA (for buckets up to XLA_MAX_BUCKET) by default; chosen by
bench/bench_inference.py, see docs/performance-models.md."""
XLA_MAX_BUCKET = 128
"""Larger buckets run in plain graph mode, which is faster there."""

_MODEL_KEY = re.compile(r"^(shared|m[0-9]{1,6})$")
LITERT_CHECK_WINDOWS = 4096
"""Most held-out windows per network scored by both TensorFlow and LiteRT at export."""


class LSTMVAEDetector(Detector):
    """LSTM-VAE over windows; score = negative ELBO of the standardised window."""

    name = "lstm-vae"
    kind = "window"
    shared_weights = True
    scores_without_tensorflow = True
    exports_litert: ClassVar[bool] = True
    """Whether ``train`` exports the networks to LiteRT (:meth:`export_litert`)."""

    def __init__(self, config: LSTMVAEConfig, window: int) -> None:
        super().__init__(config, window)
        self.cfg = config
        self.jit_compile = JIT_COMPILE_DEFAULT
        self._nets: dict[str, Net | NumpyNet | LiteNet] = {}
        self._litert: dict[str, dict[int, bytes]] = {}
        """Per network: its LiteRT models by bucket (exported, or read from the bundle)."""
        self._arrays: dict[str, tuple[dict[str, np.ndarray], np.ndarray]] = {}
        """Per LiteRT-scored network: its weight arrays and ε, to save the bundle again."""
        self._norm: dict[str, tuple[float, float]] = {}
        self._model_of: dict[str, str] = {}
        self.reports: dict[str, TrainReport] = {}
        """How each network's training went: ``shared``, or by sensor (set by :meth:`fit`)."""

    # -- state -----------------------------------------------------------------------------

    @property
    def trained(self) -> bool:
        """Whether trained weights exist (the shared model, or at least one per-sensor one)."""
        return bool(self._nets)

    def forget(self, sensor: str) -> None:
        """Drop a sensor's online-learned standardisation (the weights stay)."""
        self._norm.pop(sensor, None)
        self._model_of.pop(sensor, None)

    @property
    def comparable_scores(self) -> bool:
        """One shared model scores standardised windows: a score means the same anywhere."""
        return bool(self.cfg.shared)

    def knows(self, sensor: str) -> bool:
        """Whether the sensor has a standardisation and a model to score it with."""
        return sensor in self._norm and self._model_of.get(sensor) in self._nets

    def _key_for(self, sensor: str) -> str | None:
        if self.cfg.shared:
            return SHARED if SHARED in self._nets else None
        return self._model_of.get(sensor)

    def adapt(self, sensor: str, values: np.ndarray) -> None:
        """Learn one sensor's standardisation from its warm-up values (weights unchanged)."""
        key = self._key_for(sensor)
        if key is None:
            raise NotTrained(
                "lstm-vae has no trained model yet"
                if self.cfg.shared
                else f"lstm-vae has no per-sensor model for {sensor!r} (shared = false)"
            )
        self._norm[sensor] = _standardisation(sensor, values)
        self._model_of[sensor] = key

    # -- training --------------------------------------------------------------------------

    def fit(self, series: Mapping[str, np.ndarray]) -> None:
        """Train on normal data, one raw 1-D series per sensor (time order)."""
        if not series:
            raise ValueError("no series to train on")
        norm = {s: _standardisation(s, v) for s, v in series.items()}
        self.reports = {}
        self._litert, self.litert_report = {}, None
        splits = {s: self._split(s, v, norm[s]) for s, v in series.items()}
        if self.cfg.shared:
            train = np.concatenate([t for t, _ in splits.values()])
            val = np.concatenate([v for _, v in splits.values()])
            self._nets = {SHARED: self._train(train, val, SHARED)}
            self._model_of = dict.fromkeys(series, SHARED)
        else:
            self._nets = {}
            self._model_of = {}
            for i, (sensor, (train, val)) in enumerate(splits.items()):
                key = f"m{i}"
                self._nets[key] = self._train(train, val, sensor, seed_offset=i)
                self._model_of[sensor] = key
        self._norm = norm

    def _split(
        self, sensor: str, values: np.ndarray, norm: tuple[float, float]
    ) -> tuple[np.ndarray, np.ndarray]:
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        cut = round(v.size * (1.0 - self.cfg.validation_split))
        if cut < self.window or v.size - cut < self.window:
            raise ValueError(
                f"sensor {sensor!r}: {v.size} values are too few for windows of {self.window} "
                f"with validation_split {self.cfg.validation_split}"
            )
        z = ((v - norm[0]) / norm[1]).astype(np.float32)
        return self.windows_of(z[:cut]).astype(np.float32), self.windows_of(z[cut:]).astype(
            np.float32
        )

    def _train(self, train: np.ndarray, val: np.ndarray, key: str, seed_offset: int = 0) -> Net:
        from streamwatch.detectors.lstm_vae_train import Trainer

        what = "shared model" if key == SHARED else f"model of {key}"
        trainer = Trainer(self.cfg, self.window, self.cfg.seed + seed_offset, what)
        self.reports[key] = trainer.fit(train, val)
        return trainer.net

    def training_report(self) -> dict[str, Any] | None:
        """How the last :meth:`fit` went, JSON-ready (None before one): the shared model's
        :class:`TrainReport`; with per-sensor models, ``plateau`` if any of them ended on
        it, total steps and seconds, and each one's report under ``models``."""
        if not self.reports:
            return None
        if SHARED in self.reports:
            return self.reports[SHARED].to_json()
        reps = self.reports.values()
        return {
            "plateau": any(r.plateau for r in reps),
            "steps": sum(r.steps for r in reps),
            "seconds": round(sum(r.seconds for r in reps), 1),
            "seed": self.cfg.seed,
            "models": {k: r.to_json() for k, r in self.reports.items()},
        }

    # -- scoring ---------------------------------------------------------------------------

    def _buckets(self, n: int) -> int:
        b = _MIN_BUCKET
        while b < n:
            b *= 2
        return min(b, max(self.max_batch, 1))

    def warm_up(self) -> None:
        """Trace (and XLA-compile) the scoring function for every bucket size, so the first
        real windows do not pay for it. Off the hot path; a no-op before training."""
        sizes = {self._buckets(1)}
        while (b := self._buckets(max(sizes) + 1)) not in sizes:
            sizes.add(b)
        for net in self._nets.values():
            if isinstance(net, LiteNet):
                continue  # built at load, nothing to trace
            for size in sorted(sizes):
                self._run(net, np.zeros((size, self.window), np.float32))

    def _standardise(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        mean = np.fromiter((self._norm[s][0] for s in sensors), np.float64, len(sensors))
        std = np.fromiter((self._norm[s][1] for s in sensors), np.float64, len(sensors))
        v = np.asarray(x, dtype=np.float64).reshape(len(sensors), self.window)
        return ((v - mean[:, None]) / std[:, None]).astype(np.float32)

    def _run(self, net: Net | NumpyNet | LiteNet, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-step NLL (B, W) and KL (B,) for standardised rows, in padded bucketed chunks
        (rows of several features, (B, W, F), give NLL (B, W, F))."""
        if isinstance(net, LiteNet):
            s, k = net(z)
            return s.astype(np.float64), k.astype(np.float64)
        n = len(z)
        steps = np.empty(z.shape, np.float64)
        kl = np.empty(n, np.float64)
        chunk = max(self.max_batch, 1)
        for start in range(0, n, chunk):
            part = z[start : start + chunk]
            size = self._buckets(len(part))
            if size != len(part):
                pad = np.zeros((size - len(part), *part.shape[1:]), np.float32)
                part = np.concatenate([part, pad])
            s, k = net.scorer(self.jit_compile and size <= XLA_MAX_BUCKET)(part)
            m = min(chunk, n - start)
            steps[start : start + m] = np.asarray(s)[:m]
            kl[start : start + m] = np.asarray(k)[:m]
        return steps, kl

    def _contributions(
        self, sensors: Sequence[str], x: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        z = self._standardise(sensors, x)
        if self.cfg.shared:
            if SHARED not in self._nets:
                raise NotTrained("lstm-vae has no trained model yet")
            return self._run(self._nets[SHARED], z)
        keys = np.array([self._model_of[s] for s in sensors])
        steps = np.empty((len(sensors), self.window))
        kl = np.empty(len(sensors))
        for key in np.unique(keys):
            rows = np.flatnonzero(keys == key)
            steps[rows], kl[rows] = self._run(self._nets[str(key)], z[rows])
        return steps, kl

    def score(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """Negative ELBO of each standardised window, shape (B,)."""
        if len(sensors) == 0:
            return np.empty(0)
        steps, kl = self._contributions(sensors, x)
        return steps.sum(axis=1) + kl

    def explain(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """Per-step share of each row's score (step NLL + KL / W), shape (B, W); rows sum to it."""
        if len(sensors) == 0:
            return np.empty((0, self.window))
        steps, kl = self._contributions(sensors, x)
        return steps + kl[:, None] / self.window

    # -- persistence -----------------------------------------------------------------------

    def _sensor_state(self) -> dict[str, Any]:
        return {
            s: {"mean": m, "std": sd, "model": self._model_of[s]}
            for s, (m, sd) in self._norm.items()
        }

    def _restore_sensor_state(self, state: dict[str, Any]) -> None:
        for sensor, p in state.items():
            mean, std, key = float(p["mean"]), float(p["std"]), str(p["model"])
            if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
                raise ValueError(f"sensor {sensor!r}: invalid mean/std")
            if not _MODEL_KEY.match(key) or (key == SHARED) != self.cfg.shared:
                raise ValueError(f"sensor {sensor!r}: bad model key {key!r}")
            self._norm[sensor] = (mean, std)
            self._model_of[sensor] = key

    @staticmethod
    def _weights_file(key: str) -> str:
        return f"{key}.weights.npz"

    def _save_weights(self, path: Path) -> list[str]:
        names = []
        for key, net in self._nets.items():
            name = self._weights_file(key)
            if isinstance(net, LiteNet):
                weights, eps = self._arrays[key]
            elif isinstance(net, NumpyNet):
                weights, eps = net.w, net.eps
            else:
                weights, eps = lstm_numpy.keras_weights(net.vae), net.eps
            lstm_numpy.save_npz(path / name, weights, eps)
            names.append(name)
            for bucket, content in sorted(self._litert.get(key, {}).items()):
                (path / litert.file_name(key, bucket)).write_bytes(content)
                names.append(litert.file_name(key, bucket))
        return names

    # -- LiteRT ----------------------------------------------------------------------------

    def _held_out_windows(self, key: str, series: Mapping[str, np.ndarray]) -> np.ndarray:
        """Standardised windows of the held-out ``series`` of the sensors network ``key``
        serves, at most :data:`LITERT_CHECK_WINDOWS` of them, evenly spaced."""
        parts = [
            self._standardise([s] * len(w), w)
            for s, v in series.items()
            if self._key_for(s) == key and s in self._norm
            for w in [self.windows_of(np.asarray(v, np.float64))]
            if len(w)
        ]
        if not parts:
            return np.empty((0, self.window), np.float32)
        z = np.concatenate(parts)
        if len(z) > LITERT_CHECK_WINDOWS:
            z = z[np.linspace(0, len(z) - 1, LITERT_CHECK_WINDOWS).round().astype(int)]
        return z

    def export_litert(
        self, series: Mapping[str, np.ndarray], buckets: Sequence[int] = litert.BUCKETS
    ) -> dict[str, Any]:
        """Export every network trained here to LiteRT (one model per bucket), checked on the
        held-out windows of ``series`` (raw values per sensor, not trained on): a network's
        models are kept only if LiteRT's scores agree with TensorFlow's within
        :data:`litert.TOLERANCE`; a refused or failed export is logged and said in the
        report, and that network scores without LiteRT. Returns the manifest's ``litert``
        entry (also :attr:`litert_report`). Needs TensorFlow."""
        from streamwatch.detectors import litert_export

        self._litert, self.litert_report = litert_export.export(
            self._nets, lambda key: self._held_out_windows(key, series), self.window, buckets
        )
        return self.litert_report

    def _litert_buckets(self, key: str) -> list[int] | None:
        """The buckets of network ``key``'s LiteRT models in the loaded bundle (None: none,
        or refused at export)."""
        report = self.litert_report or {}
        entry = (report.get("networks") or {}).get(key)
        if not isinstance(entry, dict) or entry.get("refused") or not entry.get("files"):
            return None
        buckets = [int(b) for b in report.get("buckets") or []]
        if [litert.file_name(key, b) for b in buckets] != list(entry["files"]):
            raise ValueError(f"manifest: network {key}: LiteRT files do not match its buckets")
        return buckets

    # -- loading ---------------------------------------------------------------------------

    def _scorer_kind(self, has_litert: bool) -> str:
        """How a network scores under ``engine.inference``: litert, numpy or tensorflow."""
        if self.inference == "litert":
            if not litert.installed():
                raise ModelError(
                    f"engine.inference = 'litert' needs ai-edge-litert: {litert.LITERT_EXTRA}"
                )
            return "litert" if has_litert else "numpy"
        if self.inference in ("numpy", "tensorflow"):
            return self.inference
        if has_litert and litert.installed():
            return "litert"
        from streamwatch.tfquiet import tensorflow_installed

        return "tensorflow" if tensorflow_installed() else "numpy"

    def _load_weights(self, path: Path) -> None:
        # Weights only (arrays into a model built here from the config, or LiteRT
        # flatbuffers of builtin ops): nothing in the model directory is ever executed as
        # code. Bundles before the .npz weights hold Keras HDF5 files.
        keys = sorted(set(self._model_of.values()))
        if not keys:
            raise ValueError("no sensors and no model in the bundle")
        self._nets, self._litert, self._arrays = {}, {}, {}
        for key in keys:
            buckets = self._litert_buckets(key)
            if buckets:
                self._litert[key] = {
                    b: (path / litert.file_name(key, b)).read_bytes() for b in buckets
                }
            kind = self._scorer_kind(bool(buckets))
            if self.inference == "litert" and not buckets:
                log.warning("%s: network %s has no LiteRT model; scoring it with numpy", path, key)
            npz, h5 = path / self._weights_file(key), path / f"{key}.weights.h5"
            if not npz.exists() and kind != "tensorflow":
                raise ModelError(
                    f"{path}: {h5.name} needs TensorFlow to read (a bundle from before numpy "
                    "scoring): retrain it with `streamwatch train`, or install TensorFlow"
                )
            if kind == "litert":
                self._arrays[key] = lstm_numpy.load_npz(npz)
                with filtered_native_stderr():
                    self._nets[key] = LiteNet(self._litert[key], self.window)
                continue
            if kind == "numpy":
                self._nets[key] = NumpyNet.load(npz, self.window)
                continue
            from streamwatch.detectors.lstm_vae_net import Net
            from streamwatch.tfquiet import import_tensorflow

            import_tensorflow(self.name)  # quietly, if nothing imported it yet
            net = Net(self.cfg, self.window, self.cfg.seed)
            if npz.exists():
                arrays, _ = lstm_numpy.load_npz(npz)
                net.vae.set_weights([arrays[n] for n in lstm_numpy.WEIGHT_NAMES])
            else:
                net.vae.load_weights(h5)
            self._nets[key] = net
        log.info("%s: %s scores with %s", path, self.name, self.scoring_with)

    @property
    def scoring_with(self) -> str:
        """What scores the loaded networks: litert, numpy, tensorflow, or a mix (a+b)."""
        kinds = {
            "litert"
            if isinstance(n, LiteNet)
            else "numpy"
            if isinstance(n, NumpyNet)
            else "tensorflow"
            for n in self._nets.values()
        }
        return "+".join(sorted(kinds)) or "none"


def _standardisation(sensor: str, values: np.ndarray) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < 2:
        raise ValueError(f"sensor {sensor!r}: need at least 2 values, got {v.size}")
    mean = float(v.mean())
    return mean, max(float(v.std()), sigma_floor(mean))
