"""What a SIGKILLed Mosquitto keeps of the QoS 1 messages it acknowledged, per autosave setting.

    python bench/broker_kill.py [--messages 20000]

For each setting: a persistent MQTT 5 session subscribes and goes away, a publisher sends
``--messages`` QoS 1 messages (all acknowledged by the broker, so queued for that session),
the broker is SIGKILLed at once and restarted, and the session comes back and counts what it
receives. Also the publisher's rate, since saving costs the broker time. A script, not a test
(docs/reliability.md holds the figures).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import Mosquitto, Publisher  # noqa: E402

SETTINGS = {
    "autosave_interval 1 (seconds)": "autosave_interval 1\n",
    "autosave_on_changes, interval 1": "autosave_on_changes true\nautosave_interval 1\n",
    "autosave_on_changes, interval 1000": "autosave_on_changes true\nautosave_interval 1000\n",
}


def session(port: int, linger: float) -> int:
    """Connect the persistent session, take (and acknowledge) messages for ``linger`` s."""
    got: list[int] = []
    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-kill", protocol=mqtt.MQTTv5)
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("t/#", qos=1)
    c.on_subscribe = lambda cl, u, mid, codes, p: done.set()
    c.on_message = lambda cl, u, m: got.append(m.mid)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    done.wait(10)
    time.sleep(linger)
    c.disconnect()
    c.loop_stop()
    return len(got)


def trial(extra: str, n: int) -> tuple[int, float]:
    """(messages the session got after the broker's SIGKILL, publish rate in messages/s)."""
    workdir = Path(tempfile.mkdtemp(prefix="sw-bench-kill-"))
    os.chmod(workdir, 0o777)
    broker = Mosquitto(workdir, extra_conf=extra)
    broker.start()
    try:
        session(broker.port, 0.2)
        pub = Publisher(broker.port)
        t0 = time.perf_counter()
        for i in range(n):
            pub.send("t/x", str(i))
        pub.flush(600)
        rate = n / (time.perf_counter() - t0)
        broker.kill()
        broker.start()
        pub.client.disconnect()
        return session(broker.port, 8.0), rate
    finally:
        broker.stop()


def main() -> int:
    """Run every setting once and print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20_000)
    args = ap.parse_args()
    print("| Mosquitto settings | kept after SIGKILL | publish rate (messages/s) |")
    print("|---|---|---|")
    for name, extra in SETTINGS.items():
        kept, rate = trial(extra, args.messages)
        print(f"| {name} | {kept:,} of {args.messages:,} | {rate:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
