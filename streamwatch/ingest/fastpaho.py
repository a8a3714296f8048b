"""paho's MQTT client with two per-message costs taken out of its network thread.

Stock paho reads every packet with at least three ``recv`` calls (its type byte, each byte of
its length, then the rest), and goes back to ``select`` after each packet when it has no
QoS 2 traffic in flight; each call drops and retakes the GIL. :class:`FastClient` reads up to
:data:`READ_SIZE` bytes at once and hands paho's unchanged packet parser its small reads from
that buffer, taking every whole packet it holds before paho selects again.

Stock paho builds a ``Properties`` object for every MQTT 5 PUBLISH, properties or not (most of
its decode time). For a QoS 0 or 1 PUBLISH that carries none, :class:`FastClient` decodes the
topic, packet id and payload itself and leaves ``message.properties`` None; anything else
(properties, QoS 2, MQTT 3.1.1) takes paho's own path. paho's debug line per PUBLISH is not
written on the fast path, and without per-topic callbacks (``message_callback_add``) the
message goes straight to ``on_message``.

Stock paho also queues each acknowledgement as its own packet, with a wake-up write to its
socket pair and a ``send`` per PUBACK. :meth:`FastClient.ack_many` queues the PUBACKs of a
scored slice, in arrival order, as one write.

After each socket read it sets ``TCP_QUICKACK`` (Linux), so that a broker with Nagle's
algorithm on (Mosquitto's default) is not held waiting for the delayed-ACK timer when nothing
else goes back to it (QoS 0).

It relies on paho internals (``_sock_recv``, ``_packet_queue``, ``_handle_publish``,
``_handle_on_message``, ``_in_packet``), present in paho 1.6 to 2.2 (pyproject pins paho
below 2.3); the rest of the packet handling is paho's.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBACK, MQTTErrorCode, MQTTMessage

_now = mqtt.time_func

READ_SIZE = 65536
"""Bytes asked of the socket per read (about a thousand small PUBLISH packets)."""

_PUBACK = struct.Struct("!BBH")

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
"""Linux: acknowledge what was read at once, not after the delayed-ACK timer. A broker that
leaves Nagle's algorithm on (Mosquitto's default, ``set_tcp_nodelay false``) holds each small
packet until the previous one is acknowledged; with QoS 0 this client sends nothing back that
an ACK could ride on, so without this every burst waited up to the timer (tens of ms)."""


class _Received(MQTTMessage):
    """A received message, without the delivery tracker (``info``: a lock and a condition)
    that only messages this client publishes use."""

    def __init__(
        self, mid: int, topic: bytes, payload: bytes, qos: int, dup: bool, retain: bool
    ) -> None:
        self.timestamp = _now()
        self.state = mqtt.mqtt_ms_invalid
        self.dup = dup
        self.mid = mid
        self._topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.info = _NO_INFO
        self.properties = None


_NO_INFO = mqtt.MQTTMessageInfo(0)


class FastClient(mqtt.Client):
    """A paho client with buffered reads and batched acknowledgements (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._rsock: object = None
        self._refill = True
        self._filtered = False

    def message_callback_add(self, sub: str, callback: Any) -> None:
        """paho's, noting that per-topic callbacks are in use (the fast path then defers to
        paho's dispatch)."""
        self._filtered = True
        super().message_callback_add(sub, callback)

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._sock is not self._rsock:  # a new connection: nothing buffered is its
            self._rsock = self._sock
            self._rbuf = b""
            self._rpos = 0
        pos = self._rpos
        buf = self._rbuf
        if pos >= len(buf):
            if not self._refill:
                # One socket read per loop_read: what is not whole yet waits for select.
                raise BlockingIOError
            self._refill = False
            buf = super()._sock_recv(max(bufsize, READ_SIZE))
            if _QUICKACK is not None:
                self._quickack()
            if len(buf) <= bufsize:  # an end of file (b""), or all of it asked for
                self._rbuf = b""
                self._rpos = 0
                return buf
            pos = 0
            self._rbuf = buf
        end = pos + bufsize
        self._rpos = min(end, len(buf))
        return buf[pos:end]

    def _quickack(self) -> None:
        # Not on a WebSocket wrapper, nor on a socket that has just closed.
        with contextlib.suppress(AttributeError, OSError):
            self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)  # type: ignore[union-attr]

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """paho's read step, repeated while whole packets wait in the read buffer."""
        self._refill = True
        rc = super().loop_read(max_packets)
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None:
            if self._rpos >= len(self._rbuf):
                break
            rc = super().loop_read(max_packets)
        return rc

    def ack_many(self, mids: Sequence[int]) -> MQTTErrorCode:
        """PUBACK the QoS 1 messages ``mids`` (``manual_ack``), in this order, as one write."""
        if not mids:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        pack = _PUBACK.pack
        data = b"".join([pack(PUBACK, 2, mid) for mid in mids])
        return self._packet_queue(PUBACK, data, 0, 0)

    def _handle_publish(self) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        n = len(packet)
        if n < 2 or qos > 1 or self._protocol != mqtt.MQTTv5:
            return super()._handle_publish()
        pos = end = 2 + ((packet[0] << 8) | packet[1])
        mid = 0
        if qos:
            if pos + 2 >= n:
                return super()._handle_publish()
            mid = (packet[pos] << 8) | packet[pos + 1]
            pos += 2
        if pos >= n or packet[pos] != 0:  # no room for the property length, or properties
            return super()._handle_publish()
        message = _Received(
            mid,
            bytes(packet[2:end]),
            bytes(packet[pos + 1 :]),
            qos,
            bool(header & 0x08),
            bool(header & 0x01),
        )
        on_message = self.on_message
        if self._filtered or on_message is None:
            self._handle_on_message(message)
        else:
            # paho's _handle_on_message without the per-topic callback lookup (none added).
            with self._in_callback_mutex:
                try:
                    on_message(self, self._userdata, message)
                except Exception as err:
                    self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                    if not self.suppress_exceptions:
                        raise
        if qos and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS
