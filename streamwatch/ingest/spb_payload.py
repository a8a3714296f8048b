"""The Sparkplug B payload: a small protobuf (proto2) codec for ``sparkplug_b.proto``.

Only the protobuf wire format is needed (varints, 32- and 64-bit fixed fields,
length-delimited fields), so this codec is written by hand instead of depending on a
protobuf runtime: ``pysparkplug`` pins paho-mqtt 1.x (streamwatch uses 2.x), and a
``protobuf`` release pinned here would have to agree with TensorFlow's own protobuf bound.

Fields decoded (numbers from the Eclipse Tahu ``sparkplug_b.proto``)::

    Payload: timestamp=1 (uint64), metrics=2 (Metric), seq=3 (uint64), uuid=4, body=5
    Metric:  name=1, alias=2, timestamp=3, datatype=4, is_historical=5, is_transient=6,
             is_null=7, metadata=8, properties=9, int_value=10 (uint32),
             long_value=11 (uint64), float_value=12, double_value=13, boolean_value=14,
             string_value=15, bytes_value=16, dataset=17, template=18, extension=19

Unknown fields are skipped, as protobuf does. Anything malformed (a truncated varint or
field, a wire type that does not fit the field, a name that is not UTF-8, groups) raises
:class:`PayloadError`, never anything else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

# Sparkplug B datatypes (sparkplug_b.proto ``DataType``).
INT8: Final = 1
INT16: Final = 2
INT32: Final = 3
INT64: Final = 4
UINT8: Final = 5
UINT16: Final = 6
UINT32: Final = 7
UINT64: Final = 8
FLOAT: Final = 9
DOUBLE: Final = 10
BOOLEAN: Final = 11
STRING: Final = 12
DATETIME: Final = 13
TEXT: Final = 14

NUMERIC_TYPES: Final = frozenset(range(INT8, BOOLEAN + 1))
"""Datatypes that become readings: the integers, Float, Double and Boolean (as 0/1)."""
_SIGNED_BITS: Final = {INT8: 8, INT16: 16, INT32: 32, INT64: 64}

# Which value field carries each scalar datatype.
F_INT: Final = 10
F_LONG: Final = 11
F_FLOAT: Final = 12
F_DOUBLE: Final = 13
F_BOOL: Final = 14
F_STRING: Final = 15
F_BYTES: Final = 16
VALUE_FIELD: Final = {
    INT8: F_INT,
    INT16: F_INT,
    INT32: F_INT,
    UINT8: F_INT,
    UINT16: F_INT,
    UINT32: F_INT,
    INT64: F_LONG,
    UINT64: F_LONG,
    DATETIME: F_LONG,
    FLOAT: F_FLOAT,
    DOUBLE: F_DOUBLE,
    BOOLEAN: F_BOOL,
    STRING: F_STRING,
    TEXT: F_STRING,
}

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_MAX_DEPTH_BYTES: Final = 1 << 24


class PayloadError(ValueError):
    """The bytes are not a well-formed Sparkplug B payload."""


@dataclass(slots=True)
class Metric:
    """One metric of a payload. ``value_field`` is the field number the value came in
    (0 when there was none); ``value`` is its raw decoded value."""

    name: str | None = None
    alias: int | None = None
    timestamp: int | None = None
    datatype: int | None = None
    is_null: bool = False
    is_historical: bool = False
    value_field: int = 0
    value: int | float | bool | str | bytes | None = None


@dataclass(slots=True)
class Payload:
    """A decoded payload (``timestamp`` in epoch milliseconds)."""

    timestamp: int | None = None
    seq: int | None = None
    metrics: list[Metric] = field(default_factory=list)


def numeric_value(m: Metric, datatype: int) -> float | None:
    """The metric's value as a float for a numeric or Boolean ``datatype``; None if its
    value field does not fit the datatype (e.g. a string sent for a Double)."""
    want = VALUE_FIELD.get(datatype)
    if want is None or m.value_field != want or datatype not in NUMERIC_TYPES:
        return None
    v = m.value
    if datatype == BOOLEAN:
        return 1.0 if v else 0.0
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    if isinstance(v, int):
        bits = _SIGNED_BITS.get(datatype)
        if bits is not None:  # two's complement in an unsigned field (Sparkplug 3.0, 6.4.16)
            v &= (1 << bits) - 1
            if v >= 1 << (bits - 1):
                v -= 1 << bits
    return float(v)


# -- decoding ---------------------------------------------------------------------------------


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if i >= n:
            raise PayloadError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, i
        shift += 7
        if shift >= 70:
            raise PayloadError("varint too long")


def _fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)`` of every field; fixed fields as raw bytes."""
    out: list[tuple[int, int, int | bytes]] = []
    i = 0
    n = len(buf)
    while i < n:
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise PayloadError("field number 0")
        value: int | bytes
        if wt == _VARINT:
            value, i = _varint(buf, i)
        elif wt == _I64:
            if i + 8 > n:
                raise PayloadError("truncated 64-bit field")
            value, i = buf[i : i + 8], i + 8
        elif wt == _I32:
            if i + 4 > n:
                raise PayloadError("truncated 32-bit field")
            value, i = buf[i : i + 4], i + 4
        elif wt == _LEN:
            size, i = _varint(buf, i)
            if size > n - i:
                raise PayloadError("truncated length-delimited field")
            value, i = buf[i : i + size], i + size
        else:
            raise PayloadError(f"unsupported wire type {wt}")
        out.append((num, wt, value))
    return out


def _need(wt: int, want: int, what: str) -> None:
    if wt != want:
        raise PayloadError(f"{what}: wire type {wt}, expected {want}")


