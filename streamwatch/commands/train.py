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
    try:
        model = train(cfg, data, cfg.model_dir, source=str(args.data))
    except TrainError as exc:
        raise UsageError(str(exc)) from None
    t, on = model.thresholds, model.trained_on
    skipped = on.get("skipped_sensors") or {}
    if skipped:
        print(f"skipped {len(skipped)} sensors with too few readings: {', '.join(sorted(skipped))}")
    print(
        f"trained {model.name} on {on['readings']} readings from "
        f"{len(on['sensors'])} sensors; {len(t.per_sensor)} sensor thresholds, "
        f"pooled {t.pooled if t.pooled is None else f'{t.pooled:.4g}'}; saved to {cfg.model_dir}"
    )
    training = on.get("training")
    if isinstance(training, dict) and training.get("plateau"):
        loss, level = training.get("val_loss"), training.get("plateau_level")
        print(
            f"warning: training ended on (or above) the plateau (val_loss {loss}, plateau "
            f"level {level}, {training.get('steps')} steps): the model ignores the shape of "
            "a window; train on more data or more steps"
        )
    return EXIT_OK
