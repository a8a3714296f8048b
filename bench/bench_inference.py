"""Per-window scoring cost of our LSTM-VAE: batched tf.function vs XLA vs naive per-window calls.

Usage::

    .venv/bin/python bench/bench_inference.py [--batches 64,256,1024,4096] [--repeats 7]
        [--write docs/performance-models.md]

Trains the detector briefly on sine data (the cost does not depend on the weights), then for
each batch size times, with a median over ``--repeats`` runs:

* ``score()``: the detector's hot path (numpy standardisation, bucket padding, one
  ``tf.function`` call with a fixed input signature per chunk), plain graph mode;
* the same with ``jit_compile=True`` (XLA);
* the bare traced function alone, both ways (what the model costs without numpy around it);
* ``score()`` with ``engine.inference = "numpy"`` (the same bundle scored with numpy alone, as
  an install without TensorFlow does), and its bare scoring pass;
* naive per-window ``model.predict`` and per-window eager calls (on fewer windows: slow).

A benchmark, not a test: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from streamwatch.config import LSTMVAEConfig
from streamwatch.detectors import bundle
from streamwatch.detectors.bundle import Model
from streamwatch.detectors.lstm_vae import XLA_MAX_BUCKET, LSTMVAEDetector
from streamwatch.pipeline.threshold import Thresholds

WINDOW = 20


def per_window_medians(
    runs: dict[str, Callable[[], object]], windows: int, repeats: int
) -> dict[str, float]:
    """Median seconds per window of each run; the runs are interleaved within every repeat so
    that load from other processes hits them alike. Each timing lasts at least ~0.2 s."""
    loops = {}
    for name, run in runs.items():
        run()  # trace / compile / warm caches
        t0 = time.perf_counter()
        run()
        loops[name] = max(1, int(0.2 / max(time.perf_counter() - t0, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            for _ in range(loops[name]):
                run()
            samples[name].append((time.perf_counter() - t0) / (loops[name] * windows))
    return {name: statistics.median(v) for name, v in samples.items()}


def cpu_name() -> str:
    """The CPU model, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    """Run the benchmark, print the table, optionally write it into a Markdown file."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batches", default="16,64,128,256,1024,4096")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--naive-windows", type=int, default=32, help="windows for the naive paths")
    ap.add_argument("--write", type=Path, help="Markdown file to write the results into")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load_before = os.getloadavg()[0]

    import tensorflow as tf

    cfg = LSTMVAEConfig(epochs=1)
    det = LSTMVAEDetector(cfg, WINDOW)
    rng = np.random.default_rng(0)
    t = np.arange(3000) / 50.0
    det.fit({"s": np.sin(2 * np.pi * t) + np.sin(4 * np.pi * t) + rng.normal(0, 0.1, t.size)})
    net: Any = det._nets["shared"]
    with tempfile.TemporaryDirectory() as tmp:
        bundle.save(Model(det, Thresholds(1e-5)), Path(tmp) / "m")
        np_det: Any = bundle.load(Path(tmp) / "m", inference="numpy").detector
    np_net = np_det._nets["shared"]
    batches = [int(b) for b in args.batches.split(",")]
    det.max_batch = np_det.max_batch = max(batches)

    warm: dict[str, float] = {}
    for jit in (False, True):
        det.jit_compile = jit
        t0 = time.perf_counter()
        det.warm_up()
        warm["XLA" if jit else "graph"] = time.perf_counter() - t0

    all_x = det.windows_of(np.sin(2 * np.pi * np.arange(max(batches) + WINDOW) / 50.0))
    rows: list[tuple[str, int, float]] = []
    agree: dict[int, float] = {}
    agree_np: dict[int, float] = {}
    graph_fn, xla_fn = net.scorer(False), net.scorer(True)
    for b in batches:
        x = all_x[:b]
        sensors = ["s"] * b
        z = det._standardise(sensors, x)

        def score_with(jit: bool, sensors: list[str] = sensors, x: np.ndarray = x) -> object:
            det.jit_compile = jit
            return det.score(sensors, x)

        runs: dict[str, Callable[[], object]] = {
            "score(), graph mode only": lambda: score_with(False),
            f"score(), default (XLA up to {XLA_MAX_BUCKET}, graph above)": lambda: score_with(True),
            "traced fn alone, tf.function graph": functools.partial(graph_fn, z),
            "traced fn alone, XLA (jit_compile=True)": functools.partial(xla_fn, z),
            "score(), numpy (engine.inference numpy)": functools.partial(np_det.score, sensors, x),
            "numpy pass alone": functools.partial(np_net, z),
        }
        medians = per_window_medians(runs, b, args.repeats)
        rows.extend((name, b, sec) for name, sec in medians.items())
        plain, xla = (f(z)[0].numpy().sum(axis=1) + f(z)[1].numpy() for f in (graph_fn, xla_fn))
        agree[b] = float(np.max(np.abs(xla - plain) / np.maximum(1.0, np.abs(plain))))
        in_numpy = np_det.score(sensors, x)
        agree_np[b] = float(np.max(np.abs(in_numpy - plain) / np.maximum(1.0, np.abs(plain))))
        print(f"batch {b}: done", file=sys.stderr)

    n = args.naive_windows
    zn = det._standardise(["s"] * n, all_x[:n])[..., None]
    vae = net.vae

    def per_window_predict() -> None:
        for i in range(n):
            vae.predict(zn[i : i + 1], verbose=0)

    def per_window_eager() -> None:
        for i in range(n):
            vae(tf.constant(zn[i : i + 1]), training=False)

    naive = per_window_medians(
        {
            "naive per-window model.predict": per_window_predict,
            "naive per-window eager call": per_window_eager,
        },
        n,
        3,
    )
    rows.extend((name, 1, sec) for name, sec in naive.items())

    table = [
        "| path | batch | µs per window | windows/s |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {b} | {s * 1e6:,.1f} | {1 / s:,.0f} |" for name, b, s in rows),
    ]
    agreement = ", ".join(f"batch {b}: {d:.1e}" for b, d in agree.items())
    agreement_np = ", ".join(f"batch {b}: {d:.1e}" for b, d in agree_np.items())
    warm_text = (
        f"warm_up() over every bucket up to {det.max_batch}: graph mode {warm['graph']:.1f} s "
        f"(one trace), then XLA {warm['XLA']:.1f} s (one compile per bucket up to "
        f"{XLA_MAX_BUCKET})"
    )
    text = "\n".join(table)
    print(text)
    print(f"XLA vs graph, max relative score difference: {agreement}")
    print(f"numpy vs graph, max relative score difference: {agreement_np}")
    print(warm_text)
    if args.write:
        intra = tf.config.threading.get_intra_op_parallelism_threads()
        inter = tf.config.threading.get_inter_op_parallelism_threads()
        header = (
            "# Model inference performance\n\n"
            "Per-window cost of scoring with the LSTM-VAE detector (window 20, hidden 32, "
            "latent 8, 1 latent sample), written by `bench/bench_inference.py`.\n\n"
            "Command:\n\n```\n"
            f"{' '.join(['.venv/bin/python', *sys.argv])}\n```\n\n"
            f"Machine: {cpu_name()}, {os.cpu_count()} CPUs; Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}, TF threads intra {intra} / inter {inter} "
            "(0 = TF default). Medians over repeats; each repeat runs at least 0.2 s, the paths "
            "interleaved. Load average before / after: "
            f"{load_before:.2f} / {os.getloadavg()[0]:.2f} (a shared machine: other work ran "
            "beside it, so expect ±15% between runs).\n\n"
        )
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(
            header
            + text
            + f"\n\nXLA against plain graph mode, max relative score difference: {agreement}.\n"
            + f"numpy against plain graph mode, max relative score difference: {agreement_np}.\n\n"
            + f"One-off cost: {warm_text}.\n\n"
            + "## Reading it\n\n"
            "- *score()* is the detector's hot path (numpy standardisation, padding to a bucket, "
            "one traced call per chunk); *traced fn alone* is the model call without the numpy "
            "around it. The naive rows run the bare Keras model one window at a time (without "
            "even the NLL), as a per-window `model.predict` or eager call would.\n"
            f"- The detector runs XLA for buckets up to {XLA_MAX_BUCKET} rows "
            "(`XLA_MAX_BUCKET` in `streamwatch/detectors/lstm_vae.py`) and graph mode above: "
            "compare the two *traced fn alone* rows per batch to check that cut-off when the "
            "model, TensorFlow or the machine changes. Scores of the two paths agree to the "
            "figure above; `tests/test_detectors.py` holds them to rtol 1e-4.\n"
            "- XLA compiles once per bucket size; `LSTMVAEDetector.warm_up()` pays that before "
            "the first windows arrive.\n",
            encoding="utf-8",
        )
        print(f"written to {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
