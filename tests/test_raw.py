"""The worker's bulk decoding (:mod:`streamwatch.ingest.raw`) gives what the reference parser
(:func:`streamwatch.ingest.parse.parse`) gives, message for message: the same readings and the
same rejection reasons, whichever path (inline fast path or the parser) a payload takes."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamwatch.config import PayloadConfig
from streamwatch.ingest import parse
from streamwatch.ingest.raw import Handed, Raw, RawDecoder, decode_raw

NOW = time.time()
CFG = PayloadConfig()


def same(topic: str, payload: bytes, cfg: PayloadConfig = CFG) -> None:
    want = parse.parse(topic, payload, NOW, cfg)
    rejects: list[str] = []
    got = RawDecoder(cfg).decode(Raw(topic, payload), NOW, rejects)
    assert rejects == want.rejects
    assert [(r.sensor, r.ts, r.value) for r in got] == [
        (r.sensor, pytest.approx(r.ts, rel=1e-12), pytest.approx(r.value, rel=1e-12))
        for r in want.readings
    ]


EDGE_PAYLOADS = [
    b"21.5",
    b" 21.5\n",
    b"-0",
    b"1_000",
    b"nan",
    b"inf",
    b"1e999",
    b"",
    b"   ",
    b"abc",
    b"\xff\xfe",
    b'"21.5"',
    b"true",
    b'{"value": 21.5, "ts": %.6f}' % NOW,
    b'{"value": 21.5, "ts": %d}' % int(NOW * 1000),  # milliseconds
    b'{"value": 21.5, "ts": %.6f}' % (NOW + 1e6),  # future
    b'{"value": 21.5, "ts": %.6f}' % (NOW - 1e9),  # stale
    b'{"value": 21.5}',
    b'{"value": "21.5", "ts": %.6f}' % NOW,
    b'{"value": true, "ts": %.6f}' % NOW,
    b'{"value": NaN, "ts": %.6f}' % NOW,
    b'{"value": 1e400, "ts": %.6f}' % NOW,
    b'{"value": 10000000000000000000000000000000000, "ts": %.6f}' % NOW,
    b'{"value": 21.5, "ts": "2024-01-01T00:00:00Z"}',
    b'{"value": 21.5, "ts": null}',
    b'{"value": 21.5, "ts": true}',
    b'{"v": 21.5}',
    b'{"value": 1, "value": 2, "ts": %.6f}' % NOW,
    b'{"value": 21.5, "ts": %.6f' % NOW,
    b'[{"value": 1.0, "ts": %.6f}, {"value": 2.0, "ts": %.6f}]' % (NOW - 1, NOW),
    b"[]",
    b"{}",
    b'{"value": "\\ud800"}',
    b"1" * 70_000,
]
"""Payloads at the edges of what the parser takes (some stamped with the time of the run)."""


@pytest.mark.parametrize(
    "payload", EDGE_PAYLOADS, ids=[f"edge{i}" for i in range(len(EDGE_PAYLOADS))]
)  # ids without the run's time: the same in every pytest-xdist worker
def test_edge_payloads_decode_as_the_parser_does(payload: bytes) -> None:
    same("sensors/a", payload)


@pytest.mark.parametrize("topic", ["sensors/", "", "sensors/" + "x" * 300, "plain", "sensors/\x00"])
def test_topics_decode_as_the_parser_does(topic: str) -> None:
    same(topic, b"1.5")
    same(topic, b'{"value": 1.5, "ts": %.6f}' % NOW)


def test_renamed_fields_and_tight_limits() -> None:
    cfg = PayloadConfig(value_field="v", timestamp_field="t", max_bytes=30, max_age_s=10)
    for p in (
        b'{"v": 2.5, "t": %.3f}' % NOW,
        b'{"v": 2.5, "t": %.3f}' % (NOW - 20),
        b'{"value": 2.5, "ts": %.3f}' % NOW,
        b'{"v": 2.5, "t": %.3f, "pad": "xxxxxxxxxxxx"}' % NOW,
    ):
        same("sensors/b", p, cfg)


_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(min_value=NOW - 40 * 86400, max_value=NOW + 3600),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    value=_numbers,
    ts=_numbers,
    extra=st.dictionaries(st.text(max_size=4), _numbers, max_size=2),
    bare=st.booleans(),
)
def test_any_object_or_number_decodes_as_the_parser_does(
    value: object, ts: object, extra: dict[str, object], bare: bool
) -> None:
    if bare:
        payload = str(value).encode()
    else:
        payload = json.dumps({**extra, "value": value, "ts": ts}, allow_nan=True).encode()
    same("sensors/c", payload)


def test_a_batch_keeps_order_tokens_and_markers() -> None:
    marker = parse.Silence(["x"], NOW)
    items: list[Handed] = [
        (Raw("sensors/a", b"1.0"), NOW, (1, 1, 1)),
        (marker, NOW, None),
        (Raw("sensors/b", b"oops"), NOW, (1, 2, 1)),
        ([parse.Reading("c", NOW, 3.0)], NOW, (1, 3, 1)),
    ]
    out, rejected, example, errors = decode_raw(items, RawDecoder(CFG))
    assert [tok for *_, tok in out] == [(1, 1, 1), None, (1, 2, 1), (1, 3, 1)]
    assert [len(r) for r, *_ in out] == [1, 0, 0, 1]
    assert out[1][0] is marker
    assert rejected == {parse.NON_NUMERIC: 1}
    assert example == ("sensors/b", [parse.NON_NUMERIC])
    assert errors == 0


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    batch=st.lists(
        st.fixed_dictionaries({"value": _numbers}, optional={"ts": _numbers}), max_size=6
    ),
    max_batch=st.sampled_from([3, 10_000]),
)
def test_any_batch_decodes_as_the_parser_does(
    batch: list[dict[str, object]], max_batch: int
) -> None:
    payload = json.dumps(batch, allow_nan=True).encode()
    same("sensors/d", payload, PayloadConfig(max_batch=max_batch))


def test_an_all_good_batch_takes_the_inline_path() -> None:
    payload = json.dumps([{"value": i / 3, "ts": NOW - 10 + i} for i in range(50)]).encode()
    got = RawDecoder(CFG)._json("d", payload, NOW)
    assert got is not None and len(got) == 50
    same("sensors/d", payload)


def test_an_undecoded_message_counts_as_the_readings_it_likely_holds() -> None:
    assert len(Raw("sensors/a", b"21.5")) == 1
    assert len(Raw("sensors/a", b'{"value": 1}')) == 1
    assert len(Raw("sensors/a", b'[{"value": 1, "ts": 1}, {"value": 2, "ts": 2}]')) == 2
    assert len(Raw("sensors/a", b"[1, 2, 3]")) == 1
