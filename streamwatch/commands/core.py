"""Core subcommands: run, demo, replay, check-config, check-message."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamwatch.commands.common import (
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_config_args,
    config_from_args,
    setup_logging,
)
from streamwatch.config import Config, ConfigError, override

if TYPE_CHECKING:
    from streamwatch.pipeline.alerts import AlertEvent


def add_parser(sub: Any) -> None:
    """Register the core subcommands."""
    p = sub.add_parser("run", help="run the daemon against a broker")
    add_config_args(p)
    p.set_defaults(handler=_run)

    p = sub.add_parser(
        "demo",
        help="embedded broker + simulator + daemon + metrics; prints alerts (Ctrl-C stops)",
    )
    p.add_argument("--sensors", type=int, default=4, help="simulated sensors (default 4)")
    p.add_argument("--rate", type=float, default=10.0, help="readings/s per sensor (default 10)")
    p.add_argument("--broker-port", type=int, default=0, help="embedded broker port (0 = free)")
    p.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="stop after this many seconds (default: run until Ctrl-C)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between a sensor's readings in the data (default 1: the cadence the "
        "detection figures are measured at), played --rate times per second",
    )
    p.add_argument(
        "--train-after",
        type=int,
        default=1200,
        help="lstm-vae: readings per sensor before the background training starts "
        "(default 1200, two minutes at 10/s; the daemon's own default is 2000)",
    )
    add_config_args(p, daemon=False)
    p.add_argument("--metrics-port", type=int, default=0, help="metrics port (0 = free)")
    p.set_defaults(handler=_demo)

    p = sub.add_parser("replay", help="run a CSV through the daemon's pipeline, no broker")
    p.add_argument("--data", type=Path, required=True, help="CSV: timestamp,sensor,value[,...]")
    p.add_argument("--alerts-out", type=Path, required=True, help="JSON lines, one per alert")
    add_config_args(p, daemon=False)
    p.set_defaults(handler=_replay)
    p = sub.add_parser("check-config", help="validate a config file; print every error by key")
    p.add_argument("config", type=Path, nargs="?")
    p.set_defaults(handler=_check_config)

    p = sub.add_parser("check-message", help="show how one MQTT message would be decoded")
    p.add_argument("msg_topic", metavar="TOPIC")
    p.add_argument("payload", help="the payload as text")
    p.add_argument("--config", type=Path)
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
    print(
        f"{args.config or 'defaults'}: OK (detector {cfg.detector.type}, broker {cfg.mqtt.broker})"
    )
    return EXIT_OK


def _check_message(args: argparse.Namespace) -> int:
    from streamwatch.ingest.parse import parse

    cfg = config_from_args(args)
    out = parse(args.msg_topic, args.payload.encode("utf-8"), time.time(), cfg.payload)
    doc: dict[str, Any] = {
        "readings": [{"sensor": r.sensor, "ts": r.ts, "value": r.value} for r in out.readings],
        "rejected": out.rejects,
    }
    print(json.dumps(doc, indent=2))
    return EXIT_OK if out.readings and not out.rejects else 1


def _run(args: argparse.Namespace) -> int:
    from streamwatch.daemon import Daemon

    cfg = config_from_args(args)
    state_directory = os.environ.get("STATE_DIRECTORY")
    if cfg.state_dir is None and state_directory:
        # systemd's StateDirectory= (a colon-separated list): keep alert state and
        # auto-trained models there unless the config names another place.
        cfg = override(cfg, {"state_dir": state_directory.split(":")[0]})
    setup_logging(cfg.log_level)
    return Daemon(cfg).run_forever()


def _replay(args: argparse.Namespace) -> int:
    from streamwatch import dataset, replay
    from streamwatch.daemon import build_model

    cfg = config_from_args(args)
    setup_logging(cfg.log_level)
    try:
        data = dataset.read_csv(args.data)
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    model, _ = build_model(cfg)
    series = {s: (ts, v) for s, (ts, v, _labels) in data.items()}
    events = replay.replay(cfg, model, series)
    replay.write_jsonl(events, args.alerts_out)
    raised = sum(ev.state == "raised" for ev in events)
    print(
        f"{sum(len(t) for t, _ in series.values())} readings from {len(series)} sensors; "
        f"{raised} alerts raised; {len(events)} transitions written to {args.alerts_out}"
    )
    return EXIT_OK


def _print_alert(ev: AlertEvent) -> None:
    when = time.strftime("%H:%M:%S")
    mark = "RAISED " if ev.state == "raised" else "cleared"
    print(
        f"{when}  {mark}  {ev.sensor:<8} score {ev.score:9.2f}  threshold {ev.threshold:7.2f}"
        f"  id {ev.alert_id[:8]}",
        flush=True,
    )


def _announce(
    events: list[Any], stop: threading.Event, start_ts: float, wall0: float, speed: float
) -> None:
    """Print each injected anomaly as its start is played (data time ``start_ts`` is played
    at wall time ``wall0``, ``speed`` data seconds a second), so alerts can be checked."""
    for ev in sorted(events, key=lambda e: e.start):
        if stop.wait(max(0.0, wall0 + (ev.start - start_ts) / speed - time.time())):
            return
        print(
            f"{time.strftime('%H:%M:%S')}  injected {ev.kind} on {ev.sensor} for "
            f"{(ev.end - ev.start) / speed:.0f} s",
            flush=True,
        )


def _demo_plan(cfg: Config, rate: float) -> str:
    warm = cfg.learning.warmup
    plan = f"{cfg.detector.type}: each sensor warms up on {warm} readings (~{warm / rate:.0f} s)"
    if cfg.detector.type == "lstm-vae" and cfg.model_dir is None:
        n = cfg.learning.auto_train_readings
        plan = (
            f"gaussian first ({warm} readings of warm-up, ~{warm / rate:.0f} s); the LSTM-VAE "
            f"trains in the background after {n} readings (~{n / rate:.0f} s) and takes over"
        )
    return plan


class _NoAlertLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("alert ")


def _demo_narration() -> None:
    """Let the demo say what the daemon is doing (warm-ups, training) without log noise."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s  %(message)s", "%H:%M:%S"))
    handler.addFilter(_NoAlertLines())
    for name in ("streamwatch.daemon", "streamwatch.pipeline.lifecycle"):
        lg = logging.getLogger(name)
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
        lg.propagate = False


