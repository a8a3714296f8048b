"""The Sparkplug B decoder: births, aliases, datatypes, seq, rebirth requests, deaths, bad input."""

from __future__ import annotations

import contextlib
import struct
import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from streamwatch.config import Config, ConfigError, PayloadConfig, from_mapping
from streamwatch.detectors import bundle
from streamwatch.ingest import parse
from streamwatch.ingest import sparkplug as sp
from streamwatch.ingest import spb_payload as spb
from streamwatch.ingest.mqtt import MQTTLink
from streamwatch.ingest.parse import Reading, Silence
from streamwatch.ingest.raw import RawDecoder
from streamwatch.outputs.metrics import Metrics
from streamwatch.pipeline.engine import Engine
from streamwatch.pipeline.handoff import Handoff

NOW = 1_700_000_000.0
MS = int(NOW * 1000)
G, E, D = "plant1", "edge1", "pump1"


def metric(
    name: str | None, alias: int | None, datatype: int | None, value: object, **kw: object
) -> spb.Metric:
    return spb.Metric(name=name, alias=alias, datatype=datatype, value=value, **kw)  # type: ignore[arg-type]


def nbirth(seq: int = 0, bd: int = 0) -> bytes:
    return spb.encode(
        spb.Payload(
            timestamp=MS,
            seq=seq,
            metrics=[
                metric("bdSeq", None, spb.UINT64, bd),
                metric("Node Control/Rebirth", None, spb.BOOLEAN, False),
                metric("uptime", 1, spb.INT64, 5),
            ],
        )
    )


def dbirth(seq: int) -> bytes:
    return spb.encode(
        spb.Payload(
            timestamp=MS,
            seq=seq,
            metrics=[
                metric("flow", 10, spb.DOUBLE, 1.5),
                metric("pressure", 11, spb.FLOAT, 2.5),
                metric("running", 12, spb.BOOLEAN, True),
                metric("offset", 13, spb.INT16, -3),
                metric("mode", 14, spb.STRING, "auto"),
            ],
        )
    )


def ddata(seq: int | None, *metrics: spb.Metric, ts: int | None = MS + 1000) -> bytes:
    return spb.encode(spb.Payload(timestamp=ts, seq=seq, metrics=list(metrics)))


def topic(kind: str, device: str | None = None) -> str:
    return f"spBv1.0/{G}/{kind}/{E}" + (f"/{device}" if device else "")


def sensor(name: str, device: str = D) -> str:
    return f"sparkplug/{G}/{E}/{device}/{name}"


@pytest.fixture
def dec() -> sp.SparkplugDecoder:
    return sp.SparkplugDecoder(PayloadConfig(), rebirth_interval_s=10.0)


def born(dec: sp.SparkplugDecoder) -> None:
    """An edge node and one device, born (seq 0 and 1)."""
    dec.handle(topic("NBIRTH"), nbirth(0), NOW)
    dec.handle(topic("DBIRTH", D), dbirth(1), NOW)


# -- the codec ------------------------------------------------------------------------------


def test_codec_round_trip() -> None:
    p = spb.Payload(
        timestamp=MS,
        seq=7,
        metrics=[
            metric("a", 1, spb.DOUBLE, 0.1),
            metric(None, 2, spb.INT32, -5),
            metric("s", 3, spb.STRING, "x"),
            metric("n", 4, spb.FLOAT, None, is_null=True),
        ],
    )
    q = spb.decode(spb.encode(p))
    assert q.timestamp == MS and q.seq == 7 and len(q.metrics) == 4
    a, b, s, n = q.metrics
    assert (a.name, a.alias, a.datatype, a.value) == ("a", 1, spb.DOUBLE, 0.1)
    assert b.name is None and spb.numeric_value(b, spb.INT32) == -5.0
    assert s.value == "x" and spb.numeric_value(s, spb.DOUBLE) is None
    assert n.is_null


