"""Classic detectors to put beside ours, on the same windows and the same event scoring.

Every baseline sees a sensor's sliding windows (length ``W``, stride 1), standardised by the
mean and standard deviation of that sensor's training readings, and gives one score per
window (higher = more anomalous), attributed to the window's last reading:

============  =============================================================================
zscore        rolling z-score: the last reading against the mean and σ of the W-1 before it
pca           squared reconstruction error from the principal components (95 % of variance)
iforest       Isolation Forest (scikit-learn), negated ``score_samples``
lof           Local Outlier Factor in novelty mode (scikit-learn), negated ``score_samples``
knn           mean distance to the k = 5 nearest training windows (scikit-learn)
ocsvm         One-Class SVM, RBF kernel, ν = 0.01 (scikit-learn), negated ``score_samples``
============  =============================================================================

The scikit-learn ones need the ``eval`` extra; without it they are skipped with a message.
"""

from __future__ import annotations

import importlib.util
import logging
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Final

import numpy as np

log = logging.getLogger(__name__)

ALL_BASELINES: Final = ("zscore", "pca", "iforest", "lof", "knn", "ocsvm")
SKLEARN_BASELINES: Final = frozenset({"iforest", "lof", "knn", "ocsvm"})
MAX_FIT_WINDOWS: Final = 5000
"""Training windows per sensor are subsampled evenly to at most this many (kernel methods)."""


class BaselineUnavailable(RuntimeError):
    """A baseline needs a package that is not installed."""


def sklearn_available() -> bool:
    """Whether scikit-learn can be imported."""
    return importlib.util.find_spec("sklearn") is not None


class Baseline(ABC):
    """One sensor's model: fit on normal windows, score any windows."""

    name: ClassVar[str]
    needs_fit: ClassVar[bool] = True

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    @abstractmethod
    def fit(self, x: np.ndarray) -> None:
        """Fit on normal windows, shape (N, W), already standardised."""

    @abstractmethod
    def score(self, x: np.ndarray) -> np.ndarray:
        """Scores of windows (N, W), shape (N,), higher = more anomalous."""


class RollingZScore(Baseline):
    """|last - mean(rest)| / std(rest) within each window; nothing to fit."""

    name = "zscore"
    needs_fit = False

    def fit(self, x: np.ndarray) -> None:
        """Nothing to learn."""

    def score(self, x: np.ndarray) -> np.ndarray:
        """The last reading's z-score against the window's earlier readings."""
        rest = x[:, :-1]
        sd = rest.std(axis=1)
        return np.abs(x[:, -1] - rest.mean(axis=1)) / np.maximum(sd, 1e-6)


class PCAReconstruction(Baseline):
    """Squared error of the projection on the leading principal components."""

    name = "pca"
    variance: float = 0.95

    def fit(self, x: np.ndarray) -> None:
        """Principal components (numpy SVD) explaining ``variance`` of the training windows."""
        self.mean_ = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - self.mean_, full_matrices=False)
        ratio = np.cumsum(s**2) / max(float(np.sum(s**2)), 1e-12)
        k = int(np.searchsorted(ratio, self.variance) + 1)
        self.components_ = vt[: min(k, vt.shape[0])]

    def score(self, x: np.ndarray) -> np.ndarray:
        """Squared reconstruction error per window."""
        c = x - self.mean_
        recon = c @ self.components_.T @ self.components_
        return np.asarray(np.sum((c - recon) ** 2, axis=1))


