"""Partition leases in a JetStream KV bucket: which daemon reads which partition
(``nats.ownership = "lease"``, docs/scale-out.md).

The bucket ``<consumer>_leases`` (history 64, so hand-overs can be audited; created with as
many replicas as the readings' stream has, so a cluster keeps it as it keeps the stream)
holds:

- ``p.<n>``: partition n's lease, ``{"owner": <daemon id>, "at": <wall clock>}``, created with
  ``create`` (only if absent or deleted) and renewed by its owner with compare-and-set on the
  revision (``update(key, value, last=revision)``); a graceful release deletes it (also CAS);
- ``d.<id>``: each daemon's heartbeat, rewritten at the same pace; the live daemons share the
  partitions, ``ceil(P / live)`` each at most.

**Expiry is observed, not stamped**: there is no bucket TTL and no expiry time in the value. A
key counts as expired once its revision has not changed for ``lease_ttl_s`` on the observer's
own monotonic clock, counted from when it first saw that revision; a daemon counts as live
while its heartbeat changes within ``lease_ttl_s``. No two clocks need to agree.

**One owner at a time**: the holder stops reading a partition once ``lease_ttl_s / 2`` has
passed since it *sent* its last successful renewal (a guard checks every ``lease_ttl_s / 12``,
apart from the renewals in flight, so at the latest about 0.6 of the TTL after it); whoever
takes the lease over first saw that renewal after the server stored it, and waits
``lease_ttl_s`` from then. The CAS makes every claim of one revision succeed for one daemon
only.

The leases live on a NATS connection and an asyncio loop (thread ``nats-leases``) of their own
(:mod:`streamwatch.ingest.lease_thread`): a data path busy decoding a backlog cannot hold
renewals back. The link's callbacks, run on the link's loop, start (``gain``), hand back
(``release``) or drop (``lose``) a partition's reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import socket
import time
import zlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from streamwatch.logutil import RateLimited

log = logging.getLogger(__name__)
_limited = RateLimited(log)

HOLD_FRACTION = 0.5
"""The holder stops reading a partition this fraction of the TTL after its last renewal."""
TICK_FRACTION = 1 / 6
"""Renewals, heartbeats and claims happen every this fraction of the TTL."""
STALE_TTLS = 10
"""A heartbeat this many TTLs older than the bucket's newest entry is deleted at start."""
HISTORY = 64
"""Revisions kept per key (the most a KV bucket keeps)."""

PartitionHook = Callable[[int], Coroutine[Any, Any, None]]


def default_id() -> str:
    """``host-pid-random``: unique per process, readable in the bucket."""
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())
    return f"{host or 'host'}-{os.getpid()}-{secrets.token_hex(2)}"


def lease_key(partition: int) -> str:
    """The KV key of partition ``partition``'s lease."""
    return f"p.{partition}"


async def open_bucket(js: Any, name: str, history: int = HISTORY, replicas: int = 1) -> KeyValue:
    """The KV bucket ``name``, created (file storage, ``replicas`` copies) if missing; an
    existing bucket keeps its settings."""
    try:
        kv: KeyValue = await js.key_value(name)
        return kv
    except nats.js.errors.BucketNotFoundError:
        created: KeyValue = await js.create_key_value(
            KeyValueConfig(bucket=name, history=history, replicas=replicas)
        )
        return created


@dataclass(slots=True)
class _Seen:
    owner: str | None
    """The lease's owner (None for heartbeats and deleted keys)."""
    revision: int
    since: float
    """Monotonic time this revision was first seen here."""
    deleted: bool


@dataclass(slots=True)
class _Held:
    revision: int
    renewed: float
    """Monotonic time the last successful renewal (or the claim) was sent."""


