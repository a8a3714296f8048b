"""The bounded hand-off between the MQTT network thread and the worker."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from streamwatch.ingest.parse import Reading
from streamwatch.ingest.raw import Handed, Queued, Raw

Item = tuple[Sequence[Reading], float]
"""A message's readings and the wall-clock time it arrived (what the engine takes)."""
__all__ = ["Handed", "Handoff", "Item", "Queued"]

LINGER_S = 0.002
"""How long the worker waits for a fuller batch once a message is in (see :class:`Handoff`)."""
BATCH_HINT = 256
"""Readings waiting that end the linger at once."""
_NEVER = 1 << 62


class Handoff:
    """The bounded queue between the MQTT thread and the worker.

    ``put`` never blocks (the network thread must not stall). A message that carries an
    acknowledgement token (QoS 1) is never shed: it is acknowledged only once scored, and the
    broker's in-flight limit holds the rest back, which bounds this queue. Past
    ``max_readings`` waiting, the oldest messages without a token (QoS 0: the broker keeps no
    copy anyway) are shed and counted.

    Batching: once the first message of a batch has arrived, :meth:`drain` lingers up to
    ``linger_s`` for more, unless ``batch_hint`` readings are already waiting. ``put`` only
    wakes the worker when it waits for a first message or the hint is reached, so at a
    steady rate the worker turns a few hundred times a second instead of once per message;
    each turn took the GIL from the network thread and scored a one-row batch.
    """

    def __init__(
        self, max_readings: int, linger_s: float = LINGER_S, batch_hint: int = BATCH_HINT
    ) -> None:
        self.max_readings = max_readings
        self.linger_s = linger_s
        self.batch_hint = batch_hint
        self._items: deque[Handed] = deque()
        self._count = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        """Waited on by the worker; ``put`` takes the bare lock (Condition's ``with`` is two
        Python-level calls per message)."""
        self._wake_at = _NEVER
        """``put`` notifies once this many readings wait (1 while the worker waits idle)."""
        self.shed = 0

    def __len__(self) -> int:
        return self._count

    def put(self, readings: Sequence[Reading] | Raw, arrived: float, token: Any = None) -> int:
        """Queue one message's readings, or the message undecoded (counted as one reading),
        and its acknowledgement token; returns how many old readings were shed for it."""
        shed = 0
        with self._lock:
            self._items.append((readings, arrived, token))
            self._count += len(readings)
            items = self._items
            while (
                self._count > self.max_readings
                and len(items) > 1
                and items[0][2] is None
                and len(items[0][0])  # a marker (a command, a partition move) is never shed
            ):
                old, _, _ = items.popleft()
                self._count -= len(old)
                shed += len(old)
            self.shed += shed
            if self._count >= self._wake_at:
                self._wake_at = _NEVER
                self._cond.notify()
        return shed

    def drain(self, timeout: float) -> list[Handed]:
        """Everything waiting, after waiting up to ``timeout`` seconds for anything (and then
        up to ``linger_s`` for a fuller batch; never with ``timeout`` 0)."""
        with self._cond:
            if not self._items:
                self._wake_at = 1
                self._cond.wait(timeout)
            if timeout > 0 and self.linger_s > 0 and 0 < self._count < self.batch_hint:
                self._wake_at = self.batch_hint
                self._cond.wait(self.linger_s)
            self._wake_at = _NEVER
            items = list(self._items)
            self._items.clear()
            self._count = 0
        return items
