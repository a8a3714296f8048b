"""``streamwatch simulate``: generate labelled streams, write CSV, publish to MQTT."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

_DESCRIPTION = """\
Generate labelled sensor streams: per sensor, offset + amplitude*(sin(2*pi*t) +
sin(4*pi*t)) + Gaussian noise (+ an optional random walk), t in periods, with anomalies
injected after an anomaly-free warm-up. Writes a labelled CSV and an events CSV, and/or
publishes to an MQTT broker. The same --seed (and the same other options) gives the same
data, bit for bit.
"""

_EPILOG = """\
anomaly kinds (--kinds), magnitudes at --size 1 (scaled by --amplitude):
  spike        one reading moved by +-5
  level_shift  +1.0 for the event's span
  noise_burst  extra Gaussian noise, sigma 1.0
  stuck        the value freezes (flatline)
  drift        a ramp up to +2.0 at the event's end
  frequency    the signal runs twice as fast
  dropout      readings are missing; the first reading after the gap is labelled 1

plant (--plant N): N pumps of five coupled sensors, plant/<pump>/<member> (flow, pressure,
current, temperature, vibration), driven by a slowly varying demand, with faults that break
the coupling while each sensor stays in its normal range (--plant-kinds):
  valve_closing  the flow reading drops; current, pressure and vibration do not follow
  cavitation     pressure drops at steady flow; vibration rises and gets noisier
  bearing_wear   vibration no longer follows the flow (it mirrors it)
plus the per-sensor kinds above but frequency. Plain MQTT topics are PREFIX + sensor id
(sensors/plant/pump00/flow -> sensor plant/pump00/flow; [groups] patterns = ["plant/+/#"]).
With --sparkplug the plant is one Sparkplug B edge node (--spb-group, --spb-edge), each pump
a device: NBIRTH/DBIRTH, DDATA by alias with seq, births again on an NCMD rebirth request,
NDEATH as the MQTT will and at the end (sensor ids in the daemon:
sparkplug/<group>/<edge>/<pump>/<member>).

examples:
  streamwatch simulate --sensors 4 --duration 7200 --csv sim.csv --events events.csv
  streamwatch simulate --sensors 10 --broker mqtt://localhost:1883 --realtime
  streamwatch simulate --plant 2 --duration 7200 --csv plant.csv --events plant-events.csv
  streamwatch simulate --plant 2 --broker mqtt://localhost:1883 --sparkplug --realtime