def test_signed_integers_are_twos_complement() -> None:
    for dt, v in ((spb.INT8, -1), (spb.INT16, -300), (spb.INT32, -70000), (spb.INT64, -(2**40))):
        m = spb.decode(spb.encode(spb.Payload(metrics=[metric("x", None, dt, v)]))).metrics[0]
        assert spb.numeric_value(m, dt) == float(v)
    p = spb.decode(spb.encode(spb.Payload(metrics=[metric("x", None, spb.UINT32, 2**32 - 1)])))
    assert spb.numeric_value(p.metrics[0], spb.UINT32) == float(2**32 - 1)


@pytest.mark.parametrize(
    "bad",
    [
        b"\x08",  # timestamp field with its varint cut off
        b"\x12\x05\x0a\x01",  # a metric longer than what follows
        b"\x12\x03\x61\x09\x00",  # inside the metric: a 64-bit field cut short
        b"\x0b",  # a group start (wire type 3)
        b"\x12\x02\x0a\x80",  # a name whose length varint is cut off
        b"\x12\x03\x0a\x01\xff",  # a name that is not UTF-8
        b"\x0a\x00",  # timestamp sent length-delimited: wrong wire type
        b"\xff" * 11,  # a varint longer than 64 bits
    ],
)
def test_malformed_payloads_raise_payload_error_only(bad: bytes) -> None:
    with pytest.raises(spb.PayloadError):
        spb.decode(bad)


# -- births and data --------------------------------------------------------------------------


def test_births_declare_and_data_by_alias_and_name(dec: sp.SparkplugDecoder) -> None:
    h = dec.handle(topic("NBIRTH"), nbirth(0), NOW)
    assert h.events == [sp.EV_NBIRTH] and not h.rejects
    # bdSeq and Node Control/* are control metrics, not readings
    assert [r.sensor for r in h.readings] == [sensor("uptime", "_node")]
    h = dec.handle(topic("DBIRTH", D), dbirth(1), NOW)
    assert h.rejects == [sp.UNSUPPORTED_TYPE]  # the string metric, counted at its birth
    got = {r.sensor: r.value for r in h.readings}
    assert got == {
        sensor("flow"): 1.5,
        sensor("pressure"): 2.5,
        sensor("running"): 1.0,
        sensor("offset"): -3.0,
    }
    h = dec.handle(
        topic("DDATA", D),
        ddata(
            2,
            metric(None, 10, None, 3.25, timestamp=MS + 2500),  # by alias, own timestamp
            metric(
                "pressure", None, None, 4.0, value_field=spb.F_FLOAT
            ),  # by name, the payload's timestamp
            metric(None, 14, None, "manual"),  # the string metric: ignored, counted at birth
        ),
        NOW + 3,
    )
    assert not h.rejects and not h.events and h.rebirth is None
    assert h.readings == [
        Reading(sensor("flow"), NOW + 2.5, 3.25),
        Reading(sensor("pressure"), NOW + 1.0, 4.0),
    ]
    assert sp.SPARKPLUG_GROUP_PATTERN == "sparkplug/+/+/+/#"


def test_node_data_and_missing_timestamps_use_arrival(dec: sp.SparkplugDecoder) -> None:
    born(dec)
    h = dec.handle(topic("NDATA"), ddata(2, metric(None, 1, None, 9), ts=None), NOW + 7)
    assert h.readings == [Reading(sensor("uptime", "_node"), NOW + 7, 9.0)]


def test_unknown_alias_and_wrong_datatype_are_rejected(dec: sp.SparkplugDecoder) -> None:
    born(dec)
    h = dec.handle(
        topic("DDATA", D),
        ddata(
            2,
            metric(None, 99, None, 1.0),  # no such alias
            metric("nope", None, spb.DOUBLE, 1.0),  # no such name
            metric(None, 10, spb.STRING, "1.0"),  # declared Double, sent as a string
            metric(None, 11, None, "2.0", value_field=spb.F_STRING),  # Float in a string field
            metric(None, 12, None, 7, value_field=spb.F_LONG),  # Boolean in a long field
            metric(None, 10, None, 5.0),  # and one good one
        ),
        NOW + 2,
    )
    assert sorted(h.rejects) == sorted(
        [sp.UNKNOWN_ALIAS, sp.UNKNOWN_ALIAS, sp.TYPE_MISMATCH, sp.TYPE_MISMATCH, sp.TYPE_MISMATCH]
    )
    assert [r.sensor for r in h.readings] == [sensor("flow")]


