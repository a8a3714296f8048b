"""What the worker does when a partition moves between daemons (``nats.ownership = "lease"``).

The JetStream link puts these markers in the worker's queue, in order with the readings:

- :class:`Adopt`, before the first reading of a partition this daemon just took: the alerts
  open on its sensors (from the alert KV bucket), so an alert raised by the previous owner is
  cleared here, not raised again;
- :class:`Context`: readings the previous owner already scored (at or before the consumer's
  last acknowledged message), replayed into the windows so they resume full instead of
  starting empty; no verdict, no alert, not counted as scored;
- :class:`Forget`, after a partition was handed over or lost: its sensors' state is dropped
  without any alert transition (the next owner carries their alerts on), so nothing stale
  is left here if the partition comes back later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamwatch.ingest.parse import Reading

if TYPE_CHECKING:
    from streamwatch.pipeline.engine import Engine

log = logging.getLogger(__name__)


class Context(tuple[Reading, ...]):
    """Readings already scored by the previous owner: window context only."""

    __slots__ = ()


@dataclass(slots=True)
class Adopt:
    """The open alerts (sensor -> ``{"alert_id", "kind", "fault", "raised_at"}``) of a
    partition just taken over."""

    partition: int
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Any:
        return iter(())


@dataclass(slots=True)
class Forget:
    """Sensors of a partition this daemon no longer owns."""

    partition: int
    sensors: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Any:
        return iter(())


MOVES = (Context, Adopt, Forget)
"""The marker classes (the worker dispatches on ``item.__class__``)."""


def apply(engine: Engine, marker: Context | Adopt | Forget) -> None:
    """Apply one marker to the engine (worker thread)."""
    if isinstance(marker, Context):
        warm(engine, marker)
    elif isinstance(marker, Adopt):
        adopt(engine, marker.alerts)
    else:
        forget(engine, marker.sensors)


def warm(engine: Engine, readings: Sequence[Reading]) -> int:
    """Push readings into their sensors' windows and warm-up, without scoring them: no
    verdict, no alert, not counted in ``streamwatch_readings_total``. Readings older than
    what a window holds already are skipped silently. Returns how many were taken."""
    now = time.time()
    windows = engine.windows
    taken = 0
    for r in readings:
        sw = windows.get(r.sensor, now)
        st = sw.state
        if st is None:
            st = sw.state = engine.new_state(r.sensor)
        dt = r.ts - sw.last_ts
        if windows.add(sw, r.ts, r.value).__class__ is str:
            continue
        st.series.last_ts = r.ts
        engine.lifecycle.observe(r.sensor, st, r.value, dt)
        taken += 1
    return taken


def adopt(engine: Engine, alerts: dict[str, dict[str, Any]]) -> None:
    """Resume the alerts another daemon raised: each clears here in its turn, none is raised
    again."""
    for sensor, doc in alerts.items():
        alert_id = str(doc["alert_id"])
        engine.raised[sensor] = alert_id
        if doc.get("fault"):
            engine.faults.raised_as[sensor] = str(doc["fault"])
        sw = engine.windows.sensors.get(sensor)
        if sw is not None and sw.state is not None:
            sw.state.alert.restore(alert_id)
            sw.state.series.active = 1
    if alerts:
        engine.mark_raised_changed()
        log.info("resuming %d open alert(s) of a partition taken over", len(alerts))


def forget(engine: Engine, sensors: Sequence[str]) -> None:
    """Drop the sensors' windows, learned state and raised alerts here, with no transition
    published (their next owner carries them on)."""
    gone = []
    for sensor in sensors:
        sw = engine.windows.sensors.pop(sensor, None)
        if sw is not None:
            gone.append((sensor, sw.state))
            if sw.state is not None:
                engine.faults.forget(sensor, sw.state)
        engine.raised.pop(sensor, None)
        engine.faults.raised_as.pop(sensor, None)
    engine.lifecycle.evicted(gone, lambda s: False)
    engine.mark_raised_changed()
