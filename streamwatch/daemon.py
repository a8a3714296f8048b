"""The long-running daemon: MQTT in, one worker thread, alerts and metrics out.

Threads: paho's network thread decodes and hands off; one worker thread owns the engine;
prometheus-client's HTTP thread reads metrics at scrape time. SIGTERM/SIGINT drain the
queue and stop; SIGHUP reloads the model directory without dropping readings.

(Over 400 lines, knowingly: this is where threads, signals, the acknowledgement order, the
outbox, background training and the saved state meet; the alert publishing and the learned
state saving are the next candidates to move out, into ``outputs/``.)
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import CollectorRegistry

from streamwatch import durable, sdnotify, tfquiet
from streamwatch.config import Config
from streamwatch.control.commands import CommandRequest, request
from streamwatch.control.service import Operator
from streamwatch.control.snapshot import Snapshots
from streamwatch.control.state import ControlState
from streamwatch.detectors import bundle
from streamwatch.detectors.bundle import Model
from streamwatch.ingest.link import Link, Partitioned, make_link
from streamwatch.ingest.raw import RawDecoder
from streamwatch.logutil import RateLimited
from streamwatch.outputs import httpd, live
from streamwatch.outputs.metrics import Metrics
from streamwatch.outputs.outbox import Outbox
from streamwatch.pipeline.alerts import CLEARED, RAISED, AlertEvent
from streamwatch.pipeline.engine import Engine
from streamwatch.pipeline.group_path import learned_groups_dir, load_group_model
from streamwatch.pipeline.handoff import Handoff, Queued
from streamwatch.pipeline.moves import MOVES
from streamwatch.pipeline.moves import apply as apply_move
from streamwatch.training import on_plateau, train_in_place

log = logging.getLogger(__name__)
_limited = RateLimited(log)

IDLE_SWEEP_S = 10.0
SLICE_READINGS = 5000
"""The worker scores a large backlog in slices of about this many readings, acknowledging each
and telling the watchdog it is alive between them."""
LEARNED_SAVE_S = 300.0
"""How often what the daemon learned online (warmed-up sensors) is saved under state_dir."""
STALL_S = 30.0
"""The worker counts as stuck (``/readyz`` fails) when its loop has not turned for this long."""


def prepare_tensorflow(cfg: Config, training: bool = False) -> None:
    """Import TensorFlow quietly with the configured thread pools, if the configured detector
    needs it (:func:`streamwatch.tfquiet.prepare`): for ``training``, or to score and learn
    online without a trained bundle; a bundle in ``model_dir`` may score without it."""
    tfquiet.prepare(
        cfg.detector.type,
        cfg.engine.tf_intra_threads,
        cfg.engine.tf_inter_threads,
        scoring_only=not training and cfg.model_dir is not None,
        inference=cfg.engine.inference,
    )


def build_model(cfg: Config) -> tuple[Model, str]:
    """Load ``cfg.model_dir`` if set (ModelError if unusable), else an auto-trained model
    kept in the state directory, else a fresh detector. Returns the model and its source."""
    prepare_tensorflow(cfg)
    if cfg.model_dir is not None:
        return bundle.load(cfg.model_dir, expect=cfg.detector, inference=cfg.engine.inference), str(
            cfg.model_dir
        )
    auto = auto_model_dir(cfg)
    if auto is not None and (auto / bundle.MANIFEST).exists():
        try:
            model = bundle.load(auto, expect=cfg.detector, inference=cfg.engine.inference)
            if model.detector.config == cfg.detector:
                return model, str(auto)
            log.info("auto-trained model in %s has other settings; training afresh", auto)
        except bundle.ModelError as exc:
            log.warning("ignoring the auto-trained model: %s", exc)
    return bundle.fresh(cfg.detector, cfg.windows.length, cfg.threshold.false_alarm_rate), "online"


def auto_model_dir(cfg: Config) -> Path | None:
    """Where a model trained by the daemon itself is kept (under ``state_dir``)."""
    return cfg.state_dir / "model" if cfg.state_dir else None


class Daemon:
    """Wires config, detector, engine, ingest link (MQTT or JetStream) and HTTP endpoint
    together."""

    def __init__(
        self,
        cfg: Config,
        registry: CollectorRegistry | None = None,
        on_alert: Callable[[AlertEvent], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry, cfg.metrics.max_sensor_labels)
        self.on_alert = on_alert
        self.handoff = Handoff(cfg.engine.queue_readings)
        self._raw = RawDecoder(cfg.payload)
        """Decodes the messages the link handed over undecoded (worker thread)."""
        # The link first: a missing secret or TLS file is reported before the model loads.
        self.link: Link = make_link(cfg, self.metrics, self.handoff.put)
        model, source = build_model(cfg)
        self.metrics.set_model(model.name, model.hyper_hash, source, on_plateau(model))
        self.state_file = cfg.state_dir / "alerts.json" if cfg.state_dir else None
        self.outbox = Outbox(
            cfg.state_dir / "outbox.jsonl" if cfg.state_dir else None, self.link.publish
        )
        self.link.on_published = self.outbox.published
        self.moving: Partitioned | None = self.link if isinstance(self.link, Partitioned) else None
        """The link, when partitions move between daemons (their alert state then lives
        in NATS KV, not in ``state_dir``)."""
        leased = cfg.ingest.transport == "jetstream" and cfg.nats.ownership == "lease"
        self._held: list[Any] = []
        """Acknowledgement tokens held back while the outbox cannot be written."""
        self._restored_faults: dict[str, str] = {}
        """Sensor -> fault of the raised sensor-fault alerts in the saved alert state."""
        self.engine = Engine(
            cfg,
            model,
            self.metrics,
            self._publish_event,
            on_training_data=self._train_in_background,
            background_fits=True,
            raised={} if leased else self._load_alert_state(),
        )
        self.engine.faults.raised_as.update(self._restored_faults)
        self.control = ControlState(cfg.state_dir / "operator.json" if cfg.state_dir else None)
        self.operator = Operator(
            self.engine,
            self.control,
            self.metrics,
            lambda topic, payload, retain: self.outbox.add(topic, payload, retain=retain),
            cfg.mqtt.cmd_prefix,
            cfg.mqtt.state_prefix,
            after_relearn=self._save_learned,
        )
        self.snapshots = Snapshots(self.engine, self.control)
        self.metrics.gauges_fn = self._gauges
        self.http: WSGIServer | None = None
        self.heartbeat = time.time()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._warm = threading.Event()
        """Set once the worker has warmed the model up (READY=1 waits for it)."""
        self._worker = threading.Thread(target=self._work, name="worker", daemon=True)
        self._reloading = threading.Lock()
        self._saving_model = threading.Lock()
        self._saved_version = self.engine.lifecycle.version
        self._saved_groups = 0
        """The group path's version last saved under state_dir."""

    # -- health ---------------------------------------------------------------------------

    def live(self) -> str | None:
        """None while the worker loop turns; else why not."""
        if not self._worker.is_alive():
            return "worker thread is not running"
        stalled = time.time() - self.heartbeat
        return f"worker loop stalled for {stalled:.0f}s" if stalled > STALL_S else None

    def ready(self) -> str | None:
        """None when connected, subscribed, model loaded and the worker alive; else why not."""
        if (reason := self.live()) is not None:
            return reason
        if not self.link.subscribed.is_set():
            return self.link.last_error or "not subscribed yet"
        if not self.engine.detector.trained:
            return f"no trained {self.engine.detector.name} model yet"
        return None

    def _gauges(self) -> dict[str, float]:
        return {
            "sensors_tracked": len(self.engine.windows),
            "sensors_warming": self.engine.warming,
            "queue_readings": len(self.handoff),
            "heartbeat": self.heartbeat,
        }

    @property
    def metrics_port(self) -> int | None:
        """The port the HTTP endpoint listens on (useful with ``metrics.port = 0``)."""
        return self.http.server_port if self.http else None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the HTTP endpoint, the worker and the broker connection."""
        m = self.cfg.metrics
        if m.enabled:
            auth = m.basic_auth()
            commands = self.cfg.mqtt.commands and live.commands_allowed(m.host, auth is not None)
            if m.live_page and self.cfg.mqtt.commands and not commands:
                log.warning(
                    "the live page is read-only: it takes commands only behind basic auth "
                    "(metrics.basic_auth_user) or on a loopback bind, and listens on %s",
                    m.host,
                )
            page = live.routes(self.snapshots.latest, self.command if commands else None)
            app = httpd.make_app(
                self.registry, self.live, self.ready, auth, page if m.live_page else None
            )
            self.http = httpd.serve(app, m.host, m.port, m.tls_cert_file, m.tls_key_file)
        self._worker.start()
        self.link.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking messages, score what was taken (for up to ``engine.drain_timeout_s``
        unless ``timeout`` is given), publish, disconnect."""
        if self._stop.is_set():
            return
        if timeout is None:
            timeout = self.cfg.engine.drain_timeout_s
        sdnotify.stopping()
        log.info("stopping: draining %d queued readings", len(self.handoff))
        self.link.accepting = False
        self._stop.set()
        if not self._stopped.wait(timeout):
            # Not acknowledged yet, so not lost: the broker delivers them again next session.
            log.warning(
                "stopping: %d queued readings not scored within %.0fs are left "
                "unacknowledged; the broker will deliver them again",
                len(self.handoff),
                timeout,
            )
        self.link.stop(min(timeout, 5.0))
        self.outbox.close()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        log.info("stopped")

    def command(self, target: str, payload: bytes, timeout: float = 10.0) -> dict[str, object]:
        """Apply an operator command from outside MQTT (the live page): validated like an MQTT
        one, queued to the worker in order with the readings, answered once applied and
        persisted (any thread)."""
        req = request(target, payload, "http", wait=True)
        if not self.link.accepting or self._stopped.is_set():
            return {"ok": False, "error": "stopping", "action": req.action, "id": target}
        self.handoff.put(req, time.time(), None)
        assert req.done is not None
        if not req.done.wait(timeout) or req.result is None:
            return {"ok": False, "error": "timed out", "action": req.action, "id": target}
        return req.result

    def wait_ready(self, timeout: float) -> bool:
        """Block until subscribed (True) or ``timeout`` passes (False)."""
        return self.link.subscribed.wait(timeout)

    def run_forever(self) -> int:
        """Run until SIGTERM/SIGINT; SIGHUP reloads the model. Call from the main thread.
        Returns the exit code: 1 if the worker died (so systemd or Docker restarts the daemon
        instead of it acknowledging nothing forever), else 0."""
        stop = threading.Event()

        def on_stop(signum: int, frame: FrameType | None) -> None:
            log.info("received %s", signal.Signals(signum).name)
            stop.set()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            threading.Thread(target=self.reload, name="reload", daemon=True).start()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        self.start()
        notified = False
        code = 0
        while not stop.wait(0.5):
            if not notified and self.link.subscribed.is_set() and self._warm.is_set():
                sdnotify.ready()
                notified = True
            if not self._worker.is_alive():
                log.critical("the worker thread died; stopping so that the service restarts")
                code = 1
                break
        self.stop()
        return code

    def reload(self) -> bool:
        """Reload ``model_dir`` and the group bundle off the worker thread and swap them in
        between batches; False if nothing was reloaded or a reload failed (the model in use
        stays)."""
        with self._reloading:
            sdnotify.reloading()
            try:
                done = [self._reload_model(), self._reload_groups()]
            finally:
                sdnotify.ready()
        return all(r is not False for r in done) and any(r for r in done)

    def _reload_model(self) -> bool | None:
        """The per-sensor model (None: no ``model_dir`` to reload)."""
        if self.cfg.model_dir is None:
            log.warning("SIGHUP: no model_dir configured, no sensor model to reload")
            return None
        try:
            model = bundle.load(
                self.cfg.model_dir, expect=self.cfg.detector, inference=self.cfg.engine.inference
            )
        except bundle.ModelError as exc:
            log.error("reload failed, keeping the current model: %s", exc)
            return False
        with tfquiet.filtered_native_stderr():
            model.detector.warm_up()
        self.engine.request_swap(model)
        self.metrics.set_model(
            model.name, model.hyper_hash, str(self.cfg.model_dir), on_plateau(model)
        )
        log.info("reloaded model from %s", self.cfg.model_dir)
        return True

    def _reload_groups(self) -> bool | None:
        """The group bundle (None: no groups, or no bundle on disk: the groups learned
        online stay as they are)."""
        if self.engine.groups is None:
            return None
        path = self.cfg.groups.bundle_dir(self.cfg.model_dir)
        if path is None or not path.exists():
            log.info("SIGHUP: no group bundle at %s; the groups stay as they are", path)
            return None
        try:
            model = load_group_model(self.cfg)
        except bundle.ModelError as exc:
            log.error("group model reload failed, keeping the current one: %s", exc)
            return False
        with tfquiet.filtered_native_stderr():
            model.detector.warm_up()
        self.engine.request_group_swap(model)
        log.info("reloaded the group model from %s", path)
        return True

    # -- background training and alert state -----------------------------------------------

    def _train_in_background(self, data: dict[str, np.ndarray]) -> None:
        def run() -> None:
            started = time.monotonic()
            try:
                model = train_in_place(self.cfg, data)
            except Exception:
                log.exception("background training failed; the stand-in detector carries on")
                return
            if self.adopt_trained(model):
                log.info(
                    "trained %s on %d sensors in %.0fs; swapping it in",
                    model.name,
                    len(data),
                    time.monotonic() - started,
                )

        threading.Thread(target=run, name="trainer", daemon=True).start()

    def adopt_trained(self, model: Model) -> bool:
        """Keep an auto-trained model in the state directory and swap it in, unless its
        training ended on the plateau: then the stand-in carries on scoring, the model is
        neither kept nor used, and ``streamwatch_model_on_plateau`` says so. True if
        swapped in."""
        if on_plateau(model):
            training = model.trained_on.get("training", {})
            log.warning(
                "auto-trained %s ended on the plateau (val_loss %s, plateau level %s, %s "
                "steps): it would score like a per-reading Gaussian, so it is not swapped in "
                "and the stand-in carries on while more data is collected for a retry "
                "(learning.auto_train_retries); or train one with `streamwatch train` and "
                "set model_dir",
                model.name,
                training.get("val_loss"),
                training.get("plateau_level"),
                training.get("steps"),
            )
            self.metrics.model_on_plateau.set(1)
            self.engine.request_recollect()  # collect afresh and retry, while retries last
            return False
        auto = auto_model_dir(self.cfg)
        if auto is not None:
            try:
                with self._saving_model:
                    bundle.save(model, auto)
            except OSError as exc:
                log.warning("cannot keep the trained model in %s: %s", auto, exc)
        with tfquiet.filtered_native_stderr():
            model.detector.warm_up()
        self.engine.request_swap(model)
        self.metrics.set_model(model.name, model.hyper_hash, str(auto) if auto else "auto-train")
        return True

    def _save_learned(self) -> None:
        """Keep what was learned online (each warmed-up sensor's state and threshold) under
        ``state_dir``, so a restart scores at once with the same thresholds instead of
        warming every sensor up again. Worker thread only; not with a ``model_dir`` (that
        bundle is the operator's)."""
        self._save_learned_groups()
        auto = auto_model_dir(self.cfg)
        model = self.engine.model
        version = self.engine.lifecycle.version
        if (
            auto is None
            or self.cfg.model_dir is not None
            or model.name != self.cfg.detector.type  # the stand-in scores while training
            or version == self._saved_version
        ):
            return
        try:
            with self._saving_model:
                bundle.save(model, auto)
            self._saved_version = version
        except OSError as exc:
            log.warning("cannot keep the learned model in %s: %s", auto, exc)

    def _save_learned_groups(self) -> None:
        """Keep the groups learned online under ``state_dir`` too, so that a restart does not
        warm every group up again (learning from whatever the plant does just then)."""
        groups = self.engine.groups
        where = learned_groups_dir(self.cfg)
        if groups is None or where is None or groups.version == self._saved_groups:
            return
        if not groups.model.trained_on.get("learned_online"):
            return  # a trained group bundle, the operator's: nothing learned here
        try:
            bundle.save(groups.model, where)
            self._saved_groups = groups.version
        except OSError as exc:
            log.warning("cannot keep the learned groups in %s: %s", where, exc)

    def _load_alert_state(self) -> dict[str, str]:
        if self.state_file is None or not self.state_file.exists():
            return {}
        try:
            doc = json.loads(self.state_file.read_text(encoding="utf-8"))
            raised = {str(k): str(v) for k, v in doc["raised"].items()}
            faults = doc.get("faults") or {}
            self._restored_faults = {str(k): str(v) for k, v in faults.items() if k in raised}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable alert state %s: %s", self.state_file, exc)
            return {}
        log.info("resuming %d raised alert(s) from %s", len(raised), self.state_file)
        return raised

    def _save_alert_state(self, raised: dict[str, str]) -> None:
        if self.state_file is None:
            return
        try:
            faults = {s: f for s, f in self.engine.faults.raised_as.items() if s in raised}
            durable.write_atomic(self.state_file, json.dumps({"raised": raised, "faults": faults}))
        except OSError as exc:
            log.error("cannot save alert state to %s: %s", self.state_file, exc)

    # -- worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        next_sweep = time.time() + IDLE_SWEEP_S
        next_save = time.time() + LEARNED_SAVE_S
        watchdog_every = (sdnotify.watchdog_interval() or 20.0) / 2
        next_watchdog = 0.0
        try:
            with tfquiet.filtered_native_stderr():
                self.engine.detector.warm_up()
            settle_heap(after_swap=False)
            swaps = self.engine.swaps
            self._warm.set()
            while True:
                stopping = self._stop.is_set()
                items = self._raw.decode_batch(
                    self.handoff.drain(0 if stopping else 0.2), self.metrics
                )
                if not items and self._held:
                    self._process([])  # retry the outbox write that held these back
                for part in _slices(items, SLICE_READINGS):
                    self._process(part)
                    now = time.time()
                    self.heartbeat = now
                    if now >= next_watchdog:
                        sdnotify.watchdog()
                        next_watchdog = now + watchdog_every
                if self.engine.swaps != swaps:  # the old model may now be garbage
                    swaps = self.engine.swaps
                    settle_heap()
                now = time.time()
                self.heartbeat = now
                if now >= next_watchdog:
                    sdnotify.watchdog()
                    next_watchdog = now + watchdog_every
                if self.operator.tick(now):
                    self.outbox.flush()
                self.snapshots.tick(now)
                if now >= next_sweep:
                    if self.engine.evict_idle(now):  # silent sensors: their alerts out now
                        self.outbox.flush()
                    if (raised := self.engine.raised_changes()) is not None:
                        self._save_alert_state(raised)
                    next_sweep = now + IDLE_SWEEP_S
                if now >= next_save:
                    self._save_learned()
                    next_save = now + LEARNED_SAVE_S
                if stopping and not len(self.handoff):
                    break
            self._save_learned()
        finally:
            self.engine.close()
            self._stopped.set()

    def _process(self, items: list[Queued]) -> None:
        """Score one slice, make its alerts durable, then acknowledge its messages: a reading
        is acknowledged only once it was scored and any alert it caused is in the outbox; an
        operator command only once it was applied, persisted and answered, in its turn."""
        if self.moving is not None:  # what a partition given up left: its next owner reads it
            owned = self.moving.still_owned
            items = [it for it in items if it[2] is None or owned(it[2])]
        run: list[Queued] = []
        for item in items:
            cls = item[0].__class__
            if cls is CommandRequest or cls in MOVES:
                if run:
                    self._score(run)
                    run = []
                if cls is CommandRequest:
                    self._command(item[0])  # type: ignore[arg-type]
                else:
                    apply_move(self.engine, item[0])  # type: ignore[arg-type]
            else:
                run.append(item)
        if run:
            self._score(run)
        on_disk = self.outbox.flush()
        if (raised := self.engine.raised_changes()) is not None:
            self._save_alert_state(raised)
        self._held.extend(tok for *_, tok in items if tok is not None)
        if on_disk:
            self.link.ack(self._held)
            self._held = []
        else:
            # The alerts are published but not on disk: hold the acknowledgements back (the
            # broker stops sending once its in-flight window is full) until a flush succeeds.
            self.metrics.outbox_write_errors.inc()
            _limited.log(
                logging.ERROR,
                "outbox_hold",
                "alert outbox not writable: holding back %d acknowledgements",
                len(self._held),
            )

    def _command(self, req: CommandRequest) -> None:
        try:
            self.operator.apply(req, time.time())
        except Exception:
            log.exception("error applying command %s on %s", req.action, req.target)
            req.result = {"ok": False, "error": "internal error", "action": req.action}
            if req.done is not None:
                req.done.set()

    def _score(self, items: list[Queued]) -> None:
        try:
            if items:
                self.engine.process(items)
        except Exception:
            # Deterministic failures would recur on redelivery: acknowledge, but say so.
            self.metrics.message_errors.inc(len(items))
            _limited.log(
                logging.ERROR,
                "process_error",
                "error processing %d messages (acknowledged, counted in "
                "streamwatch_message_errors_total); carrying on",
                len(items),
                exc_info=True,
            )

    def _publish_event(self, ev: AlertEvent) -> None:
        mq = self.cfg.mqtt
        if self.moving is not None:
            self.moving.alert_changed(ev)
        doc = self.operator.annotate(ev.sensor, ev.to_json())
        self.outbox.add(
            f"{mq.alert_prefix}/{ev.sensor}", json.dumps(doc, separators=(",", ":")).encode()
        )
        state = {
            "state": ev.state,
            "alert_id": ev.alert_id,
            "ts": ev.ts,
            "score": ev.score,
            "threshold": ev.threshold,
        }
        self.operator.annotate(ev.sensor, state)
        self.outbox.add(f"{mq.state_prefix}/{ev.sensor}", json.dumps(state).encode(), retain=True)
        self.snapshots.alert(doc)
        if ev.state == CLEARED:
            self.operator.cleared(ev.sensor)
        level = logging.WARNING if ev.state == RAISED else logging.INFO
        log.log(
            level,
            "alert %s: sensor=%s score=%.3f threshold=%.3f id=%s",
            ev.state,
            ev.sensor,
            ev.score,
            ev.threshold,
            ev.alert_id,
        )
        if self.on_alert is not None:
            self.on_alert(ev)


def settle_heap(after_swap: bool = True) -> None:
    """Collect, then freeze what is left out of the cyclic collector's full passes.

    What start-up made (modules, the model, configs) lives as long as the process; left in
    the collector's oldest generation, every full pass walks all of it and stalls the worker
    for tens of milliseconds (docs/performance.md). Frozen objects are never collected, so
    ``after_swap`` everything is unfrozen first and the old model collected (one full pass
    over the whole heap); at start-up, what is frozen already stays so.
    """
    if after_swap:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


def _slices(items: list[Queued], size: int) -> list[list[Queued]]:
    """Consecutive runs of messages holding about ``size`` readings each (never splitting a
    message), so a large backlog is scored, acknowledged and reported alive piece by piece."""
    out: list[list[Queued]] = []
    part: list[Queued] = []
    n = 0
    for item in items:
        part.append(item)
        n += len(item[0])
        if n >= size:
            out.append(part)
            part, n = [], 0
    if part:
        out.append(part)
    return out
