"""Sparkplug B in: topics and payloads to plain readings, with births, aliases, seq and deaths.

Pure decoding, apart from the MQTT link (:mod:`streamwatch.ingest.mqtt` calls
:meth:`SparkplugDecoder.handle` on its network thread and publishes what it asks for). One
decoder holds what the edge nodes declared in their births; only one thread may use it.

Topics: ``spBv1.0/<group>/<type>/<edge node>[/<device>]`` with ``<type>`` one of NBIRTH,
NDEATH, NDATA (node level, no device) and DBIRTH, DDEATH, DDATA (a device). NCMD, DCMD and
``spBv1.0/STATE/...`` are commands and host state: not data, ignored.

Each numeric or Boolean metric becomes a reading of sensor
``sparkplug/<group>/<edge node>/<device>/<metric name>`` (``_node`` for node-level metrics),
so :data:`SPARKPLUG_GROUP_PATTERN` makes each device a group and each metric a member. A
metric's timestamp (ms) is the reading's (s); without one the payload's, else the arrival.

- **Births** (NBIRTH, DBIRTH) declare the metrics: name, alias and datatype. String and other
  non-numeric metrics are ignored and counted once per birth (``sparkplug_unsupported_type``);
  ``bdSeq`` and ``Node Control/*``/``Device Control/*`` are control metrics, not readings.
- **Data** (NDATA, DDATA) name each metric by alias or by name. An alias or name not in the
  birth is ``sparkplug_unknown_alias``; a value in a field its datatype does not use is
  ``sparkplug_type_mismatch``.
- **seq**: every message of an edge node but NDEATH carries ``seq``, 0-255, one more than the
  last (255 wraps to 0). A gap (``sparkplug_seq_gap`` event) or data before a birth
  (``sparkplug_no_birth``) means the host's view of the node may be wrong: the decoder asks
  for a rebirth (``spBv1.0/<group>/NCMD/<edge>`` with ``Node Control/Rebirth`` = true), at
  most once per ``rebirth_interval_s`` per node. Data after a gap is still decoded with the
  aliases known; data before a birth cannot be, and is rejected.
- **Deaths**: an NDEATH whose ``bdSeq`` matches the NBIRTH's (a stale will from an earlier
  session does not) or a DDEATH marks the members silent: :attr:`Handled.silenced` lists
  their sensor ids, which the worker restarts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

from streamwatch.config import PayloadConfig
from streamwatch.ingest import parse
from streamwatch.ingest import spb_payload as spb
from streamwatch.ingest.parse import Reading

NAMESPACE: Final = "spBv1.0"
SENSOR_ROOT: Final = "sparkplug"
NODE_DEVICE: Final = "_node"
"""The device part of a node-level metric's sensor id."""
SPARKPLUG_GROUP_PATTERN: Final = "sparkplug/+/+/+/#"
"""The ``[groups] patterns`` entry that makes each Sparkplug device a group."""
REBIRTH_METRIC: Final = "Node Control/Rebirth"

# Rejection reasons (metric label values of streamwatch_rejected_total: keep them stable).
BAD_TOPIC: Final = "sparkplug_bad_topic"
UNDECODABLE: Final = "sparkplug_undecodable"
UNKNOWN_ALIAS: Final = "sparkplug_unknown_alias"
TYPE_MISMATCH: Final = "sparkplug_type_mismatch"
UNSUPPORTED_TYPE: Final = "sparkplug_unsupported_type"
NO_BIRTH: Final = "sparkplug_no_birth"
TOO_MANY_NODES: Final = "sparkplug_too_many_nodes"
REASONS: Final = (
    BAD_TOPIC,
    UNDECODABLE,
    UNKNOWN_ALIAS,
    TYPE_MISMATCH,
    UNSUPPORTED_TYPE,
    NO_BIRTH,
    TOO_MANY_NODES,
)
MAX_NODES: Final = 10_000
"""Edge nodes remembered at most (births, aliases, seq): a backstop on memory. A birth from
one more is rejected (``sparkplug_too_many_nodes``)."""

# Events (label values of streamwatch_sparkplug_events_total).
EV_NBIRTH: Final = "nbirth"
EV_DBIRTH: Final = "dbirth"
EV_NDEATH: Final = "ndeath"
EV_DDEATH: Final = "ddeath"
EV_STALE_DEATH: Final = "stale_ndeath"
EV_SEQ_GAP: Final = "seq_gap"
EV_REBIRTH: Final = "rebirth_requested"
EVENTS: Final = (EV_NBIRTH, EV_DBIRTH, EV_NDEATH, EV_DDEATH, EV_STALE_DEATH, EV_SEQ_GAP, EV_REBIRTH)

_NODE_TYPES: Final = frozenset({"NBIRTH", "NDEATH", "NDATA"})
_DEVICE_TYPES: Final = frozenset({"DBIRTH", "DDEATH", "DDATA"})
_IGNORED_TYPES: Final = frozenset({"NCMD", "DCMD"})
_CONTROL_PREFIXES: Final = ("Node Control/", "Device Control/")


