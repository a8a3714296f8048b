"""Fuzzing the whole ingest path, not just the parser: hostile MQTT messages go through the real
network-thread callback (``MQTTLink._on_message``), the bounded hand-off and the engine.

Invariants, for any input: nothing raises out of the callback or the engine, every message is
acknowledged once, every rejected item is counted under a known reason, every accepted reading
is either counted by the engine or rejected by it (out of order, duplicate), and a flood of bad
messages writes a bounded number of log lines.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from streamwatch.config import Config, from_mapping
from streamwatch.ingest import parse
from streamwatch.ingest.mqtt import MQTTLink
from streamwatch.ingest.parse import Reading
from streamwatch.ingest.raw import RawDecoder
from streamwatch.logutil import RateLimited
from streamwatch.outputs.metrics import Metrics
from streamwatch.pipeline.engine import Engine
from streamwatch.pipeline.handoff import Handoff
from tests.helpers import fresh_model

NOW = time.time()
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples on every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _cfg(**over: Any) -> Config:
    data: dict[str, Any] = {
        "detector": {"type": "gaussian"},
        "learning": {"warmup": 10},
        "threshold": {"false_alarm_rate": 1e-3},
        "windows": {"max_sensors": 50},
        "metrics": {"max_sensor_labels": 20},
        "engine": {"queue_readings": 100000},
    }
    data.update(over)
    return from_mapping(data)


class _AckRecorder:
    """Stands in for paho's client in the callback: records acknowledgements."""

    def __init__(self) -> None:
        self.acks: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append(mid)

    def ack_many(self, mids: list[int]) -> None:
        self.acks.extend(mids)


@dataclass
class Pipeline:
    """The daemon's ingest path without sockets: callback -> hand-off -> engine."""

    cfg: Config = field(default_factory=_cfg)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.registry, self.cfg.metrics.max_sensor_labels)
        self.handoff = Handoff(self.cfg.engine.queue_readings)
        self.engine = Engine(self.cfg, fresh_model(self.cfg), self.metrics, lambda ev: None)
        self.link = MQTTLink(self.cfg.mqtt, self.cfg.payload, self.metrics, self.handoff.put)
        self.client = _AckRecorder()
        self.link.client = self.client  # type: ignore[assignment]
        self.decoder = RawDecoder(self.cfg.payload)
        self.mid = 0
        self.handed = 0

    def message(self, topic: bytes, payload: bytes) -> None:
        self.mid += 1
        msg = mqtt.MQTTMessage(self.mid, topic)
        msg.payload = payload
        msg.qos = 1
        self.link._on_message(self.client, None, msg)  # type: ignore[arg-type]

    def drain(self) -> None:
        """What the daemon's worker does: decode, score, then acknowledge what was scored."""
        items = self.decoder.decode_batch(self.handoff.drain(0), self.metrics)
        self.handed += sum(len(readings) for readings, *_ in items)
        self.engine.process(items)
        self.link.ack([tok for *_, tok in items if tok is not None])

    def rejected(self) -> dict[str, float]:
        out = {}
        for reason in parse.REASONS:
            v = self.registry.get_sample_value("streamwatch_rejected_total", {"reason": reason})
            out[reason] = v or 0.0
        return out

    def readings(self) -> float:
        labelled = sum(s.readings for _, s in self.metrics.per_sensor())
        return float(labelled + self.metrics.other.readings)


# -- strategies -------------------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=25,
)

_timestamps = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=NOW - 30 * 86400, max_value=NOW + 3600),  # around now, both sides
    st.integers(min_value=-(10**20), max_value=10**20),
    st.sampled_from(
        [
            "0001-01-01T00:00:00",
            "9999-12-31T23:59:59Z",
            "1970-01-01T00:00:00+14:00",
            "2025-13-45T99:99:99",
            "now",
            "",
            str(NOW),
            str(int(NOW * 1000)),
        ]
    ),
    st.text(max_size=30),
    st.booleans(),
)

_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e6, max_value=1e6),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from(["NaN", "inf", "-Infinity", "1e999", "21.5", " 7 ", "0x10", "1_000", "true"]),
    st.booleans(),
    st.none(),
    st.text(max_size=10),
    _json,
)

_objects = st.fixed_dictionaries({"value": _values}, optional={"ts": _timestamps, "x": _json})


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"value": ' * depth + b"1" + b"}" * depth