"""


def add_parser(sub: Any) -> None:
    """Register the ``simulate`` subcommand."""
    from simulators.generate import ALL_KINDS

    p = sub.add_parser(
        "simulate",
        help="generate labelled sensor streams (CSV and/or MQTT)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("streams")
    g.add_argument(
        "--sensors",
        type=int,
        default=4,
        metavar="N",
        help="number of sensors, named s000, s001, ... (default 4)",
    )
    g.add_argument(
        "--duration",
        type=float,
        default=3600.0,
        metavar="S",
        help="seconds of data per sensor (default 3600)",
    )
    g.add_argument(
        "--rate",
        type=float,
        default=1.0,
        metavar="HZ",
        help="readings per second per sensor (default 1)",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="random seed; same seed, same data (default 0)",
    )
    g.add_argument(
        "--start",
        type=float,
        default=None,
        metavar="EPOCH",
        help="timestamp of the first reading, epoch seconds (default 1700000000 for "
        "files; when publishing, now, or now minus --duration unless --realtime, "
        "so the daemon sees no stale or future timestamps)",
    )
    g.add_argument(
        "--period",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds per period of the sine pattern (default 10)",
    )
    g.add_argument(
        "--amplitude",
        type=float,
        default=1.0,
        help="signal amplitude; anomaly sizes scale with it (default 1)",
    )
    g.add_argument("--offset", type=float, default=0.0, help="constant added (default 0)")
    g.add_argument(
        "--noise",
        type=float,
        default=0.1,
        metavar="SIGMA",
        help="standard deviation of the Gaussian noise (default 0.1)",
    )
    g.add_argument(
        "--walk",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="random-walk standard deviation per sqrt(second); 0 = none (default 0)",
    )

    g = p.add_argument_group("anomalies")
    g.add_argument(
        "--kinds",
        default=",".join(ALL_KINDS),
        metavar="K1,K2",
        help="comma-separated anomaly kinds to inject (default: all; see below)",
    )
    g.add_argument(
        "--anomaly-rate",
        type=float,
        default=6.0,
        metavar="PER_HOUR",
        help="mean anomalies per sensor per hour; 0 = none (default 6)",
    )
    g.add_argument(
        "--size", type=float, default=1.0, help="multiplies every anomaly's magnitude (default 1)"
    )
    g.add_argument(
        "--min-event",
        type=float,
        default=30.0,
        metavar="S",
        help="shortest anomaly, seconds; spikes are one reading (default 30)",
    )
    g.add_argument(
        "--max-event",
        type=float,
        default=120.0,
        metavar="S",
        help="longest anomaly, seconds (default 120)",
    )
    g.add_argument(
        "--min-gap",
        type=float,
        default=60.0,
        metavar="S",
        help="least normal time between two anomalies of a sensor (default 60)",
    )
    g.add_argument(
        "--warmup",
        type=float,
        default=600.0,
        metavar="S",
        help="anomaly-free lead-in, seconds, for detectors to learn from (default 600)",
    )

    g = p.add_argument_group("plant (multivariate)")
    g.add_argument(
        "--plant",
        type=int,
        default=0,
        metavar="PUMPS",
        help="simulate this many pumps of five coupled sensors instead of --sensors "
        "independent ones (the stream shape options then do not apply)",
    )
    g.add_argument(
        "--plant-kinds",
        default=None,
        metavar="K1,K2",
        help="plant fault kinds (default: all; see below)",
    )
    g.add_argument(
        "--plant-rate",
        type=float,
        default=2.0,
        metavar="PER_HOUR",
        help="mean faults per pump per hour; 0 = none (default 2)",
    )
    g.add_argument(
        "--stagger",
        type=float,
        default=0.0,
        metavar="S",
        help="member k's timestamps are k*S seconds after the flow's (default 0: shared)",
    )
    g.add_argument(
        "--sparkplug",
        action="store_true",
        help="with --plant and --broker: publish as a Sparkplug B edge node",
    )
    g.add_argument("--spb-group", default="plant", help="Sparkplug group id (default plant)")
    g.add_argument("--spb-edge", default="edge1", help="Sparkplug edge node id (default edge1)")

    g = p.add_argument_group("files")
    g.add_argument(
        "--csv", metavar="OUT.csv", help="write labelled readings: timestamp,sensor,value,label"
    )
    g.add_argument("--events", metavar="OUT.csv", help="write events: sensor,start,end,kind")

    g = p.add_argument_group("MQTT")
    g.add_argument(
        "--broker",
        metavar="mqtt://HOST:PORT",
        help="publish to this broker (no TLS); omit to only write files",
    )
    g.add_argument(
        "--topic-prefix", default="sensors/", help="topic is PREFIX + sensor id (default sensors/)"
    )
    g.add_argument(
        "--publish-rate",
        type=float,
        default=None,
        metavar="R",
        help="readings per second, all sensors together (default: as fast as the "
        "broker acknowledges)",
    )
    g.add_argument(
        "--realtime",
        action="store_true",
        help="pace by the readings' own timestamps (live streaming)",
    )
    g.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="with --realtime, play this many times faster than real time (default 1)",
    )
    g.add_argument(
        "--batch",
        type=int,
        default=1,
        metavar="B",
        help="readings per message; >1 sends a JSON array of {value, ts} objects "
        "(default 1: one JSON object)",
    )
    g.add_argument(
        "--qos",
        type=int,
        choices=(0, 1),
        default=1,
        help="publish QoS; 1 waits for every acknowledgement (default 1)",
    )
    g.add_argument(
        "--protocol",
        choices=("5", "3.1.1"),
        default="5",
        help="MQTT version; 3.1.1 for brokers such as amqtt (default 5)",
    )
    g.add_argument(
        "--label-topic",
        default=None,
        metavar="PREFIX",
        help="also publish labels to PREFIX/<sensor> as {label, ts}",
    )
    g.add_argument("--client-id", default="", help="MQTT client id (default: random)")
    p.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        default="INFO",
        help="logging level (default INFO)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle ``streamwatch simulate``."""
    from simulators.generate import AnomalySpec, SensorSpec, simulate
    from streamwatch.commands.common import EXIT_FAILURE, EXIT_OK, UsageError, setup_logging

    setup_logging(args.log_level)
    if args.plant:
        from streamwatch.commands.simulate_plant import run_plant

        return run_plant(args)
    if args.sparkplug:
        raise UsageError("--sparkplug needs --plant")
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    try:
        sensor = SensorSpec(args.period, args.amplitude, args.offset, args.noise, args.walk)
        anomalies = (
            AnomalySpec(
                kinds=kinds,
                rate_per_hour=args.anomaly_rate,
                size=args.size,
                duration_s=(args.min_event, args.max_event),
                min_gap_s=args.min_gap,
            )
            if args.anomaly_rate > 0
            else None
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    host, port = _broker(args.broker) if args.broker else ("", 0)
    start = args.start
    if start is None:
        now = float(int(time.time()))
        start = (now if args.realtime else now - args.duration) if args.broker else 1.7e9
    try:
        sim = simulate(
            args.sensors,
            args.duration,
            args.rate,
            args.seed,
            start,
            sensor,
            anomalies,
            warmup_s=args.warmup,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    report_and_write(sim, f"{args.sensors} sensors, {len(sim.events)} events", args)
    if args.broker:
        from simulators.publish import PublishError

        try:
            n = publish_with_args(sim, host, port, args)
        except (PublishError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"published {n} readings to {args.broker}")
    return EXIT_OK


def _broker(url: str) -> tuple[str, int]:
    from streamwatch.commands.common import UsageError

    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise UsageError(f"--broker must look like mqtt://HOST:PORT, got {url!r}")
    try:
        return parts.hostname, parts.port or 1883
    except ValueError as exc:
        raise UsageError(f"--broker: bad port: {exc}") from None


def report_and_write(sim: Any, what: str, args: argparse.Namespace) -> None:
    """Print how many readings (of ``what``) and which event kinds were simulated, and write
    the ``--csv`` and ``--events`` files if asked for."""
    kinds_seen = Counter(e.kind for e in sim.events)
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(kinds_seen.items()))
    print(f"{len(sim)} readings from {what}" + (f" ({kinds})" if kinds else ""))
    if args.csv:
        sim.to_csv(args.csv)
        print(f"wrote {args.csv}")
    if args.events:
        sim.events_to_csv(args.events)
        print(f"wrote {args.events}")


def publish_with_args(sim: Any, host: str, port: int, args: argparse.Namespace) -> int:
    """Publish ``sim`` as plain MQTT readings the way the simulate flags say; the count."""
    from simulators.publish import publish

    return publish(
        sim,
        host,
        port,
        topic_prefix=args.topic_prefix,
        rate=args.publish_rate,
        batch=args.batch,
        qos=args.qos,
        protocol=args.protocol,
        label_topic=args.label_topic,
        realtime=args.realtime,
        speed=args.speed,
        client_id=args.client_id,
    )
