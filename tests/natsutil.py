"""Test helpers for the JetStream transport: a real nats-server with JetStream and the
partitioning subject mapping on a free loopback port, and a small blocking NATS client."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg

from streamwatch.embedded_broker import free_port, wait_port

NATS_SERVER = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
)


class NatsServer:
    """A nats-server process with JetStream (its own store folder) and the mapping
    ``sensors.* -> streamwatch.in.{{partition(P,1)}}.{{wildcard(1)}}`` (and its two-token
    form for ``sensors.*.*``)."""

    def __init__(self, workdir: Path, partitions: int, jetstream: bool = True) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.conf = workdir / "nats.conf"
        self.log = workdir / "nats.log"
        self.partitions = partitions
        self.write_conf(jetstream)
        self.proc: subprocess.Popen[bytes] | None = None

    def write_conf(self, jetstream: bool = True) -> None:
        """The server's config: the listener, JetStream (unless ``jetstream`` is False) and
        the mapping."""
        partitions = self.partitions
        js = f'jetstream {{ store_dir: "{self.workdir / "js"}" }}\n' if jetstream else ""
        self.conf.write_text(
            f"listen: 127.0.0.1:{self.port}\n" + js + "mappings = {\n"
            f'  "sensors.*": "streamwatch.in.{{{{partition({partitions},1)}}}}'
            '.{{wildcard(1)}}"\n'
            f'  "sensors.*.*": "streamwatch.in.{{{{partition({partitions},1,2)}}}}'
            '.{{wildcard(1)}}.{{wildcard(2)}}"\n'
            "}\n"
        )

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        assert NATS_SERVER is not None
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [NATS_SERVER, "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT
            )
        wait_port(self.port)

    def stop(self) -> None:
        """Stop the server."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


class NatsClient:
    """A blocking NATS client (its asyncio loop in a thread) for publishing readings through
    JetStream, watching subjects and reading consumer state."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nc = self._run(nats.connect(url))
        self.js = self.nc.jetstream()
        self.received: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()

    def _run(self, coro: Any, timeout: float = 20.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def publish(self, subject: str, payload: bytes) -> None:
        """Publish through JetStream: returns once the stream has stored it (the mapping
        applies first, so ``sensors.x`` lands in its partition's subject)."""
        self._run(self.js.publish(subject, payload))

    def add_stream(self, name: str, subjects: list[str]) -> None:
        """Create a stream (as the daemon would on its first start)."""
        self._run(self.js.add_stream(name=name, subjects=subjects))

    def subscribe(self, subject: str) -> None:
        """Collect every message on ``subject`` (a core subscription) into :attr:`received`."""

        async def on_msg(msg: Msg) -> None:
            with self._lock:
                self.received.append((msg.subject, msg.data))

        async def sub() -> None:
            await self.nc.subscribe(subject, cb=on_msg)
            await self.nc.flush()

        self._run(sub())

    def on(self, subject: str) -> list[bytes]:
        """Payloads received on exactly ``subject``."""
        with self._lock:
            return [d for s, d in self.received if s == subject]

    def consumer(self, stream: str, name: str) -> Any:
        """A consumer's info (``num_pending``, ``num_ack_pending``, ...)."""
        return self._run(self.js.consumer_info(stream, name))

    def close(self) -> None:
        """Disconnect and stop the loop."""
        self._run(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
