"""A recurrent VAE over a group's windows of ``time x members`` (seed 002's RVAE).

The LSTM-VAE's network and training (:mod:`streamwatch.detectors.lstm_vae_net`,
:mod:`streamwatch.detectors.lstm_vae_train`: Keras 3, ``tfp.distributions``, the KL warm-up,
the plateau check, seeded training) with a members axis: the encoder reads (W, F) windows,
the decoder gives a Normal per step and member. Scoring reuses the LSTM-VAE's hot path
(standardise in numpy, pad to power-of-two buckets, one ``tf.function`` per network with a
fixed input signature), so groups of one member count are scored in one call.

Each member is standardised per group (its normal mean and std; a missing value, NaN, is the
member's mean, 0). With ``shared`` (the default) one network per member count serves every
group with that many members (SKAB's 16 experiments share one); else one per group.

``streamwatch train`` exports each network to LiteRT as it does the LSTM-VAE's (unrolled,
one model per batch bucket, checked against TensorFlow on the held-out steps); a loaded bundle
scores with them where ``ai-edge-litert`` is installed (``engine.inference`` auto or litert),
else with TensorFlow (there is no numpy twin for several members).

Score (``score``): ``elbo``, the negative ELBO (reconstruction NLL of the window decoded from
the posterior mean + KL); ``reconstruction``, the NLL alone; ``latent``, the KL alone: how
far the encoder must move from the prior to explain the window. :meth:`parts` gives the two
terms; :meth:`member_shares` each member's reconstruction NLL above its normal level, as
shares (a member the others cannot explain comes first).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from streamwatch.config import DetectorConfig, RVAEConfig
from streamwatch.detectors import litert, lstm_numpy
from streamwatch.detectors.base import ModelError, NotTrained
from streamwatch.detectors.litert import LiteNet
from streamwatch.detectors.lstm_vae import LSTMVAEDetector
from streamwatch.detectors.lstm_vae_net import Net
from streamwatch.detectors.lstm_vae_train import Trainer
from streamwatch.tfquiet import filtered_native_stderr, import_tensorflow

log = logging.getLogger(__name__)

_KEY = re.compile(r"^(f[0-9]{1,4}|g[0-9]{1,6})$")
_MIN_SD = 1e-9


def _as_steps(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v[:, None] if v.ndim == 1 else v


class RVAEDetector(LSTMVAEDetector):
    """Recurrent VAE over group windows; see the module docstring."""

    name = "rvae"
    scores_without_tensorflow = False  # the numpy twin serves the one-feature LSTM-VAE only
    part_names: ClassVar[tuple[str, ...]] = ("reconstruction", "latent")

    def __init__(self, config: DetectorConfig, window: int) -> None:
        assert isinstance(config, RVAEConfig)
        super().__init__(config, window)
        self.rcfg = config
        self._mnorm: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._normal_nll: dict[str, np.ndarray] = {}
        """Per group: each member's mean reconstruction NLL over its normal windows."""

    # -- state -----------------------------------------------------------------------------

    @property
    def comparable_scores(self) -> bool:
        """Scores sum over members: groups of other sizes do not compare."""
        return False

    def knows(self, sensor: str) -> bool:
        """Whether the group has a standardisation and a network."""
        return sensor in self._mnorm and self._model_of.get(sensor) in self._nets

    def forget(self, sensor: str) -> None:
        """Drop a group's standardisation (the weights stay)."""
        self._mnorm.pop(sensor, None)
        self._normal_nll.pop(sensor, None)
        self._model_of.pop(sensor, None)

    def _shared_key(self, features: int) -> str:
        return f"f{features}"

    def adapt(self, sensor: str, values: np.ndarray) -> None:
        """Learn a group's per-member standardisation (and normal NLL) from its normal
        steps; the shared network for its member count must exist."""
        v = _as_steps(values)
        key = self._shared_key(v.shape[1]) if self.rcfg.shared else self._model_of.get(sensor)
        if key is None or key not in self._nets:
            raise NotTrained(f"rvae has no trained network for {sensor!r} ({v.shape[1]} members)")
        self._mnorm[sensor] = _standardisation(sensor, v)
        self._model_of[sensor] = key
        w = self.windows_of(v)
        self._normal_nll[sensor] = self._member_nll([sensor] * len(w), w).mean(axis=0)

    # -- training --------------------------------------------------------------------------

    def fit(self, series: Mapping[str, np.ndarray]) -> None:
        """Train on normal data: per group, its aligned steps (N, members) in time order."""
        if not series:
            raise ValueError("no series to train on")
        steps = {g: _as_steps(v) for g, v in series.items()}
        norm = {g: _standardisation(g, v) for g, v in steps.items()}
        keys: dict[str, str] = {}
        for i, (g, v) in enumerate(sorted(steps.items())):
            keys[g] = self._shared_key(v.shape[1]) if self.rcfg.shared else f"g{i}"
        self.reports = {}
        self._nets = {}
        self._litert, self.litert_report = {}, None
        for n, key in enumerate(sorted(set(keys.values()))):
            train, val = [], []
            for g in sorted(g for g in keys if keys[g] == key):
                t, w = self._split_group(g, steps[g], norm[g])
                train.append(t)
                val.append(w)
            features = steps[next(g for g in keys if keys[g] == key)].shape[1]
            trainer = Trainer(
                self.rcfg,
                self.window,
                self.rcfg.seed + n,
                f"rvae network {key} ({len(train)} groups of {features})",
                features,
            )
            self.reports[key] = trainer.fit(np.concatenate(train), np.concatenate(val))
            self._nets[key] = trainer.net
        self._mnorm = norm
        self._model_of = keys
        self._normal_nll = {}
        for g, v in steps.items():
            w = self.windows_of(v)
            self._normal_nll[g] = self._member_nll([g] * len(w), w).mean(axis=0)

    def _split_group(
        self, group: str, v: np.ndarray, norm: tuple[np.ndarray, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        cut = round(len(v) * (1.0 - self.rcfg.validation_split))
        if cut < self.window or len(v) - cut < self.window:
            raise ValueError(
                f"group {group!r}: {len(v)} steps are too few for windows of {self.window} "
                f"with validation_split {self.rcfg.validation_split}"
            )
        z = _standardised(v, norm).astype(np.float32)
        if z.shape[1] == 1:  # one member: the single-feature network takes (N, W)
            z = z[:, 0]
        return self.windows_of(z[:cut]).astype(np.float32), self.windows_of(z[cut:]).astype(
            np.float32
        )

    # -- scoring ---------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Trace every bucket size of every network ahead of the first windows."""
        sizes = {self._buckets(1)}
        while (b := self._buckets(max(sizes) + 1)) not in sizes:
            sizes.add(b)
        for net in self._nets.values():
            if isinstance(net, LiteNet):
                continue  # built at load, nothing to trace
            shape = (self.window,) if net.features == 1 else (self.window, net.features)
            for size in sorted(sizes):
                self._run(net, np.zeros((size, *shape), np.float32))

    def _terms(self, sensors: Sequence[str], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per step and member NLL (B, W, F) and KL (B,)."""
        w = _as_windows(x)
        try:
            keys = np.array([self._model_of[s] for s in sensors])
            mean = np.stack([self._mnorm[s][0] for s in sensors])
            std = np.stack([self._mnorm[s][1] for s in sensors])
        except KeyError as exc:
            raise NotTrained(f"rvae does not know {exc.args[0]!r}") from None
        z = (w - mean[:, None, :]) / std[:, None, :]
        z = np.where(np.isfinite(z), z, 0.0).astype(np.float32)
        steps = np.empty(z.shape)
        kl = np.empty(len(sensors))
        for key in np.unique(keys):
            rows = np.flatnonzero(keys == key)
            net = self._nets.get(str(key))
            if net is None:
                raise NotTrained(f"rvae has no network {key!r}")
            part = z[rows] if net.features > 1 else z[rows, :, 0]
            s, k = self._run(net, part)
            steps[rows] = s if net.features > 1 else s[:, :, None]
            kl[rows] = k
        return steps, kl

    def _member_nll(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        steps, _ = self._terms(sensors, x)
        out: np.ndarray = steps.sum(axis=1)
        return out

    def parts(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """(B, 2): reconstruction NLL and KL of each window."""
        if len(sensors) == 0:
            return np.empty((0, 2))
        steps, kl = self._terms(sensors, x)
        return np.stack([steps.sum(axis=(1, 2)), kl], axis=1)

    def score(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """The configured score of each window (B,)."""
        if len(sensors) == 0:
            return np.empty(0)
        p = self.parts(sensors, x)
        if self.rcfg.score == "reconstruction":
            return p[:, 0]
        if self.rcfg.score == "latent":
            return p[:, 1]
        out: np.ndarray = p.sum(axis=1)
        return out

    def explain(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """Per-step share of the ELBO (B, W): each step's NLL over members plus KL / W."""
        if len(sensors) == 0:
            return np.empty((0, self.window))
        steps, kl = self._terms(sensors, x)
        out: np.ndarray = steps.sum(axis=2) + kl[:, None] / self.window
        return out

    def member_shares(self, sensors: Sequence[str], x: np.ndarray) -> np.ndarray:
        """(B, members): each member's reconstruction NLL above its normal level, as shares."""
        nll = self._member_nll(sensors, x)
        normal = np.stack([self._normal_nll.get(s, np.zeros(nll.shape[1])) for s in sensors])
        excess = np.maximum(nll - normal, 0.0)
        total = excess.sum(axis=1, keepdims=True)
        even = np.full(excess.shape, 1.0 / excess.shape[1])
        out: np.ndarray = np.where(total > 0, excess / np.maximum(total, 1e-300), even)
        return out

    # -- persistence -----------------------------------------------------------------------

    def _sensor_state(self) -> dict[str, Any]:
        return {
            g: {
                "mean": m.tolist(),
                "std": sd.tolist(),
                "model": self._model_of[g],
                "normal_nll": self._normal_nll.get(g, np.zeros(m.size)).tolist(),
            }
            for g, (m, sd) in self._mnorm.items()
        }

    def _restore_sensor_state(self, state: dict[str, Any]) -> None:
        for g, p in state.items():
            mean = np.asarray(p["mean"], dtype=np.float64)
            std = np.asarray(p["std"], dtype=np.float64)
            normal = np.asarray(p["normal_nll"], dtype=np.float64)
            key = str(p["model"])
            if mean.ndim != 1 or mean.shape != std.shape or mean.shape != normal.shape:
                raise ValueError(f"group {g!r}: mean, std and normal_nll must match")
            if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
                raise ValueError(f"group {g!r}: invalid mean/std")
            if not _KEY.match(key) or key.startswith("f") != self.rcfg.shared:
                raise ValueError(f"group {g!r}: bad model key {key!r}")
            self._mnorm[g] = (mean, std)
            self._normal_nll[g] = normal
            self._model_of[g] = key

    def _held_out_windows(self, key: str, series: Mapping[str, np.ndarray]) -> np.ndarray:
        """Standardised windows of the held-out steps of the groups network ``key`` serves
        (as :meth:`_terms` standardises them), at most LITERT_CHECK_WINDOWS."""
        from streamwatch.detectors.lstm_vae import LITERT_CHECK_WINDOWS

        parts = []
        for g, v in series.items():
            if self._model_of.get(g) != key or g not in self._mnorm:
                continue
            w = self.windows_of(_as_steps(v))
            if len(w):
                mean, std = self._mnorm[g]
                z = np.where(np.isfinite(w), (w - mean) / std, 0.0).astype(np.float32)
                parts.append(z[:, :, 0] if z.shape[2] == 1 else z)
        if not parts:
            return np.empty((0, self.window), np.float32)
        z = np.concatenate(parts)
        if len(z) > LITERT_CHECK_WINDOWS:
            z = z[np.linspace(0, len(z) - 1, LITERT_CHECK_WINDOWS).round().astype(int)]
        return z

    def _load_weights(self, path: Path) -> None:
        # Weights only (plain .npz arrays into networks built here from the config, or LiteRT
        # flatbuffers of builtin ops). No numpy twin: LiteRT where the bundle has it and
        # engine.inference allows it, else TensorFlow.
        features: dict[str, int] = {}
        for g, key in self._model_of.items():
            features.setdefault(key, self._mnorm[g][0].size)
        if not features:
            raise ValueError("no groups and no network in the bundle")
        self._nets, self._litert, self._arrays = {}, {}, {}
        lite_ok = self.inference in ("auto", "litert") and litert.installed()
        if self.inference == "litert" and not lite_ok:
            raise ModelError(
                f"engine.inference = 'litert' needs ai-edge-litert: {litert.LITERT_EXTRA}"
            )
        for n, (key, f) in enumerate(sorted(features.items())):
            buckets = self._litert_buckets(key)
            if buckets:
                self._litert[key] = {
                    b: (path / litert.file_name(key, b)).read_bytes() for b in buckets
                }
            if buckets and lite_ok:
                self._arrays[key] = lstm_numpy.load_npz(path / self._weights_file(key))
                with filtered_native_stderr():
                    self._nets[key] = LiteNet(self._litert[key], self.window, f)
                continue
            import_tensorflow(self.name)  # quietly, if nothing imported it yet
            net = Net(self.rcfg, self.window, self.rcfg.seed + n, f)
            arrays, _ = lstm_numpy.load_npz(path / self._weights_file(key))
            net.vae.set_weights([arrays[name] for name in lstm_numpy.WEIGHT_NAMES])
            self._nets[key] = net


def _as_windows(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    return a[:, :, None] if a.ndim == 2 else a


def _standardisation(group: str, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    finite = np.isfinite(v)
    if (finite.sum(axis=0) < 2).any():
        raise ValueError(f"group {group!r}: a member has fewer than 2 finite values")
    mean = np.nanmean(v, axis=0)
    std = np.nanstd(v, axis=0)
    floor = np.maximum(np.abs(mean) * 1e-6, _MIN_SD)
    return mean, np.where(std > floor, std, np.maximum(floor, math.ulp(1.0)))


def _standardised(v: np.ndarray, norm: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    z = (v - norm[0]) / norm[1]
    out: np.ndarray = np.where(np.isfinite(z), z, 0.0)
    return out
