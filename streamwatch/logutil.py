"""Rate-limited logging, so a flood of bad input cannot fill the disk."""

from __future__ import annotations

import logging
import threading
import time


class RateLimited:
    """Logs at most ``per_interval`` records per key per ``interval_s``; counts the rest.

    The first record after a quiet spell says how many were suppressed in between.
    """

    def __init__(self, logger: logging.Logger, per_interval: int = 5, interval_s: float = 60.0):
        self.logger = logger
        self.per_interval = per_interval
        self.interval_s = interval_s
        self._windows: dict[str, tuple[float, int, int]] = {}  # key -> (start, logged, dropped)
        self._lock = threading.Lock()

    def log(self, level: int, key: str, msg: str, *args: object, exc_info: bool = False) -> None:
        """Log ``msg % args`` (with the current traceback if ``exc_info``) unless ``key`` has
        used up its quota for this interval."""
        now = time.monotonic()
        with self._lock:
            start, logged, dropped = self._windows.get(key, (now, 0, 0))
            if now - start >= self.interval_s:
                if dropped:
                    self.logger.log(level, "%d more %r messages suppressed", dropped, key)
                start, logged, dropped = now, 0, 0
            if logged >= self.per_interval:
                self._windows[key] = (start, logged, dropped + 1)
                return
            self._windows[key] = (start, logged + 1, dropped)
            if len(self._windows) > 1000:  # keys are bounded by design; this is a backstop
                self._windows.clear()
        self.logger.log(level, msg, *args, exc_info=exc_info)
