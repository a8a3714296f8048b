"""What every command shares: config flags, logging set-up, exit codes and UsageError."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from streamwatch.config import Config, load, override

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def add_config_args(p: argparse.ArgumentParser, *, daemon: bool = True) -> None:
    """Flags shared by the commands that take a config: each overrides its config key."""
    p.add_argument("--config", type=Path, help="TOML config file (default: all defaults)")
    p.add_argument(
        "--detector", choices=("robust", "gaussian", "gmm", "lstm-vae"), help="detector.type"
    )
    p.add_argument("--model-dir", type=Path, help="model bundle directory (model_dir)")
    if daemon:
        p.add_argument("--broker", help="mqtt.broker, e.g. mqtt://HOST:1883 or mqtts://HOST:8883")
        p.add_argument(
            "--topic", action="append", metavar="FILTER", help="mqtt.topics (repeatable)"
        )
        p.add_argument("--metrics-port", type=int, help="metrics.port (0 = any free port)")
        p.add_argument(
            "--metrics-bind",
            metavar="ADDR",
            help='metrics.host (default 127.0.0.1; "0.0.0.0" for every interface)',
        )
    p.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def config_from_args(args: argparse.Namespace) -> Config:
    """Load the config file named by ``--config`` and apply the CLI overrides."""
    cfg = load(getattr(args, "config", None))
    flags: dict[str, Any] = {
        "detector.type": getattr(args, "detector", None),
        "model_dir": getattr(args, "model_dir", None),
        "mqtt.broker": getattr(args, "broker", None),
        "mqtt.topics": getattr(args, "topic", None),
        "metrics.port": getattr(args, "metrics_port", None),
        "metrics.host": getattr(args, "metrics_bind", None),
        "log_level": getattr(args, "log_level", None),
    }
    updates = {k: v for k, v in flags.items() if v is not None}
    return override(cfg, updates) if updates else cfg


def setup_logging(level: str) -> None:
    """One line per record, with time and level, to stderr."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class UsageError(Exception):
    """A user error outside the config file (bad file argument, bad flag combination)."""