def test_non_finite_stale_and_future_values(dec: sp.SparkplugDecoder) -> None:
    born(dec)
    h = dec.handle(
        topic("DDATA", D),
        ddata(
            2,
            metric(None, 10, None, float("nan")),
            metric(None, 11, None, 1.0, timestamp=MS - 8 * 86400 * 1000, value_field=spb.F_FLOAT),
            metric(None, 10, None, 1.0, timestamp=MS + 3600 * 1000),
        ),
        NOW,
    )
    assert sorted(h.rejects) == sorted([parse.NON_FINITE, parse.STALE, parse.FUTURE])
    assert not h.readings


def test_truncated_payload_and_bad_topics(dec: sp.SparkplugDecoder) -> None:
    born(dec)
    good = ddata(2, metric(None, 10, None, 1.0))
    assert dec.handle(topic("DDATA", D), good[:-3], NOW).rejects == [sp.UNDECODABLE]
    for t in (
        f"spBv1.0/{G}/DDATA/{E}",  # device message without a device
        f"spBv1.0/{G}/NDATA/{E}/{D}",  # node message with one
        f"spBv1.0/{G}/XDATA/{E}",
        f"spBv1.0/{G}/DDATA",
        f"spBv1.0/{G}//{E}",
    ):
        assert dec.handle(t, good, NOW).rejects == [sp.BAD_TOPIC], t
    # commands and host state are not data: no rejection, nothing at all
    for t in (topic("NCMD"), topic("DCMD", D), "spBv1.0/STATE/host1"):
        h = dec.handle(t, b"\x00\x01garbage", NOW)
        assert not h.rejects and not h.readings and not h.events
    oversize = PayloadConfig(max_bytes=16)
    assert sp.SparkplugDecoder(oversize).handle(topic("NBIRTH"), nbirth(0), NOW).rejects == [
        parse.OVERSIZE
    ]


# -- seq and rebirth --------------------------------------------------------------------------


def test_seq_wraps_from_255_to_0_without_a_gap(dec: sp.SparkplugDecoder) -> None:
    dec.handle(topic("NBIRTH"), nbirth(seq=254), NOW)
    seqs = [255, 0, 1]
    h = dec.handle(topic("DBIRTH", D), dbirth(seqs[0]), NOW)
    assert sp.EV_SEQ_GAP not in h.events
    for s in seqs[1:]:
        h = dec.handle(topic("DDATA", D), ddata(s, metric(None, 10, None, 1.0 + s)), NOW)
        assert not h.events and h.rebirth is None, s
        assert len(h.readings) == 1


def test_seq_gap_requests_a_rebirth_at_a_rate_limit(dec: sp.SparkplugDecoder) -> None:
    born(dec)
    h = dec.handle(topic("DDATA", D), ddata(5, metric(None, 10, None, 1.0)), NOW)
    assert h.events == [sp.EV_SEQ_GAP, sp.EV_REBIRTH]
    assert len(h.readings) == 1  # the aliases are still known: the data is kept
    assert h.rebirth is not None
    t, payload = h.rebirth
    assert t == f"spBv1.0/{G}/NCMD/{E}"
    (m,) = spb.decode(payload).metrics
    assert m.name == sp.REBIRTH_METRIC and m.datatype == spb.BOOLEAN and m.value is True
    # another gap within the interval: counted, but no second request
    h = dec.handle(topic("DDATA", D), ddata(9, metric(None, 10, None, 1.0)), NOW + 1)
    assert h.events == [sp.EV_SEQ_GAP] and h.rebirth is None
    # in order again: nothing
    h = dec.handle(topic("DDATA", D), ddata(10, metric(None, 10, None, 1.0)), NOW + 2)
    assert not h.events
    # after the interval, a new gap asks again
    h = dec.handle(topic("DDATA", D), ddata(20, metric(None, 10, None, 1.0)), NOW + 11)
    assert h.rebirth is not None
    # a missing seq cannot be checked: treated as a gap
    h = dec.handle(topic("DDATA", D), ddata(None, metric(None, 10, None, 1.0)), NOW + 30)
    assert sp.EV_SEQ_GAP in h.events


