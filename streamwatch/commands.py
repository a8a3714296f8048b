"""Core subcommands: run, demo, replay, check-config, check-message."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from streamwatch.cli import EXIT_OK, EXIT_USAGE, add_config_args, config_from_args
from streamwatch.config import ConfigError


def add_parser(sub: Any) -> None:
    """Register the core subcommands."""
    p = sub.add_parser("check-config", help="validate a config file; print every error by key")
    p.add_argument("config", type=__import__("pathlib").Path, nargs="?")
    p.set_defaults(handler=_check_config)

    p = sub.add_parser("check-message", help="show how one MQTT message would be decoded")
    p.add_argument("msg_topic", metavar="TOPIC")
    p.add_argument("payload", help="the payload as text")
    p.add_argument("--config", type=__import__("pathlib").Path)
    p.set_defaults(handler=_check_message)


def _check_config(args: argparse.Namespace) -> int:
    from streamwatch.config import load

    try:
        cfg = load(args.config)
        cfg.mqtt.password()
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.config or 'defaults'}: OK (detector {cfg.detector.type}, broker {cfg.mqtt.broker})")
    return EXIT_OK


def _check_message(args: argparse.Namespace) -> int:
    from streamwatch.parse import parse

    cfg = config_from_args(args)
    out = parse(args.msg_topic, args.payload.encode("utf-8"), time.time(), cfg.payload)
    doc: dict[str, Any] = {
        "readings": [{"sensor": r.sensor, "ts": r.ts, "value": r.value} for r in out.readings],
        "rejected": out.rejects,
    }
    print(json.dumps(doc, indent=2))
    return EXIT_OK if out.readings and not out.rejects else 1