@dataclass(slots=True)
class Handled:
    """What one Sparkplug message gave: readings, rejection reasons, sensors that went
    silent, events to count, and a rebirth request to publish (topic, payload) if any."""

    readings: list[Reading] = field(default_factory=list)
    rejects: list[str] = field(default_factory=list)
    silenced: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    rebirth: tuple[str, bytes] | None = None


@dataclass(slots=True)
class _Declared:
    """A metric declared in a birth: its sensor id (None: not a reading) and datatype."""

    sensor: str | None
    datatype: int


@dataclass(slots=True)
class _Device:
    by_alias: dict[int, _Declared] = field(default_factory=dict)
    by_name: dict[str, _Declared] = field(default_factory=dict)

    def sensors(self) -> list[str]:
        return [d.sensor for d in self.by_name.values() if d.sensor is not None]


@dataclass(slots=True)
class _Node:
    born: bool = False
    bd_seq: int | None = None
    seq: int | None = None
    """The last seq seen (None: none yet)."""
    devices: dict[str, _Device] = field(default_factory=dict)
    """Born devices; ``_node`` holds the node's own metrics."""
    rebirth_at: float = -math.inf
    """When the last rebirth request was made (arrival clock)."""


def is_sparkplug(topic: str) -> bool:
    """Whether a topic is in the Sparkplug B namespace."""
    return topic.startswith(NAMESPACE + "/")


def sensor_for(group: str, edge: str, device: str | None, metric: str) -> str:
    """The sensor id of a Sparkplug metric. A metric name may hold any character, but a
    sensor id is also a topic level of its alerts: ``+`` and ``#`` become ``_``."""
    member = metric.replace("+", "_").replace("#", "_")
    return f"{SENSOR_ROOT}/{group}/{edge}/{device or NODE_DEVICE}/{member}"


def rebirth_request(group: str, edge: str, now: float) -> tuple[str, bytes]:
    """The NCMD (topic, payload) asking an edge node to publish its births again."""
    ms = int(now * 1000)
    m = spb.Metric(name=REBIRTH_METRIC, timestamp=ms, datatype=spb.BOOLEAN, value=True)
    return f"{NAMESPACE}/{group}/NCMD/{edge}", spb.encode(spb.Payload(timestamp=ms, metrics=[m]))


