"""An in-process MQTT broker (amqtt) for ``streamwatch demo``: nothing to install.

amqtt speaks MQTT 3.1.1 only, so clients of this broker must use protocol "3.1.1".
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts TCP connections on ``port``; TimeoutError if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


class EmbeddedBroker:
    """amqtt running on its own event-loop thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="broker", daemon=True)
        self._broker: Any = None

    def start(self, timeout: float = 15.0) -> None:
        """Start listening; raises if the broker cannot start."""
        from amqtt.broker import Broker

        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }

        async def boot() -> None:
            self._broker = Broker(config)
            await self._broker.start()

        self._thread.start()
        asyncio.run_coroutine_threadsafe(boot(), self._loop).result(timeout)
        log.info("embedded MQTT broker on mqtt://%s:%d", self.host, self.port)

    def stop(self, timeout: float = 5.0) -> None:
        """Shut the broker down and stop its thread."""
        if self._broker is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(
                    timeout
                )
            except Exception as exc:  # shutting down anyway
                log.debug("broker shutdown: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    @property
    def url(self) -> str:
        """mqtt://host:port"""
        return f"mqtt://{self.host}:{self.port}"