class Leases:
    """This daemon's side of the lease protocol (loop thread only)."""

    def __init__(
        self,
        kv: KeyValue,
        partition_count: int,
        daemon_id: str,
        ttl: float,
        gain: PartitionHook,
        release: PartitionHook,
        lose: PartitionHook,
    ) -> None:
        self.kv = kv
        self.partition_count = partition_count
        self.id = daemon_id
        self.ttl = ttl
        self.tick = ttl * TICK_FRACTION
        self._gain, self._release, self._lose = gain, release, lose
        self.held: dict[int, _Held] = {}
        self.view: dict[str, _Seen] = {}
        self._watcher: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._offset = zlib.crc32(daemon_id.encode()) % partition_count
        """Where this daemon starts looking for partitions to claim (fewer collisions)."""
        self._renewing = asyncio.Lock()
        self.ready = asyncio.Event()
        """Set once the first round of claims is done."""

    @property
    def owned(self) -> list[int]:
        """The partitions whose lease this daemon holds."""
        return sorted(self.held)

    # -- start and stop -------------------------------------------------------------------

    async def start(self) -> None:
        """Watch the bucket and start renewing and claiming."""
        self._watcher = await self.kv.watch(">")
        snapshot = []
        while (entry := await self._watcher.updates(timeout=30)) is not None:
            self._saw(entry)
            snapshot.append(entry)
        await self._sweep_heartbeats(snapshot)
        self._tasks = [
            asyncio.create_task(self._watch(), name="lease-watch"),
            asyncio.create_task(self._renew_loop(), name="lease-renew"),
            asyncio.create_task(self._guard_loop(), name="lease-guard"),
            asyncio.create_task(self._manage_loop(), name="lease-manage"),
        ]

    async def _sweep_heartbeats(self, snapshot: list[Any]) -> None:
        """Delete the heartbeats of daemons long gone (killed: nobody deleted them), judged
        by the server's timestamps alone: older than the newest entry by ``STALE_TTLS``
        TTLs. CAS, so a daemon that just wrote again keeps its key."""
        stamps = [e.created for e in snapshot if e.created is not None]
        if not stamps:
            return
        newest = max(stamps)
        stale = [
            e
            for e in snapshot
            if e.key.startswith("d.") and e.operation is None and e.created is not None
            if (newest - e.created).total_seconds() > STALE_TTLS * self.ttl
        ]
        for e in stale:
            with contextlib.suppress(Exception):
                await self.kv.delete(e.key, last=e.revision)

    async def stop_claiming(self) -> None:
        """Stop renewing, claiming and watching (the leases held stay in the bucket until
        :meth:`release_all` or their expiry)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()

    async def release_all(self) -> None:
        """Delete every lease held and this daemon's heartbeat: the others take the
        partitions at once instead of after the TTL (the link stopped reading them first)."""
        for p, h in sorted(self.held.items()):
            await self._delete_own(p, h)
        self.held.clear()
        with contextlib.suppress(Exception):
            await self.kv.delete(f"d.{self.id}")

    # -- the bucket's current state -------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            try:
                entry = await self._watcher.updates(timeout=3600)
            except nats.errors.TimeoutError:
                continue
            if entry is not None:
                self._saw(entry)

    def _saw(self, entry: Any) -> None:
        seen = self.view.get(entry.key)
        if seen is not None and seen.revision == entry.revision:
            return
        deleted = entry.operation is not None  # deleted or purged: free
        owner = None if deleted or not entry.key.startswith("p.") else _owner(entry.value)
        self.view[entry.key] = _Seen(owner, entry.revision, time.monotonic(), deleted)

    def live(self) -> int:
        """Daemons whose heartbeat changed within the TTL, this one included."""
        now = time.monotonic()
        others = {
            k
            for k, s in self.view.items()
            if k.startswith("d.") and k != f"d.{self.id}" and not s.deleted
            if now - s.since < self.ttl
        }
        return 1 + len(others)

    def share(self) -> int:
        """The most partitions this daemon should hold: P / live daemons, rounded up."""
        return math.ceil(self.partition_count / self.live())

    # -- renewals -------------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        while True:
            await self._renew()
            await asyncio.sleep(self.tick)

    async def _renew(self) -> None:
        """Renew every lease held, and the heartbeat (here, not in the claiming round, which
        can take long while partitions are set up)."""
        held = list(self.held.items())
        sent = time.monotonic()
        heartbeat = json.dumps({"at": time.time()}).encode()
        async with self._renewing:
            beat, *results = await asyncio.gather(
                asyncio.wait_for(self.kv.put(f"d.{self.id}", heartbeat), self.ttl * HOLD_FRACTION),
                *(
                    asyncio.wait_for(
                        self.kv.update(lease_key(p), self._value(), last=h.revision),
                        self.ttl * HOLD_FRACTION,
                    )
                    for p, h in held
                ),
                return_exceptions=True,
            )
            for (_, h), res in zip(held, results, strict=True):
                if isinstance(res, int):  # even if handed back meanwhile: it deletes this one
                    h.revision, h.renewed = res, sent
        if isinstance(beat, BaseException):
            _limited.log(logging.WARNING, "heartbeat", "heartbeat failed: %r", beat)
        for (p, h), res in zip(held, results, strict=True):
            if self.held.get(p) is not h or isinstance(res, int):
                continue  # renewed, or given up meanwhile
            if isinstance(res, nats.js.errors.KeyWrongLastSequenceError):
                log.warning("lease of partition %d was taken by another daemon", p)
                await self._drop(p)
            else:
                _limited.log(logging.WARNING, "lease_renew", "lease renewal failed: %r", res)

    async def _guard_loop(self) -> None:
        """Stop every partition whose last successful renewal was sent more than
        ``HOLD_FRACTION`` of the TTL ago, whatever the renewals in flight are doing."""
        while True:
            now = time.monotonic()
            for p, h in list(self.held.items()):
                if now - h.renewed > self.ttl * HOLD_FRACTION and self.held.get(p) is h:
                    log.warning(
                        "lease of partition %d not renewed for %.1fs: stopping it",
                        p,
                        now - h.renewed,
                    )
                    await self._drop(p)
            await asyncio.sleep(self.tick / 2)

    async def _drop(self, partition: int) -> None:
        self.held.pop(partition, None)
        try:
            await self._lose(partition)
        except Exception:
            log.exception("stopping partition %d failed", partition)

    # -- heartbeats, releases and claims --------------------------------------------------

    async def _manage_loop(self) -> None:
        while True:
            try:
                await self._manage()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _limited.log(logging.WARNING, "lease_manage", "lease round failed: %r", exc)
            self.ready.set()
            await asyncio.sleep(self.tick)

    async def _manage(self) -> None:
        share = self.share()
        surplus = sorted(self.held, reverse=True)[: max(0, len(self.held) - share)]
        results = await asyncio.gather(
            *(self._hand_back(p) for p in surplus), return_exceptions=True
        )
        wanted = self._claimable()[: max(0, share - len(self.held))]
        results += await asyncio.gather(*(self._claim(p) for p in wanted), return_exceptions=True)
        for res in results:
            if isinstance(res, Exception):
                _limited.log(logging.WARNING, "lease_move", "a hand-back or claim failed: %r", res)

    async def _hand_back(self, partition: int) -> None:
        """Stop reading ``partition`` (the link hands back what it holds), then delete its
        lease so that another daemon takes it at once."""
        h = self.held.pop(partition)
        log.info("handing partition %d back (share %d)", partition, self.share())
        try:
            await self._release(partition)
        finally:
            await self._delete_own(partition, h)

    async def _delete_own(self, partition: int, h: _Held) -> None:
        """Delete a lease this daemon holds (compare-and-set: never another's)."""
        key = lease_key(partition)
        try:
            async with self._renewing:  # not while a renewal of it is under way
                try:
                    await self.kv.delete(key, last=h.revision)
                except nats.js.errors.BadRequestError:  # a renewal cut short by a stop landed
                    entry = await self.kv.get(key)
                    if entry.revision is None or _owner(entry.value) != self.id:
                        return
                    await self.kv.delete(key, last=entry.revision)
        except Exception as exc:  # it expires instead
            log.warning("deleting the lease of partition %d failed: %r", partition, exc)

    def _claimable(self) -> list[int]:
        """Partitions with no lease (or this daemon's own, dropped after a failed renewal),
        then those whose lease expired, from this daemon's offset on."""
        now = time.monotonic()
        free, expired = [], []
        for i in range(self.partition_count):
            p = (self._offset + i) % self.partition_count
            if p in self.held:
                continue
            seen = self.view.get(lease_key(p))
            if seen is None or seen.deleted or seen.owner == self.id:
                free.append(p)  # this daemon's own: dropped after a renewal failed
            elif now - seen.since >= self.ttl:
                expired.append(p)
        return free + expired

    async def _claim(self, partition: int) -> None:
        key = lease_key(partition)
        seen = self.view.get(key)
        sent = time.monotonic()
        try:
            if seen is None or seen.deleted:
                rev = await self.kv.create(key, self._value())
            else:
                rev = await self.kv.update(key, self._value(), last=seen.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # another daemon was first
        if seen is not None and not seen.deleted:
            log.warning("took over partition %d from %s (its lease expired)", partition, seen.owner)
        self.held[partition] = _Held(rev, sent)
        try:
            await self._gain(partition)
        except Exception as exc:
            log.error("cannot start reading partition %d: %r; releasing it", partition, exc)
            self.held.pop(partition, None)
            with contextlib.suppress(Exception):
                await self._lose(partition)
            with contextlib.suppress(Exception):
                await self.kv.delete(key, last=rev)

    def _value(self) -> bytes:
        return json.dumps({"owner": self.id, "at": time.time()}).encode()


def _owner(value: bytes | None) -> str | None:
    try:
        return str(json.loads(value or b"")["owner"])
    except (ValueError, KeyError, TypeError):
        return "?"
