"""The paho-mqtt link: connect, persistent session, subscribe in on_connect, last will, publish.

The network thread only hands off: a sensor message goes to the worker undecoded
(:mod:`streamwatch.ingest.raw`), a Sparkplug B or command message decoded. A QoS 1 message
is acknowledged (paho's ``manual_ack``) only once the worker has scored its readings and any
alert they caused is in the outbox (:meth:`MQTTLink.ack`), so a reading the daemon has not
finished with, through a crash or a kill, is redelivered by the broker from the persistent
session. The broker sends at most ``mqtt.receive_maximum`` unacknowledged messages (MQTT 5
Receive Maximum; Mosquitto's ``max_inflight_messages`` too), which is the backpressure: a
daemon that falls behind is sent less, and nothing it was handed is ever dropped. No exception
escapes a callback: one would kill paho's network thread.

Broker requirements for no loss across restarts: Mosquitto ``persistence true``,
``max_inflight_messages`` at least ``mqtt.receive_maximum`` (or 0, unlimited), and a
``max_queued_messages`` above the readings that can arrive while the daemon is away (the
default, 1000 per client, drops the rest).
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from streamwatch.config import ConfigError, MQTTConfig, PayloadConfig, SparkplugConfig
from streamwatch.control.commands import CommandRequest, request
from streamwatch.ingest.fastpaho import FastClient
from streamwatch.ingest.link import AcceptGate, count_message_error, count_rejects
from streamwatch.ingest.parse import Reading, Silence, parse
from streamwatch.ingest.raw import Raw
from streamwatch.ingest.sparkplug import NAMESPACE, SparkplugDecoder, is_sparkplug
from streamwatch.logutil import RateLimited
from streamwatch.outputs.metrics import Metrics

AckToken = tuple[int, int, int]
"""(connection number, message id, QoS) of a QoS 1 message the worker will acknowledge."""

log = logging.getLogger(__name__)
_limited = RateLimited(log)


class _QuietShutdown(logging.Filter):
    """paho logs an ERROR when its loop thread turns once more after a clean disconnect."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_paho_log = logging.getLogger("paho")
_paho_log.addFilter(_QuietShutdown())

ONLINE = b"online"
OFFLINE = b"offline"

# CONNACK reasons that retrying cannot fix: the user must change something.
_FATAL_CONNACK = {
    "Bad user name or password",
    "Not authorized",
    "Client identifier not valid",
    "Unsupported protocol version",
    "Banned",
    "Bad authentication method",
}


