"""Applying operator commands on the worker thread: validate against the engine, change the
state, persist it, answer on ``<cmd_prefix>/<id>/result``, republish the retained state.

A command changes nothing unless it is valid and its new state was written to disk; the
worker acknowledges the command's MQTT message only after this (as it does readings).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

from streamwatch.control.commands import (
    Ack,
    CommandError,
    CommandRequest,
    Maintenance,
    Mute,
    Relearn,
    Unmute,
)
from streamwatch.control.state import ControlState, Hold
from streamwatch.outputs.metrics import Metrics
from streamwatch.pipeline.engine import Engine

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bool], None]
"""(topic, payload, retain): the durable outbox."""


class Operator:
    """The worker's side of the operator loop."""

    def __init__(
        self,
        engine: Engine,
        control: ControlState,
        metrics: Metrics,
        publish: Publish,
        cmd_prefix: str,
        state_prefix: str,
        after_relearn: Callable[[], None] = lambda: None,
    ) -> None:
        self.engine = engine
        self.control = control
        self.metrics = metrics
        self.publish = publish
        self.cmd_prefix = cmd_prefix
        self.state_prefix = state_prefix
        self.after_relearn = after_relearn
        self._sync()

    def _sync(self) -> None:
        self.engine.muted = self.control.muted
        self.engine.maintenance = self.control.maintenance

    # -- commands ---------------------------------------------------------------------------

    def apply(self, req: CommandRequest, now: float) -> dict[str, Any]:
        """Apply one command; publish and return its result (and wake an HTTP sender)."""
        target, action = req.target, req.action
        try:
            if req.cmd is None:
                raise CommandError(req.error or "invalid command")
            self._apply(target, req.cmd, now)
            result: dict[str, Any] = {"ok": True, "error": None, "action": action, "id": target}
            log.info("command %s on %s from %s: applied", action, target, req.source)
        except CommandError as exc:
            result = {"ok": False, "error": str(exc), "action": action, "id": target}
            log.warning("command %s on %s from %s refused: %s", action, target, req.source, exc)
        self._sync()
        result["ts"] = now
        result["source"] = req.source
        self.metrics.commands.labels(action, "ok" if result["ok"] else "error").inc()
        if len(target) <= 256 and "+" not in target and "#" not in target:
            if result["ok"]:  # the state first: once the result is seen, so is the state
                self.publish_state(target, now)
            topic = f"{self.cmd_prefix}/{target}/result"
            self.publish(topic, json.dumps(result).encode(), False)
        req.result = result
        if req.done is not None:
            req.done.set()
        return result

    def _apply(
        self, target: str, cmd: Ack | Mute | Unmute | Maintenance | Relearn, now: float
    ) -> None:
        ctl = self.control
        if isinstance(cmd, Ack):
            raised = self.engine.raised.get(target)
            if raised is None:
                raise CommandError(f"{target} has no raised alert")
            if raised != cmd.alert_id:
                raise CommandError(f"alert {cmd.alert_id} is not {target}'s raised alert {raised}")
            self._persisted(lambda: ctl.acked.__setitem__(target, cmd.alert_id))
        elif isinstance(cmd, Mute | Maintenance):
            maintenance = isinstance(cmd, Maintenance)

            def hold() -> None:
                try:
                    ctl.hold(target, now + cmd.for_s, maintenance, cmd.reason, now)
                except ValueError as exc:
                    raise CommandError(str(exc)) from None

            self._persisted(hold)
        elif isinstance(cmd, Unmute):
            if target not in ctl.holds:
                raise CommandError(f"{target} is not muted")
            self._persisted(lambda: ctl.release(target))
        else:
            if target not in self.engine.windows.sensors:
                raise CommandError(f"{target} is not a tracked sensor")
            self._persisted(lambda: ctl.acked.pop(target, None))
            self.engine.relearn(target, f"relearn: {cmd.reason}" if cmd.reason else "relearn")
            self.after_relearn()

    def _persisted(self, change: Callable[[], object]) -> None:
        """Make ``change`` and write the state; undo it and refuse if it cannot be written."""
        ctl = self.control
        holds = {t: Hold(h.until, h.maintenance, h.reason, h.since) for t, h in ctl.holds.items()}
        acked = dict(ctl.acked)
        change()
        try:
            ctl.save()
        except OSError as exc:
            ctl.holds, ctl.acked = holds, acked
            ctl.refresh()
            raise CommandError(f"cannot persist the change: {exc}") from None

    # -- time and alerts --------------------------------------------------------------------

    def tick(self, now: float) -> bool:
        """End the mutes and maintenance windows whose time has come; True if any ended
        (their retained state was queued for publishing)."""
        gone = self.control.expire(now)
        if not gone:
            return False
        self._sync()
        try:
            self.control.save()
        except OSError as exc:
            log.error("cannot save operator state: %s", exc)
        for target in gone:
            log.info("mute/maintenance of %s ended", target)
            self.publish_state(target, now)
        return True

    def cleared(self, target: str) -> None:
        """An alert on ``target`` cleared: its acknowledgement goes with it."""
        if self.control.acked.pop(target, None) is not None:
            try:
                self.control.save()
            except OSError as exc:
                log.error("cannot save operator state: %s", exc)

    def annotate(self, target: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Add the operator fields to an alert or state payload of ``target``."""
        ctl = self.control
        doc["muted"] = target in ctl.muted
        if target in ctl.maintenance:
            doc["maintenance"] = True
        if target in ctl.holds:
            doc["muted_until"] = ctl.holds[target].until
        acked = ctl.acked.get(target)
        if acked is not None and acked == doc.get("alert_id"):
            doc["acked"] = True
        return doc

    def publish_state(self, target: str, now: float) -> None:
        """Republish ``target``'s retained state with its operator fields."""
        alert_id = self.engine.raised.get(target)
        doc: dict[str, Any] = {
            "state": "raised" if alert_id is not None else "cleared",
            "alert_id": alert_id,
            "ts": now,
        }
        sw = self.engine.windows.sensors.get(target)
        if sw is not None and sw.state is not None:
            st = sw.state
            doc["score"] = st.series.score if math.isfinite(st.series.score) else None
            doc["threshold"] = st.threshold
            doc["phase"] = st.phase
        self.annotate(target, doc)
        self.publish(f"{self.state_prefix}/{target}", json.dumps(doc).encode(), True)