def _demo(args: argparse.Namespace) -> int:
    from simulators.generate import AnomalySpec, simulate
    from simulators.publish import PublishError, publish
    from streamwatch.daemon import Daemon
    from streamwatch.embedded_broker import EmbeddedBroker

    cfg = config_from_args(args)
    setup_logging(cfg.log_level if args.log_level else "WARNING")
    if not args.log_level:
        _demo_narration()
    broker = EmbeddedBroker(port=args.broker_port)
    broker.start()
    demo_settings: dict[str, Any] = {
        "mqtt.broker": broker.url,
        "mqtt.protocol": "3.1.1",
        "mqtt.client_id": "streamwatch-demo",
        "metrics.host": "127.0.0.1",
        "metrics.port": args.metrics_port,
    }
    if cfg.detector.type == "lstm-vae":
        demo_settings["learning.auto_train_readings"] = args.train_after
    cfg = override(cfg, demo_settings)
    daemon = Daemon(cfg, on_alert=_print_alert)
    daemon.start()
    stop = threading.Event()
    learn = cfg.learning.warmup
    if cfg.detector.type == "lstm-vae":
        learn = max(learn, cfg.learning.auto_train_readings)
    # The data: one reading per --interval seconds per sensor, played --rate readings a second
    # (by default 1 s data at 10x), stamped from six days back so that the faster playback
    # never runs ahead of the clock (timestamps up to seven days old are accepted).
    speed = args.rate * args.interval
    warm_s = (learn + 50) * args.interval  # data seconds with no anomaly while it learns

    def feed() -> None:
        start, seed, chunk_s = time.time() - 6 * 86400.0, args.seed, 1800.0 * args.interval
        first = True
        wall0 = time.time()
        while not stop.is_set():
            sim = simulate(
                args.sensors,
                chunk_s,
                1.0 / args.interval,
                seed,
                start_ts=start,
                anomalies=AnomalySpec(rate_per_hour=60.0 / speed),  # about one per 20 s played
                warmup_s=warm_s if first else 30.0 * args.interval,
            )
            announcer = threading.Thread(
                target=_announce,
                args=(sim.events, stop, start, wall0, speed),
                name="announcer",
                daemon=True,
            )
            announcer.start()
            try:
                publish(
                    sim,
                    broker.host,
                    broker.port,
                    protocol="3.1.1",
                    realtime=True,
                    speed=speed,
                    stop_event=stop,
                    client_id="streamwatch-demo-sim",
                )
            except PublishError as exc:
                print(f"demo: simulator stopped: {exc}", file=sys.stderr, flush=True)
                return
            start, seed, first = start + chunk_s, seed + 1, False
            wall0 += chunk_s / speed

    sim_thread = threading.Thread(target=feed, name="simulator", daemon=True)
    if not daemon.wait_ready(15):
        print(f"demo: daemon did not connect: {daemon.ready()}", file=sys.stderr)
        return 1
    sim_thread.start()
    print(
        f"streamwatch demo: {args.sensors} simulated sensors, one reading every "
        f"{args.interval:g} s of data, played at {args.rate:g} readings/s\n"
        f"  broker   {broker.url}   (try: mosquitto_sub -p {broker.port} -t 'streamwatch/#' -v)\n"
        f"  live     http://127.0.0.1:{daemon.metrics_port}/   (sensors, scores, alerts, mute)\n"
        f"  metrics  http://127.0.0.1:{daemon.metrics_port}/metrics\n"
        f"  detector {_demo_plan(cfg, args.rate)}\n"
        f"  anomalies are injected from {warm_s / speed:.0f} s on; alerts print here. "
        "Ctrl-C stops.",
        flush=True,
    )
    try:
        stop.wait(args.duration or None)
    except KeyboardInterrupt:
        pass
    finally:
        print("demo: stopping", flush=True)
        stop.set()
        sim_thread.join(5)
        daemon.stop()
        broker.stop()
    return EXIT_OK
