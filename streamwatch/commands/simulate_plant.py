"""``streamwatch simulate --plant``: the multivariate plant simulator, to files, plain MQTT or
Sparkplug B (the options are registered by :mod:`streamwatch.commands.simulate`)."""

from __future__ import annotations

import argparse
import sys
import time


def run_plant(args: argparse.Namespace) -> int:
    """``simulate --plant``: the multivariate plant, to files and/or MQTT or Sparkplug B."""
    from simulators.plant import PLANT_KINDS, PlantFaults, simulate_plant
    from streamwatch.commands.common import EXIT_FAILURE, EXIT_OK, UsageError
    from streamwatch.commands.simulate import _broker, publish_with_args, report_and_write

    if args.plant < 0:
        raise UsageError("--plant must be >= 0")
    if args.sparkplug and not args.broker:
        raise UsageError("--sparkplug needs --broker")
    spec = args.plant_kinds or ",".join(PLANT_KINDS)
    kinds = tuple(k.strip() for k in spec.split(",") if k.strip())
    host, port = _broker(args.broker) if args.broker else ("", 0)
    start = args.start
    if start is None:
        now = float(int(time.time()))
        start = (now if args.realtime else now - args.duration) if args.broker else 1.7e9
    try:
        faults = (
            PlantFaults(kinds=kinds, rate_per_hour=args.plant_rate, size=args.size)
            if args.plant_rate > 0
            else None
        )
        sim = simulate_plant(
            args.plant,
            args.duration,
            args.rate,
            args.seed,
            start,
            faults,
            warmup_s=args.warmup,
            stagger_s=args.stagger,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    report_and_write(sim, f"{args.plant} pumps, {len(sim.events)} member events", args)
    if not args.broker:
        return EXIT_OK
    from simulators.publish import PublishError
    from simulators.spb_publish import publish_sparkplug

    try:
        if args.sparkplug:
            n = publish_sparkplug(
                sim,
                host,
                port,
                group=args.spb_group,
                edge=args.spb_edge,
                rate=args.publish_rate,
                realtime=args.realtime,
                speed=args.speed,
                qos=args.qos,
                protocol=args.protocol,
                client_id=args.client_id,
            )
        else:
            n = publish_with_args(sim, host, port, args)
    except (PublishError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(
        f"published {n} readings to {args.broker}" + (" as Sparkplug B" if args.sparkplug else "")
    )
    return EXIT_OK
