"""Keep TensorFlow's native start-up noise off the user's terminal.

The TensorFlow wheel prints a dozen C++ lines on import and on the first XLA compile (CUDA
plugins registering on a machine with no GPU, absl's "before InitializeLog" notice, XLA
service banners), straight to file descriptor 2 where Python's logging cannot filter them.
:func:`filtered_native_stderr` catches fd 2 for the duration of a call, drops the lines known
to be noise, and writes everything else back, so real errors (and our own log lines written
meanwhile) still reach stderr. Set ``STREAMWATCH_TF_VERBOSE=1`` to see it all.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

_NOISE = re.compile(
    r"Unable to register cu(FFT|DNN|BLAS) factory"
    r"|computation placer already registered"
    r"|failed call to cuInit"
    r"|absl::InitializeLog\(\) is called"
    r"|XLA service 0x[0-9a-f]+ initialized"
    r"|StreamExecutor device \(\d+\)"
    r"|Compiled cluster using XLA"
    r"|oneDNN supports DT_INT32 only"
    r"|oneDNN custom operations are on"
    r"|This TensorFlow binary is optimized to use"
    r"|rebuild TensorFlow with the appropriate compiler flags"
    # the LiteRT converter and interpreter (streamwatch.detectors.litert*)
    r"|Estimated count of arithmetic ops"
    r"|Ignored output_format\."
    r"|Ignored drop_control_dependency\."
    r"|Reading SavedModel (from|debug info)"
    r"|Created TensorFlow Lite XNNPACK delegate for CPU"
)


def is_noise(line: str) -> bool:
    """Whether a line of native stderr output is known start-up noise."""
    return _NOISE.search(line) is not None


class _Capture:
    """The one process-wide capture of fd 2, shared by overlapping users: the first in swaps
    fd 2 for a temporary file, the last out puts it back and replays it. (Each use swapping
    on its own left fd 2 on a deleted file when two overlapped, e.g. a SIGHUP reload during
    the worker's warm-up: every later log line vanished.)"""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.saved = -1
        self.caught: IO[bytes] | None = None

    def enter(self) -> None:
        with self.lock:
            self.depth += 1
            if self.depth > 1:
                return
            sys.stderr.flush()
            self.saved = os.dup(2)
            self.caught = tempfile.TemporaryFile()  # noqa: SIM115  (closed in leave())
            os.dup2(self.caught.fileno(), 2)

    def leave(self) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth > 0:
                return
            sys.stderr.flush()
            os.dup2(self.saved, 2)
            os.close(self.saved)
            caught, self.caught = self.caught, None
            assert caught is not None
            with caught:
                caught.seek(0)
                text = caught.read().decode("utf-8", errors="replace")
        kept = "".join(ln for ln in text.splitlines(keepends=True) if not is_noise(ln))
        if kept:
            sys.stderr.write(kept)
            sys.stderr.flush()


_capture = _Capture()


@contextmanager
def filtered_native_stderr() -> Iterator[None]:
    """Hold back fd 2 while the block runs; then replay it without the known noise. Safe
    to nest and to use from several threads at once."""
    if os.environ.get("STREAMWATCH_TF_VERBOSE"):
        yield
        return
    _capture.enter()
    try:
        yield
    finally:
        _capture.leave()


TRAIN_EXTRA = "pip install 'streamwatch-edge[train]'"
"""How to add TensorFlow to an inference-only install."""


class TensorFlowMissing(ImportError):
    """The configured detector needs TensorFlow and this install has none."""


def import_tensorflow(needed_by: str = "this detector") -> None:
    """Import TensorFlow and TensorFlow Probability once, without the start-up noise.

    Raises :class:`TensorFlowMissing`, naming ``needed_by`` and the install that adds it, on an
    inference-only install."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with filtered_native_stderr():
            import tensorflow as tf
            import tensorflow_probability  # noqa: F401

            # The runtime starts (and probes for GPUs) on the first op, and oneDNN says once
            # that it cannot do int32 on this CPU on the first int32 matmul: let both happen
            # here.
            tf.add(tf.constant(1), 1)
            tf.matmul(tf.ones((1, 1), tf.int32), tf.ones((1, 1), tf.int32))
    except ModuleNotFoundError as exc:
        raise TensorFlowMissing(
            f"{needed_by} needs TensorFlow, which this install lacks ({exc.name} not found): "
            f"{TRAIN_EXTRA}"
        ) from exc


def tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported here (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def prepare(
    detector_type: str,
    intra_threads: int = 0,
    inter_threads: int = 0,
    *,
    scoring_only: bool = False,
    inference: str = "auto",
) -> None:
    """Pin TensorFlow's thread pools (0: TensorFlow's own choice) and import it quietly, if
    detectors of ``detector_type`` need it: robust and Gaussian never do, and a detector that
    can score without it does not when only scoring a trained bundle (``scoring_only``) with
    ``inference`` "numpy" or "litert", or "auto" on an install without TensorFlow or with
    LiteRT (the bundle decides then: one without LiteRT models imports TensorFlow as it
    loads, with the thread pools pinned here)."""
    from streamwatch.detectors import litert
    from streamwatch.detectors.base import detector_class

    cls = detector_class(detector_type)
    if not cls.uses_tensorflow:
        return
    if intra_threads:
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(intra_threads))
    if inter_threads:
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(inter_threads))
    numpy_ok = scoring_only and cls.scores_without_tensorflow
    lean = inference in ("numpy", "litert") or (
        inference == "auto" and (not tensorflow_installed() or litert.installed())
    )
    if numpy_ok and lean:
        return
    import_tensorflow(f"detector {detector_type!r}")
