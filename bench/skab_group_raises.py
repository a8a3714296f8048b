"""Break down the SKAB group path's raises: for each experiment (one group of 8), each raise
and clear with its time against the labelled event, the cause of each raise outside the event
(before it, or after it: the alert did not clear or raised again), and the group detector's
two parts and leading members at that moment.

    python bench/skab_group_raises.py [--split all] [--config /tmp/groups.toml] [-v]

The ``warmup`` protocol of ``streamwatch evaluate`` (each group learns from its first 400
aligned rows). A script, not a test.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from streamwatch.config import Config, load  # noqa: E402
from streamwatch.evaluation.datasets import from_skab  # noqa: E402
from streamwatch.evaluation.runs import group_scores, run_groups  # noqa: E402
from streamwatch.pipeline import group_path  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "skab"


def _record() -> list[tuple[str, float, np.ndarray, list[str]]]:
    """Wrap GroupPath.flush to keep each scored window's parts (group, end, parts, top)."""
    seen: list[tuple[str, float, np.ndarray, list[str]]] = []
    flush = group_path.GroupPath.flush

    def wrapped(self: Any) -> Any:
        due = list(self._due)
        det = self.model.detector
        if due and hasattr(det, "parts"):
            names = [d[0] for d in due]
            x = np.stack([d[2] for d in due])
            parts = det.parts(names, x)
            shares = det.member_shares(names, x)
            for i, d in enumerate(due):
                members = d[1].aligner.members or []
                top = [members[j] for j in np.argsort(-shares[i])[:2]]
                seen.append((d[0], float(d[4]), parts[i], top))
        return flush(self)

    group_path.GroupPath.flush = wrapped  # type: ignore[method-assign]
    return seen


def main(argv: list[str] | None = None) -> int:
    """Run the breakdown and print it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="all")
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("-v", action="store_true", help="print every transition")
    args = ap.parse_args(argv)
    cfg = load(args.config) if args.config else Config()
    if not cfg.groups.patterns:
        cfg = cfg.model_copy(
            update={"groups": cfg.groups.model_copy(update={"patterns": ["skab/+/#"]})}
        )
    ds = from_skab(args.data, args.split)
    seen = _record()
    run = run_groups(cfg, ds)
    assert ds.groups is not None
    causes: Counter[str] = Counter()
    for g, members in sorted(ds.groups.items(), key=lambda kv: int(kv[0].rsplit("_", 1)[1])):
        s = members[0]
        t0 = float(ds.start()[s])
        evs = [e for e in ds.events if e.sensor == s]
        trans = run.transitions.get(s, [])
        span = ", ".join(f"{e.start - t0:+.0f}..{e.end - t0:+.0f}s" for e in evs)
        print(f"{g}: event {span}; rows to {float(ds.ts[s][-1]) - t0:+.0f}s")
        mine = [r for r in seen if r[0] == g]
        at = np.asarray([r[1] for r in mine])
        for t, st in trans:
            inside = any(e.start <= t <= e.end for e in evs)
            if st == "raised" and not inside:
                cause = (
                    "before event"
                    if evs and t < evs[0].start
                    else "after event"
                    if evs and t > evs[-1].end
                    else "no event"
                )
                causes[cause] += 1
            else:
                cause = "in event" if st == "raised" else ""
            if st == "raised" or args.v:
                k = int(np.argmin(np.abs(at - t))) if at.size else -1
                extra = ""
                if k >= 0:
                    parts, top = mine[k][2], mine[k][3]
                    extra = f" point {parts[0]:.2f} level {parts[1]:.2f} top {'/'.join(top)}"
                print(f"  {st:8s} {t - t0:+7.0f}s {cause:13s}{extra}")
    sc = group_scores(ds, run)
    print(f"false raises by cause: {dict(causes)}")
    print(
        f"events {sc.found}/{sc.events}, false raises {sc.false_raises}, F1 "
        f"{sc.point_f1 if sc.point_f1 is None else round(sc.point_f1, 3)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