class SparkplugDecoder:
    """The host side of Sparkplug B for one subscriber (single-threaded)."""

    def __init__(self, cfg: PayloadConfig, rebirth_interval_s: float = 10.0) -> None:
        self.cfg = cfg
        self.rebirth_interval_s = rebirth_interval_s
        self.nodes: dict[tuple[str, str], _Node] = {}

    def handle(self, topic: str, payload: bytes, now: float) -> Handled:
        """Decode one message (pure apart from the decoder's own state; never raises on
        bad input: every problem is a rejection reason or an event)."""
        out = Handled()
        parts = topic.split("/")
        if len(parts) >= 2 and parts[1] == "STATE":
            return out  # a host application's state, not an edge node's
        if len(parts) not in (4, 5) or not all(parts):
            out.rejects.append(BAD_TOPIC)
            return out
        _, group, kind, edge = parts[:4]
        device = parts[4] if len(parts) == 5 else None
        if kind in _IGNORED_TYPES:
            return out
        if (kind in _NODE_TYPES and device is not None) or (
            kind in _DEVICE_TYPES and device is None
        ):
            out.rejects.append(BAD_TOPIC)
            return out
        if kind not in _NODE_TYPES and kind not in _DEVICE_TYPES:
            out.rejects.append(BAD_TOPIC)
            return out
        if len(payload) > self.cfg.max_bytes:
            out.rejects.append(parse.OVERSIZE)
            return out
        try:
            p = spb.decode(payload)
        except spb.PayloadError:
            out.rejects.append(UNDECODABLE)
            return out
        key = (group, edge)
        node = self.nodes.get(key)
        if kind == "NBIRTH":
            if node is None and len(self.nodes) >= MAX_NODES:
                out.rejects.append(TOO_MANY_NODES)
                return out
            asked = node.rebirth_at if node is not None else -math.inf
            node = self.nodes[key] = _Node(born=True, bd_seq=_bd_seq(p), seq=p.seq)
            node.rebirth_at = asked  # a rebirth does not reset the request rate limit
            out.events.append(EV_NBIRTH)
            self._birth(node, group, edge, NODE_DEVICE, p, now, out)
            return out
        if kind == "NDEATH":
            self._node_death(node, key, p, out)
            return out
        if node is None or not node.born:
            self._no_birth(group, edge, node, now, out)
            return out
        self._check_seq(node, group, edge, p.seq, now, out)
        assert device is not None or kind == "NDATA"
        dev_name = device or NODE_DEVICE
        if kind == "DBIRTH":
            out.events.append(EV_DBIRTH)
            self._birth(node, group, edge, dev_name, p, now, out)
        elif kind == "DDEATH":
            gone = node.devices.pop(dev_name, None)
            out.events.append(EV_DDEATH)
            if gone is not None:
                out.silenced.extend(gone.sensors())
        else:
            dev = node.devices.get(dev_name)
            if dev is None:
                self._no_birth(group, edge, node, now, out)
                return out
            self._data(dev, p, now, out)
        return out

    # -- message kinds ------------------------------------------------------------------------

    def _birth(
        self,
        node: _Node,
        group: str,
        edge: str,
        device: str,
        p: spb.Payload,
        now: float,
        out: Handled,
    ) -> None:
        dev = node.devices[device] = _Device()
        for m in p.metrics:
            if m.name is None or m.datatype is None:
                out.rejects.append(UNDECODABLE)  # a birth must name and type every metric
                continue
            control = m.name == "bdSeq" or m.name.startswith(_CONTROL_PREFIXES)
            numeric = m.datatype in spb.NUMERIC_TYPES
            sensor: str | None = None
            if numeric and not control:
                sensor = parse.sensor_id(sensor_for(group, edge, device, m.name), "")
                if sensor is None:
                    out.rejects.append(BAD_TOPIC)
            elif not control:
                out.rejects.append(UNSUPPORTED_TYPE)
            d = _Declared(sensor, m.datatype)
            dev.by_name[m.name] = d
            if m.alias is not None:
                dev.by_alias[m.alias] = d
            if sensor is not None:
                self._reading(d, m, p, now, out)

    def _data(self, dev: _Device, p: spb.Payload, now: float, out: Handled) -> None:
        for m in p.metrics:
            d = dev.by_alias.get(m.alias) if m.alias is not None else None
            if d is None and m.name is not None:
                d = dev.by_name.get(m.name)
            if d is None:
                out.rejects.append(UNKNOWN_ALIAS)
                continue
            if d.sensor is None:
                continue  # a string or control metric: counted at its birth
            if m.datatype is not None and m.datatype != d.datatype:
                out.rejects.append(TYPE_MISMATCH)
                continue
            self._reading(d, m, p, now, out)

    def _reading(
        self, d: _Declared, m: spb.Metric, p: spb.Payload, now: float, out: Handled
    ) -> None:
        if m.is_null:
            return  # no value (e.g. unknown at the source): nothing to score
        value = spb.numeric_value(m, d.datatype)
        if value is None:
            out.rejects.append(TYPE_MISMATCH)
            return
        if not math.isfinite(value):
            out.rejects.append(parse.NON_FINITE)
            return
        ms = m.timestamp if m.timestamp is not None else p.timestamp
        ts = now if ms is None else ms / 1000.0
        if ts > now + self.cfg.max_future_s:
            out.rejects.append(parse.FUTURE)
        elif ts < now - self.cfg.max_age_s:
            out.rejects.append(parse.STALE)
        else:
            assert d.sensor is not None
            out.readings.append(Reading(d.sensor, ts, value))

    def _node_death(
        self, node: _Node | None, key: tuple[str, str], p: spb.Payload, out: Handled
    ) -> None:
        if node is None or not node.born:
            return  # nothing known to silence (e.g. the retained will of a node long gone)
        bd = _bd_seq(p)
        if bd is not None and node.bd_seq is not None and bd != node.bd_seq:
            out.events.append(EV_STALE_DEATH)  # the will of an earlier session: not this one
            return
        out.events.append(EV_NDEATH)
        for dev in node.devices.values():
            out.silenced.extend(dev.sensors())
        node.devices.clear()
        node.born = False
        node.seq = None

    def _check_seq(
        self, node: _Node, group: str, edge: str, seq: int | None, now: float, out: Handled
    ) -> None:
        expected = None if node.seq is None else (node.seq + 1) % 256
        if seq is None or seq > 255 or (expected is not None and seq != expected):
            out.events.append(EV_SEQ_GAP)
            self._ask_rebirth(node, group, edge, now, out)
        node.seq = seq if seq is not None and seq <= 255 else None

    def _no_birth(
        self, group: str, edge: str, node: _Node | None, now: float, out: Handled
    ) -> None:
        out.rejects.append(NO_BIRTH)
        if node is None:
            if len(self.nodes) >= MAX_NODES:
                return  # no room to remember a request's time: no request
            node = self.nodes[(group, edge)] = _Node()
        self._ask_rebirth(node, group, edge, now, out)

    def _ask_rebirth(self, node: _Node, group: str, edge: str, now: float, out: Handled) -> None:
        if now - node.rebirth_at < self.rebirth_interval_s:
            return
        node.rebirth_at = now
        out.events.append(EV_REBIRTH)
        out.rebirth = rebirth_request(group, edge, now)


def _bd_seq(p: spb.Payload) -> int | None:
    """The ``bdSeq`` metric of an NBIRTH or NDEATH (None if absent or not an integer)."""
    for m in p.metrics:
        if m.name == "bdSeq" and isinstance(m.value, int) and not isinstance(m.value, bool):
            return m.value
    return None
