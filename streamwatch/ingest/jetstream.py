"""The NATS JetStream link: the partitions this daemon owns, pulled and acknowledged after scoring.

Readings sit in a stream (``nats.stream``) under ``<subject_prefix>.<partition>.<sensor
tokens>``; the server's subject mapping (``{{partition(n, ...)}}``, docs/scale-out.md) puts
every reading of one sensor into one partition. Partition ``p`` is read through the durable pull
consumer ``<consumer>-p`` (explicit acks), so a partition owned by one daemon at a time keeps
each sensor's readings on one daemon, in order. Ownership is static (``nats.partitions``) or
by leases in JetStream KV (``nats.ownership = "lease"``: :mod:`streamwatch.ingest.leases`, what
a move does here: :mod:`streamwatch.ingest.ownership`).

nats-py is asyncio: its loop runs in a thread of its own (``nats``), which fetches, decodes
with :func:`streamwatch.ingest.parse.parse` (subject ``<prefix>.<p>.plant.pump1`` is the MQTT
topic ``<payload.sensor_prefix>plant/pump1``) and hands off. The worker thread stays the only
owner of engine state: it calls :meth:`JetStreamLink.ack` once a slice is scored and its alerts
are in the outbox, and the loop thread sends the acks in arrival order. A message not
acknowledged within ``nats.ack_wait_s`` (a daemon killed mid-slice) is redelivered by JetStream;
at a clean stop the messages handed off but not yet acknowledged are NAKed (redelivered after
``NAK_DELAY_S``, not ``ack_wait_s``). Nothing the daemon took is lost; a reading may be scored
twice.

Alerts and state go to core NATS subjects: the MQTT topic with ``/`` as ``.``
(``streamwatch.alerts.<sensor>``); a publish counts as taken (for the outbox) once a flush round
trip after it returned. Core NATS has no retained messages: ``retain`` is ignored. Sparkplug B
and MQTT operator commands are not read on this transport (the live page's commands work).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from streamwatch.config import NATSConfig, PayloadConfig
from streamwatch.ingest.lease_thread import LeaseThread
from streamwatch.ingest.leases import default_id
from streamwatch.ingest.link import AcceptGate, HandOff, count_message_error, count_rejects
from streamwatch.ingest.ownership import (
    NAK_DELAY_S,
    RECONNECT_WAIT_S,
    PartitionMoves,
    Token,
    quietly,
    stream_seq,
)
from streamwatch.ingest.parse import parse
from streamwatch.ingest.takeover import consumer_config
from streamwatch.logutil import RateLimited
from streamwatch.outputs.metrics import Metrics
from streamwatch.pipeline.moves import Context

log = logging.getLogger(__name__)
_limited = RateLimited(log)

SETUP_RETRY_MAX_S = 30.0
"""Longest wait between attempts to set up the stream and consumers."""
COMPLETED_KEPT = 10_000
"""Completed publish ids remembered for :meth:`JetStreamLink.ack` to announce again."""


class JetStreamLink(AcceptGate, PartitionMoves):
    """One NATS connection: a pull consumer per owned partition, plus alert publishing."""

    def __init__(
        self, cfg: NATSConfig, payload: PayloadConfig, metrics: Metrics, hand_off: HandOff
    ) -> None:
        self.cfg = cfg
        self.payload = payload
        self.metrics = metrics
        self.hand_off = hand_off
        self.partitions = cfg.owned() if cfg.ownership == "static" else []
        """The partitions owned statically (none with leases: see :attr:`owned`)."""
        self.daemon_id = cfg.daemon_id or default_id()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.last_error: str | None = "not connected yet"
        self.on_published: Callable[[int], None] = lambda mid: None
        """Called (loop thread) with the id of each publish the server has taken."""
        self._skip = len(cfg.subject_prefix.split(".")) + 1
        """Subject tokens before the sensor's: the prefix and the partition number."""
        self._gate = threading.Lock()
        self._accepting = True
        self._mids = itertools.count(1)
        self._completed: deque[int] = deque(maxlen=COMPLETED_KEPT)
        """Ids of publishes done since the worker last looked (announced again by ack)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="nats", daemon=True)
        self._nc: Client | None = None
        self._js: Any = None
        self._pulls: dict[int, tuple[asyncio.Task[None], Any]] = {}
        """Partition -> its pull task and subscription (loop thread)."""
        self._epochs: dict[int, int] = {}
        """Partition -> the epoch of this daemon's ownership (read by the worker through
        :meth:`still_owned`; a partition given up has none)."""
        self._epoch_n = itertools.count(1)
        self._gaining: dict[int, object] = {}
        self._setting_up: dict[int, asyncio.Lock] = {}
        self._context_until: dict[int, int] = {}
        self._sensors: dict[int, set[str]] = {}
        """Partition -> the sensors seen on it (loop thread)."""
        self._where: dict[str, int] = {}
        """Sensor -> its partition (read by the worker through :meth:`alert_changed`)."""
        self._leases: LeaseThread | None = None
        self._alerts_kv: KeyValue | None = None
        self._kv_writes: set[asyncio.Task[Any]] = set()
        """Alert state writes under way: acknowledgements wait for them."""
        self._acks: set[asyncio.Task[None]] = set()
        """Acks and publishes under way (loop thread); a stop waits for them."""
        self._unacked: dict[int, dict[int, Token]] = {}
        """Partition -> messages handed to the worker and not acknowledged yet, by stream
        sequence (loop thread only)."""
        self._closing = False

    @property
    def unacked(self) -> int:
        """Messages handed to the worker and not acknowledged yet."""
        return sum(len(m) for m in list(self._unacked.values()))

    # -- lifecycle (main thread) ----------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread; it connects (retrying) and starts the partitions' pulls."""
        log.info(
            "connecting to %s (JetStream stream %s, %s of %d partitions, daemon %s)",
            self.cfg.url,
            self.cfg.stream,
            self.cfg.partitions if self.cfg.ownership == "static" else "leased share",
            self.cfg.partition_count,
            self.daemon_id,
        )
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._main(), self._loop)

    def stop(self, timeout: float = 5.0) -> None:
        """Send the acks already given, NAK what was handed off but not acknowledged (the next
        owner gets it after ``NAK_DELAY_S``), release the leases, publish what is queued (up
        to ``timeout``), disconnect."""
        self.accepting = False
        if self._thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._close(timeout), self._loop)
            try:
                fut.result(timeout + 5.0)
            except Exception:
                log.warning("NATS connection did not close cleanly", exc_info=True)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        elif not self._loop.is_closed():  # never started
            self._loop.close()
        self.connected.clear()
        self.subscribed.clear()
        self.metrics.mqtt_connected.set(0)

    # -- worker thread --------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int | None:
        """Publish on the subject ``topic`` names (``/`` as ``.``); ``retain`` is ignored (core
        NATS keeps nothing). Returns its id for :attr:`on_published`; None once stopped."""
        mid = next(self._mids)
        subject = topic.replace("/", ".")
        try:
            self._loop.call_soon_threadsafe(self._publish_soon, mid, subject, payload)
        except RuntimeError:  # the loop is closed: the outbox keeps the entry for next time
            self.metrics.publish_failures.inc()
            return None
        return mid

    def ack(self, tokens: Sequence[Any]) -> None:
        """Acknowledge the worker's finished messages, in arrival order."""
        # A publish can complete before the outbox has recorded the id publish() returned (it
        # records it after the call): announce completed ids again from here, which the worker
        # reaches only after that flush. Ids are never reused, so twice is harmless.
        while self._completed:
            self.on_published(self._completed.popleft())
        if not tokens:
            return
        done = list(tokens)
        # Once stopped the loop is closed (RuntimeError): JetStream redelivers them.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._ack_soon, done)

    # -- loop thread: connection and setup ------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _main(self) -> None:
        nc = await self._connect()
        if nc is None:
            return
        self._js = js = nc.jetstream()
        wait = RECONNECT_WAIT_S
        while not self._closing:
            subs: list[Any] = []
            try:
                await self._ensure_stream(js)
                if self.cfg.ownership == "lease":
                    await self._start_leases(js)
                    return
                for p in self.partitions:
                    subs.append(await js.pull_subscribe(**self._static_consumer(p)))
            except Exception as exc:
                # JetStream not ready yet (a server starting, a cluster electing a leader) or
                # misconfigured: say why (readyz too) and try again with backoff.
                self.last_error = f"cannot set up the JetStream consumers: {exc!r}"
                _limited.log(logging.ERROR, "nats_setup", "%s; retrying", self.last_error)
                for sub in subs:
                    await quietly(sub.unsubscribe())
                await asyncio.sleep(wait)
                wait = min(wait * 2, SETUP_RETRY_MAX_S)
                continue
            for p, sub in zip(self.partitions, subs, strict=True):
                self._start_pull(p, sub, 0)
            self.last_error = None
            self.subscribed.set()
            log.info("consuming partitions %s of stream %s", self.cfg.partitions, self.cfg.stream)
            return

    def _static_consumer(self, partition: int) -> dict[str, Any]:
        """Partition ``partition``'s durable pull consumer, bound (created if missing). An
        existing consumer keeps its settings: delete it to apply a new ack_wait_s."""
        return {
            "subject": f"{self.cfg.subject_prefix}.{partition}.>",
            "durable": f"{self.cfg.consumer}-{partition}",
            "stream": self.cfg.stream,
            "config": consumer_config(self.cfg),
        }

    async def _connect(self) -> Client | None:
        servers = [u.strip() for u in self.cfg.url.split(",")]
        while not self._closing:
            try:
                self._nc = await nats.connect(
                    servers=servers,
                    name=self.cfg.consumer,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=RECONNECT_WAIT_S,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    error_cb=self._error,
                )
                self.connected.set()
                self.metrics.mqtt_connected.set(1)
                return self._nc
            except Exception as exc:
                self.last_error = f"cannot connect to {self.cfg.url}: {exc!r}"
                _limited.log(logging.ERROR, "nats_connect", "%s; retrying", self.last_error)
                await asyncio.sleep(RECONNECT_WAIT_S)
        return None

    async def _ensure_stream(self, js: Any) -> None:
        try:
            await js.stream_info(self.cfg.stream)
        except nats.js.errors.NotFoundError:
            subjects = [f"{self.cfg.subject_prefix}.>"]
            log.info("creating stream %s on %s", self.cfg.stream, subjects[0])
            await js.add_stream(name=self.cfg.stream, subjects=subjects)

    async def _disconnected(self) -> None:
        if not self._closing:
            self.last_error = "disconnected from NATS; reconnecting"
            self.connected.clear()
            self.subscribed.clear()
            self.metrics.mqtt_connected.set(0)
            _limited.log(logging.WARNING, "nats_disconnect", "%s", self.last_error)

    async def _reconnected(self) -> None:
        self.connected.set()
        self.metrics.mqtt_connected.set(1)
        self.metrics.reconnects.inc()
        self.last_error = None
        if self._pulls or self._leases is not None:
            self.subscribed.set()

    async def _error(self, exc: Exception) -> None:
        _limited.log(logging.WARNING, "nats_error", "NATS: %r", exc)

    # -- loop thread: reading -------------------------------------------------------------

    async def _on_message(self, tok: Token) -> None:
        with self._gate:
            if not self._accepting:
                refused = True
            else:
                refused = False
                self._take(tok)
        if refused:
            await quietly(tok.msg.nak(delay=NAK_DELAY_S))

    def _take(self, tok: Token) -> None:
        """Decode one message and hand it off (its token: the message itself). Never raises."""
        msg = tok.msg
        topic = "?"
        try:
            now = time.time()
            tokens = msg.subject.split(".")[self._skip :]
            topic = self.payload.sensor_prefix + "/".join(tokens) if tokens else ""
            out = parse(topic, msg.data, now, self.payload)
            seq = stream_seq(msg)
            context = seq is not None and seq <= self._context_until.get(tok.partition, 0)
            if not context:
                count_rejects(self.metrics, _limited, out.rejects, msg.subject)
            if out.readings:
                sensor = out.readings[0].sensor
                if self._where.get(sensor) != tok.partition:
                    self._where[sensor] = tok.partition
                    self._sensors.setdefault(tok.partition, set()).add(sensor)
            if seq is not None:
                self._unacked.setdefault(tok.partition, {})[seq] = tok
            # A message with nothing to score goes through the queue too: acks stay in order.
            self.hand_off(Context(out.readings) if context else out.readings, now, tok)
        except Exception:
            count_message_error(self.metrics, _limited, topic)
            self._ack_soon([tok])

    def _ack_soon(self, toks: list[Token]) -> None:
        for tok in toks:
            if (seq := stream_seq(tok.msg)) is not None:
                self._unacked.get(tok.partition, {}).pop(seq, None)
        task = asyncio.create_task(_ack_all([t.msg for t in toks], set(self._kv_writes)))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    def _publish_soon(self, mid: int, subject: str, payload: bytes) -> None:
        # After the alert state written before it: a raise seen on NATS is in the bucket.
        task = asyncio.create_task(self._publish(mid, subject, payload, set(self._kv_writes)))
        self._acks.add(task)  # awaited at stop, with the acks
        task.add_done_callback(self._acks.discard)

    async def _publish(
        self, mid: int, subject: str, payload: bytes, after: set[asyncio.Task[Any]]
    ) -> None:
        try:
            if after:
                await asyncio.wait(after)
            while self._nc is None or not self._nc.is_connected:
                if self._closing:
                    return
                await asyncio.sleep(0.1)
            await self._nc.publish(subject, payload)
            await self._nc.flush()
            self.on_published(mid)
            self._completed.append(mid)
        except Exception as exc:
            self.metrics.publish_failures.inc()
            _limited.log(logging.ERROR, "publish", "publish to %s failed: %r", subject, exc)

    async def _close(self, timeout: float) -> None:
        self._closing = True
        if self._leases is not None:
            await self._leases.stop_claiming()
        for p in list(self._pulls):
            await self._stop_pull(p)
        if self._acks:
            await asyncio.wait(set(self._acks), timeout=timeout)
        left = [tok for part in self._unacked.values() for tok in part.values()]
        self._unacked.clear()
        if left:
            log.info("handing %d unscored messages back to JetStream (NAK)", len(left))
        for tok in left:
            await quietly(tok.msg.nak(delay=NAK_DELAY_S))
        if self._leases is not None:
            await self._leases.close()
        nc = self._nc
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.flush(), timeout)
            except Exception as exc:
                log.warning("NATS flush at stop failed: %r", exc)
            await nc.close()


async def _ack_all(msgs: list[Msg], after: set[asyncio.Task[Any]]) -> None:
    if after:  # alert state first: an acknowledged raise is never missing from the bucket
        await asyncio.wait(after)
    for msg in msgs:
        await quietly(msg.ack())
