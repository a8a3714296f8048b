"""``streamwatch evaluate``: detection figures on labelled data, beside baselines.

The measuring is :mod:`streamwatch.evaluation`; this module turns flags into data sets and
writes the report files.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamwatch.commands.common import (
    EXIT_OK,
    UsageError,
    add_config_args,
    config_from_args,
    setup_logging,
)

if TYPE_CHECKING:
    from simulators.generate import Simulated


_DESCRIPTION = """\
Measure detection on labelled data: our detector replayed through the daemon's engine at
its shipped threshold, beside classic baselines on the same windows and the same scoring.
Writes report.md and report.json (and figures with --plot) to --out.
"""

_EPILOG = """\
metrics: event recall (events with an alert within [start, end + tolerance]), alert
precision (alerts that fall in an event), event F1, false alarms per 10,000 normal readings,
mean detection delay, threshold-free AUC-PR from per-reading scores, all per anomaly kind
too; on NAB data also the NAB score (standard, reward_low_FP_rate, reward_low_FN_rate).

examples:
  streamwatch simulate --sensors 8 --duration 14400 --seed 1 --csv sim.csv --events ev.csv
  streamwatch evaluate --csv sim.csv --events ev.csv --plot --out eval/
  streamwatch evaluate --simulate --nab ../shared/data/nab --plot --out eval/
  streamwatch evaluate --skab ../shared/data/skab --skab-split 8-15 --protocol both
  streamwatch evaluate --nab ../shared/data/nab --nab-split odd --train-seeds 0,1

