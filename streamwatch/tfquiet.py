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
from collections.abc import Iterator
from contextlib import contextmanager

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
)


def is_noise(line: str) -> bool:
    """Whether a line of native stderr output is known start-up noise."""
    return _NOISE.search(line) is not None


@contextmanager
def filtered_native_stderr() -> Iterator[None]:
    """Hold back fd 2 while the block runs; then replay it without the known noise."""
    if os.environ.get("STREAMWATCH_TF_VERBOSE"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode("utf-8", errors="replace")
            kept = "".join(ln for ln in text.splitlines(keepends=True) if not is_noise(ln))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def import_tensorflow() -> None:
    """Import TensorFlow and TensorFlow Probability once, without the start-up noise."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with filtered_native_stderr():
        import tensorflow as tf
        import tensorflow_probability  # noqa: F401

        # The runtime starts (and probes for GPUs) on the first op, and oneDNN says once that
        # it cannot do int32 on this CPU on the first int32 matmul: let both happen here.
        tf.add(tf.constant(1), 1)
        tf.matmul(tf.ones((1, 1), tf.int32), tf.ones((1, 1), tf.int32))