_payloads = st.one_of(
    st.binary(max_size=300),  # random bytes, mostly not UTF-8
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    _objects.map(_dump),
    st.lists(_objects, max_size=40).map(_dump),
    _json.map(_dump),
    _values.map(lambda v: str(v).encode()),
    st.builds(_nested, st.integers(1, 40000), st.sampled_from(["list", "dict"])),
    st.integers(60000, 70000).map(lambda n: b"1" * n),  # around max_bytes (65536)
    st.just(_dump([{"value": 1.0, "ts": NOW - 1e4 + i} for i in range(10001)])),  # > max_batch
    st.binary(min_size=1, max_size=40).map(lambda b: b"\xef\xbb\xbf" + b),  # a BOM, then junk
)

_topics = st.one_of(
    st.text(max_size=40).map(lambda s: ("sensors/" + s).encode("utf-8", "surrogatepass")),
    st.sampled_from(["sensors/a", "sensors/b", "sensors/line 1/pump#3", "sensors/ü/温度"]).map(
        str.encode
    ),
    st.binary(max_size=40),  # not even UTF-8 (a broker should refuse it; we must not crash)
    st.just(b"sensors/" + b"x" * 300),
    st.just(b"sensors/\x00\x01\x7f"),
    st.just(b""),
)


# -- the pipeline -----------------------------------------------------------------------------


@FUZZ
@given(messages=st.lists(st.tuples(_topics, _payloads), min_size=1, max_size=12))
def test_hostile_messages_through_callback_handoff_and_engine(
    messages: list[tuple[bytes, bytes]],
) -> None:
    pipe = Pipeline()
    with _CapturedErrors() as errs:
        for topic, payload in messages:
            pipe.message(topic, payload)
        pipe.drain()
    assert errs.records == [], errs.records
    # Acknowledged once each, whatever was in them.
    assert pipe.client.acks == list(range(1, len(messages) + 1))
    rejected = pipe.rejected()
    engine_rejects = rejected[parse.OUT_OF_ORDER] + rejected[parse.DUPLICATE]
    # Every reading handed off is counted once: accepted, or rejected by the engine.
    assert pipe.readings() + engine_rejects == pipe.handed
    # Every message produced at least one reading or one counted rejection (bar an empty
    # JSON batch, which holds nothing to count).
    assert pipe.handed + sum(rejected.values()) - engine_rejects >= sum(
        not _empty_batch(p) for _, p in messages
    )


def _empty_batch(payload: bytes) -> bool:
    try:
        return json.loads(payload) == []
    except (ValueError, RecursionError):
        return False


