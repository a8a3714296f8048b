"""Per-sensor alert state: debounce on the way up, hysteresis on the way down.

A sensor's alert is *raised* once ``k`` of its last ``n`` verdicts were anomalous, and
*cleared* after ``m`` consecutive normal verdicts spanning at least ``hold_s`` seconds since
the last anomalous one (an off-delay, as alarm systems use). While raised, further anomalous
verdicts change nothing, so one long anomaly makes exactly one raise and one clear: no alert
storm, even where the anomaly shows only in part of each cycle of a periodic signal. After a
clear, no new alert is raised for ``refractory`` verdicts counted from the last raise, so a
noisy stretch that flickers around its threshold costs one alert, not one a minute. Counts are
in verdicts (readings), not seconds, so the rule means the same at 1 Hz and at 5 minutes.

*Confirmation* (``alerts.confirm_s``, window detectors): a sensor fast enough that a second
look costs little
(2 intervals within ``confirm_s``) raises only on 2 anomalous verdicts of its last 3 (or its
configured k of n, if stricter): one noisy reading of a 1 Hz accelerometer is not worth
an operator's attention, while a 5-minute sensor keeps raising on one verdict, since waiting
for a second would cost ten minutes. :meth:`AlertState.confirm` sets it once the sensor's
cadence is learned. A *forced* verdict (a dropout: one reading after a silence) raises alone.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

RAISED: Literal["raised"] = "raised"
CLEARED: Literal["cleared"] = "cleared"


@dataclass(slots=True)
class AlertEvent:
    """One transition, published as JSON to ``<alert_prefix>/<sensor>``."""

    sensor: str
    state: Literal["raised", "cleared"]
    ts: float
    score: float
    threshold: float
    detector: str
    window_start: float
    window_end: float
    alert_id: str
    top_steps: list[dict[str, float]] | None = None
    parts: dict[str, float] | None = None
    """For a combined score: each part's share of the threshold (1.0 = at it)."""
    reason: str | None = None
    """Why a transition happened other than by verdicts (``evicted``: the sensor went;
    ``rebaselined``: a lasting change became the sensor's new normal level)."""
    baseline: dict[str, float] | None = None
    """With ``rebaselined``: the normal level before and after (``from``, ``to``)."""
    kind: str = "process"
    """``process`` (the model's verdict) or ``sensor_fault`` (a fault check's)."""
    fault: str | None = None
    """For a sensor fault: which (see :mod:`streamwatch.pipeline.faults`)."""

    def to_json(self) -> dict[str, Any]:
        """The payload as a dict (``top_steps`` only when the detector explained the score)."""
        doc: dict[str, Any] = {
            "sensor": self.sensor,
            "state": self.state,
            "ts": self.ts,
            "score": _finite(self.score),
            "threshold": _finite(self.threshold),
            "detector": self.detector,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "alert_id": self.alert_id,
        }
        if self.top_steps is not None:
            doc["top_steps"] = self.top_steps
        if self.parts is not None:
            doc["parts"] = self.parts
        if self.reason is not None:
            doc["reason"] = self.reason
        if self.baseline is not None:
            doc["baseline"] = {k: _finite(v) for k, v in self.baseline.items()}
        doc["kind"] = self.kind
        if self.fault is not None:
            doc["fault"] = self.fault
        return doc

    def payload(self) -> bytes:
        """The MQTT payload."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode()


def _finite(x: float) -> float | None:
    """JSON has no NaN: an unknown number is null."""
    return x if math.isfinite(x) else None


@dataclass(slots=True)
class AlertState:
    """One sensor's raise/clear state machine."""

    k: int
    n: int
    m: int
    hold_s: float = 0.0
    refractory: int = 0
    history: int = 0
    """The last n verdicts as bits, newest in bit 0."""
    normal_run: int = 0
    last_anomalous: float = float("-inf")
    alert_id: str | None = None
    since_raise: int = 1 << 30
    """Verdicts since the last raise."""
    _mask: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._mask = (1 << self.n) - 1

    def confirm(self, k: int, n: int) -> None:
        """Raise on ``k`` anomalous verdicts of the last ``n`` from now on (never laxer than
        the configured rule)."""
        self.k, self.n = max(self.k, k), max(self.n, n)
        self._mask = (1 << self.n) - 1

    @property
    def raised(self) -> bool:
        """Whether an alert is active."""
        return self.alert_id is not None

    def update(
        self, anomalous: bool, ts: float = 0.0, forced: bool = False
    ) -> tuple[Literal["raised", "cleared"], str] | None:
        """Feed one verdict (of the reading at ``ts``); return the transition it causes and
        its alert id, if any. A ``forced`` anomalous verdict (a dropout) needs no
        confirmation: it raises alone, refractory period permitting."""
        self.history = ((self.history << 1) | anomalous) & self._mask
        self.since_raise += 1
        if anomalous:
            self.normal_run = 0
            self.last_anomalous = ts
            if (
                self.alert_id is None
                and (forced or self.history.bit_count() >= self.k)
                and self.since_raise > self.refractory
            ):
                self.alert_id = uuid.uuid4().hex
                self.since_raise = 0
                return RAISED, self.alert_id
            return None
        self.normal_run += 1
        if (
            self.alert_id is not None
            and self.normal_run >= self.m
            and ts - self.last_anomalous >= self.hold_s
        ):
            cleared, self.alert_id, self.history = self.alert_id, None, 0
            return CLEARED, cleared
        return None

    def end(self) -> str | None:
        """Clear the alert now, not by verdicts (a lasting change re-baselined); its id."""
        cleared, self.alert_id, self.history, self.normal_run = self.alert_id, None, 0, 0
        return cleared

    def force_raise(self, ts: float) -> str:
        """Raise now whatever the recent verdicts (a fault judged with no reading to give a
        verdict on, such as silence); returns the new alert id."""
        self.alert_id = uuid.uuid4().hex
        self.since_raise = 0
        self.normal_run = 0
        self.last_anomalous = ts
        return self.alert_id

    def restore(self, alert_id: str | None) -> None:
        """Resume an alert that was raised before a restart (so it is not raised twice)."""
        self.alert_id = alert_id
        self.normal_run = 0
