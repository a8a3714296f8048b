"""The leases (:mod:`streamwatch.ingest.leases`) on a NATS connection and an asyncio loop
(thread ``nats-leases``) of their own: a data path busy decoding a backlog cannot hold
renewals back. The JetStream link awaits these coroutines from its own loop; the partition
hooks run back on the link's loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

import nats
from nats.aio.client import Client

from streamwatch.config import NATSConfig
from streamwatch.ingest.leases import Leases, PartitionHook, open_bucket
from streamwatch.logutil import RateLimited

log = logging.getLogger(__name__)
_limited = RateLimited(log)


class LeaseThread:
    """:class:`Leases` on a connection and loop of their own. Its methods are coroutines for
    the link's loop; the hooks run there too."""

    def __init__(
        self,
        cfg: NATSConfig,
        daemon_id: str,
        gain: PartitionHook,
        release: PartitionHook,
        lose: PartitionHook,
    ) -> None:
        self.cfg = cfg
        self.daemon_id = daemon_id
        self._hooks = (gain, release, lose)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="nats-leases", daemon=True)
        self._nc: Client | None = None
        self.leases: Leases | None = None
        self.replicas = 1
        """Replicas of the lease bucket if it has to be created (the stream's)."""

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    async def _here(self, coro: Any) -> Any:
        """Run ``coro`` on the lease loop and wait for it from the caller's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def start(self) -> None:
        """Connect, open the lease bucket and take part; returns after the first round."""
        if not self._thread.is_alive():
            self._thread.start()
        await self._here(self._start(asyncio.get_running_loop()))

    async def _start(self, link_loop: asyncio.AbstractEventLoop) -> None:
        if self._nc is None:
            self._nc = await nats.connect(
                servers=[u.strip() for u in self.cfg.url.split(",")],
                name=f"{self.cfg.consumer}-leases",
                max_reconnect_attempts=-1,
                reconnect_time_wait=1.0,
                error_cb=_nats_error,
            )
        if self.leases is None:
            kv = await open_bucket(
                self._nc.jetstream(), self.cfg.lease_bucket, replicas=self.replicas
            )
            gain, release, lose = (_on(link_loop, hook) for hook in self._hooks)
            leases = Leases(
                kv,
                self.cfg.partition_count,
                self.daemon_id,
                self.cfg.lease_ttl_s,
                gain,
                release,
                lose,
            )
            await leases.start()
            self.leases = leases
        await self.leases.ready.wait()

    async def stop_claiming(self) -> None:
        """No more renewals or claims (see :meth:`Leases.stop_claiming`)."""
        if self.leases is not None:
            await self._here(self.leases.stop_claiming())

    async def close(self) -> None:
        """Delete the leases held (see :meth:`Leases.release_all`), disconnect, end the
        thread."""
        if self._thread.is_alive():
            await self._here(self._close())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5.0)

    async def _close(self) -> None:
        if self.leases is not None:
            await self.leases.release_all()
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.close()


def _on(loop: asyncio.AbstractEventLoop, hook: PartitionHook) -> PartitionHook:
    """``hook``, run on ``loop`` (the link's) whichever loop awaits it."""

    async def run(partition: int) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(hook(partition), loop))

    return run


async def _nats_error(exc: Exception) -> None:
    _limited.log(logging.WARNING, "lease_nats", "NATS (leases): %r", exc)
