"""The ``streamwatch`` command: parse arguments, load config, call the library, map errors.

Exit codes: 0 ok, 1 runtime failure, 2 bad config / bad usage / bad model bundle.
Each subcommand lives in its own module, which exposes ``add_parser(subparsers)``; its
handler is imported only when that subcommand runs, so ``--help`` and ``check-config`` never
import TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from streamwatch.config import Config, ConfigError, load, override

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# Modules that contribute a subcommand through ``add_parser(subparsers)``.
_COMMAND_MODULES = (
    "streamwatch.commands",
    "simulators.cli",
    "streamwatch.evaluate",
    "streamwatch.train",
)


def add_config_args(p: argparse.ArgumentParser, *, daemon: bool = True) -> None:
    """Flags shared by the commands that take a config: each overrides its config key."""
    p.add_argument("--config", type=Path, help="TOML config file (default: all defaults)")
    p.add_argument("--detector", choices=("gaussian", "gmm", "lstm-vae"), help="detector.type")
    p.add_argument("--model-dir", type=Path, help="model bundle directory (model_dir)")
    if daemon:
        p.add_argument("--broker", help="mqtt.broker, e.g. mqtt://HOST:1883 or mqtts://HOST:8883")
        p.add_argument(
            "--topic", action="append", metavar="FILTER", help="mqtt.topics (repeatable)"
        )
        p.add_argument("--metrics-port", type=int, help="metrics.port (0 = any free port)")
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="streamwatch",
        description="Anomaly detection for MQTT sensor streams.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        for line in exc.lines:
            print(f"config error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    except _usage_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _usage_errors() -> tuple[type[BaseException], ...]:
    from streamwatch.detectors.base import ModelError

    return (ModelError, UsageError)


class UsageError(Exception):
    """A user error outside the config file (bad file argument, bad flag combination)."""


if __name__ == "__main__":
    sys.exit(main())
