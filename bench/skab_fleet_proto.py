"""Throwaway prototype (issue 11): widen the robust detector's part scales of each sensor by
how much larger the parts get over a long normal record of the same kind than within a
400-row block of it ("fleet calibration"). Measures events found / false raises on SKAB.

    python bench/skab_fleet_proto.py --split 0-7 [--variant NAME ...]

Not a test and not shipped: it monkeypatches RobustDetector.adapt / score_series. Each
kind's ratio comes from ``anomaly-free.csv``: the record is cut into 400-row blocks; on each,
a robust detector learns its part scales, then the largest raw part over an evaluation range
(``None``: the whole record; N: the block and the N rows after it) over that scale is the
block's ratio; the ratio of the kind is a quantile over blocks, at least 1, optionally
capped, applied to the listed parts only. Calibration (margin x largest normal score) sees
the unwidened scales, else it would undo a widening of every part. ``const-*`` are controls:
the same widening for every kind, no long record used. Result (docs/evaluation.md): it did
not pay enough to build.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from skab_false_raises import experiment_raises  # noqa: E402

from streamwatch.config import load  # noqa: E402
from streamwatch.detectors.robust import PARTS, RobustDetector  # noqa: E402
from streamwatch.evaluation.datasets import SKAB_TRAIN_ROWS, from_skab  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "skab"
WIDEN: dict[str, np.ndarray] = {}
FALSE_BY: list[tuple[str, str]] = []
UNWIDENED: dict[str, np.ndarray] = {}
_adapt = RobustDetector.adapt
_score_series = RobustDetector.score_series


def _kind(sensor: str) -> str:
    return sensor.rsplit("/", 1)[-1]


def _patched_adapt(self: RobustDetector, sensor: str, values: np.ndarray) -> None:
    _adapt(self, sensor, values)
    r = WIDEN.get(_kind(sensor))
    if r is None or sensor.startswith("skab/anomaly-free/"):
        return
    row = self._table.row(sensor)
    UNWIDENED[sensor] = np.array([self._table.cols[f"k_{p}"][row] for p in PARTS])
    for i, p in enumerate(PARTS):
        self._table.cols[f"k_{p}"][row] *= r[i]


def _patched_score_series(self: RobustDetector, sensor: str, values: np.ndarray) -> np.ndarray:
    """Calibration sees the unwidened scales (else margin x max renormalises the widening)."""
    k = UNWIDENED.get(sensor)
    if k is None or not CALIBRATE_UNWIDENED:
        return _score_series(self, sensor, values)
    row = self._table.row(sensor)
    saved = [self._table.cols[f"k_{p}"][row] for p in PARTS]
    for i, p in enumerate(PARTS):
        self._table.cols[f"k_{p}"][row] = k[i]
    try:
        return _score_series(self, sensor, values)
    finally:
        for i, p in enumerate(PARTS):
            self._table.cols[f"k_{p}"][row] = saved[i]


CALIBRATE_UNWIDENED = True
RobustDetector.adapt = _patched_adapt  # type: ignore[method-assign]
RobustDetector.score_series = _patched_score_series  # type: ignore[method-assign,assignment]


def block_ratios(cfg: Any, v: np.ndarray, block: int, horizon: int | None) -> np.ndarray:
    """(blocks, 5): per block, the largest raw part over the evaluation range (the whole
    record, or the ``horizon`` rows after the block) over the block's learned scale."""
    out = []
    for start in range(0, v.size - block + 1, block):
        det = RobustDetector(cfg.detector, cfg.windows.length)
        _adapt(det, "x", v[start : start + block])
        row = det._table.row("x")
        k = np.array([det._table.cols[f"k_{p}"][row] for p in PARTS])
        if horizon is None:
            rest = v
        else:
            rest = v[start : start + block + horizon]
            if rest.size < block + horizon:
                continue
        x = det.windows_of(rest)
        raw = det._raw_parts(["x"] * len(x), x)
        out.append(raw.max(axis=0) / k)
    return np.asarray(out)


