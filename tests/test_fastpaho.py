"""The daemon's paho client (:mod:`streamwatch.ingest.fastpaho`) against stock paho, packet
for packet: the same messages (topic, payload, QoS, id, flags) in the same order, however the
bytes are cut up on the way in, and the PUBACKs it writes are the bytes stock paho writes."""

from __future__ import annotations

import itertools
import random
import select
import socket
import struct
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from streamwatch.ingest.fastpaho import FastClient


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def publish(topic: bytes, payload: bytes, qos: int, mid: int, props: bytes = b"\x00") -> bytes:
    """An MQTT 5 PUBLISH packet (``props``: the property length and properties)."""
    head = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"")
    body = head + props + payload
    return bytes([0x30 | (qos << 1)]) + _varint(len(body)) + body


def feed() -> list[bytes]:
    """A mixed stream: QoS 0 and 1, empty and large payloads, a retained duplicate, and one
    with properties (a message expiry interval: paho's own path)."""
    rng = random.Random(7)
    out = []
    for i in range(400):
        qos = i % 2
        size = rng.choice([0, 1, 20, 300, 70_000]) if i % 37 == 0 else rng.randint(1, 60)
        payload = bytes(rng.randrange(256) for _ in range(size))
        out.append(publish(f"sensors/s{i % 13}/ü".encode(), payload, qos, i + 1))
    out.append(publish(b"sensors/p", b"21.5", 1, 999, props=b"\x05\x02\x00\x00\x00\x3c"))
    dup = bytearray(publish(b"sensors/r", b"7", 1, 1000))
    dup[0] |= 0x08 | 0x01
    out.append(bytes(dup))
    return out


def received(cls: type[mqtt.Client], data: bytes, cuts: list[int]) -> list[tuple[Any, ...]]:
    """Run ``data`` through a connected client of class ``cls``, sent in pieces at ``cuts``."""
    c = cls(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    c._sock = ours
    c._sockpairR, c._sockpairW = socket.socketpair()
    c._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
    got: list[tuple[Any, ...]] = []

    def on_message(client: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        expiry = getattr(m.properties, "MessageExpiryInterval", None)
        got.append((m.topic, bytes(m.payload), m.qos, m.mid, m.dup, m.retain, expiry))

    c.on_message = on_message
    edges = [0, *sorted(cuts), len(data)]
    try:
        for a, b in itertools.pairwise(edges):
            theirs.sendall(data[a:b])
            deadline = time.monotonic() + 5
            while _readable(ours) and time.monotonic() < deadline:
                c._loop(0.01)
    finally:
        ours.close()
        theirs.close()
        c._sockpairR.close()
        c._sockpairW.close()
    return got


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_messages_as_stock_paho_however_the_bytes_arrive(seed: int) -> None:
    packets = feed()
    data = b"".join(packets)
    rng = random.Random(seed)
    # Cuts everywhere: inside type bytes, length bytes, topics, payloads, and at boundaries.
    cuts = sorted(set(rng.sample(range(1, len(data)), 300)))
    stock = received(mqtt.Client, data, cuts)
    fast = received(FastClient, data, cuts)
    assert len(stock) == len(packets)
    assert fast == stock
    assert stock[-2][-1] == 60  # the property-carrying one kept its properties
    assert stock[-1][4:6] == (True, True)


def test_every_byte_cut_of_a_small_stream() -> None:
    data = publish(b"a/b", b"1.5", 1, 7) + publish(b"a/c", b"", 0, 0) + publish(b"x", b"{}", 1, 8)
    for cut in range(1, len(data)):
        assert received(FastClient, data, [cut]) == received(mqtt.Client, data, [cut])


def test_ack_many_writes_what_stock_acks_write() -> None:
    def written(send: Any) -> bytes:
        c = FastClient(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
        ours, theirs = socket.socketpair()
        c._sock = ours
        c._sockpairR, c._sockpairW = socket.socketpair()
        c._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
        send(c)
        c.loop_write()
        out = theirs.recv(65536) if _readable(theirs) else b""
        for s in (ours, theirs, c._sockpairR, c._sockpairW):
            s.close()
        return bytes(out)

    mids = [1, 2, 300, 65535, 4]

    def one_by_one(c: mqtt.Client) -> None:
        for m in mids:
            c.ack(m, 1)

    def at_once(c: FastClient) -> None:
        c.ack_many(mids)

    assert written(at_once) == written(one_by_one)
    assert written(lambda c: c.ack_many([])) == b""


def test_per_topic_callbacks_still_get_their_messages() -> None:
    c = FastClient(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    c._sock = ours
    c._sockpairR, c._sockpairW = socket.socketpair()
    c._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
    general: list[str] = []
    special: list[str] = []
    c.on_message = lambda cl, u, m: general.append(m.topic)
    c.message_callback_add("special/#", lambda cl, u, m: special.append(m.topic))
    theirs.sendall(publish(b"special/a", b"1", 0, 0) + publish(b"plain/b", b"2", 0, 0))
    while _readable(ours):
        c._loop(0.01)
    for s in (ours, theirs, c._sockpairR, c._sockpairW):
        s.close()
    assert special == ["special/a"] and general == ["plain/b"]
