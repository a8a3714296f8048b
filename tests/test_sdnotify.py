"""sd_notify over a real AF_UNIX datagram socket, as systemd sets it up for Type=notify."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamwatch import sdnotify


def _recv(sock: socket.socket) -> str:
    sock.settimeout(5.0)
    data, _ = sock.recvfrom(4096)
    return data.decode("utf-8")


@pytest.fixture
def path_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A filesystem datagram socket, exported as $NOTIFY_SOCKET."""
    # AF_UNIX paths are limited to ~108 bytes, so keep it short rather than under tmp_path.
    with tempfile.TemporaryDirectory(prefix="sdn") as d:
        path = os.path.join(d, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        try:
            yield sock
        finally:
            sock.close()


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """An abstract-namespace datagram socket, exported as $NOTIFY_SOCKET=@name."""
    name = f"streamwatch-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        yield sock
    finally:
        sock.close()


def test_ready_watchdog_stopping_on_path_socket(path_socket: socket.socket) -> None:
    assert sdnotify.ready() is True
    assert _recv(path_socket) == "READY=1"
    assert sdnotify.watchdog() is True
    assert _recv(path_socket) == "WATCHDOG=1"
    assert sdnotify.stopping() is True
    assert _recv(path_socket) == "STOPPING=1"


def test_abstract_namespace_socket(abstract_socket: socket.socket) -> None:
    assert sdnotify.ready() is True
    assert _recv(abstract_socket) == "READY=1"
    assert sdnotify.watchdog() is True
    assert _recv(abstract_socket) == "WATCHDOG=1"
    assert sdnotify.stopping() is True
    assert _recv(abstract_socket) == "STOPPING=1"


def test_status_and_reloading(path_socket: socket.socket) -> None:
    assert sdnotify.status("12 sensors\nconnected") is True
    assert _recv(path_socket) == "STATUS=12 sensors connected"
    assert sdnotify.reloading() is True
    assert _recv(path_socket) == "RELOADING=1"
    assert sdnotify.notify("READY=1\nSTATUS=ok") is True
    assert _recv(path_socket) == "READY=1\nSTATUS=ok"


def test_no_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.watchdog() is False
    assert sdnotify.stopping() is False
    assert sdnotify.status("x") is False


@pytest.mark.parametrize("value", ["", "vsock:2:1234", "relative/path"])
def test_unusable_socket_value_is_a_noop(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.ready() is False


def test_socket_gone_does_not_raise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nothing-listens-here"))
    assert sdnotify.watchdog() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + uuid.uuid4().hex)
    assert sdnotify.watchdog() is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() is None

    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 30.0

    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 30.0

    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None

    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "-5", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert sdnotify.watchdog_interval() is None


@pytest.mark.integration
def test_daemon_speaks_the_notify_protocol(tmp_path: Path) -> None:
    """``streamwatch run`` as systemd runs it: READY=1 once subscribed, WATCHDOG=1, STOPPING=1."""
    import signal
    import subprocess
    import sys

    from tests.helpers import Mosquitto, free_port

    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.fail("mosquitto binary not found: .ci/run installs it (apt-get install mosquitto)")
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    with tempfile.TemporaryDirectory(prefix="sdn") as d:
        path = os.path.join(d, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(60.0)
        env = {
            **os.environ,
            "NOTIFY_SOCKET": path,
            "WATCHDOG_USEC": "2000000",  # 2 s: the daemon pings every second or more often
        }
        log = (tmp_path / "daemon.log").open("w")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamwatch",
                "run",
                "--broker",
                broker.url,
                "--metrics-port",
                str(free_port()),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            seen: list[str] = []

            def until(state: str) -> None:
                while state not in seen:
                    seen.extend(sock.recvfrom(4096)[0].decode().splitlines())

            until("READY=1")
            until("WATCHDOG=1")
            seen.clear()
            until("WATCHDOG=1")  # heartbeats keep coming
            proc.send_signal(signal.SIGTERM)
            until("STOPPING=1")
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            sock.close()
            log.close()
            broker.stop()