class _Sklearn(Baseline):
    model: Any

    def _make(self) -> Any:
        raise NotImplementedError

    def fit(self, x: np.ndarray) -> None:
        """Fit the scikit-learn model."""
        self.model = self._make()
        self.model.fit(x)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Negated ``score_samples`` (scikit-learn's are higher for normal)."""
        return np.asarray(-self.model.score_samples(x), dtype=np.float64)


class IsolationForestBaseline(_Sklearn):
    """Isolation Forest, 100 trees."""

    name = "iforest"

    def _make(self) -> Any:
        from sklearn.ensemble import IsolationForest

        return IsolationForest(n_estimators=100, random_state=self.seed)


class LOFBaseline(_Sklearn):
    """Local Outlier Factor (20 neighbours), novelty mode so it scores new windows."""

    name = "lof"

    def _make(self) -> Any:
        from sklearn.neighbors import LocalOutlierFactor

        return LocalOutlierFactor(n_neighbors=20, novelty=True)


class KNNBaseline(_Sklearn):
    """Mean Euclidean distance to the 5 nearest training windows."""

    name = "knn"
    k: int = 5

    def _make(self) -> Any:
        from sklearn.neighbors import NearestNeighbors

        return NearestNeighbors(n_neighbors=self.k)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Mean distance to the k nearest training windows."""
        dist, _ = self.model.kneighbors(x)
        return np.asarray(dist.mean(axis=1), dtype=np.float64)


class OCSVMBaseline(_Sklearn):
    """One-Class SVM, RBF kernel with gamma="scale", ν = 0.01."""

    name = "ocsvm"

    def _make(self) -> Any:
        from sklearn.svm import OneClassSVM

        return OneClassSVM(kernel="rbf", gamma="scale", nu=0.01)


_CLASSES: dict[str, type[Baseline]] = {
    c.name: c
    for c in (
        RollingZScore,
        PCAReconstruction,
        IsolationForestBaseline,
        LOFBaseline,
        KNNBaseline,
        OCSVMBaseline,
    )
}


def make(name: str, seed: int = 0) -> Baseline:
    """A fresh baseline by name; :class:`BaselineUnavailable` if scikit-learn is missing."""
    if name not in _CLASSES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(ALL_BASELINES)}")
    if name in SKLEARN_BASELINES and not sklearn_available():
        raise BaselineUnavailable(
            f"baseline {name} needs scikit-learn: pip install 'streamwatch[eval]'"
        )
    return _CLASSES[name](seed)


def windows(values: np.ndarray, length: int) -> np.ndarray:
    """All windows (stride 1) of a 1-D series, shape (N - length + 1, length)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < length:
        return np.empty((0, length))
    return np.lib.stride_tricks.sliding_window_view(v, length)


def score_series(
    name: str,
    values: np.ndarray,
    n_train: int,
    length: int,
    seed: int = 0,
    calibration_fraction: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit one baseline on a sensor's first ``n_train`` readings and score every reading.

    Returns ``(scores, calibration_scores)``: one score per reading (NaN for the first
    ``length - 1``, which end no window), and the scores of held-out training windows from
    which a threshold can be calibrated. Models that learn are fitted on the first
    ``1 - calibration_fraction`` of the training windows and calibrated on the rest, so the
    threshold never comes from the windows they were fitted on.
    """
    v = np.asarray(values, dtype=np.float64)
    train = v[:n_train]
    mu = float(train.mean()) if train.size else 0.0
    sd = float(train.std()) if train.size else 1.0
    z = (v - mu) / (sd if sd > 1e-12 else 1.0)
    x = windows(z, length)
    x_train = windows(z[:n_train], length)
    if x_train.shape[0] < 4:
        raise ValueError(f"need at least {length + 3} training readings, got {n_train}")
    model = make(name, seed)
    if model.needs_fit:
        cut = max(2, round(x_train.shape[0] * (1.0 - calibration_fraction)))
        fit_x = x_train[:cut]
        if fit_x.shape[0] > MAX_FIT_WINDOWS:
            fit_x = fit_x[np.linspace(0, fit_x.shape[0] - 1, MAX_FIT_WINDOWS).astype(int)]
        model.fit(fit_x)
        calib = model.score(x_train[cut:])
    else:
        calib = model.score(x_train)
    out = np.full(v.size, np.nan)
    if x.shape[0]:
        out[length - 1 :] = model.score(x)
    return out, calib