class MQTTLink(AcceptGate):
    """One broker connection, shared by ingest (subscribe) and alerts (publish)."""

    def __init__(
        self,
        cfg: MQTTConfig,
        payload: PayloadConfig,
        metrics: Metrics,
        hand_off: Callable[[Sequence[Reading] | Raw, float, AckToken | None], object],
        sparkplug: SparkplugConfig | None = None,
    ) -> None:
        self.cfg = cfg
        self.payload = payload
        self.metrics = metrics
        self.hand_off = hand_off
        spb = sparkplug or SparkplugConfig()
        self.topics = [*cfg.topics, spb.topic] if spb.enabled else list(cfg.topics)
        self._cmd = cfg.cmd_prefix + "/" if cfg.commands else None
        if self._cmd is not None:
            self.topics.append(cfg.cmd_prefix + "/#")
        """The filters subscribed to: ``mqtt.topics``, Sparkplug B's when enabled, and the
        operator commands' (``<cmd_prefix>/#``) when ``mqtt.commands`` is on."""
        self._special = (
            (NAMESPACE + "/", self._cmd) if self._cmd is not None else (NAMESPACE + "/",)
        )
        """Topic prefixes decoded in the network thread (Sparkplug B, commands): stateful or
        answered in their turn. Every other message is handed to the worker undecoded."""
        self.sparkplug = SparkplugDecoder(payload, spb.rebirth_interval_s)
        """Sparkplug B host state (births, aliases, seq); network thread only."""
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.last_error: str | None = "not connected yet"
        self._gate = threading.Lock()
        """Held by ``_on_message`` from its ``accepting`` check through its hand-off."""
        self._accepting = True
        self._connections = 0
        self._connack = False
        """Whether the broker answered this connection attempt with a CONNACK."""
        v5 = cfg.protocol == "5"
        self.client = FastClient(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        self.client.enable_logger(_paho_log)
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(100)
        # paho annotates these as int but computes with floats; sub-second backoff is useful.
        self.client.reconnect_delay_set(
            cast(int, cfg.reconnect_min_s), cast(int, cfg.reconnect_max_s)
        )
        self.client.will_set(cfg.status_topic, OFFLINE, qos=1, retain=True)
        password = cfg.password()
        if cfg.username is not None:
            self.client.username_pw_set(
                cfg.username, password.get_secret_value() if password else None
            )
        if cfg.use_tls:
            self._setup_tls()
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.on_published: Callable[[int], None] = lambda mid: None
        """Called (network thread) with the id of each publish the broker acknowledged."""

    def _setup_tls(self) -> None:
        t = self.cfg.tls
        try:
            ctx = ssl.create_default_context(cafile=str(t.ca_file) if t.ca_file else None)
        except OSError as exc:  # ssl.SSLError is an OSError too
            raise ConfigError([f"mqtt.tls.ca_file: cannot load {t.ca_file}: {_why(exc)}"]) from None
        ctx.check_hostname = t.check_hostname
        if t.cert_file and t.key_file:
            try:
                ctx.load_cert_chain(str(t.cert_file), str(t.key_file))
            except OSError as exc:
                raise ConfigError(
                    [f"mqtt.tls.cert_file/key_file: cannot load {t.cert_file}: {_why(exc)}"]
                ) from None
        self.client.tls_set_context(ctx)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; paho's thread reconnects with backoff after that."""
        props = None
        if self.cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            props.ReceiveMaximum = self.cfg.receive_maximum
        log.info(
            "connecting to %s:%d as %s (MQTT %s%s)",
            self.cfg.host,
            self.cfg.port,
            self.cfg.client_id,
            self.cfg.protocol,
            ", TLS" if self.cfg.use_tls else "",
        )
        self.client.connect_async(
            self.cfg.host,
            self.cfg.port,
            keepalive=self.cfg.keepalive_s,
            clean_start=False if self.cfg.protocol == "5" else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self.client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        """Say offline, wait for queued publishes to leave (up to ``timeout``), disconnect."""
        self.accepting = False
        if self.connected.is_set():
            info = self.client.publish(self.cfg.status_topic, OFFLINE, qos=1, retain=True)
            deadline = time.monotonic() + timeout
            while (
                not info.is_published()
                and time.monotonic() < deadline
                and (self.connected.is_set())
            ):
                time.sleep(0.02)
        self.client.disconnect()
        self.client.loop_stop()
        self.metrics.mqtt_connected.set(0)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int | None:
        """Publish at QoS 1; while disconnected paho queues it and sends it on reconnect.
        Returns its message id (see :attr:`on_published`), or None if paho refused it."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self.metrics.publish_failures.inc()
            _limited.log(
                logging.ERROR,
                "publish",
                "publish to %s failed: %s",
                topic,
                mqtt.error_string(info.rc),
            )
            return None
        return info.mid

    def ack(self, tokens: Sequence[AckToken]) -> None:
        """Acknowledge messages the worker is done with, in the order they arrived (MQTT
        wants PUBACKs in order). A message received on an earlier connection is left alone:
        the broker has already resent it on this one, and it is taken (as a duplicate) again.
        The PUBACKs leave as one write."""
        current = self._connections
        mids = [mid for conn, mid, _ in tokens if conn == current]
        try:
            self.client.ack_many(mids)
        except Exception:
            _limited.log(logging.ERROR, "ack", "cannot acknowledge %d message(s)", len(mids))

    # -- paho callbacks (network thread: never raise, never block) ------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        try:
            self._connack = True
            if rc.is_failure:
                reason = str(rc)
                self.last_error = f"broker refused the connection: {reason}"
                hint = " (check username/password)" if reason in _FATAL_CONNACK else ""
                _limited.log(
                    logging.ERROR,
                    "connack",
                    "%s%s; retrying with backoff up to %ss",
                    self.last_error,
                    hint,
                    self.cfg.reconnect_max_s,
                )
                return
            self._connections += 1
            if self._connections > 1:
                self.metrics.reconnects.inc()
            session = getattr(flags, "session_present", False)
            if self.cfg.protocol == "5":
                opts = SubscribeOptions(qos=self.cfg.qos)
                client.subscribe([(t, opts) for t in self.topics])
            else:
                client.subscribe([(t, int(self.cfg.qos)) for t in self.topics])
            client.publish(self.cfg.status_topic, ONLINE, qos=1, retain=True)
            self.last_error = None
            self.connected.set()
            self.metrics.mqtt_connected.set(1)
            log.info(
                "connected to %s:%d (session present: %s); subscribed to %s",
                self.cfg.host,
                self.cfg.port,
                session,
                ", ".join(self.topics),
            )
        except Exception:
            log.exception("error in on_connect")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        try:
            # paho calls this from inside its ``except OSError``: the exception says why (refused,
            # unreachable, or a TLS failure such as an untrusted CA or a hostname mismatch).
            exc = sys.exc_info()[1]
            why = f": {exc}" if exc is not None else ""
            self.last_error = f"cannot connect to {self.cfg.host}:{self.cfg.port}{why}"
            _limited.log(
                logging.ERROR,
                "connect_fail",
                "%s; retrying with backoff up to %ss",
                self.last_error,
                self.cfg.reconnect_max_s,
            )
        except Exception:
            log.exception("error in on_connect_fail")

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        try:
            was = self.connected.is_set()
            self.connected.clear()
            self.subscribed.clear()
            self.metrics.mqtt_connected.set(0)
            if was and self.accepting:
                self.last_error = f"disconnected: {rc}"
                _limited.log(
                    logging.WARNING, "disconnect", "disconnected from broker (%s); reconnecting", rc
                )
            elif not was and self.accepting and not self._connack:
                # Closed before CONNACK, e.g. a TLS 1.3 broker refusing our client certificate
                # after the handshake: paho logged the TLS error; say where to look.
                self.last_error = (
                    f"{self.cfg.host}:{self.cfg.port} closed the connection before accepting it "
                    f"({rc}); client certificate refused? see the paho error in the log"
                )
            self._connack = False
        except Exception:
            log.exception("error in on_disconnect")

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, codes: list[ReasonCode], props: Any
    ) -> None:
        try:
            refused = [(t, c) for t, c in zip(self.topics, codes, strict=False) if c.is_failure]
            for topic, code in refused:
                log.error("subscription to %s refused: %s", topic, code)
            if not refused:
                self.subscribed.set()
        except Exception:
            log.exception("error in on_subscribe")

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any
    ) -> None:
        try:
            self.on_published(mid)
        except Exception:
            _limited.log(logging.ERROR, "on_publish", "error in on_publish for %s", mid)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        handed = False
        with self._gate:
            if not self._accepting:
                return  # unacknowledged: the broker redelivers it to our next session
            topic = "?"
            token = (self._connections, msg.mid, msg.qos) if msg.qos > 0 else None
            try:
                now = time.time()
                try:
                    topic = msg.topic
                except UnicodeDecodeError:  # MQTT requires UTF-8 topics; a lax broker may not
                    topic = ""  # no sensor id: rejected as bad_topic
                payload = msg.payload
                if payload.__class__ is not bytes:
                    payload = bytes(payload)
                if topic and not topic.startswith(self._special):
                    # A sensor message: the worker decodes it (ingest.raw), many at a time.
                    shed = self.hand_off(Raw(topic, payload), now, token)
                    handed = True
                    if shed:
                        self._shed(shed)
                    return
                readings, rejects = self._decode(topic, payload, now)
                count_rejects(self.metrics, _limited, rejects, topic)
                marker = readings.__class__ is Silence or readings.__class__ is CommandRequest
                if readings or token is not None or marker:
                    # A QoS 1 message with nothing to score goes through the queue too, so
                    # that acknowledgements leave in the order the messages came (MQTT 4.6).
                    shed = self.hand_off(readings, now, token)
                    handed = True
                    if shed:
                        self._shed(shed)
            except Exception:
                # A message that breaks the handler would break it again: acknowledge it (so
                # it does not hold an in-flight slot forever), but count and say so.
                count_message_error(self.metrics, _limited, topic)
            if token is not None and not handed:  # acknowledged in turn, by the worker
                try:
                    self.hand_off((), time.time(), token)
                except Exception:
                    client.ack(msg.mid, msg.qos)

    def _shed(self, shed: Any) -> None:
        self.metrics.shed.inc(shed)
        _limited.log(logging.WARNING, "shed", "overloaded: shed %s oldest QoS 0 readings", shed)

    def _decode(
        self, topic: str, payload: bytes, now: float
    ) -> tuple[Sequence[Reading], list[str]]:
        """A message's readings (or a :class:`Silence` or command marker) and rejection
        reasons."""
        if self._cmd is not None and topic.startswith(self._cmd):
            target = topic[len(self._cmd) :]
            if target.endswith("/result"):  # our own answers: never a command
                return (), []
            return request(target, payload, "mqtt"), []
        if not is_sparkplug(topic):
            out = parse(topic, payload, now, self.payload)
            return out.readings, out.rejects
        h = self.sparkplug.handle(topic, payload, now)
        for event in h.events:
            self.metrics.sparkplug_events.labels(event).inc()
            _limited.log(logging.INFO, f"sparkplug_{event}", "Sparkplug %s on %s", event, topic)
        if h.rebirth is not None:
            # QoS 0, as Sparkplug sends commands; the rate limit is the decoder's.
            self.client.publish(h.rebirth[0], h.rebirth[1], qos=0)
        if h.silenced:
            return Silence(h.silenced, now), h.rejects
        return h.readings, h.rejects


def _why(exc: OSError) -> str:
    """An OS or TLS error as one short line (``strerror`` where there is one)."""
    return exc.strerror if exc.strerror and not isinstance(exc, ssl.SSLError) else str(exc)