def test_data_before_birth_is_rejected_and_asks_for_a_rebirth(dec: sp.SparkplugDecoder) -> None:
    h = dec.handle(topic("DDATA", D), ddata(3, metric(None, 10, None, 1.0)), NOW)
    assert h.rejects == [sp.NO_BIRTH] and not h.readings and h.rebirth is not None
    assert dec.handle(topic("NDATA"), ddata(4, metric(None, 1, None, 1.0)), NOW + 1).rebirth is None
    # the node is born but this device is not: its data is unknown too
    dec.handle(topic("NBIRTH"), nbirth(0), NOW + 2)
    h = dec.handle(topic("DDATA", "other"), ddata(1, metric(None, 10, None, 1.0)), NOW + 20)
    assert h.rejects == [sp.NO_BIRTH] and h.rebirth is not None
    # after the births, data decodes
    dec.handle(topic("DBIRTH", D), dbirth(2), NOW + 21)
    h = dec.handle(topic("DDATA", D), ddata(3, metric(None, 10, None, 1.0)), NOW + 22)
    assert not h.rejects and len(h.readings) == 1


# -- deaths -----------------------------------------------------------------------------------


def test_ddeath_silences_the_device_and_later_data_needs_a_birth(dec: sp.SparkplugDecoder) -> None:
    born(dec)
    h = dec.handle(topic("DDEATH", D), ddata(2), NOW)
    assert h.events == [sp.EV_DDEATH]
    assert sorted(h.silenced) == sorted(
        sensor(n) for n in ("flow", "pressure", "running", "offset")
    )
    h = dec.handle(topic("DDATA", D), ddata(3, metric(None, 10, None, 1.0)), NOW + 1)
    assert h.rejects == [sp.NO_BIRTH]


def test_ndeath_matches_bdseq(dec: sp.SparkplugDecoder) -> None:
    dec.handle(topic("NBIRTH"), nbirth(0, bd=3), NOW)
    dec.handle(topic("DBIRTH", D), dbirth(1), NOW)
    death = spb.encode(spb.Payload(metrics=[metric("bdSeq", None, spb.UINT64, 2)]))
    h = dec.handle(topic("NDEATH"), death, NOW)
    assert h.events == [sp.EV_STALE_DEATH] and not h.silenced  # an earlier session's will
    death = spb.encode(spb.Payload(metrics=[metric("bdSeq", None, spb.UINT64, 3)]))
    h = dec.handle(topic("NDEATH"), death, NOW)
    assert h.events == [sp.EV_NDEATH]
    assert sensor("uptime", "_node") in h.silenced and sensor("flow") in h.silenced
    assert len(h.silenced) == 5
    # a second death, or data now, knows nothing alive
    assert not dec.handle(topic("NDEATH"), death, NOW).silenced
    assert dec.handle(topic("DDATA", D), ddata(2, metric(None, 10, None, 1.0)), NOW).rejects == [
        sp.NO_BIRTH
    ]


