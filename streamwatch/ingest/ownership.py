"""The JetStream link's side of partitions that move between daemons (``nats.ownership =
"lease"``): taking one over (:mod:`streamwatch.ingest.takeover`), handing one back, dropping one
whose lease could not be renewed, and the tokens that let the worker tell a message of a
partition given up (it drops those: their next owner reads them again). The leases themselves
are :mod:`streamwatch.ingest.leases`.

A mix-in of :class:`streamwatch.ingest.jetstream.JetStreamLink`, as :class:`AcceptGate` is:
the state it uses is the link's, listed below. Static partitions are pulled the same way, in
one epoch that never ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from streamwatch.config import NATSConfig
from streamwatch.ingest.lease_thread import LeaseThread
from streamwatch.ingest.leases import open_bucket
from streamwatch.ingest.link import HandOff
from streamwatch.ingest.takeover import alert_doc, alert_key, open_alerts, take_consumer
from streamwatch.logutil import RateLimited
from streamwatch.pipeline.alerts import AlertEvent
from streamwatch.pipeline.moves import Adopt, Forget

log = logging.getLogger(__name__)
_limited = RateLimited(log)

FETCH_WAIT_S = 1.0
"""How long one pull request waits for messages before it is renewed."""
DRAIN_WAIT_S = 0.005
"""How long a pull for a whole batch waits when the partition has nothing more at once.

nats-py's ``fetch(n)`` first asks for what the stream holds now (``no_wait``); only when that
is nothing does it leave a lingering request, which returns once ``n`` messages came or it
expires. A partition that is caught up therefore waits with ``fetch(1)`` (returns on the first
message) and drains with ``fetch(fetch_batch)`` under this short wait: a quiet partition's
reading is not held back for a batch that never fills."""
NAK_DELAY_S = 2 * FETCH_WAIT_S
"""A message handed back is redelivered after this: past the expiry of this daemon's last
pull requests, which JetStream would otherwise serve it to (and nobody would read it)."""
RECONNECT_WAIT_S = 1.0
RELEASE_WAIT_FRACTION = 0.25
"""A partition handed over waits up to this fraction of the lease TTL for the worker to finish
what it holds (then NAKs the rest)."""


class Token:
    """What the worker acknowledges: a message, the partition it came from and the epoch of
    this daemon's ownership of that partition it was read in."""

    __slots__ = ("epoch", "msg", "partition")

    def __init__(self, msg: Msg, partition: int, epoch: int) -> None:
        self.msg, self.partition, self.epoch = msg, partition, epoch


