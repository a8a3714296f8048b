"""Test helpers for the JetStream transport: a real nats-server with JetStream and the
partitioning subject mapping on a free loopback port (optionally with its MQTT listener, a
monitoring port, or as one node of a cluster), and a small blocking NATS client."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from streamwatch.embedded_broker import free_port, wait_port

NATS_SERVER = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
)


@dataclass(frozen=True)
class ClusterNode:
    """This node's place in a cluster: the cluster's name, its own route port and every
    node's route port (its own included: nats-server ignores a route to itself)."""

    name: str
    port: int
    routes: Sequence[int]


class NatsServer:
    """A nats-server process with JetStream (its own store folder) and the mapping
    ``sensors.* -> streamwatch.in.{{partition(P,1)}}.{{wildcard(1)}}`` (and its two-token
    form for ``sensors.*.*``).

    Optional, all off by default: ``mqtt`` adds nats-server's MQTT listener on a free port
    (:attr:`mqtt_port`; it needs JetStream and a ``server_name``), ``monitor`` the HTTP
    monitoring port (:attr:`monitor_port`, ``/connz``, ``/jsz``), ``cluster`` makes it one
    node of a cluster (JetStream clustered, named ``server_name``)."""

    def __init__(
        self,
        workdir: Path,
        partitions: int,
        jetstream: bool = True,
        *,
        mqtt: bool = False,
        monitor: bool = False,
        cluster: ClusterNode | None = None,
        server_name: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.conf = workdir / "nats.conf"
        self.log = workdir / "nats.log"
        self.partitions = partitions
        self.mqtt_port = free_port() if mqtt else None
        self.monitor_port = free_port() if monitor else None
        self.cluster = cluster
        needs_name = mqtt or cluster is not None
        self.server_name = server_name or (f"sw-{self.port}" if needs_name else None)
        self.write_conf(jetstream)
        self.proc: subprocess.Popen[bytes] | None = None

    def write_conf(self, jetstream: bool = True) -> None:
        """The server's config: the listener, JetStream (unless ``jetstream`` is False), the
        mapping, and the optional MQTT listener, monitoring port and cluster block."""
        partitions = self.partitions
        js = f'jetstream {{ store_dir: "{self.workdir / "js"}" }}\n' if jetstream else ""
        self.conf.write_text(
            f"listen: 127.0.0.1:{self.port}\n" + self._extra_conf() + js + "mappings = {\n"
            f'  "sensors.*": "streamwatch.in.{{{{partition({partitions},1)}}}}'
            '.{{wildcard(1)}}"\n'
            f'  "sensors.*.*": "streamwatch.in.{{{{partition({partitions},1,2)}}}}'
            '.{{wildcard(1)}}.{{wildcard(2)}}"\n'
            "}\n"
        )

    def _extra_conf(self) -> str:
        out = ""
        if self.server_name is not None:
            out += f"server_name: {self.server_name}\n"
        if self.mqtt_port is not None:
            out += f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port} }}\n"
        if self.monitor_port is not None:
            out += f"http: 127.0.0.1:{self.monitor_port}\n"
        if self.cluster is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.cluster.routes)
            out += (
                f"cluster {{ name: {self.cluster.name}, listen: 127.0.0.1:{self.cluster.port},"
                f" routes: [{routes}] }}\n"
            )
        return out

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
        if self.mqtt_port is not None:
            wait_port(self.mqtt_port)

    def stop(self) -> None:
        """Stop the server."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server (no clean shutdown) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def nats_cluster(workdir: Path, partitions: int, nodes: int = 3) -> list[NatsServer]:
    """``nodes`` nats-servers (not started) forming one JetStream cluster on loopback, each
    with the mapping and a monitoring port, named ``n1``, ``n2``, ..."""
    route_ports = [free_port() for _ in range(nodes)]
    out = []
    for i, port in enumerate(route_ports, start=1):
        d = workdir / f"n{i}"
        d.mkdir(parents=True, exist_ok=True)
        node = ClusterNode("swtest", port, route_ports)
        out.append(NatsServer(d, partitions, monitor=True, cluster=node, server_name=f"n{i}"))
    return out


class CutProxy:
    """A TCP forwarder from a free loopback port to ``target_port`` that can cut every
    connection through it (and refuse new ones: they are closed at once) until restored: a
    daemon behind it loses NATS while the others keep it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open = True
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        """The client URL through the proxy."""
        return f"nats://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            if not self._open:
                down.close()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                down.close()
                continue
            with self._lock:
                self._socks += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self._open = False
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        """Let connections through again."""
        self._open = True

    def close(self) -> None:
        """Stop listening and drop everything."""
        self.cut()
        self._listener.close()


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

    def publish(
        self, subject: str, payload: bytes, msg_id: str | None = None, timeout: float = 2.0
    ) -> None:
        """Publish through JetStream: returns once the stream has stored it (the mapping
        applies first, so ``sensors.x`` lands in its partition's subject). ``msg_id`` sets
        ``Nats-Msg-Id``: the stream stores a retried publish once (its duplicate window)."""
        headers = {"Nats-Msg-Id": msg_id} if msg_id is not None else None
        self._run(self.js.publish(subject, payload, timeout=timeout, headers=headers))

    def add_stream(self, name: str, subjects: list[str], replicas: int = 1) -> None:
        """Create a stream (as the daemon would on its first start; the daemon's has one
        replica, a clustered deployment creates it with more first)."""
        self._run(self.js.add_stream(name=name, subjects=subjects, num_replicas=replicas))

    def stream(self, name: str) -> Any:
        """A stream's info (``state``, ``cluster.leader``, ...)."""
        return self._run(self.js.stream_info(name))

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

    def publish_many(self, items: list[tuple[str, bytes]], window: int = 256) -> list[int]:
        """Publish through JetStream, up to ``window`` at a time; the stream sequence of each,
        in order."""

        async def run() -> list[int]:
            seqs: list[int] = []
            for i in range(0, len(items), window):
                acks = await asyncio.gather(
                    *(self.js.publish(s, d) for s, d in items[i : i + window])
                )
                seqs += [a.seq for a in acks]
            return seqs

        out: list[int] = self._run(run(), timeout=300.0)
        return out

    def kv_latest(self, bucket: str) -> dict[str, bytes]:
        """Every key of a KV bucket with its latest value (deleted keys left out)."""

        async def run() -> dict[str, bytes]:
            kv = await self.js.key_value(bucket)
            watcher = await kv.watchall(ignore_deletes=True)
            out: dict[str, bytes] = {}
            while (entry := await watcher.updates(timeout=10)) is not None:
                out[entry.key] = entry.value or b""
            await watcher.stop()
            return out

        result: dict[str, bytes] = self._run(run())
        return result

    def kv_history(self, bucket: str, key: str) -> list[Any]:
        """A key's revisions (``Entry``: value, revision, operation, created), oldest first."""

        async def run() -> list[Any]:
            kv = await self.js.key_value(bucket)
            return list(await kv.history(key))

        result: list[Any] = self._run(run())
        return result

    def stream_subjects(self, stream: str, subject: str) -> dict[int, str]:
        """Stream sequence -> subject of every message of ``stream`` on ``subject`` (an
        ordered consumer)."""

        async def run() -> dict[int, str]:
            info = await self.js.stream_info(stream)
            last = info.state.last_seq
            out: dict[int, str] = {}
            done = asyncio.Event()

            async def on_msg(msg: Msg) -> None:
                out[msg.metadata.sequence.stream] = msg.subject
                if msg.metadata.sequence.stream >= last:
                    done.set()

            sub = await self.js.subscribe(subject, stream=stream, cb=on_msg, ordered_consumer=True)
            if last:
                await asyncio.wait_for(done.wait(), 120)
            await sub.unsubscribe()
            return out

        result: dict[int, str] = self._run(run(), timeout=150.0)
        return result

    def close(self) -> None:
        """Disconnect and stop the loop."""
        self._run(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@contextlib.contextmanager
def started_server(prefix: str, partitions: int, **options: Any) -> Iterator[NatsServer]:
    """A fresh nats-server (JetStream, the mapping into ``partitions``, ``options`` as
    :class:`NatsServer` takes them) in a temporary folder, stopped and removed after."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    server = NatsServer(d, partitions, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


def by_label(registry: CollectorRegistry, sample: str, label: str) -> dict[str, float]:
    """One counter's non-zero values by one label, e.g. ``streamwatch_readings_total`` by
    ``sensor`` or ``streamwatch_rejected_total`` by ``reason``."""
    return {
        s.labels[label]: s.value
        for fam in registry.collect()
        for s in fam.samples
        if s.name == sample and s.value
    }


def mosquitto_pub(port: int, topic: str, lines: Sequence[str | bytes], qos: int) -> None:
    """One ``mosquitto_pub -l`` process (MQTT 3.1.1) on 127.0.0.1:``port``: every line a
    message on ``topic``; AssertionError if it fails."""
    exe = shutil.which("mosquitto_pub")
    assert exe is not None, "mosquitto_pub is not installed"
    data = b"".join((x.encode() if isinstance(x, str) else x) + b"\n" for x in lines)
    cmd = [exe, "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv311", "-q", str(qos)]
    res = subprocess.run(
        [*cmd, "-t", topic, "-l"],
        input=data,
        capture_output=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
