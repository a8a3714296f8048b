"""The ``streamwatch`` command: parse arguments, load config, call the library, map errors.

Exit codes: 0 ok, 1 runtime failure, 2 bad config / bad usage / bad model bundle.
Each subcommand lives in its own module under this package, which exposes
``add_parser(subparsers)`` and imports nothing heavy at module level: a handler imports the
library it needs when it runs, so ``--help`` and ``check-config`` never import TensorFlow.
The library never imports this package; this package is where the library, the simulator
and the user's flags meet.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from streamwatch.commands import core, evaluate, simulate, train
from streamwatch.commands.common import EXIT_OK, EXIT_USAGE, UsageError
from streamwatch.config import ConfigError

_COMMAND_MODULES = (core, simulate, evaluate, train)
"""Each contributes its subcommands through ``add_parser(subparsers)``."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="streamwatch",
        description="Anomaly detection for MQTT sensor streams.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMAND_MODULES:
        module.add_parser(sub)
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
    from streamwatch.tfquiet import TensorFlowMissing

    return (ModelError, UsageError, TensorFlowMissing)


if __name__ == "__main__":
    sys.exit(main())
