"""The alert outbox: transitions kept on disk until the broker has acknowledged them.

Every alert transition is appended to ``state_dir/outbox.jsonl`` (and the file synced) before
the readings that caused it are acknowledged to the broker, then published at QoS 1. When the
broker's PUBACK arrives the entry is done. After a crash or a restart the entries still open
are published again, with their original ``alert_id``: a raise or clear is never lost, and
a consumer that keys on ``alert_id`` and ``state`` sees it once. Without a state directory
the outbox lives in memory only (paho still resends across reconnects, not across restarts).

The file is append-only between compactions: a line ``{"seq": N, "topic": ..., "payload":
..., "retain": ...}`` opens an entry and ``{"done": N}`` closes it; once every entry is done
the file is emptied.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from streamwatch import durable

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bool], int | None]
"""Publish (topic, payload, retain) at QoS 1; returns the message id, or None if refused."""

COMPACT_AFTER = 10_000
"""Lines in the file after which it is rewritten with only the open entries."""
COMPACT_EMPTY_AFTER = 1_000
"""Lines after which a file with no open entry left is emptied."""


class Outbox:
    """Alert publishes not yet acknowledged by the broker (worker thread adds and flushes;
    paho's network thread marks them done)."""

    def __init__(self, path: Path | None, publish: Publish) -> None:
        self.path = path
        self._publish = publish
        self._lock = threading.Lock()
        self._open: dict[int, tuple[str, str, bool]] = {}
        self._by_mid: dict[int, int] = {}
        self._unwritten: list[str] = []
        self._unsent: list[int] = []
        self._done: list[int] = []
        self._seq = 0
        self._lines = 0
        self._file: IO[str] | None = None
        if path is not None:
            self._recover(path)

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    def _recover(self, path: Path) -> None:
        """Reopen what a previous run left open; it is published again by :meth:`flush`."""
        if path.exists():
            try:
                for line in path.read_text(encoding="utf-8").splitlines():
                    self._lines += 1
                    try:
                        doc = json.loads(line)
                        if "done" in doc:
                            self._open.pop(int(doc["done"]), None)
                        else:
                            seq = int(doc["seq"])
                            self._open[seq] = (
                                str(doc["topic"]),
                                str(doc["payload"]),
                                bool(doc["retain"]),
                            )
                            self._seq = max(self._seq, seq)
                    except (ValueError, KeyError, TypeError):
                        log.warning("outbox %s: skipping a damaged line", path)
            except OSError as exc:
                log.error("cannot read the alert outbox %s: %s", path, exc)
        if self._open:
            log.info(
                "outbox: %d alert publish(es) from before the restart to resend", len(self._open)
            )
        self._unsent = sorted(self._open)
        self._rewrite()

    def add(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Queue one publish; it is written (and sent) by the next :meth:`flush`."""
        text = payload.decode("utf-8")
        with self._lock:
            self._seq += 1
            self._open[self._seq] = (topic, text, retain)
            self._unwritten.append(
                json.dumps({"seq": self._seq, "topic": topic, "payload": text, "retain": retain})
            )
            self._unsent.append(self._seq)

    def flush(self) -> bool:
        """Make what was added durable (written and synced), then publish it, and record
        what the broker has acknowledged since. Call before acknowledging the readings that
        caused it. Worker thread only: all file work happens here.

        Returns whether everything added so far is on disk. When the write fails (a full
        disk, say) the entries are published anyway and kept for the next flush to write;
        the caller must not acknowledge the readings behind them until a flush succeeds."""
        with self._lock:
            lines, self._unwritten = self._unwritten, []
            unsent, self._unsent = self._unsent, []
            done, self._done = self._done, []
            empty = not self._open
        durable = True
        if lines or done:
            # A lost "done" mark only means a publish is repeated after a crash (with its
            # alert_id), so those are not synced; new entries are.
            durable = self._append(
                [*(json.dumps({"done": s}) for s in done), *lines], sync=bool(lines)
            )
            if not durable:
                with self._lock:
                    self._unwritten[:0] = lines
                    self._done[:0] = done
        if durable and (
            self._lines > COMPACT_AFTER or (empty and self._lines > COMPACT_EMPTY_AFTER)
        ):
            self._rewrite()
        for seq in unsent:
            with self._lock:
                entry = self._open.get(seq)
            if entry is None:
                continue
            topic, text, retain = entry
            mid = self._publish(topic, text.encode("utf-8"), retain)
            if mid is not None:
                with self._lock:
                    self._by_mid[mid] = seq
        return durable

    def published(self, mid: int) -> None:
        """The broker acknowledged message ``mid`` (paho's on_publish: network thread, so
        no file work here; :meth:`flush` writes it down)."""
        with self._lock:
            seq = self._by_mid.pop(mid, None)
            if seq is not None and self._open.pop(seq, None) is not None:
                self._done.append(seq)

    def _append(self, lines: list[str], sync: bool = True) -> bool:
        if self.path is None:
            return True
        try:
            with self._lock:
                if self._file is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._file = self.path.open("a", encoding="utf-8")
                self._file.write("".join(line + "\n" for line in lines))
                self._file.flush()
                if sync:
                    os.fsync(self._file.fileno())
                self._lines += len(lines)
            return True
        except OSError as exc:
            log.error("cannot write the alert outbox %s: %s", self.path, exc)
            with self._lock:
                if self._file is not None:  # reopened (and appended to) on the next try
                    with contextlib.suppress(OSError):
                        self._file.close()
                    self._file = None
            return False

    def _rewrite(self) -> None:
        """Replace the file by its open entries (none: an empty file)."""
        if self.path is None:
            return
        with self._lock:
            entries = [
                json.dumps({"seq": s, "topic": t, "payload": p, "retain": r})
                for s, (t, p, r) in sorted(self._open.items())
            ]
            if self._file is not None:
                self._file.close()
                self._file = None
            try:
                durable.write_atomic(self.path, "".join(e + "\n" for e in entries))
                self._lines = len(entries)
            except OSError as exc:
                log.error("cannot rewrite the alert outbox %s: %s", self.path, exc)

    def close(self) -> None:
        """Close the file (what is open stays in it for the next run)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
