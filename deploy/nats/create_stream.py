"""Create (or scale) the readings stream with replicas on a NATS cluster, before the daemons start.

A daemon creates a missing stream itself, with one replica: on a cluster, run this first so
that the stream survives the loss of a node. Idempotent: an existing stream keeps its messages;
its replica count is changed when it differs. Needs nats-py (the `nats` extra).

    python create_stream.py --servers nats://nats1:4222,nats://nats2:4222 --replicas 3

Retries (a cluster elects its JetStream leader for a few seconds after it starts) for up to
``--wait`` seconds; exits 1 with the reason if it could not.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import nats
import nats.js.errors
from nats.js.api import StreamConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--servers", default="nats://localhost:4222", help="comma-separated URLs")
    p.add_argument("--stream", default="SENSORS", help="nats.stream of the daemons")
    p.add_argument("--subject-prefix", default="streamwatch.in", help="nats.subject_prefix")
    p.add_argument("--replicas", type=int, default=3, help="copies of the stream (1..5)")
    p.add_argument("--max-age-h", type=float, default=24.0, help="keep readings this long")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to keep retrying")
    return p.parse_args(argv)


async def ensure_stream(args: argparse.Namespace) -> str:
    """Create the stream or set its replica count; returns what was done."""
    nc = await nats.connect(servers=[u.strip() for u in args.servers.split(",")])
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(args.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=args.stream,
                    subjects=[f"{args.subject_prefix}.>"],
                    num_replicas=args.replicas,
                    max_age=args.max_age_h * 3600.0,
                )
            )
            return f"created stream {args.stream} with {args.replicas} replicas"
        if info.config.num_replicas == args.replicas:
            return f"stream {args.stream} exists with {args.replicas} replicas"
        info.config.num_replicas = args.replicas
        await js.update_stream(info.config)
        return f"stream {args.stream} now has {args.replicas} replicas"
    finally:
        await nc.close()


async def main(args: argparse.Namespace) -> int:
    """Retry :func:`ensure_stream` until it succeeds or ``--wait`` runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.wait
    while True:
        try:
            print(await ensure_stream(args))
            return 0
        except Exception as exc:
            if loop.time() > deadline:
                print(f"cannot set up stream {args.stream}: {exc!r}", file=sys.stderr)
                return 1
            await asyncio.sleep(1.0)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
