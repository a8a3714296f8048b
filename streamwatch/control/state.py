"""What operators set, by sensor or group id: mutes, maintenance windows and acknowledged
alerts. Persisted under ``state_dir`` (written to a temporary file, fsynced, renamed), so a
mute's end time survives a restart. Worker thread only, except :attr:`ControlState.muted` and
:attr:`ControlState.maintenance`, which the engine reads (same thread) per batch."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_ENTRIES = 10_000
"""At most this many ids muted at once (a runaway script cannot grow the state file forever)."""


@dataclass(slots=True)
class Hold:
    """A mute or a maintenance window on one id."""

    until: float
    maintenance: bool
    reason: str
    since: float


class ControlState:
    """Mutes, maintenance windows and acknowledgements, kept in ``path`` (None: in memory)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.holds: dict[str, Hold] = {}
        self.acked: dict[str, str] = {}
        """Id -> the raised alert id an operator acknowledged."""
        self.muted: set[str] = set()
        """Ids muted now (maintenance included): the engine publishes no raise for them."""
        self.maintenance: set[str] = set()
        """Ids in maintenance now: the engine keeps their readings out of learning."""
        self._next_end = math.inf
        self.load()

    # -- queries ----------------------------------------------------------------------------

    def describe(self, target: str) -> dict[str, Any]:
        """The operator fields of ``target`` for its retained state and the live page."""
        hold = self.holds.get(target)
        doc: dict[str, Any] = {
            "muted": hold is not None,
            "maintenance": hold is not None and hold.maintenance,
        }
        if hold is not None:
            doc["muted_until"] = hold.until
            if hold.reason:
                doc["mute_reason"] = hold.reason
        if target in self.acked:
            doc["acked_alert_id"] = self.acked[target]
        return doc

    # -- changes ----------------------------------------------------------------------------

    def hold(self, target: str, until: float, maintenance: bool, reason: str, now: float) -> None:
        """Mute ``target`` (in maintenance if asked) until ``until``; replaces an earlier
        hold. ValueError if too many ids are held already."""
        if target not in self.holds and len(self.holds) >= MAX_ENTRIES:
            raise ValueError(f"too many muted ids (at most {MAX_ENTRIES})")
        self.holds[target] = Hold(until, maintenance, reason, now)
        self.refresh()

    def release(self, target: str) -> bool:
        """End ``target``'s mute or maintenance now; False if it had none."""
        if self.holds.pop(target, None) is None:
            return False
        self.refresh()
        return True

    def expire(self, now: float) -> list[str]:
        """End the holds whose time has come; the ids that were released."""
        if now < self._next_end:
            return []
        gone = [t for t, h in self.holds.items() if h.until <= now]
        for t in gone:
            del self.holds[t]
        self.refresh()
        return gone

    def refresh(self) -> None:
        """Recompute the derived sets (after :attr:`holds` was replaced)."""
        self.muted = set(self.holds)
        self.maintenance = {t for t, h in self.holds.items() if h.maintenance}
        self._next_end = min((h.until for h in self.holds.values()), default=math.inf)

    # -- persistence ------------------------------------------------------------------------

    def load(self) -> None:
        """Read the state file (an unreadable one is logged and ignored)."""
        if self.path is None or not self.path.exists():
            return
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            holds = {
                str(t): Hold(
                    float(h["until"]), bool(h["maintenance"]), str(h["reason"]), float(h["since"])
                )
                for t, h in doc["holds"].items()
            }
            acked = {str(k): str(v) for k, v in doc["acked"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable operator state %s: %s", self.path, exc)
            return
        self.holds, self.acked = holds, acked
        self.refresh()
        if holds:
            log.info("resuming %d mute(s)/maintenance window(s) from %s", len(holds), self.path)

    def save(self) -> None:
        """Write the state durably (temporary file, fsync, rename); OSError if it cannot."""
        if self.path is None:
            return
        doc = {
            "holds": {
                t: {
                    "until": h.until,
                    "maintenance": h.maintenance,
                    "reason": h.reason,
                    "since": h.since,
                }
                for t, h in self.holds.items()
            },
            "acked": self.acked,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write(json.dumps(doc))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
