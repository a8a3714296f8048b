"""``streamwatch train``: fit a detector on a CSV of normal readings and save a model bundle."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from streamwatch.commands.common import (
    EXIT_OK,
    UsageError,
    add_config_args,
    config_from_args,
    setup_logging,
)


def add_parser(sub: Any) -> None:
    """Register the ``train`` subcommand."""
    p = sub.add_parser(
        "train",
        help="fit a detector on a CSV of normal readings and save a model bundle",
        description="Fit the configured detector on timestamp,sensor,value[,label] CSV data "
        "(label == 0 rows only, if labelled), calibrate thresholds on held-out data, "
        "and save the bundle to --model-dir.",
    )
    p.add_argument("--data", type=Path, required=True, metavar="IN.csv", help="readings CSV")
    p.add_argument(
        "--no-litert",
        action="store_true",
        help="do not export LiteRT models into the bundle (the LSTM-VAE then scores with "
        "numpy, the rvae with TensorFlow; the export takes tens of seconds per network)",
    )
    add_config_args(p, daemon=False)
    p.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    from streamwatch import dataset
    from streamwatch.daemon import prepare_tensorflow
    from streamwatch.training import TrainError, train

    cfg = config_from_args(args)
    setup_logging(cfg.log_level)
    prepare_tensorflow(cfg, training=True)
    if cfg.model_dir is None:
        raise UsageError("train needs --model-dir (or model_dir in the config)")
    try:
        data = dataset.read_csv(args.data)
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if cfg.groups.patterns:
        return _train_groups(cfg, data, cfg.model_dir, str(args.data), not args.no_litert)
    try:
        model = train(cfg, data, cfg.model_dir, source=str(args.data), litert=not args.no_litert)
    except TrainError as exc:
        raise UsageError(str(exc)) from None
    return _summary(model, cfg.model_dir)


def _train_groups(cfg: Any, data: Any, model_dir: Path, source: str, litert: bool) -> int:
    """``train`` with ``[groups]``: single sensors into model_dir, groups beside it."""
    from streamwatch.group_training import train_with_groups
    from streamwatch.training import TrainError

    try:
        single, groups = train_with_groups(cfg, data, model_dir, source, litert)
    except TrainError as exc:
        raise UsageError(str(exc)) from None
    if single is not None:
        _summary(single, model_dir)
    if groups is not None:
        on = groups.trained_on
        skipped = on.get("skipped_sensors") or {}
        if skipped:
            print(f"skipped {len(skipped)} groups with too few steps: {', '.join(sorted(skipped))}")
        print(
            f"trained {groups.name} on {len(on.get('groups', {}))} groups "
            f"({on['readings']} aligned steps); {len(groups.thresholds.per_sensor)} group "
            f"thresholds; saved to {cfg.groups.bundle_dir(model_dir)}"
        )
        _plateau_warning(on.get("training"))
    return EXIT_OK


def _summary(model: Any, model_dir: Path) -> int:
    """Print what a single-sensor model was trained on, and any plateau warning."""
    t, on = model.thresholds, model.trained_on
    skipped = on.get("skipped_sensors") or {}
    if skipped:
        print(f"skipped {len(skipped)} sensors with too few readings: {', '.join(sorted(skipped))}")
    print(
        f"trained {model.name} on {on['readings']} readings from "
        f"{len(on['sensors'])} sensors; {len(t.per_sensor)} sensor thresholds, "
        f"pooled {t.pooled if t.pooled is None else f'{t.pooled:.4g}'}; saved to {model_dir}"
    )
    _plateau_warning(on.get("training"))
    _litert_line(model.detector.litert_report)
    return EXIT_OK


def _litert_line(report: Any) -> None:
    """Say which networks were exported to LiteRT, and why any was refused."""
    if not isinstance(report, dict):
        return
    for key, entry in sorted((report.get("networks") or {}).items()):
        if entry.get("refused"):
            print(f"LiteRT: network {key} not exported: {entry['refused']}")
        else:
            print(
                f"LiteRT: network {key} exported (batch buckets {report.get('buckets')}; "
                f"max relative score difference from TensorFlow {entry['max_rel_diff']:.2g} "
                f"on {entry['windows']} held-out windows, tolerance {report.get('tolerance')})"
            )


def _plateau_warning(training: Any) -> None:
    """Warn when a network's training ended on the plateau (per its training report)."""
    if not (isinstance(training, dict) and training.get("plateau")):
        return
    if "val_loss" not in training:  # several networks: name the ones on the plateau
        models = training.get("models") or {}
        on = sorted(k for k, r in models.items() if isinstance(r, dict) and r.get("plateau"))
        print(
            f"warning: training of {', '.join(on) or 'a network'} ended on (or above) the "
            "plateau: it ignores the shape of a window; train on more data or more steps"
        )
        return
    loss, level = training.get("val_loss"), training.get("plateau_level")
    print(
        f"warning: training ended on (or above) the plateau (val_loss {loss}, plateau "
        f"level {level}, {training.get('steps')} steps): the model ignores the shape of "
        "a window; train on more data or more steps"
    )
