"""The payload parser: every accepted shape and every rejection reason; fuzzed for totality."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamwatch.config import PayloadConfig
from streamwatch.ingest import parse
from streamwatch.ingest.parse import Reading

NOW = 1_763_900_000.0
CFG = PayloadConfig()


def p(
    payload: bytes | str, topic: str = "sensors/pump1", cfg: PayloadConfig = CFG
) -> parse.Decoded:
    raw = payload.encode() if isinstance(payload, str) else payload
    return parse.parse(topic, raw, NOW, cfg)


@pytest.mark.parametrize("payload", ["21.5", " 21.5\n", "2.15e1", '"21.5"'.strip('"')])
def test_bare_number_uses_arrival_time(payload: str) -> None:
    assert p(payload).readings == [Reading("pump1", NOW, 21.5)]


def test_json_object_with_epoch_seconds() -> None:
    out = p(json.dumps({"value": 3, "ts": NOW - 10}))
    assert out.readings == [Reading("pump1", NOW - 10, 3.0)] and not out.rejects


def test_epoch_milliseconds_and_iso8601() -> None:
    assert p(json.dumps({"value": 1, "ts": (NOW - 1) * 1000})).readings[0].ts == NOW - 1
    iso = p('{"value": 1, "ts": "2025-11-23T12:13:20Z"}').readings[0].ts
    assert iso == NOW
    naive = p('{"value": 1, "ts": "2025-11-23T12:13:20"}').readings[0].ts
    assert naive == NOW  # no zone means UTC
    offset = p('{"value": 1, "ts": "2025-11-23T13:13:20+01:00"}').readings[0].ts
    assert offset == NOW


def test_missing_timestamp_uses_arrival_time() -> None:
    assert p('{"value": 7}').readings == [Reading("pump1", NOW, 7.0)]


def test_configurable_fields_and_prefix() -> None:
    cfg = PayloadConfig(value_field="v", timestamp_field="time", sensor_prefix="plant/")
    out = parse.parse("plant/a/b", b'{"v": 2, "time": 1763899990}', NOW, cfg)
    assert out.readings == [Reading("a/b", 1763899990.0, 2.0)]


def test_topic_outside_prefix_keeps_whole_topic() -> None:
    assert p("1", topic="other/x").readings[0].sensor == "other/x"


def test_batch_keeps_good_items_and_counts_bad_ones() -> None:
    batch = [
        {"value": 1, "ts": NOW - 3},
        {"value": "x"},
        {"value": None},
        5,
        [1],
        {"value": 2, "ts": NOW - 1},
        {"ts": NOW},
    ]
    out = p(json.dumps(batch))
    assert [r.value for r in out.readings] == [1.0, 2.0]
    assert sorted(out.rejects) == sorted(["non_numeric"] * 4 + ["missing_timestamp"])


def test_batch_items_need_their_own_timestamps() -> None:
    """All at the arrival time, every item but the first used to be a duplicate_timestamp;
    now each is rejected by name (issue 12, item 3). A one-item array keeps arrival time."""
    out = p(json.dumps([{"value": 1}, {"value": 2}, 3]))
    assert out.readings == [] and out.rejects == ["missing_timestamp"] * 3
    assert p(json.dumps([{"value": 1}])).readings == [Reading("pump1", NOW, 1.0)]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe\x00", parse.UNDECODABLE),
        (b"", parse.UNDECODABLE),
        (b"{not json", parse.UNDECODABLE),
        (b"hello", parse.NON_NUMERIC),
        (b"true", parse.NON_NUMERIC),
        (b'{"value": true}', parse.NON_NUMERIC),
        (b'{"value": "abc"}', parse.NON_NUMERIC),
        (b'{"value": {"a": 1}}', parse.NON_NUMERIC),
        (b"nan", parse.NON_FINITE),
        (b"-inf", parse.NON_FINITE),
        (b'{"value": NaN}', parse.NON_FINITE),
        (b'{"value": Infinity}', parse.NON_FINITE),
        (b'{"value": 1e999}', parse.NON_FINITE),
        (b'{"value": ' + b"9" * 400 + b"}", parse.NON_FINITE),
        (b'{"value": 1, "ts": "yesterday"}', parse.BAD_TIMESTAMP),
        (b'{"value": 1, "ts": true}', parse.BAD_TIMESTAMP),
        (b'{"value": 1, "ts": 1000}', parse.STALE),
        (b'{"value": 1, "ts": 100000000000}', parse.STALE),  # ms: 1973
        (b'{"value": 1, "ts": "2999-01-01T00:00:00Z"}', parse.FUTURE),
        (b"[" * 100000 + b"]" * 100000, parse.OVERSIZE),
        (b"[" * 5000 + b"]" * 5000, parse.UNDECODABLE),  # nesting too deep to decode
    ],
)
def test_rejections_are_named(payload: bytes, reason: str) -> None:
    out = p(payload)
    assert out.readings == [] and out.rejects == [reason]


def test_oversize_and_batch_limits_are_configurable() -> None:
    cfg = PayloadConfig(max_bytes=64, max_batch=2)
    assert p(b"1" * 65, cfg=cfg).rejects == [parse.OVERSIZE]
    assert p(b"[1, 2, 3]", cfg=cfg).rejects == [parse.BATCH_TOO_LARGE]


@pytest.mark.parametrize("topic", ["sensors/", "sensors/a\x00b", "sensors/" + "x" * 300])
def test_unusable_topic(topic: str) -> None:
    assert p("1", topic=topic).rejects == [parse.BAD_TOPIC]


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(topic=st.text(max_size=300), payload=st.binary(max_size=2000))
def test_random_bytes_never_raise(topic: str, payload: bytes) -> None:
    out = parse.parse(topic, payload, NOW, CFG)
    assert len(out.readings) + len(out.rejects) >= 1
    assert all(r in parse.REASONS for r in out.rejects)
    assert all(math.isfinite(r.value) and math.isfinite(r.ts) for r in out.readings)


@settings(max_examples=300, deadline=None)
@given(doc=json_values)
def test_random_json_never_raises(doc: object) -> None:
    payload = json.dumps(doc, allow_nan=True).encode()
    out = parse.parse("sensors/x", payload, NOW, CFG)
    assert all(r in parse.REASONS for r in out.rejects)
    assert all(math.isfinite(r.value) for r in out.readings)


@settings(max_examples=200, deadline=None)
@given(
    value=st.floats(allow_nan=True, allow_infinity=True),
    ts=st.one_of(st.floats(allow_nan=True), st.integers(), st.text(max_size=40)),
)
def test_random_fields_never_raise(value: float, ts: object) -> None:
    out = parse.parse("sensors/x", json.dumps({"value": value, "ts": ts}).encode(), NOW, CFG)
    assert len(out.readings) + len(out.rejects) == 1
