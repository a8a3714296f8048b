"""Numpy scoring against TensorFlow on real and simulated data: same bundle, same verdicts?

Usage::

    .venv/bin/python bench/numpy_vs_tf.py [--nab ../shared/data/nab] [--sim-seed 7]
        [--write docs/evaluation/numpy-vs-tf.md]

For each data set, the ``train`` protocol's LSTM-VAE (shipped defaults, ``fit_calibrated`` on
every series' training prefix, as ``streamwatch train``) is saved once, loaded twice
(``engine.inference`` "tensorflow" and "numpy") and every whole series replayed through each.
Reported: the largest score difference on every window of the data (relative, per window) and
whether the alert transitions (sensor, state, ts) are identical. A check, not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamwatch.config import Config
from streamwatch.detectors import bundle
from streamwatch.evaluation.datasets import Dataset, from_nab, from_simulated
from streamwatch.evaluation.runs import training_series
from streamwatch.replay import replay
from streamwatch.training import fit_calibrated


def compare(cfg: Config, ds: Dataset) -> dict[str, Any]:
    """Train once, replay with both scorers, compare scores and transitions."""
    t0 = time.perf_counter()
    model = fit_calibrated(cfg, training_series(ds), source=ds.name)
    with tempfile.TemporaryDirectory() as tmp:
        bundle.save(model, Path(tmp) / "m")
        tf_model = bundle.load(Path(tmp) / "m", inference="tensorflow")
        np_model = bundle.load(Path(tmp) / "m", inference="numpy")
    worst = 0.0
    windows = 0
    for s in ds.sensors:
        if not tf_model.detector.knows(s):
            continue
        x = tf_model.detector.windows_of(ds.value[s])
        names = [s] * len(x)
        a = tf_model.detector.score(names, x)
        b = np_model.detector.score(names, x)
        worst = max(worst, float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(a)))))
        windows += len(x)
    series = {s: (ds.ts[s], ds.value[s]) for s in ds.sensors}
    with_tf = [(e.sensor, e.state, e.ts) for e in replay(cfg, tf_model, series)]
    with_np = [(e.sensor, e.state, e.ts) for e in replay(cfg, np_model, series)]
    return {
        "data": ds.name,
        "series": len(ds.sensors),
        "windows": windows,
        "max_rel_diff": worst,
        "transitions_tf": len(with_tf),
        "transitions_np": len(with_np),
        "identical": with_tf == with_np,
        "differ": len(set(with_tf) ^ set(with_np)),
        "seconds": time.perf_counter() - t0,
    }


def main() -> int:
    """Run the comparison on NAB and a simulator stream; print (and write) the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--nab", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/nab"
    )
    ap.add_argument("--sim-seed", type=int, default=7)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    from simulators.generate import simulate

    cfg = Config.model_validate({"detector": {"type": "lstm-vae"}})
    sets = [
        from_nab(args.nab),
        from_simulated(
            simulate(4, 14_400.0, 1.0, args.sim_seed), f"sim seed {args.sim_seed}", 2000, 60.0
        ),
    ]
    rows = []
    for ds in sets:
        r = compare(cfg, ds)
        print(r, flush=True)
        rows.append(r)
    lines = [
        "# Numpy scoring against TensorFlow",
        "",
        f"Written by `bench/numpy_vs_tf.py` (`{' '.join(sys.argv[1:])}`): the `train` protocol's "
        "LSTM-VAE (shipped defaults), one bundle loaded with `engine.inference` tensorflow and "
        "numpy, every series replayed through each.",
        "",
        "| data | series | windows scored | max relative score difference "
        "| transitions (TF / numpy) | identical verdicts | transitions that differ |",
        "|---|---:|---:|---:|---|---|---:|",
        *(
            f"| {r['data']} | {r['series']} | {r['windows']:,} | {r['max_rel_diff']:.1e} | "
            f"{r['transitions_tf']} / {r['transitions_np']} | {'yes' if r['identical'] else 'no'}"
            f" | {r['differ']} |"
            for r in rows
        ),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        args.write.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
