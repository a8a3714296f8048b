"""Decode one MQTT message into readings: a pure function, safe on any input.

Accepted payloads (UTF-8):

- a bare number: ``21.5``;
- a JSON object: ``{"value": 21.5, "ts": 1700000000.0}`` (field names configurable);
- a JSON array of such objects: a batch.

Timestamps may be epoch seconds, epoch milliseconds (any number above 1e11) or ISO 8601
strings (no zone means UTC). Without one, the arrival time is used. Numeric strings are
accepted as values, as many gateways send them.

Nothing here raises: each bad item becomes a rejection reason, counted by the caller.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from streamwatch.config import PayloadConfig

# Rejection reasons. These are metric label values: keep them stable.
UNDECODABLE: Final = "undecodable"
OVERSIZE: Final = "oversize"
NON_NUMERIC: Final = "non_numeric"
NON_FINITE: Final = "non_finite"
BAD_TIMESTAMP: Final = "bad_timestamp"
STALE: Final = "stale_timestamp"
FUTURE: Final = "future_timestamp"
BAD_TOPIC: Final = "bad_topic"
BATCH_TOO_LARGE: Final = "batch_too_large"
OUT_OF_ORDER: Final = "out_of_order"
DUPLICATE: Final = "duplicate_timestamp"
MISSING_TIMESTAMP: Final = "missing_timestamp"
SHED: Final = "shed_overload"

REASONS: Final = (
    UNDECODABLE,
    OVERSIZE,
    NON_NUMERIC,
    NON_FINITE,
    BAD_TIMESTAMP,
    STALE,
    FUTURE,
    BAD_TOPIC,
    BATCH_TOO_LARGE,
    OUT_OF_ORDER,
    DUPLICATE,
    MISSING_TIMESTAMP,
    SHED,
)

_MS_CUTOFF = 1e11  # 1e11 s is the year 5138; 1e11 ms is 1973.
_MAX_SENSOR_LEN = 256


@dataclass(frozen=True, slots=True)
class Reading:
    """One sensor value at one time (epoch seconds)."""

    sensor: str
    ts: float
    value: float


class Silence(tuple[Reading, ...]):
    """A marker handed to the worker in place of a message's readings: these sensors went
    silent (a Sparkplug NDEATH or DDEATH). It holds no readings, so the queue counts it as
    none; the worker restarts the sensors' windows."""

    sensors: tuple[str, ...]
    ts: float

    def __new__(cls, sensors: tuple[str, ...] | list[str], ts: float) -> Silence:
        """A marker for ``sensors``, silent since ``ts`` (epoch seconds)."""
        obj = super().__new__(cls, ())
        obj.sensors = tuple(sensors)
        obj.ts = ts
        return obj


@dataclass(slots=True)
class Decoded:
    """The result of decoding one message: good readings, and one reason per rejected item."""

    readings: list[Reading] = field(default_factory=list)
    rejects: list[str] = field(default_factory=list)


def sensor_id(topic: str, prefix: str) -> str | None:
    """The sensor id for a topic: the topic less ``prefix``; None if nothing usable is left."""
    sid = topic[len(prefix) :] if prefix and topic.startswith(prefix) else topic
    if not sid or len(sid) > _MAX_SENSOR_LEN or not sid.isprintable():
        return None
    return sid


def _number(v: Any) -> float | str:
    """A finite float, or a rejection reason."""
    if isinstance(v, bool) or v is None:
        return NON_NUMERIC
    if isinstance(v, int | float):
        try:
            f = float(v)
        except OverflowError:
            return NON_FINITE
    elif isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            return NON_NUMERIC
    else:
        return NON_NUMERIC
    return f if math.isfinite(f) else NON_FINITE


def _timestamp(v: Any, now: float, cfg: PayloadConfig) -> float | str:
    """Epoch seconds from a timestamp field, or a rejection reason."""
    if v is None:
        return now
    ts: float
    if isinstance(v, str) and not _looks_numeric(v):
        try:
            dt = datetime.fromisoformat(v.strip())
        except ValueError:
            return BAD_TIMESTAMP
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        try:
            ts = dt.timestamp()
        except (OverflowError, OSError, ValueError):
            return BAD_TIMESTAMP
    else:
        n = _number(v)
        if isinstance(n, str):
            return BAD_TIMESTAMP
        ts = n / 1000.0 if abs(n) >= _MS_CUTOFF else n
    if ts > now + cfg.max_future_s:
        return FUTURE
    if ts < now - cfg.max_age_s:
        return STALE
    return ts


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _item(
    sensor: str, obj: Any, now: float, cfg: PayloadConfig, out: Decoded, batch: bool = False
) -> None:
    """Decode one reading. In a batch (an array of several) each needs its own timestamp:
    the arrival time is one instant, and readings sharing it would all be duplicates."""
    if not isinstance(obj, dict):
        value = _number(obj)
        ts: float | str = MISSING_TIMESTAMP if batch else now
    else:
        if cfg.value_field not in obj:
            out.rejects.append(NON_NUMERIC)
            return
        value = _number(obj[cfg.value_field])
        stamp = obj.get(cfg.timestamp_field)
        ts = MISSING_TIMESTAMP if batch and stamp is None else _timestamp(stamp, now, cfg)
    if isinstance(value, str):
        out.rejects.append(value)
    elif isinstance(ts, str):
        out.rejects.append(ts)
    else:
        out.readings.append(Reading(sensor, ts, value))


def parse(topic: str, payload: bytes, now: float, cfg: PayloadConfig) -> Decoded:
    """Decode one message. Pure and total: any input gives readings and/or rejections."""
    out = Decoded()
    sensor = sensor_id(topic, cfg.sensor_prefix)
    if sensor is None:
        out.rejects.append(BAD_TOPIC)
        return out
    if len(payload) > cfg.max_bytes:
        out.rejects.append(OVERSIZE)
        return out
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        out.rejects.append(UNDECODABLE)
        return out
    stripped = text.strip()
    if not stripped:
        out.rejects.append(UNDECODABLE)
        return out
    if stripped[0] not in "[{":
        n = _number(stripped)
        if isinstance(n, str):
            # Could still be a JSON string or literal like "true"; either way not a number.
            out.rejects.append(n)
        else:
            out.readings.append(Reading(sensor, now, n))
        return out
    try:
        obj = json.loads(stripped)
    except (ValueError, RecursionError):
        out.rejects.append(UNDECODABLE)
        return out
    if isinstance(obj, list):
        if len(obj) > cfg.max_batch:
            out.rejects.append(BATCH_TOO_LARGE)
            return out
        batch = len(obj) > 1
        for item in obj:
            _item(sensor, item, now, cfg, out, batch)
    else:
        _item(sensor, obj, now, cfg, out)
    return out
