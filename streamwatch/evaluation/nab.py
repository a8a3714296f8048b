"""NAB scoring, from the Numenta Anomaly Benchmark's published rules, and its data format.

The rules (Lavin & Ahmad 2015, and NAB's scorer at commit ea702d75):

- **Probationary period.** The first ``min(floor(0.15·n), 0.15·5000)`` rows of each series
  (15 %, capped at 750 rows) are not scored: alarms there neither earn nor cost.
- **Windows.** Each labelled window ``[t1, t2]`` covers rows ``a..b``, width ``w = b-a+1``.
- **Scaled sigmoid.** ``σ(y) = 2/(1+e^(5y)) - 1`` (and ``-1`` for ``y >= 3``).
- **True positives.** An alarm at row ``i`` inside a window sits at relative position
  ``y = -(b - i + 1)/w``; it earns ``A_TP · σ(y)/σ(-1)``, so an alarm on the window's left
  edge earns exactly ``A_TP`` and later alarms less. Each window is scored once, by its
  highest-earning (that is, earliest) alarm; a window with no alarm costs ``-A_FN``.
- **False positives.** Every alarm outside all windows costs: ``A_FP · σ(y)`` with
  ``y = (i - b')/(w' - 1)`` after the nearest preceding window ``a'..b'`` (so alarms just
  after a window cost little, far ones ``-A_FP``), and ``-A_FP`` before any window.
- **Normalisation.** Over a corpus, ``100 · (S - S_null)/(S_perfect - S_null)``, where the
  null detector never alarms (``S_null = -A_FN`` per window) and the perfect one alarms on
  each window's left edge (``S_perfect = A_TP`` per window).

NAB tunes each detector's threshold for each profile on the corpus itself. Here we score
the alarms a detector actually raises at its shipped threshold: no tuning on the test data.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PROBATION_PERCENT = 0.15
PROBATION_CAP_ROWS = 5000
"""NAB caps the probationary period at ``PROBATION_PERCENT`` of this many rows (750)."""


@dataclass(frozen=True)
class CostMatrix:
    """One NAB application profile's weights."""

    tp: float
    fp: float
    fn: float
    tn: float = 1.0