class PartitionMoves:
    """Taking partitions over, handing them back and dropping them (loop thread), and the
    worker's two questions (:meth:`still_owned`, :meth:`alert_changed`)."""

    cfg: NATSConfig
    daemon_id: str
    hand_off: HandOff
    subscribed: threading.Event
    last_error: str | None
    _gate: threading.Lock
    _accepting: bool
    _loop: asyncio.AbstractEventLoop
    _js: Any
    _leases: LeaseThread | None
    _alerts_kv: KeyValue | None
    _kv_writes: set[asyncio.Task[Any]]
    _epochs: dict[int, int]
    """Partition -> the epoch of this daemon's ownership (a partition given up has none)."""
    _epoch_n: itertools.count[int]
    _gaining: dict[int, object]
    """Partition -> the ticket of its set-up under way (a drop meanwhile removes it)."""
    _setting_up: dict[int, asyncio.Lock]
    _context_until: dict[int, int]
    _unacked: dict[int, dict[int, Token]]
    _sensors: dict[int, set[str]]
    _where: dict[str, int]

    @property
    def owned(self) -> list[int]:
        """The partitions this daemon reads now."""
        return sorted(self._epochs)

    _pulls: dict[int, tuple[asyncio.Task[None], Any]]
    """Partition -> its pull task and subscription."""
    _closing: bool

    async def _on_message(self, tok: Token) -> None:
        raise NotImplementedError

    # -- pulling, per partition (loop thread) ---------------------------------------------

    def _start_pull(self, partition: int, sub: Any, epoch: int) -> None:
        self._epochs[partition] = epoch
        self._unacked.setdefault(partition, {})
        task = asyncio.create_task(self._pull(partition, sub, epoch))
        self._pulls[partition] = (task, sub)

    async def _stop_pull(self, partition: int) -> None:
        task, sub = self._pulls.pop(partition, (None, None))
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if sub is not None:
            await quietly(sub.unsubscribe())

    async def _pull(self, partition: int, sub: Any, epoch: int) -> None:
        caught_up = False
        while not self._closing and self._epochs.get(partition) == epoch:
            want = 1 if caught_up else self.cfg.fetch_batch
            try:
                msgs = await sub.fetch(want, timeout=FETCH_WAIT_S if caught_up else DRAIN_WAIT_S)
            except (TimeoutError, nats.errors.TimeoutError):
                caught_up = True
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _limited.log(
                    logging.WARNING, "nats_fetch", "fetch on partition %d: %r", partition, exc
                )
                await asyncio.sleep(RECONNECT_WAIT_S)
                continue
            # A message after waiting: drain what followed it. Draining: on while batches fill.
            caught_up = False if caught_up else len(msgs) < want
            for msg in msgs:
                if self._epochs.get(partition) != epoch:
                    break  # given up meanwhile: the next owner reads them
                await self._on_message(Token(msg, partition, epoch))

    # -- worker thread --------------------------------------------------------------------

    def still_owned(self, token: Any) -> bool:
        """Whether the message ``token`` stands for was read in this daemon's current
        ownership of its partition (else the worker drops it: the next owner reads it)."""
        return bool(self._epochs.get(token.partition) == token.epoch)

    def alert_changed(self, ev: AlertEvent) -> None:
        """Keep ``ev``'s sensor's open alert (or its clearing) in the alert bucket, before
        the message that caused it is acknowledged (ownership = lease; else nothing)."""
        if self._alerts_kv is None or (p := self._where.get(ev.sensor)) is None:
            return
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(
                self._alert_soon, alert_key(p, ev.sensor), alert_doc(ev)
            )

    # -- loop thread ----------------------------------------------------------------------

    async def _start_leases(self, js: Any) -> None:
        """Open the alert bucket and take part in the leases (on a connection of their own);
        ready after the first round of claims."""
        # The buckets live as long as the stream: as many replicas (R3 on a cluster).
        replicas = (await js.stream_info(self.cfg.stream)).config.num_replicas or 1
        if self._alerts_kv is None:
            self._alerts_kv = await open_bucket(
                js, self.cfg.alert_bucket, history=1, replicas=replicas
            )
        if self._leases is None:
            self._leases = LeaseThread(
                self.cfg, self.daemon_id, self._gain, self._release, self._lose
            )
        self._leases.replicas = replicas
        await self._leases.start()
        self.last_error = None
        self.subscribed.set()
        log.info("daemon %s reads partitions %s by lease", self.daemon_id, self.owned)

    async def _gain(self, partition: int) -> None:
        """Start reading a partition whose lease this daemon just took (unless the lease was
        dropped or handed back while the consumer was being set up)."""
        ticket = object()
        self._gaining[partition] = ticket
        # One set-up of a partition at a time: an older one, given up, must not delete the
        # consumer a newer one just made.
        async with self._setting_up.setdefault(partition, asyncio.Lock()):
            if self._gaining.get(partition) is not ticket:
                return
            taken = await take_consumer(self._js, self.cfg, partition)
        assert self._alerts_kv is not None
        alerts = await open_alerts(self._alerts_kv, partition)
        if self._gaining.get(partition) is not ticket:
            log.warning("partition %d was given up while it was being set up", partition)
            await quietly(taken.sub.unsubscribe())
            return
        del self._gaining[partition]
        epoch = next(self._epoch_n)
        self._context_until[partition] = taken.context_until
        self._epochs[partition] = epoch
        self._handoff_marker(Adopt(partition, alerts))
        self._start_pull(partition, taken.sub, epoch)

    async def _release(self, partition: int) -> None:
        """Hand a partition over: stop pulling, let the worker finish (and acknowledge) what
        it holds for a while, then hand the rest back."""
        self._gaining.pop(partition, None)
        await self._stop_pull(partition)
        deadline = time.monotonic() + self.cfg.lease_ttl_s * RELEASE_WAIT_FRACTION
        while self._unacked.get(partition) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self._drop(partition)

    async def _lose(self, partition: int) -> None:
        """Stop a partition at once: its lease could not be renewed in time."""
        self._gaining.pop(partition, None)  # a set-up under way does not start reading
        await self._stop_pull(partition)
        await self._drop(partition)

    async def _drop(self, partition: int) -> None:
        self._epochs.pop(partition, None)  # the worker drops what it has not started on
        left = self._unacked.pop(partition, {})
        if left:
            log.info("partition %d: handing %d unscored messages back", partition, len(left))
        for tok in left.values():
            await quietly(tok.msg.nak(delay=NAK_DELAY_S))
        sensors = self._sensors.pop(partition, set())
        for sensor in sensors:
            if self._where.get(sensor) == partition:
                del self._where[sensor]
        self._handoff_marker(Forget(partition, sorted(sensors)))

    def _handoff_marker(self, marker: Any) -> None:
        with self._gate:
            if self._accepting:
                self.hand_off(marker, time.time(), None)

    def _alert_soon(self, key: str, doc: bytes | None) -> None:
        assert self._alerts_kv is not None
        kv = self._alerts_kv
        write = kv.put(key, doc) if doc is not None else kv.delete(key)
        task: asyncio.Task[Any] = asyncio.create_task(_logged(write, key))
        self._kv_writes.add(task)
        task.add_done_callback(self._kv_writes.discard)


def stream_seq(msg: Msg) -> int | None:
    """The message's stream sequence (None if it has no JetStream metadata)."""
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:
        return None


async def _logged(write: Any, key: str) -> None:
    try:
        await write
    except Exception as exc:
        _limited.log(logging.ERROR, "alert_kv", "alert state %s not kept: %r", key, exc)


async def quietly(coro: Any) -> None:
    """Await an ack or a NAK; a failure (already acknowledged, disconnected) only means
    JetStream redelivers the message after ``ack_wait``."""
    try:
        await coro
    except Exception as exc:
        _limited.log(logging.DEBUG, "nats_ack", "ack/nak failed: %r", exc)
