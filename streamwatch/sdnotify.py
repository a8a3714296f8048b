"""A tiny, dependency-free ``sd_notify`` client for systemd ``Type=notify`` services.

systemd passes the address of its notification socket in ``$NOTIFY_SOCKET``: either a
filesystem path (``/run/systemd/notify``) or a Linux abstract-namespace name written with a
leading ``@``. A notification is one datagram of newline-separated ``KEY=VALUE`` pairs.

Every function here is safe to call anywhere: outside systemd (no ``$NOTIFY_SOCKET``) it does
nothing and returns ``False``, and it never raises, so the daemon can call :func:`watchdog` from
its processing loop unconditionally.

Usage in the daemon::

    from streamwatch import sdnotify

    sdnotify.ready()                 # connected to the broker and subscribed
    sdnotify.status("42 sensors")    # free text shown by `systemctl status`
    sdnotify.watchdog()              # each turn of the processing loop (cheap)
    sdnotify.stopping()              # on shutdown

:func:`watchdog_interval` tells how often systemd expects a heartbeat (``WatchdogSec=``), or
``None`` when the watchdog is off; pinging at half that interval or more often is the rule.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = [
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]

log = logging.getLogger(__name__)


def _address(raw: str) -> str | None:
    """Translate ``$NOTIFY_SOCKET`` into an address for ``socket.sendto``.

    ``@name`` means the abstract namespace (a leading NUL byte); an absolute path is a
    filesystem socket. Anything else (for example ``vsock:`` addresses) is unsupported here.
    """
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None


def notify(state: str) -> bool:
    """Send one notification (e.g. ``"READY=1"``) to systemd.

    Returns ``True`` when the datagram was sent, ``False`` when there is no notification socket
    or sending failed. Never raises.
    """
    raw = os.environ.get("NOTIFY_SOCKET")
    if not raw:
        return False
    addr = _address(raw)
    if addr is None:
        log.debug("unsupported NOTIFY_SOCKET address %r; notification skipped", raw)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode("utf-8"), addr)
    except (OSError, UnicodeError, ValueError) as exc:
        log.debug("sd_notify %r to %r failed: %s", state, raw, exc)
        return False
    return True


def ready() -> bool:
    """Tell systemd start-up is complete (``READY=1``): connected, subscribed, models loaded."""
    return notify("READY=1")


def watchdog() -> bool:
    """Send a watchdog heartbeat (``WATCHDOG=1``); call it from the processing loop."""
    return notify("WATCHDOG=1")


def stopping() -> bool:
    """Tell systemd the service is shutting down (``STOPPING=1``)."""
    return notify("STOPPING=1")


def reloading() -> bool:
    """Tell systemd a configuration reload has begun (``RELOADING=1``).

    Send :func:`ready` again once the reload is done.
    """
    return notify("RELOADING=1")


def status(text: str) -> bool:
    """Set the free-form status line shown by ``systemctl status`` (``STATUS=...``).

    Newlines would start a new ``KEY=VALUE`` pair, so they are replaced by spaces.
    """
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog_interval() -> float | None:
    """The watchdog timeout systemd enforces, in seconds, or ``None`` if it is off.

    Read from ``$WATCHDOG_USEC``. When ``$WATCHDOG_PID`` is set and names another process, the
    watchdog is not meant for this one and ``None`` is returned. Send heartbeats at least twice
    per interval.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 1_000_000
