"""Continuity when a partition changes owner (``nats.ownership = "lease"``, docs/scale-out.md).

- **The consumer starts again after the last acknowledged message.** The new owner deletes the
  partition's durable consumer and creates it again from its acknowledgement floor: what the
  previous owner had delivered but not acknowledged comes again at once, in stream order
  (not after ``ack_wait_s``, and never behind newer messages, which would be rejected as out
  of order). It may have been scored already: at least once, as before.
- **Window context**: the consumer starts ``nats.replay_s`` seconds (stream time) before that
  floor; the messages up to the floor are handed off as context (windows and warm-up only,
  no verdict, no alert).
- **Alert state in KV**: the bucket ``<consumer>_alerts`` holds each sensor's open alert under
  ``<partition>.<sensor>`` (``{"alert_id", "kind", "fault", "raised_at"}``), written before
  the alert is published and the message that raised it acknowledged, and deleted when it
  clears. The new owner reads
  the partition's open alerts before its first reading, so they clear instead of being raised
  again.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from streamwatch.config import NATSConfig
from streamwatch.pipeline.alerts import RAISED, AlertEvent

log = logging.getLogger(__name__)

CREATE_ATTEMPTS = 5
"""Tries at creating a partition's consumer again after deleting the old one."""
_KEY_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_/")


def consumer_config(cfg: NATSConfig) -> ConsumerConfig:
    """A partition consumer's settings (explicit acks, the configured limits)."""
    return ConsumerConfig(
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=cfg.ack_wait_s,
        max_ack_pending=cfg.max_ack_pending,
    )


@dataclass(slots=True)
class Taken:
    """A partition's consumer, set up for its new owner."""

    sub: Any
    """The pull subscription."""
    context_until: int
    """Messages up to this stream sequence are context (0: none)."""


async def take_consumer(js: Any, cfg: NATSConfig, partition: int) -> Taken:
    """Create partition ``partition``'s durable consumer anew from its acknowledgement floor
    (deleting the old one), starting ``replay_s`` before the floor for context."""
    name = f"{cfg.consumer}-{partition}"
    floor = 0
    try:
        info = await js.consumer_info(cfg.stream, name)
        floor = int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0
        await js.delete_consumer(cfg.stream, name)
    except nats.js.errors.NotFoundError:
        pass  # never read: from the start of the stream
    config = consumer_config(cfg)
    context = 0
    if floor > 0:
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = floor + 1
        if cfg.replay_s > 0:
            try:
                last = await js.get_msg(cfg.stream, floor)
                config.deliver_policy = DeliverPolicy.BY_START_TIME
                config.opt_start_seq = None
                config.opt_start_time = last.time - datetime.timedelta(seconds=cfg.replay_s)
                context = floor
            except (nats.js.errors.NotFoundError, nats.errors.Error) as exc:
                log.info("no window context for partition %d: %r", partition, exc)
    # The old consumer is gone: retry rather than give up, since the floor is only known here
    # now (a later claim would find no consumer and read the partition from its start).
    for attempt in range(CREATE_ATTEMPTS):
        try:
            sub = await js.pull_subscribe(
                f"{cfg.subject_prefix}.{partition}.>",
                durable=name,
                stream=cfg.stream,
                config=config,
            )
            break
        except (nats.js.errors.Error, nats.errors.Error):
            if attempt + 1 == CREATE_ATTEMPTS:
                raise
            await asyncio.sleep(0.5 * (attempt + 1))
    log.info(
        "partition %d: reading from after stream sequence %d (context from %s)",
        partition,
        floor,
        config.opt_start_time.isoformat() if context and config.opt_start_time else "none",
    )
    return Taken(sub, context)


def alert_key(partition: int, sensor: str) -> str:
    """The alert bucket's key for ``sensor``: ``<partition>.<sensor>``, any byte outside
    ``[A-Za-z0-9_/-]`` written ``=XX``."""
    safe = "".join(
        c if c in _KEY_SAFE else "".join(f"={b:02X}" for b in c.encode()) for c in sensor
    )
    return f"{partition}.{safe}"


def _sensor_of(key: str) -> str:
    rest = key.split(".", 1)[1]
    out = bytearray()
    i = 0
    while i < len(rest):
        if rest[i] == "=":
            out.append(int(rest[i + 1 : i + 3], 16))
            i += 3
        else:
            out += rest[i].encode()
            i += 1
    return out.decode()


def alert_doc(ev: AlertEvent) -> bytes | None:
    """What the alert bucket keeps for a transition: the open alert, or None (delete) for a
    clear."""
    if ev.state != RAISED:
        return None
    doc = {"alert_id": ev.alert_id, "kind": ev.kind, "fault": ev.fault, "raised_at": ev.ts}
    return json.dumps(doc).encode()


async def open_alerts(kv: KeyValue, partition: int) -> dict[str, dict[str, Any]]:
    """Sensor -> open alert, for partition ``partition``'s sensors."""
    watcher = await kv.watch(f"{partition}.>", ignore_deletes=True)
    found: dict[str, dict[str, Any]] = {}
    try:
        while (entry := await watcher.updates(timeout=10)) is not None:
            try:
                found[_sensor_of(entry.key)] = json.loads(entry.value or b"")
            except (ValueError, IndexError):
                log.warning("ignoring unreadable alert state %r", entry.key)
    finally:
        await watcher.stop()
    return found
