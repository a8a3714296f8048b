"""Feed outages: a silence of the whole feed is one outage, not a dropout on every sensor.

A reading after a silence longer than its sensor's gap limit is a dropout verdict
(:mod:`streamwatch.pipeline.lifecycle` sets the limit). But a logger pause, a network or a
broker outage silences every sensor at once, and an alarm on each of them says nothing an
operator can act on sensor by sensor. :class:`FeedWatch` tells the two apart: a sensor's
silence is the feed's when no sensor reported in it (give or take the sensor's own
allowance) and at least ``learning.feed_outage_sensors`` sensors had been reporting until
then. Such an outage is logged and counted once (``streamwatch_feed_outages_total``); a
sensor that alone goes quiet while others report is still a dropout. With fewer sensors
tracked the two cannot be told apart, and every silence stays a dropout.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

from prometheus_client import Counter

log = logging.getLogger(__name__)


class FeedWatch:
    """The feed's latest reading and latest outage (worker thread only)."""

    def __init__(self, min_sensors: int, counter: Counter) -> None:
        self.min_sensors = min_sensors
        """Sensors that must have been reporting for a silence to be the feed's; 0: off."""
        self.counter = counter
        self.last = -math.inf
        """The newest timestamp of any accepted reading."""
        self.outage = (math.inf, -math.inf)
        """The latest silence of the whole feed: (last reading before, first after)."""

    def saw(self, ts: float) -> None:
        """An accepted reading at ``ts``."""
        if ts > self.last:
            self.last = ts

    def silent(self, prev: float, ts: float, slack: float, last_seen: Iterable[float]) -> bool:
        """Whether a sensor's silence from ``prev`` to ``ts`` was the whole feed's.

        ``slack`` is the sensor's own allowance (its gap limit); ``last_seen`` the newest
        timestamp of every tracked sensor, asked only when a new outage may begin (at a gap,
        so rarely)."""
        if not self.min_sensors:
            return False
        if self.last <= prev + slack:  # nobody reported since this sensor last did
            if not self._fell_silent_together(prev - slack, last_seen):
                return False
            self.outage = (self.last, ts)
            self.counter.inc()
            log.warning(
                "no sensor reported for %.1f s (until %.3f): a feed outage, not a dropout",
                ts - self.last,
                ts,
            )
            return True
        first, last = self.outage
        return first <= prev + slack and last >= ts - slack

    def _fell_silent_together(self, since: float, last_seen: Iterable[float]) -> bool:
        """Whether ``min_sensors`` sensors (the one asking included) reported until ``since``
        or later: sensors silent long before are no feed that went quiet together."""
        n = 0
        for t in last_seen:
            if t >= since:
                n += 1
                if n >= self.min_sensors:
                    return True
        return False