def _text(v: int | bytes, what: str) -> str:
    assert isinstance(v, bytes)
    try:
        return v.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError(f"{what} is not UTF-8") from None


def _metric(buf: bytes) -> Metric:
    m = Metric()
    for num, wt, v in _fields(buf):
        if num == 1:
            _need(wt, _LEN, "name")
            m.name = _text(v, "name")
        elif num in (2, 3, 4, 5, 7):
            _need(wt, _VARINT, f"field {num}")
            assert isinstance(v, int)
            if num == 2:
                m.alias = v
            elif num == 3:
                m.timestamp = v
            elif num == 4:
                m.datatype = v & 0xFFFFFFFF
            elif num == 5:
                m.is_historical = bool(v)
            else:
                m.is_null = bool(v)
        elif num in (F_INT, F_LONG, F_BOOL):
            _need(wt, _VARINT, f"field {num}")
            assert isinstance(v, int)
            m.value_field = num
            m.value = bool(v) if num == F_BOOL else (v & 0xFFFFFFFF if num == F_INT else v)
        elif num == F_FLOAT:
            _need(wt, _I32, "float_value")
            assert isinstance(v, bytes)
            m.value_field, m.value = num, struct.unpack("<f", v)[0]
        elif num == F_DOUBLE:
            _need(wt, _I64, "double_value")
            assert isinstance(v, bytes)
            m.value_field, m.value = num, struct.unpack("<d", v)[0]
        elif num == F_STRING:
            _need(wt, _LEN, "string_value")
            m.value_field, m.value = num, _text(v, "string_value")
        elif num >= F_BYTES and num <= 19:
            _need(wt, _LEN, f"field {num}")
            m.value_field, m.value = num, bytes(v) if isinstance(v, bytes) else None
        # 6 (is_transient), 8 (metadata), 9 (properties) and unknown fields: skipped
    return m


def decode(buf: bytes) -> Payload:
    """Decode a Sparkplug B payload; :class:`PayloadError` if it is malformed."""
    if len(buf) > _MAX_DEPTH_BYTES:
        raise PayloadError("payload too large")
    p = Payload()
    for num, wt, v in _fields(bytes(buf)):
        if num == 1:
            _need(wt, _VARINT, "timestamp")
            assert isinstance(v, int)
            p.timestamp = v
        elif num == 2:
            _need(wt, _LEN, "metric")
            assert isinstance(v, bytes)
            p.metrics.append(_metric(v))
        elif num == 3:
            _need(wt, _VARINT, "seq")
            assert isinstance(v, int)
            p.seq = v
    return p


# -- encoding (publishers: the simulator, rebirth requests, tests) ------------------------------


def _put_varint(out: bytearray, v: int) -> None:
    v &= 0xFFFFFFFFFFFFFFFF
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def _put_key(out: bytearray, num: int, wt: int) -> None:
    _put_varint(out, (num << 3) | wt)


def _put_bytes(out: bytearray, num: int, data: bytes) -> None:
    _put_key(out, num, _LEN)
    _put_varint(out, len(data))
    out += data


def encode_metric(m: Metric) -> bytes:
    """The wire bytes of one metric. The value goes in the field its datatype names, or
    without a datatype the field its Python type suggests (``value_field`` overrides both,
    e.g. a Float sent by alias, or a deliberately wrong payload in a test)."""
    out = bytearray()
    if m.name is not None:
        _put_bytes(out, 1, m.name.encode("utf-8"))
    for num, n in ((2, m.alias), (3, m.timestamp), (4, m.datatype)):
        if n is not None:
            _put_key(out, num, _VARINT)
            _put_varint(out, int(n))
    if m.is_historical:
        _put_key(out, 5, _VARINT)
        _put_varint(out, 1)
    if m.is_null:
        _put_key(out, 7, _VARINT)
        _put_varint(out, 1)
        return bytes(out)
    v = m.value
    f = m.value_field or VALUE_FIELD.get(m.datatype or 0, 0) or _field_of(v)
    if v is None or not f:
        return bytes(out)
    if f in (F_INT, F_LONG, F_BOOL):
        _put_key(out, f, _VARINT)
        _put_varint(out, int(v) & (0xFFFFFFFF if f == F_INT else 0xFFFFFFFFFFFFFFFF))
    elif f == F_FLOAT:
        _put_key(out, f, _I32)
        out += struct.pack("<f", float(v))
    elif f == F_DOUBLE:
        _put_key(out, f, _I64)
        out += struct.pack("<d", float(v))
    elif f == F_STRING:
        _put_bytes(out, f, str(v).encode("utf-8"))
    else:
        _put_bytes(out, f, v if isinstance(v, bytes) else str(v).encode("utf-8"))
    return bytes(out)


def _field_of(v: object) -> int:
    """The value field for a metric sent without a datatype (data messages by alias)."""
    if isinstance(v, bool):
        return F_BOOL
    if isinstance(v, int):
        return F_LONG
    if isinstance(v, float):
        return F_DOUBLE
    if isinstance(v, str):
        return F_STRING
    return F_BYTES if isinstance(v, bytes) else 0


def encode(p: Payload) -> bytes:
    """The wire bytes of a payload."""
    out = bytearray()
    if p.timestamp is not None:
        _put_key(out, 1, _VARINT)
        _put_varint(out, p.timestamp)
    for m in p.metrics:
        _put_bytes(out, 2, encode_metric(m))
    if p.seq is not None:
        _put_key(out, 3, _VARINT)
        _put_varint(out, p.seq)
    return bytes(out)