VARIANTS = {
    # name: (horizon, aggregate quantile, parts widened, cap)
    "all-med": (None, 0.5, PARTS, None),
    "all-med-cap3": (None, 0.5, PARTS, 3.0),
    "all-med-pl": (None, 0.5, ("point", "level"), None),
    "all-med-pl-cap3": (None, 0.5, ("point", "level"), 3.0),
    "all-q25": (None, 0.25, PARTS, None),
    "h800-med": (800, 0.5, PARTS, None),
    "h800-q75": (800, 0.75, PARTS, None),
    "h800-q90": (800, 0.9, PARTS, None),
    "h800-med-pl": (800, 0.5, ("point", "level"), None),
    "h800-q75-pl": (800, 0.75, ("point", "level"), None),
    "h400-med": (400, 0.5, PARTS, None),
    "h400-q75": (400, 0.75, PARTS, None),
    "h400-med-pl": (400, 0.5, ("point", "level"), None),
    "h1600-med-pl": (1600, 0.5, ("point", "level"), None),
    "h800-q25-pl": (800, 0.25, ("point", "level"), None),
    "all-q25-pl": (None, 0.25, ("point", "level"), None),
    "all-med-pl-cap2": (None, 0.5, ("point", "level"), 2.0),
    "h800-med-pls": (800, 0.5, ("point", "level", "spread"), None),
    "h800-med-plj": (800, 0.5, ("point", "level", "jump"), None),
    # controls: the same widening for every kind, no long record used
    "const-pl-2": ("const", 2.0, ("point", "level"), None),
    "const-pl-3": ("const", 3.0, ("point", "level"), None),
    "none": ("const", 1.0, PARTS, None),
}


def ratios(cfg: Any, ds: Any, variant: str, verbose: bool) -> dict[str, np.ndarray]:
    horizon, q, parts, cap = VARIANTS[variant]
    out = {}
    for name, (_, v) in ds.extra_train.items():
        if horizon == "const":
            agg = np.full(len(PARTS), q)
        else:
            assert horizon is None or isinstance(horizon, int)
            r = block_ratios(cfg, v, SKAB_TRAIN_ROWS, horizon)
            agg = np.quantile(r, q, axis=0)
        agg = np.maximum(agg, 1.0)
        if cap is not None:
            agg = np.minimum(agg, cap)
        agg = np.array([a if p in parts else 1.0 for a, p in zip(agg, PARTS, strict=True)])
        out[_kind(name)] = agg
        if verbose:
            widths = " ".join(f"{p}={a:5.2f}" for p, a in zip(PARTS, agg, strict=True))
            print(f"  {variant} {_kind(name):20s} {widths}")
    return out


def warmup(cfg: Any, ds: Any) -> tuple[int, int, int]:
    found = total = false = 0
    for _g, sensors in sorted(ds.groups.items()):
        hit, spans, outside = experiment_raises(cfg, ds, sensors)
        for ev in outside:
            parts = ev.parts or {"?": 0.0}
            FALSE_BY.append((ev.sensor, max(parts, key=lambda k: parts[k])))
        found += hit
        total += spans
        false += len(outside)
    return found, total, false


def trained(cfg: Any, ds: Any) -> tuple[int, int, int, float]:
    """The train protocol (streamwatch train + replay), scored as evaluate does."""
    from streamwatch.evaluation.runs import group_scores, run_trained

    g = group_scores(ds, run_trained(cfg, ds))
    return g.found, g.events, g.false_raises, g.point_f1 or 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="0-7")
    ap.add_argument("--variant", action="append")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--train", action="store_true", help="also the train protocol")
    args = ap.parse_args()
    cfg = load(None)
    ds = from_skab(DATA, args.split)
    WIDEN.clear()
    f, t, fr = warmup(cfg, ds)
    print(f"{'baseline':18s} events {f}/{t} false raises {fr}")
    for variant in args.variant or list(VARIANTS):
        WIDEN.clear()
        WIDEN.update(ratios(cfg, ds, variant, args.verbose))
        FALSE_BY.clear()
        f, t, fr = warmup(cfg, ds)
        extra = ""
        if args.verbose:
            from collections import Counter

            by = Counter(f"{s.rsplit('/', 1)[1]}/{c}" for s, c in FALSE_BY)
            print(f"  {variant} false raises by column/part:", dict(by.most_common()))
        if args.train:
            extra = " | train: events {}/{} false raises {} point F1 {:.3f}".format(
                *trained(cfg, ds)
            )
        print(f"{variant:18s} events {f}/{t} false raises {fr}{extra}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