STANDARD_PROFILES: Mapping[str, CostMatrix] = {
    "standard": CostMatrix(tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": CostMatrix(tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": CostMatrix(tp=1.0, fp=0.11, fn=2.0),
}
"""NAB's three profiles, as in its ``config/profiles.json``."""


def load_profiles(path: Path) -> dict[str, CostMatrix]:
    """Read a NAB ``profiles.json``."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    out: dict[str, CostMatrix] = {}
    for name, prof in raw.items():
        cm = prof["CostMatrix"]
        out[name] = CostMatrix(
            tp=float(cm["tpWeight"]),
            fp=float(cm["fpWeight"]),
            fn=float(cm["fnWeight"]),
            tn=float(cm.get("tnWeight", 1.0)),
        )
    return out


def scaled_sigmoid(y: float) -> float:
    """NAB's scaled sigmoid: +0.987 at y = -1, 0 at y = 0, -0.987 at y = 1, -1 from y = 3."""
    if y >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


_MAX_TP = scaled_sigmoid(-1.0)


def probation_length(n_rows: int, percent: float = PROBATION_PERCENT) -> int:
    """Rows at the start of a series that are not scored."""
    return int(min(math.floor(percent * n_rows), percent * PROBATION_CAP_ROWS))


def window_rows(
    timestamps: np.ndarray, windows: Sequence[tuple[float, float]]
) -> list[tuple[int, int]]:
    """The row span ``(a, b)`` of each window ``(t1, t2)`` (inclusive); empty windows dropped."""
    ts = np.asarray(timestamps, dtype=np.float64)
    out: list[tuple[int, int]] = []
    for t1, t2 in windows:
        a = int(np.searchsorted(ts, t1, side="left"))
        b = int(np.searchsorted(ts, t2, side="right")) - 1
        if a <= b:
            out.append((a, b))
        else:
            log.warning("window %s..%s holds no rows; ignored", t1, t2)
    return sorted(out)


@dataclass
class NabScore:
    """One series (or a sum of series) under one profile."""

    raw: float
    null: float
    perfect: float
    windows: int
    detected: int
    false_positives: int
    window_scores: list[float] = field(default_factory=list)

    @property
    def normalised(self) -> float:
        """``100·(raw - null)/(perfect - null)``; 0 where there is no window to score."""
        span = self.perfect - self.null
        return 100.0 * (self.raw - self.null) / span if span > 0 else 0.0

    def __add__(self, other: NabScore) -> NabScore:
        return NabScore(
            self.raw + other.raw,
            self.null + other.null,
            self.perfect + other.perfect,
            self.windows + other.windows,
            self.detected + other.detected,
            self.false_positives + other.false_positives,
            [*self.window_scores, *other.window_scores],
        )


def score_alarms(
    alarms: np.ndarray,
    windows: Sequence[tuple[int, int]],
    cost: CostMatrix,
    probation: int | None = None,
) -> NabScore:
    """Score one series' boolean alarm rows against its window row spans.

    ``probation`` defaults to NAB's :func:`probation_length`. Windows must not overlap.
    """
    flags = np.asarray(alarms, dtype=bool)
    n = flags.size
    prob = probation_length(n) if probation is None else probation
    spans = sorted(windows)
    starts = [a for a, _ in spans]
    # A window wholly inside the probationary period has no scorable row: NAB skips it.
    best: dict[int, float] = {w: -cost.fn for w, (_, b) in enumerate(spans) if b >= prob}
    fp_total = 0.0
    n_fp = 0
    for i in np.flatnonzero(flags).tolist():
        if i < prob:
            continue
        w = bisect.bisect_right(starts, i) - 1  # last window starting at or before i
        if w >= 0 and i <= spans[w][1]:
            a, b = spans[w]
            s = cost.tp * scaled_sigmoid(-(b - i + 1) / (b - a + 1)) / _MAX_TP
            best[w] = max(best[w], s)
            continue
        n_fp += 1
        if w < 0:
            fp_total -= cost.fp
        else:
            a, b = spans[w]
            width = b - a + 1
            y = (i - b) / (width - 1) if width > 1 else 3.0
            fp_total += cost.fp * scaled_sigmoid(y)
    tp_fn = list(best.values())
    return NabScore(
        raw=sum(tp_fn) + fp_total,
        null=-cost.fn * len(best),
        perfect=cost.tp * len(best),
        windows=len(best),
        detected=sum(1 for s in tp_fn if s > -cost.fn),
        false_positives=n_fp,
        window_scores=tp_fn,
    )


# -- the NAB data format ------------------------------------------------------------------


@dataclass
class NabSeries:
    """One NAB data file: epoch-second timestamps, values, and its labelled windows."""

    name: str
    ts: np.ndarray
    value: np.ndarray
    windows: list[tuple[float, float]]

    @property
    def window_rows(self) -> list[tuple[int, int]]:
        """The windows as row spans."""
        return window_rows(self.ts, self.windows)

    @property
    def probation(self) -> int:
        """Rows in NAB's probationary period."""
        return probation_length(self.ts.size)

    def labels(self) -> np.ndarray:
        """1 for rows inside a window, else 0."""
        lab = np.zeros(self.ts.size, dtype=np.int64)
        for a, b in self.window_rows:
            lab[a : b + 1] = 1
        return lab


def parse_time(text: str) -> float:
    """A NAB timestamp (``2014-04-10 16:15:00[.000000]``, UTC) as epoch seconds."""
    dt = datetime.fromisoformat(text.strip())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def load_corpus(root: Path, only: Sequence[str] = ()) -> list[NabSeries]:
    """Read every series under ``root/data`` that ``root/combined_windows.json`` labels.

    ``only`` keeps the series whose relative name contains any of its strings.
    """
    labels = json.loads((root / "combined_windows.json").read_text(encoding="utf-8"))
    out: list[NabSeries] = []
    for name in sorted(labels):
        if only and not any(s in name for s in only):
            continue
        path = root / "data" / name
        if not path.is_file():
            log.warning("%s is labelled but missing; skipped", path)
            continue
        raw = np.genfromtxt(
            path, delimiter=",", names=True, dtype=None, encoding="utf-8", autostrip=True
        )
        ts = np.fromiter((parse_time(t) for t in raw["timestamp"]), np.float64, raw.size)
        wins = [(parse_time(a), parse_time(b)) for a, b in labels[name]]
        out.append(NabSeries(name, ts, np.asarray(raw["value"], dtype=np.float64), wins))
    return out