# -- never raises -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["NBIRTH", "NDATA", "NDEATH"]), st.booleans())
def test_any_bytes_give_a_result_never_an_exception(data: bytes, kind: str, birth: bool) -> None:
    dec = sp.SparkplugDecoder(PayloadConfig())
    if birth:
        dec.handle(topic("NBIRTH"), nbirth(0), NOW)
    h = dec.handle(topic(kind), data, NOW)
    assert isinstance(h, sp.Handled)
    h = dec.handle(topic("DDATA", D), data, NOW)
    assert isinstance(h, sp.Handled)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 40), st.integers(0, 5), st.binary(max_size=12)), max_size=6)
)
def test_fields_of_any_type_in_a_metric_never_raise(fields: list[tuple[int, int, bytes]]) -> None:
    """Well-framed fields with arbitrary numbers, wire types and contents inside a metric."""
    body = bytearray()
    for num, wt, content in fields:
        wt = (0, 1, 2, 5, 2, 0)[wt]
        body += bytes([(num << 3 | wt) & 0x7F | (0x80 if num >= 16 else 0)])
        if num >= 16:
            body += bytes([num >> 4])
        if wt == 0:
            body += b"\x01"
        elif wt == 1:
            body += struct.pack("<d", 1.0)
        elif wt == 5:
            body += struct.pack("<f", 1.0)
        else:
            body += bytes([len(content)]) + content
    payload = b"\x12" + bytes([len(body)]) + bytes(body) if len(body) < 128 else b""
    with contextlib.suppress(spb.PayloadError):
        spb.decode(payload)
    dec = sp.SparkplugDecoder(PayloadConfig())
    born(dec)
    assert isinstance(dec.handle(topic("DBIRTH", D), payload, NOW), sp.Handled)


# -- the worker's side of a death ----------------------------------------------------------------


def test_silence_marker_restarts_windows_and_is_counted() -> None:
    cfg = Config()
    metrics = Metrics(CollectorRegistry())
    model = bundle.fresh(cfg.detector, cfg.windows.length, cfg.threshold.false_alarm_rate)
    engine = Engine(cfg, model, metrics, lambda ev: None)
    a, b = sensor("flow"), sensor("pressure")
    rows = [Reading(s, NOW + i, float(np.sin(i))) for i in range(5) for s in (a, b)]
    engine.process([(rows, NOW)], now=NOW)
    assert engine.windows.sensors[a].filled == 5
    marker = Silence([a, sensor("never-seen")], NOW + 5)
    assert len(marker) == 0 and list(marker) == []
    engine.process([(marker, NOW + 5)], now=NOW + 5)
    assert engine.windows.sensors[a].filled == 0  # restarted
    assert engine.windows.sensors[b].filled == 5  # not silenced: untouched
    assert metrics.silenced._value.get() == 2
    assert metrics.window_restarts._value.get() == 1
    # readings after the death refill the window as new
    engine.process([([Reading(a, NOW + 9, 0.5)], NOW + 9)], now=NOW + 9)
    assert engine.windows.sensors[a].filled == 1


def test_config_topic_and_group_check() -> None:
    assert Config().sparkplug.enabled is False
    assert from_mapping({"sparkplug": {"enabled": True}}).sparkplug.topic == "spBv1.0/#"
    cfg = from_mapping({"sparkplug": {"enabled": True, "group": "plant1"}})
    assert cfg.sparkplug.topic == "spBv1.0/plant1/#"
    for bad in ("a/b", "+", "#", ""):
        with pytest.raises(ConfigError, match=r"sparkplug\.group"):
            from_mapping({"sparkplug": {"group": bad}})
    with pytest.raises(ConfigError, match=r"sparkplug\.rebirth_interval_s"):
        from_mapping({"sparkplug": {"rebirth_interval_s": 0}})


def test_wildcards_in_metric_names_do_not_reach_topics(dec: sp.SparkplugDecoder) -> None:
    dec.handle(topic("NBIRTH"), nbirth(0), NOW)
    birth = spb.Payload(seq=1, metrics=[metric("Temp #1+2", 1, spb.DOUBLE, 3.0, timestamp=MS)])
    h = dec.handle(topic("DBIRTH", D), spb.encode(birth), NOW)
    assert [r.sensor for r in h.readings] == [sensor("Temp _1_2")]


def test_a_rebirth_does_not_reset_the_request_rate_limit(dec: sp.SparkplugDecoder) -> None:
    born(dec)
    assert dec.handle(topic("DDATA", D), ddata(9, metric(None, 10, None, 1.0)), NOW).rebirth
    born(dec)  # the node answers at once, and then skips a seq again
    h = dec.handle(topic("DDATA", D), ddata(9, metric(None, 10, None, 1.0)), NOW + 1)
    assert h.events == [sp.EV_SEQ_GAP] and h.rebirth is None


