"""What the daemon needs from a transport, whichever one feeds it.

A link takes messages from its broker, decodes them and hands each one's readings to the worker
(``hand_off``) with an acknowledgement token; the worker calls :meth:`Link.ack` with the tokens,
in the order their messages arrived, once the readings are scored and any alert they caused is
durable in the outbox. A message not acknowledged (a crash, a kill, a shutdown that left it
unscored) is delivered again by the broker: at least once, never lost. The link also publishes
the outbox's alert and state messages and says, through :attr:`Link.on_published`, which of
them the broker has taken.

Two implementations: :class:`streamwatch.ingest.mqtt.MQTTLink` (paho, the default) and
:class:`streamwatch.ingest.jetstream.JetStreamLink` (NATS JetStream, partitioned scale-out).
:func:`make_link` picks one from ``ingest.transport``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from streamwatch.config import Config
from streamwatch.ingest.parse import Reading
from streamwatch.ingest.raw import Raw
from streamwatch.outputs.metrics import Metrics

if TYPE_CHECKING:
    from streamwatch.logutil import RateLimited
    from streamwatch.pipeline.alerts import AlertEvent

HandOff = Callable[[Sequence[Reading] | Raw, float, Any], object]
"""The worker's queue: (readings, a marker or an undecoded message, arrival time,
acknowledgement token or None)."""


def count_rejects(
    metrics: Metrics, limited: RateLimited, rejects: Sequence[str], where: str
) -> None:
    """Count a message's rejected items by reason and say so (rate-limited)."""
    if not rejects:
        return
    for reason in rejects:
        metrics.rejected.labels(reason).inc()
    limited.log(
        logging.WARNING,
        "rejected",
        "rejected %d item(s) on %r: %s",
        len(rejects),
        where,
        ", ".join(sorted(set(rejects))),
    )


def count_message_error(metrics: Metrics, limited: RateLimited, topic: str) -> None:
    """Count a message whose handling raised, with its traceback (rate-limited). Called from
    an ``except`` block: the message is acknowledged anyway, since it would break again."""
    metrics.message_errors.inc()
    limited.log(
        logging.ERROR,
        "message_error",
        "error handling a message on %r (acknowledged, counted in "
        "streamwatch_message_errors_total)",
        topic,
        exc_info=True,
    )


class AcceptGate:
    """The ``accepting`` switch both links share. Their message callbacks hand off while
    holding ``_gate``, so once the setter returns no message is halfway into the queue: the
    worker's final drain sees every reading that was (or will be) acknowledged."""

    _gate: threading.Lock
    _accepting: bool

    @property
    def accepting(self) -> bool:
        """Cleared at shutdown: later messages go back to the broker for redelivery."""
        return self._accepting

    @accepting.setter
    def accepting(self, value: bool) -> None:
        with self._gate:
            self._accepting = value


class Link(Protocol):
    """A transport as the daemon uses it (worker thread: ``ack``, ``publish``; main thread:
    ``start``, ``stop``, ``accepting``; health checks: ``subscribed``, ``last_error``)."""

    hand_off: HandOff
    """Where decoded messages go (the worker's queue)."""
    connected: threading.Event
    """Set while connected to the broker."""
    subscribed: threading.Event
    """Set while the link is connected and receiving (``/readyz``)."""
    last_error: str | None
    """Why it is not (for ``/readyz`` and the log), None when it is."""
    on_published: Callable[[int], None]
    """Called with the id :meth:`publish` returned once the broker has taken that message."""

    @property
    def accepting(self) -> bool:
        """Whether new messages are handed to the worker (cleared at shutdown)."""
        ...

    @accepting.setter
    def accepting(self, value: bool) -> None: ...

    def start(self) -> None:
        """Connect in the background and start handing messages off."""
        ...

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to ``timeout``), then disconnect."""
        ...

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int | None:
        """Publish an alert or state message; its id for :attr:`on_published`, None if refused."""
        ...

    def ack(self, tokens: Sequence[Any]) -> None:
        """Acknowledge the messages the worker is done with, in the order they arrived."""
        ...


@runtime_checkable
class Partitioned(Protocol):
    """A link whose partitions can move to another daemon (JetStream with leases)."""

    def still_owned(self, token: Any) -> bool:
        """False once the message ``token`` stands for belongs to a partition given up: the
        worker drops it unscored and unacknowledged (the partition's next owner reads it)."""
        ...

    def alert_changed(self, ev: AlertEvent) -> None:
        """Record a raise or clear where the partition's next owner finds it."""
        ...


def make_link(cfg: Config, metrics: Metrics, hand_off: HandOff) -> Link:
    """The link ``ingest.transport`` asks for (nats-py is imported only for jetstream)."""
    if cfg.ingest.transport == "jetstream":
        from streamwatch.ingest.jetstream import JetStreamLink

        return JetStreamLink(cfg.nats, cfg.payload, metrics, hand_off)
    from streamwatch.ingest.mqtt import MQTTLink

    return MQTTLink(cfg.mqtt, cfg.payload, metrics, hand_off, cfg.sparkplug)
