"""Numpy and LiteRT scoring against TensorFlow on real and simulated data: same bundle, same
verdicts?

Usage::

    .venv/bin/python bench/numpy_vs_tf.py [--nab ../shared/data/nab] [--sim-seed 7]
        [--write docs/evaluation/numpy-vs-tf.md]

For each data set, the ``train`` protocol's LSTM-VAE (shipped defaults, ``fit_calibrated`` on
every series' training prefix, and the LiteRT export checked on the held-out calibration
readings, as ``streamwatch train``) is saved once, loaded three times (``engine.inference``
"tensorflow", "numpy" and "litert") and every whole series replayed through each. Reported:
the largest score difference from TensorFlow on every window of the data (relative to
``max(1, |score|)``, per window), whether the alert transitions (sensor, state, ts) are
identical, and the export's own check. A check, not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from streamwatch.config import Config
from streamwatch.detectors import bundle
from streamwatch.detectors.litert import BUCKETS, TOLERANCE, max_rel_diff
from streamwatch.evaluation.datasets import Dataset, from_nab, from_simulated
from streamwatch.evaluation.runs import training_series
from streamwatch.replay import replay
from streamwatch.training import fit_calibrated

KINDS = ("numpy", "litert")
"""The scorers compared with TensorFlow's."""


def compare(cfg: Config, ds: Dataset) -> dict[str, Any]:
    """Train once (with the LiteRT export), replay with each scorer, compare scores and
    transitions with TensorFlow's."""
    t0 = time.perf_counter()
    model = fit_calibrated(cfg, training_series(ds), source=ds.name, litert=True)
    with tempfile.TemporaryDirectory() as tmp:
        bundle.save(model, Path(tmp) / "m")
        models = {k: bundle.load(Path(tmp) / "m", inference=k) for k in ("tensorflow", *KINDS)}
    for kind, m in models.items():
        assert getattr(m.detector, "scoring_with", kind) == kind, (kind, m.detector)
    ref = models["tensorflow"].detector
    worst = dict.fromkeys(KINDS, 0.0)
    windows = 0
    for s in ds.sensors:
        if not ref.knows(s):
            continue
        x = ref.windows_of(ds.value[s])
        names = [s] * len(x)
        a = ref.score(names, x)
        for kind in KINDS:
            b = models[kind].detector.score(names, x)
            worst[kind] = max(worst[kind], max_rel_diff(a, b))
        windows += len(x)
    series = {s: (ds.ts[s], ds.value[s]) for s in ds.sensors}
    events = {
        k: [(e.sensor, e.state, e.ts) for e in replay(cfg, m, series)] for k, m in models.items()
    }
    report = model.detector.litert_report or {}
    export = report.get("networks", {}).get("shared", {})
    return {
        "data": ds.name,
        "series": len(ds.sensors),
        "windows": windows,
        "max_rel_diff": worst,
        "export_check": export.get("max_rel_diff"),
        "export_check_numpy": export.get("numpy_max_rel_diff"),
        "export_windows": export.get("windows"),
        "refused": export.get("refused"),
        "transitions": {k: len(v) for k, v in events.items()},
        "identical": {k: events[k] == events["tensorflow"] for k in KINDS},
        "differ": {k: len(set(events[k]) ^ set(events["tensorflow"])) for k in KINDS},
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
        "# Numpy and LiteRT scoring against TensorFlow",
        "",
        "```",
        f".venv/bin/python bench/numpy_vs_tf.py {' '.join(sys.argv[1:])}",
        "```",
        "",
        "Written by that command: the `train` protocol's "
        "LSTM-VAE (shipped defaults) with its LiteRT export (batch buckets "
        f"{', '.join(map(str, BUCKETS))}; checked at export on held-out calibration windows, "
        f"tolerance {TOLERANCE:g}), one bundle loaded with `engine.inference` tensorflow, numpy "
        "and litert, every series replayed through each. Differences are relative to "
        "max(1, |TensorFlow's score|), the largest over every window of the data.",
        "",
        "| data | series | windows scored | max rel. difference numpy / LiteRT "
        "| export check on held-out windows: LiteRT (numpy) | transitions (TF / numpy / LiteRT) "
        "| identical verdicts numpy / LiteRT | transitions that differ numpy / LiteRT |",
        "|---|---:|---:|---|---|---|---|---|",
        *(
            f"| {r['data']} | {r['series']} | {r['windows']:,} | "
            f"{r['max_rel_diff']['numpy']:.1e} / {r['max_rel_diff']['litert']:.1e} | "
            + (
                f"refused: {r['refused']}"
                if r["refused"]
                else f"{r['export_check']:.1e} (numpy {r['export_check_numpy']:.1e}; "
                f"{r['export_windows']:,} windows)"
            )
            + f" | {r['transitions']['tensorflow']} / {r['transitions']['numpy']} / "
            f"{r['transitions']['litert']} | "
            + " / ".join("yes" if r["identical"][k] else "no" for k in KINDS)
            + f" | {r['differ']['numpy']} / {r['differ']['litert']} |"
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