def test_edge_nodes_remembered_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sp, "MAX_NODES", 2)
    dec = sp.SparkplugDecoder(PayloadConfig())
    for edge in ("e1", "e2"):
        assert not dec.handle(f"spBv1.0/{G}/NBIRTH/{edge}", nbirth(0), NOW).rejects
    assert dec.handle(f"spBv1.0/{G}/NBIRTH/e3", nbirth(0), NOW).rejects == [sp.TOO_MANY_NODES]
    h = dec.handle(f"spBv1.0/{G}/NDATA/e4", ddata(1, metric(None, 1, None, 1.0)), NOW)
    assert h.rejects == [sp.NO_BIRTH] and h.rebirth is None
    assert len(dec.nodes) == 2
    # a node already known is born again as usual
    assert dec.handle(f"spBv1.0/{G}/NBIRTH/e1", nbirth(0), NOW).events == [sp.EV_NBIRTH]


# -- through the network-thread callback --------------------------------------------------------


class _Client:
    """Stands in for paho's client inside the callback: records acks and publishes."""

    def __init__(self) -> None:
        self.acks: list[int] = []
        self.published: list[tuple[str, bytes, int]] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append(mid)

    def ack_many(self, mids: list[int]) -> None:
        self.acks.extend(mids)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self.published.append((topic, payload, qos))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.binary(max_size=60), max_size=5))
def test_link_hands_off_acks_and_never_raises(garbage: list[bytes]) -> None:
    """Births, data, garbage, a gap and a death through ``MQTTLink._on_message``: every
    message is acknowledged once, after the worker took it; the rebirth request is published;
    the death reaches the worker as a marker."""
    cfg = from_mapping({"detector": {"type": "gaussian"}, "sparkplug": {"enabled": True}})
    metrics = Metrics(CollectorRegistry())
    handoff = Handoff(10_000)
    link = MQTTLink(cfg.mqtt, cfg.payload, metrics, handoff.put, cfg.sparkplug)
    assert link.topics == ["sensors/#", "spBv1.0/#", "streamwatch/cmd/#"]
    client = _Client()
    link.client = client  # type: ignore[assignment]
    engine = Engine(cfg, bundle.fresh(cfg.detector, 1, 1e-3), metrics, lambda ev: None)
    now_ms = int(time.time() * 1000)
    msgs = [
        (topic("NBIRTH"), nbirth(0)),
        (topic("DBIRTH", D), dbirth(1)),
        *[(topic("DDATA", D), g) for g in garbage],
        (topic("DDATA", D), ddata(2, metric(None, 10, None, 7.0, timestamp=now_ms))),
        (topic("DDATA", D), ddata(9, metric(None, 10, None, 8.0, timestamp=now_ms + 1))),
        (topic("DDEATH", D), ddata(10)),
    ]
    for mid, (t, payload) in enumerate(msgs, 1):
        msg = mqtt.MQTTMessage(mid, t.encode())
        msg.payload = payload
        msg.qos = 1
        link._on_message(client, None, msg)  # type: ignore[arg-type]
    assert client.acks == []  # nothing acknowledged before the worker took it
    items = RawDecoder(cfg.payload).decode_batch(handoff.drain(0), metrics)  # the worker's step
    engine.process(items)
    link.ack([tok for *_, tok in items if tok is not None])
    assert client.acks == list(range(1, len(msgs) + 1))
    assert any(isinstance(r, Silence) for r, *_ in items)
    gaps = metrics.sparkplug_events.labels(sp.EV_SEQ_GAP)._value.get()
    assert gaps >= 1 and metrics.silenced._value.get() == 4
    ncmd = [p for p in client.published if p[0] == f"spBv1.0/{G}/NCMD/{E}"]
    assert len(ncmd) == 1 and ncmd[0][2] == 0
    assert metrics.message_errors._value.get() == 0
