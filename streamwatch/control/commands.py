"""Operator commands: validation (pure) and the marker that carries one to the worker.

A command arrives as JSON on ``<cmd_prefix>/<id>`` (MQTT) or ``POST /api/cmd/<id>`` (the live
page); both go through :func:`parse_command` and then, as a :class:`CommandRequest` in the
hand-off queue, to the worker thread, which applies it in order with the readings.
"""

from __future__ import annotations

import json
import threading
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from streamwatch.ingest.parse import Reading

MAX_ID = 256
MAX_PAYLOAD = 4096
MAX_FOR_S = 30 * 86400.0
"""The longest mute or maintenance one command may set (30 days)."""
ACTIONS = ("ack", "mute", "unmute", "maintenance", "relearn")


class _Cmd(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Ack(_Cmd):
    """Mark the raised alert ``alert_id`` as acknowledged (seen by an operator)."""

    action: Literal["ack"]
    alert_id: str = Field(min_length=1, max_length=64)


class Mute(_Cmd):
    """Publish no raise for ``for_s`` seconds."""

    action: Literal["mute"]
    for_s: float = Field(gt=0, le=MAX_FOR_S)
    reason: str = Field("", max_length=500)


class Unmute(_Cmd):
    """End a mute or a maintenance window now."""

    action: Literal["unmute"]


class Maintenance(_Cmd):
    """Muted, and kept out of learning and calibration, for ``for_s`` seconds."""

    action: Literal["maintenance"]
    for_s: float = Field(gt=0, le=MAX_FOR_S)
    reason: str = Field("", max_length=500)


class Relearn(_Cmd):
    """Accept the current behaviour as normal: forget the sensor's learned state."""

    action: Literal["relearn"]
    reason: str = Field("", max_length=500)


Command = Annotated[Ack | Mute | Unmute | Maintenance | Relearn, Field(discriminator="action")]
_adapter: TypeAdapter[Ack | Mute | Unmute | Maintenance | Relearn] = TypeAdapter(Command)


class CommandError(ValueError):
    """A command that cannot be applied; its message is the ``error`` of the result."""


def check_id(target: str) -> str:
    """``target`` if it can name a sensor or group, else CommandError."""
    if not target or len(target) > MAX_ID:
        raise CommandError(f"id must be 1 to {MAX_ID} characters")
    if any(c in target for c in "+#\x00"):
        raise CommandError("id must not contain '+', '#' or NUL")
    return target


def parse_command(payload: bytes | str) -> Ack | Mute | Unmute | Maintenance | Relearn:
    """Decode and validate one command's JSON; CommandError with a one-line reason if bad."""
    if len(payload) > MAX_PAYLOAD:
        raise CommandError(f"a command is at most {MAX_PAYLOAD} bytes")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CommandError("a command is a JSON object")
    action = doc.get("action")
    if action not in ACTIONS:
        raise CommandError(f"action must be one of {', '.join(ACTIONS)}; got {action!r}")
    try:
        return _adapter.validate_python(doc)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"][1:]) or "command"
            parts.append(f"{loc}: {err['msg']}")
        raise CommandError("; ".join(parts)) from None


class CommandRequest(tuple[Reading, ...]):
    """A marker handed to the worker in place of a message's readings: one command. It holds
    no readings (the queue counts it as none). ``cmd`` is the validated command, or None with
    ``error`` set when it failed validation (the worker still answers it, in order).
    ``reply`` is set by the worker once the command is applied and persisted (HTTP waits on
    it)."""

    target: str
    cmd: Ack | Mute | Unmute | Maintenance | Relearn | None
    error: str | None
    source: str
    result: dict[str, Any] | None
    done: threading.Event | None

    def __new__(
        cls,
        target: str,
        cmd: Ack | Mute | Unmute | Maintenance | Relearn | None,
        error: str | None = None,
        source: str = "mqtt",
        wait: bool = False,
    ) -> CommandRequest:
        """A command for ``target`` (``wait``: the sender blocks on :attr:`done`)."""
        obj = super().__new__(cls, ())
        obj.target = target
        obj.cmd = cmd
        obj.error = error
        obj.source = source
        obj.result = None
        obj.done = threading.Event() if wait else None
        return obj

    @property
    def action(self) -> str:
        """The command's action ("invalid" if it did not validate)."""
        return self.cmd.action if self.cmd is not None else "invalid"


def request(target: str, payload: bytes | str, source: str, wait: bool = False) -> CommandRequest:
    """Validate a command for ``target``: a request carrying the command or its error."""
    try:
        check_id(target)
        return CommandRequest(target, parse_command(payload), None, source, wait)
    except CommandError as exc:
        return CommandRequest(target, None, str(exc), source, wait)
