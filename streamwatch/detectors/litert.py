"""The LSTM-VAE's scoring pass on LiteRT (``ai-edge-litert``), for a lean install.

``streamwatch train`` exports each trained network to LiteRT flatbuffers, one per batch
bucket (:data:`BUCKETS`), with the recurrence unrolled and only builtin ops
(:mod:`streamwatch.detectors.litert_export`); the bundle lists and checksums them like its
other files, and its manifest's ``litert`` entry says how far LiteRT's scores were from
TensorFlow's on held-out windows. This module runs them, with neither TensorFlow nor the
converter in memory.

A batch is cut into chunks of bucket size (:func:`plan`): full chunks of the largest bucket,
then the rest either padded up to the smallest bucket that holds it or split further, which
ever costs less (rows run, padding included, plus :data:`CALL_COST` a call); one interpreter
call per chunk. The interpreters are built once, at load. A LiteRT interpreter
holds its input and output tensors between ``set_tensor``, ``invoke`` and ``get_tensor``, so
it is not safe to share between threads: each network's calls are serialised by a lock (the
engine scores on one worker thread, so the lock is uncontended there).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

BUCKETS: tuple[int, ...] = (1, 8, 64, 512)
"""Batch sizes a network is exported at (fixed shapes: an unrolled LSTM converts to builtin
ops only with a fixed batch)."""
TOLERANCE = 1e-2
"""Largest relative score difference, ``|tf - litert| / max(1, |tf|)`` over held-out windows,
at which an exported LiteRT model is kept; past it the model is refused and the bundle scores
with numpy (or TensorFlow) instead. The floor of 1 nat keeps near-zero scores from counting
float32 rounding as a relative error. Not tighter: every scorer computes in float32, and a
window whose decoder σ sits near its floor (``SCALE_EPS``) magnifies rounding in the decoded
mean a thousandfold; on NAB's held-out windows numpy and LiteRT each differ from TensorFlow
by more than 1e-3 (docs/evaluation/numpy-vs-tf.md; the manifest records numpy's difference
beside LiteRT's)."""
CALL_COST = 8
"""What one interpreter call costs beside its rows, counted in rows: a call's fixed cost is
worth several windows' (docs/performance-footprint.md), so a batch is not split into many
small calls to save a little padding."""
LITERT_EXTRA = "pip install 'streamwatch-edge[litert]'"
"""How to add LiteRT to an install."""


class LiteRTMissing(ImportError):
    """``engine.inference = "litert"`` on an install without ``ai-edge-litert``."""


def installed() -> bool:
    """Whether ``ai_edge_litert`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec("ai_edge_litert") is not None
    except (ImportError, ValueError):
        return False


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ModuleNotFoundError as exc:
        raise LiteRTMissing(
            f"engine.inference = 'litert' needs ai-edge-litert ({exc.name} not found): "
            f"{LITERT_EXTRA}"
        ) from exc
    return Interpreter


def file_name(key: str, bucket: int) -> str:
    """A network's LiteRT file for one bucket, e.g. ``shared.b64.tflite``."""
    return f"{key}.b{bucket}.tflite"


def plan(n: int, buckets: Sequence[int] = BUCKETS) -> list[tuple[int, int]]:
    """Chunks ``(rows, bucket)`` covering ``n`` rows in order: full chunks of the largest
    bucket, then the rest in whichever cover of :func:`_tail` costs least."""
    sizes = sorted(buckets)
    if n <= 0:
        return []
    top = sizes[-1]
    return [(top, top)] * (n // top) + _tail(n % top, sizes)


def _tail(rows: int, sizes: list[int]) -> list[tuple[int, int]]:
    """The cheapest cover of ``rows`` (fewer than the largest bucket): padded up to the
    smallest bucket that holds them, or full chunks of the largest bucket below them and the
    rest covered again; cost = rows run (padding included) + :data:`CALL_COST` per call."""
    if rows == 0:
        return []
    up = next(b for b in sizes if b >= rows)
    best = [(rows, up)]
    below = [b for b in sizes if b < rows]
    if up == rows or not below:
        return best
    down = below[-1]
    alt = [(down, down)] * (rows // down) + _tail(rows % down, sizes)
    return min(best, alt, key=lambda p: sum(size + CALL_COST for _, size in p))


class _Bucket:
    """One interpreter with its input and output tensor indices."""

    def __init__(self, interpreter: Any, features: int) -> None:
        interpreter.allocate_tensors()
        self.interpreter = interpreter
        (inp,) = interpreter.get_input_details()
        self.input = int(inp["index"])
        self.shape = tuple(int(d) for d in inp["shape"])
        outs = interpreter.get_output_details()
        by_rank = {len(o["shape"]): int(o["index"]) for o in outs}
        step_rank = 2 if features == 1 else 3
        if len(outs) != 2 or set(by_rank) != {1, step_rank}:
            raise ValueError(f"not an exported LSTM-VAE scorer: outputs {outs!r}")
        self.kl, self.steps = by_rank[1], by_rank[step_rank]

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.interpreter.set_tensor(self.input, x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.steps), self.interpreter.get_tensor(self.kl)


class LiteNet:
    """One network's LiteRT models, one per bucket: ``scorer()(z)`` -> (per-step NLL, KL),
    like :class:`streamwatch.detectors.lstm_numpy.NumpyNet`, for any number of rows.
    ``interpreter``: the interpreter class (default ``ai_edge_litert``'s)."""

    batches_itself = True
    """The detector hands it whole batches: it cuts them into its own buckets."""

    def __init__(
        self,
        models: Mapping[int, bytes],
        window: int,
        features: int = 1,
        interpreter: Any = None,
    ) -> None:
        if not models:
            raise ValueError("no LiteRT models")
        cls = interpreter or _interpreter_class()
        self.window = window
        self.features = features
        self.shape = (window,) if features == 1 else (window, features)
        self._buckets: dict[int, _Bucket] = {}
        for size, content in sorted(models.items()):
            b = _Bucket(cls(model_content=bytes(content), num_threads=1), features)
            if b.shape != (size, *self.shape):
                raise ValueError(f"bucket {size}: model input {b.shape}, want {size}x{self.shape}")
            self._buckets[size] = b
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, path: Path, key: str, buckets: Sequence[int], window: int, features: int = 1
    ) -> LiteNet:
        """Read a network's bucket files from a bundle directory (checksums verified by the
        bundle already)."""
        return cls({b: (path / file_name(key, b)).read_bytes() for b in buckets}, window, features)

    @property
    def buckets(self) -> tuple[int, ...]:
        """The batch sizes this network runs at."""
        return tuple(self._buckets)

    def scorer(self, jit: bool = False) -> LiteNet:
        """The scoring callable (itself; ``jit`` is accepted for the TF twin's signature)."""
        return self

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-step NLL (B, W) and KL (B,) of standardised windows ``x`` (B, W); with several
        features (B, W, F) -> ((B, W, F), (B,))."""
        x = np.asarray(x, np.float32)
        n = len(x)
        steps = np.empty((n, *self.shape), np.float32)
        kl = np.empty(n, np.float32)
        start = 0
        with self._lock:
            for rows, size in plan(n, self.buckets):
                part = x[start : start + rows]
                if rows != size:
                    pad = np.zeros((size - rows, *self.shape), np.float32)
                    part = np.concatenate([part, pad])
                s, k = self._buckets[size](np.ascontiguousarray(part))
                steps[start : start + rows] = s[:rows]
                kl[start : start + rows] = k[:rows]
                start += rows
        return steps, kl


def max_rel_diff(reference: np.ndarray, other: np.ndarray) -> float:
    """``max |reference - other| / max(1, |reference|)`` (0 for empty arrays; inf where
    either is not finite and they differ)."""
    a = np.asarray(reference, np.float64)
    b = np.asarray(other, np.float64)
    if a.size == 0:
        return 0.0
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore"):
        d = np.where(same, 0.0, np.abs(a - b) / np.maximum(1.0, np.abs(a)))
    return float(np.nan_to_num(d, nan=np.inf).max())