protocols: warmup (the engine learns each sensor from its first readings) and train (one
model fitted on every sensor's training readings at once, as streamwatch train does, then
the whole series replayed with it). Tune settings on NAB even, SKAB 0-7 and simulator seeds
1-3 only; report NAB odd/all, SKAB 8-15/all and simulator seed 7.
"""


def add_parser(sub: Any) -> None:
    """Register the ``evaluate`` subcommand."""
    from streamwatch.evaluation.baselines import ALL_BASELINES

    p = sub.add_parser(
        "evaluate",
        help="measure detection on labelled data, beside baselines",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("data (at least one)")
    g.add_argument(
        "--csv",
        type=Path,
        metavar="READINGS.csv",
        help="labelled readings: timestamp,sensor,value,label (streamwatch simulate)",
    )
    g.add_argument(
        "--events",
        type=Path,
        metavar="EVENTS.csv",
        help="events for --csv: sensor,start,end,kind (default: from label runs)",
    )
    g.add_argument(
        "--simulate",
        action="store_true",
        help="generate a simulator data set in memory (see --sensors ... --seed)",
    )
    g.add_argument(
        "--nab",
        type=Path,
        metavar="DIR",
        help="a NAB tree: DIR/data/<category>/<series>.csv and DIR/combined_windows.json",
    )
    g.add_argument(
        "--nab-only",
        action="append",
        default=[],
        metavar="SUBSTR",
        help="only the NAB series whose name contains SUBSTR (repeatable)",
    )
    g.add_argument(
        "--skab",
        type=Path,
        metavar="DIR",
        help="SKAB experiments: DIR/<family>_<n>.csv (';'-separated) and DIR/anomaly-free.csv",
    )
    g.add_argument(
        "--nab-split",
        choices=("even", "odd", "all"),
        default="all",
        help="NAB series sorted by name: even or odd index, or all (default all). Tune on "
        "even; report odd/all",
    )
    g.add_argument(
        "--skab-split",
        default="all",
        metavar="FIRST-LAST|all",
        help="SKAB experiments by number, e.g. 0-7 or 8-15 (default all). Tune on 0-7; "
        "report 8-15/all",
    )
    g = p.add_argument_group("--simulate data set")
    g.add_argument("--sensors", type=int, default=8, help="sensors (default 8)")
    g.add_argument(
        "--duration",
        type=float,
        default=4 * 3600.0,
        metavar="S",
        help="seconds per sensor (default 14400)",
    )
    g.add_argument(
        "--rate", type=float, default=1.0, metavar="HZ", help="readings per second (default 1)"
    )
    g.add_argument("--seed", type=int, default=1, help="simulator and baseline seed (default 1)")
    g = p.add_argument_group("detectors")
    add_config_args(p, daemon=False)
    g.add_argument(
        "--baselines",
        default=",".join(ALL_BASELINES),
        metavar="B1,B2",
        help=f"comma-separated baselines, or 'none' (default: all: "
        f"{', '.join(ALL_BASELINES)}; the scikit-learn ones need the eval extra)",
    )
    g.add_argument(
        "--protocol",
        choices=("warmup", "train", "both"),
        default=None,
        help="warmup: the engine learns each sensor from its first readings; train: one model "
        "fitted on every sensor's training readings (streamwatch train), then replayed; "
        "default both (warmup only with --model-dir, which is its own training)",
    )
    g.add_argument(
        "--train-seeds",
        default=None,
        metavar="S1,S2",
        help="also run the train protocol once per detector.seed and report the spread of "
        "thresholds and of the events found",
    )
    g = p.add_argument_group("scoring and output")
    g.add_argument(
        "--tolerance",
        type=float,
        default=None,
        metavar="S",
        help="alerts up to S seconds after an event's end still count for it "
        "(default: one window of readings; 0 on NAB, whose windows are wide)",
    )
    g.add_argument(
        "--out", type=Path, default=Path("eval-out"), help="output directory (default eval-out)"
    )
    g.add_argument(
        "--plot",
        action="store_true",
        help="also write PNG figures for our detector (needs matplotlib)",
    )
    g.add_argument(
        "--plot-sensor",
        action="append",
        default=[],
        metavar="NAME",
        help="sensor or NAB series to plot (repeatable; default: the first with events)",
    )
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from simulators.generate import AnomalySpec, read_csv, simulate
    from streamwatch.daemon import prepare_tensorflow
    from streamwatch.evaluation.baselines import ALL_BASELINES
    from streamwatch.evaluation.datasets import (
        Dataset,
        from_nab,
        from_simulated,
        from_skab,
        nab_split,
        subset,
    )
    from streamwatch.evaluation.report import markdown, plot
    from streamwatch.evaluation.runs import OURS, PROTOCOLS, evaluate, seed_spread

    cfg = config_from_args(args)
    setup_logging(cfg.log_level)
    prepare_tensorflow(cfg, training=True)
    if not (args.csv or args.simulate or args.nab or args.skab):
        raise UsageError("give --csv, --simulate, --nab or --skab (or several)")
    if cfg.model_dir is not None and args.protocol in ("train", "both"):
        raise UsageError("--model-dir is the warmup protocol's bundle: drop --protocol train")
    protocols = (
        ("warmup",)
        if cfg.model_dir is not None or args.protocol == "warmup"
        else ("train",)
        if args.protocol == "train"
        else PROTOCOLS
    )
    try:
        seeds = [int(x) for x in args.train_seeds.split(",")] if args.train_seeds else []
    except ValueError:
        raise UsageError(f"--train-seeds {args.train_seeds!r}: give integers, e.g. 0,1") from None
    names = (
        []
        if args.baselines == "none"
        else [b.strip() for b in args.baselines.split(",") if b.strip()]
    )
    bad = [b for b in names if b not in ALL_BASELINES]
    if bad:
        raise UsageError(f"unknown baselines {bad}; choose from {', '.join(ALL_BASELINES)}")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib: pip install 'streamwatch[eval]'")
    window = cfg.windows.length
    n_train = max(cfg.learning.warmup, window + 20)
    datasets: list[Dataset] = []
    if args.csv:
        if not args.csv.is_file():
            raise UsageError(f"{args.csv}: no such file")
        try:
            sim = read_csv(args.csv, args.events)
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"cannot read the data: {exc}") from None
        datasets.append(
            from_simulated(sim, args.csv.stem, n_train, _tolerance(args.tolerance, sim, window))
        )
    if args.simulate:
        warmup_s = 1.2 * n_train / args.rate
        sim = simulate(
            args.sensors,
            args.duration,
            args.rate,
            args.seed,
            anomalies=AnomalySpec(),
            warmup_s=warmup_s,
        )
        datasets.append(
            from_simulated(sim, "simulated", n_train, _tolerance(args.tolerance, sim, window))
        )
    if args.nab:
        if not (args.nab / "combined_windows.json").is_file():
            raise UsageError(f"{args.nab}: no combined_windows.json (not a NAB tree?)")
        ds = from_nab(args.nab, args.nab_only)
        ds = subset(ds, nab_split(ds.sensors, args.nab_split), args.nab_split)
        if args.tolerance is not None:
            ds.tolerance_s = args.tolerance
        datasets.append(ds)
    if args.skab:
        try:
            ds = from_skab(args.skab, args.skab_split)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--skab: {exc}") from None
        if args.tolerance is not None:
            ds.tolerance_s = args.tolerance
        datasets.append(ds)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    figures: list[Path] = []
    for ds in datasets:
        res, runs = evaluate(cfg, ds, names, cfg.model_dir, args.seed, protocols)
        if seeds:
            res["seed_spread"] = seed_spread(cfg, ds, seeds)
        results.append(res)
        if args.plot:
            ours = next(r for n, r in runs.items() if n.startswith(OURS))
            wanted = [s for s in args.plot_sensor if s in ds.ts] or [
                next((e.sensor for e in ds.events), ds.sensors[0])
            ]
            for s in wanted:
                figures += plot(ds, ours, s, args.out / ds.name)
    header = {
        "detector": cfg.detector.type,
        "window": window,
        "false_alarm_rate": cfg.threshold.false_alarm_rate,
        "alerts (k of n, clear m)": f"{cfg.alerts.raise_k} of {cfg.alerts.raise_n}, "
        f"{cfg.alerts.clear_m}",
        "seed": args.seed,
        "protocols": ", ".join(protocols),
        "NAB split": args.nab_split if args.nab else "-",
        "SKAB split": args.skab_split if args.skab else "-",
        "model": _model_note(cfg.model_dir),
    }
    (args.out / "report.json").write_text(
        json.dumps({"settings": header, "results": results}, indent=2), encoding="utf-8"
    )
    (args.out / "report.md").write_text(markdown(results, header), encoding="utf-8")
    print(
        f"wrote {args.out / 'report.md'} and report.json"
        + (f" and {len(figures)} figures" if figures else "")
    )
    return EXIT_OK


def _model_note(model_dir: Path | None) -> str:
    """How our detector was trained, for the report header."""
    if model_dir is None:
        return (
            "trained on each sensor's warm-up readings only (streamwatch.training.fit_calibrated)"
        )
    note = f"pre-trained bundle {model_dir}"
    try:
        manifest = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return note
    trained = manifest.get("trained_on") if isinstance(manifest, dict) else None
    if isinstance(trained, dict) and "readings" in trained:
        note += (
            f", trained on {trained['readings']} readings of {len(trained.get('sensors', []))} "
            f"sensors from {trained.get('source')}; sensors it knows keep its thresholds"
        )
    return note


def _tolerance(given: float | None, sim: Simulated, window: int) -> float:
    """The given tolerance, or one window's worth of a sensor's sampling interval."""
    import numpy as np

    if given is not None:
        return given
    steps = [
        float(np.median(np.diff(t))) for t in (sim.series(s)[0] for s in sim.sensors) if t.size > 1
    ]
    return window * float(np.median(steps)) if steps else 0.0