class _CapturedErrors(logging.Handler):
    """Collects ERROR records from every logger for the duration of a ``with``."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")

    def __enter__(self) -> _CapturedErrors:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)


_sensor_names = st.one_of(st.sampled_from(["a", "b", "c"]), st.text(min_size=1, max_size=12))
_extreme = st.one_of(
    st.floats(min_value=-5.0, max_value=5.0),
    st.floats(allow_nan=False, allow_infinity=False),  # up to ±1.8e308
    st.sampled_from([0.0, -0.0, 5e-324, 1e308, -1e308, 1e-300]),
)


@FUZZ
@given(
    batches=st.lists(
        st.lists(
            st.tuples(_sensor_names, st.floats(-1e6, 1e6), _extreme),
            max_size=80,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_engine_takes_any_finite_readings(batches: list[list[tuple[str, float, float]]]) -> None:
    """The engine behind the parser: any sensor names, timestamps in any order, values from
    tiny to ±1.8e308. It never raises, counts everything, and keeps its bounds."""
    pipe = Pipeline()
    given_n = 0
    with _CapturedErrors() as errs:
        for batch in batches:
            items = [([Reading(s, NOW + dt, v)], NOW) for s, dt, v in batch]
            given_n += len(items)
            pipe.engine.process(items, now=NOW)
    assert errs.records == [], errs.records
    rejected = pipe.rejected()
    assert pipe.readings() + rejected[parse.OUT_OF_ORDER] + rejected[parse.DUPLICATE] == given_n
    assert len(pipe.engine.windows) <= pipe.cfg.windows.max_sensors
    assert len(pipe.metrics.per_sensor()) <= pipe.cfg.metrics.max_sensor_labels
    for _, sw in pipe.engine.windows.sensors.items():
        thr = sw.state.threshold
        assert thr is None or not math.isnan(thr)


def test_warm_up_on_overflowing_values_does_not_poison_the_sensor() -> None:
    """Readings near ±1.8e308 are finite, so the parser passes them; their mean and spread
    overflow. The sensor must not be left with NaN parameters, warming up forever."""
    pipe = Pipeline()
    huge = [1.7e308, -1.7e308] * 10
    normal = list(np.random.default_rng(3).normal(20.0, 0.5, 50))
    items = [([Reading("odd", NOW - 1000 + i, v)], NOW) for i, v in enumerate(huge + normal)]
    with _CapturedErrors() as errs:
        pipe.engine.process(items, now=NOW)
    assert errs.records == []
    st_ = pipe.engine.windows.sensors["odd"].state
    assert st_.threshold is not None and math.isfinite(st_.threshold), "never warmed up"


# -- logging stays bounded ---------------------------------------------------------------------


def test_a_flood_of_bad_messages_logs_a_bounded_number_of_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipe = Pipeline()
    caplog.set_level(logging.DEBUG, logger="streamwatch")
    rng = np.random.default_rng(11)
    bad = [
        b"\xff\xfe",
        b"{nope",
        b"NaN",
        b'{"value": true}',
        b"x" * 70000,
        b'{"value": 1, "ts": 1}',
    ]
    n = 10_000
    for i in range(n):
        pipe.message(f"sensors/flood/{i % 97}".encode(), bad[int(rng.integers(len(bad)))])
    pipe.drain()
    rejected = pipe.rejected()
    assert sum(rejected.values()) == n
    assert rejected[parse.UNDECODABLE] > 0 and rejected[parse.OVERSIZE] > 0
    lines = [r for r in caplog.records if r.name.startswith("streamwatch")]
    # RateLimited: 5 per key per minute (plus one "suppressed" summary when a minute turns).
    assert len(lines) <= 12, len(lines)
    assert pipe.readings() == 0


def test_a_flood_of_unusable_values_logs_a_bounded_number_of_warm_up_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Readings that pass the parser but defeat warm-up (moments that overflow), from 200
    sensors: the engine keeps collecting, and says so a bounded number of times."""
    pipe = Pipeline(_cfg(windows={"max_sensors": 1000}))
    caplog.set_level(logging.DEBUG, logger="streamwatch")
    items = [
        ([Reading(f"s{k}", NOW - 1000 + i, 1.7e308 * (-1) ** i)], NOW)
        for i in range(50)
        for k in range(200)
    ]
    pipe.engine.process(items, now=NOW)
    assert pipe.readings() == 10_000
    assert pipe.engine.warming == 200
    lines = [r for r in caplog.records if r.name.startswith("streamwatch")]
    assert 1 <= len(lines) <= 12, len(lines)


def test_rate_limited_reports_what_it_suppressed(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    import streamwatch.logutil as logutil

    clock = [0.0]
    # A clock for logutil alone (patching time.monotonic itself would touch every thread).
    monkeypatch.setattr(logutil, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    limited = RateLimited(logging.getLogger("streamwatch.test"), per_interval=3, interval_s=60)
    caplog.set_level(logging.INFO, logger="streamwatch.test")
    for _ in range(1000):
        limited.log(logging.WARNING, "k", "bad %s", "x")
    clock[0] = 61.0
    limited.log(logging.WARNING, "k", "bad %s", "y")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["bad x"] * 3 + ["997 more 'k' messages suppressed", "bad y"]


def test_non_utf8_topic_does_not_escape_the_callback() -> None:
    """MQTT requires UTF-8 topics and Mosquitto enforces it, but the callback must not let an
    exception out (it would kill paho's network thread) if a broker does not."""
    pipe = Pipeline()
    with _CapturedErrors():
        pipe.message(b"sensors/\xff\xfe", b"1.0")
        pipe.drain()  # acknowledged in turn by the worker
    assert pipe.client.acks == [1]
    assert pipe.rejected()[parse.BAD_TOPIC] + pipe.rejected()[parse.UNDECODABLE] == 1


def test_a_message_that_breaks_the_handler_is_counted_and_acknowledged_in_turn() -> None:
    """(issue 12, item 8) It would break again on redelivery: acknowledged in its turn,
    counted, and logged at a rate limit rather than once per message."""
    pipe = Pipeline()

    def broken(*_: object) -> int:
        raise RuntimeError("boom")

    real = pipe.link.hand_off
    pipe.link.hand_off = broken
    with _CapturedErrors() as errs:
        for _ in range(20):
            pipe.message(b"sensors/a", b"1.0")
    pipe.link.hand_off = real
    pipe.drain()
    assert pipe.client.acks == list(range(1, 21))
    assert pipe.registry.get_sample_value("streamwatch_message_errors_total") == 20
    assert len(errs.records) <= 6  # rate-limited (the quota is shared with other tests)
