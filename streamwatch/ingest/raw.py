"""Messages handed to the worker undecoded, and their decoding there, many at a time.

paho's network thread only wraps a sensor message as :class:`Raw` and queues it; the worker
decodes everything it drained in one pass (:func:`decode_raw`). The common shapes (a bare
number; an object with a numeric value and a numeric timestamp in range, or an array of such
objects) are decoded inline;
anything else goes through :func:`streamwatch.ingest.parse.parse`, the reference, so the
readings and rejection reasons are the same either way.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from streamwatch.config import PayloadConfig
from streamwatch.ingest.parse import Reading, parse, sensor_id
from streamwatch.logutil import RateLimited

if TYPE_CHECKING:
    from streamwatch.outputs.metrics import Metrics

Queued = tuple[Sequence[Reading], float, Any]
"""A decoded hand-off item: readings (or a marker), arrival time, acknowledgement token (None:
nothing to acknowledge, e.g. QoS 0)."""
Handed = tuple["Sequence[Reading] | Raw", float, Any]
"""A hand-off item as the link queued it: readings, a marker or a :class:`Raw` message."""

log = logging.getLogger(__name__)
_limited = RateLimited(log)

_TOPICS_MAX = 100_000
"""Topic -> sensor id cache entries kept (cleared past this)."""


class Raw:
    """One message's topic and payload, not decoded yet. Until the worker decodes it, the
    hand-off (its bound, shedding and batching hint) counts it as the readings it likely
    holds: one, or for a JSON array the objects in it."""

    __slots__ = ("payload", "topic", "weight")

    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic = topic
        self.payload = payload
        self.weight = (payload.count(b"{") or 1) if payload.startswith(b"[") else 1

    def __len__(self) -> int:
        return self.weight

    def __repr__(self) -> str:
        return f"Raw({self.topic!r}, {self.payload!r})"


class RawDecoder:
    """Decodes :class:`Raw` messages for one payload configuration (worker thread only)."""

    def __init__(self, cfg: PayloadConfig) -> None:
        self.cfg = cfg
        self._sensors: dict[str, str | None] = {}

    def sensor(self, topic: str) -> str | None:
        """The sensor id of ``topic`` (cached)."""
        sensors = self._sensors
        try:
            return sensors[topic]
        except KeyError:
            if len(sensors) >= _TOPICS_MAX:
                sensors.clear()
            sid = sensors[topic] = sensor_id(topic, self.cfg.sensor_prefix)
            return sid

    def decode(self, raw: Raw, now: float, rejects: list[str]) -> Sequence[Reading]:
        """The readings of one message; its rejection reasons are appended to ``rejects``."""
        cfg = self.cfg
        payload = raw.payload
        sensor = self.sensor(raw.topic)
        if sensor is not None and 0 < len(payload) <= cfg.max_bytes:
            first = payload[0]
            if first == 0x7B or first == 0x5B:  # "{" or "[": an object, or a batch of them
                rs = self._json(sensor, payload, now)
                if rs is not None:
                    return rs
            else:  # perhaps a bare number
                try:
                    v = float(payload)
                except ValueError:
                    pass
                else:
                    if math.isfinite(v):
                        return [Reading(sensor, now, v)]
        out = parse(raw.topic, payload, now, cfg)
        rejects += out.rejects
        return out.readings

    def _json(self, sensor: str, payload: bytes, now: float) -> list[Reading] | None:
        """The readings of ``{"value": <number>, "ts": <seconds>}`` or a batch (array) of such
        objects, all in range; None for parse() to judge anything else (and give reasons)."""
        cfg = self.cfg
        try:
            doc: Any = json.loads(payload.decode("utf-8"))
        except (ValueError, RecursionError):
            return None
        if doc.__class__ is dict:
            objs = [doc]
        elif doc.__class__ is list and 0 < len(doc) <= cfg.max_batch:
            objs = doc
        else:
            return None
        vf, tf = cfg.value_field, cfg.timestamp_field
        lo, hi = now - cfg.max_age_s, now + cfg.max_future_s
        out = []
        for obj in objs:
            if obj.__class__ is not dict:
                return None
            v = obj.get(vf)
            ts = obj.get(tf)
            if (v.__class__ is not float and v.__class__ is not int) or (
                ts.__class__ is not float and ts.__class__ is not int
            ):
                return None
            try:
                value = float(v)
                t = float(ts)
            except OverflowError:
                return None
            if not (math.isfinite(value) and abs(t) < 1e11 and lo <= t <= hi):
                return None
            out.append(Reading(sensor, t, value))
        return out

    def decode_batch(self, items: list[Handed], metrics: Metrics) -> list[Queued]:
        """Decode a drained batch (:func:`decode_raw`); count what was rejected, once per
        reason, and log it at a rate limit."""
        out, rejected, example, errors = decode_raw(items, self)
        if rejected:
            for reason, n in rejected.items():
                metrics.rejected.labels(reason).inc(n)
            assert example is not None
            _limited.log(
                logging.WARNING,
                "rejected",
                "rejected %d item(s), e.g. on %r: %s",
                sum(rejected.values()),
                example[0],
                ", ".join(sorted(set(example[1]))),
            )
        if errors:
            metrics.message_errors.inc(errors)
            _limited.log(
                logging.ERROR,
                "decode_error",
                "error decoding %d message(s) (acknowledged, counted in "
                "streamwatch_message_errors_total)",
                errors,
            )
        return out


def decode_raw(
    items: list[Handed], decoder: RawDecoder
) -> tuple[list[Queued], dict[str, int], tuple[str, list[str]] | None, int]:
    """Decode the :class:`Raw` messages of a drained batch in place of their payloads.

    Returns the items (readings in place of each Raw, tokens kept, order kept), rejections
    by reason, one example of a message with rejections (topic, reasons) for the log, and the
    number of messages whose decoding failed unexpectedly (then handed on with no readings,
    so that they are still acknowledged in turn)."""
    out: list[Queued] = []
    counts: dict[str, int] = {}
    example: tuple[str, list[str]] | None = None
    errors = 0
    decode = decoder.decode
    for item in items:
        raw = item[0]
        if not isinstance(raw, Raw):
            out.append((raw, item[1], item[2]))
            continue
        rejects: list[str] = []
        try:
            readings = decode(raw, item[1], rejects)
        except Exception:
            errors += 1
            readings = ()
        if rejects:
            for reason in rejects:
                counts[reason] = counts.get(reason, 0) + 1
            if example is None:
                example = (raw.topic, rejects)
        out.append((readings, item[1], item[2]))
    return out, counts, example, errors
