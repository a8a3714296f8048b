"""Every metric in one place, on a registry that is passed in (docs/metrics.md lists them).

The worker never touches a prometheus-client object per reading. Per-sensor values live in
plain :class:`SensorSeries` records that the worker updates as attributes, and histograms are
filled a batch at a time (:class:`BulkHistogram`); a custom collector turns both into metric
families when Prometheus scrapes. So a reading costs a few attribute writes, and per-sensor
labels are capped: past ``max_sensor_labels`` sensors share the label ``_other``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from streamwatch import DIST_NAME
from streamwatch.control.commands import ACTIONS
from streamwatch.ingest import parse, sparkplug

OTHER = "_other"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MARGIN_BUCKETS = (-20.0, -10.0, -5.0, -2.0, -1.0, 0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)


def package_version() -> str:
    """The installed streamwatch version."""
    try:
        return version(DIST_NAME)
    except PackageNotFoundError:
        return "unknown"


@dataclass(slots=True)
class SensorSeries:
    """The per-sensor values exported under one ``sensor`` label."""

    readings: int = 0
    raised: int = 0
    cleared: int = 0
    score: float = math.nan
    threshold: float = math.nan
    warming: int = 1
    active: int = 0
    last_ts: float = math.nan


class BulkHistogram:
    """A label-less histogram filled from numpy arrays, one call per batch."""

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = np.asarray(tuple(bounds), dtype=np.float64)
        self._counts = np.zeros(self.bounds.size + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, values: np.ndarray) -> None:
        """Add every finite value of ``values``."""
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if not v.size:
            return
        idx = np.searchsorted(self.bounds, v, side="left")  # buckets are "less or equal"
        add = np.bincount(idx, minlength=self._counts.size)
        with self._lock:
            self._counts += add
            self._sum += float(v.sum())

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        """The histogram as a metric family with cumulative buckets."""
        with self._lock:
            cum = np.cumsum(self._counts)
            total = self._sum
        buckets = [(repr(float(b)), int(c)) for b, c in zip(self.bounds, cum[:-1], strict=True)]
        buckets.append(("+Inf", int(cum[-1])))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


class Metrics:
    """The daemon's metrics. Create one per daemon (or per test) with its own registry."""

    def __init__(self, registry: CollectorRegistry, max_sensor_labels: int = 1000) -> None:
        # No ``*_created`` twin per counter: it doubles the series count and no dashboard or
        # rule here reads it (counter resets are found by rate() without it).
        disable_created_metrics()
        self.registry = registry
        self.max_sensor_labels = max_sensor_labels
        self._series: dict[str, SensorSeries] = {}
        self._other = SensorSeries(warming=0)
        self.latency = BulkHistogram(LATENCY_BUCKETS)
        self.margin = BulkHistogram(MARGIN_BUCKETS)
        self.gauges_fn: Callable[[], dict[str, float]] = dict

        self.rejected = Counter(
            "streamwatch_rejected",
            "Readings or messages rejected, by reason",
            ["reason"],
            registry=registry,
        )
        for reason in (*parse.REASONS, *sparkplug.REASONS):
            self.rejected.labels(reason)
        self.shed = Counter(
            "streamwatch_readings_shed",
            "QoS 0 readings dropped by the overload policy (oldest first); QoS 1 readings are "
            "never shed: the broker holds them back instead",
            registry=registry,
        )
        self.message_errors = Counter(
            "streamwatch_message_errors",
            "Messages whose handling failed unexpectedly (acknowledged, logged at a rate limit)",
            registry=registry,
        )
        self.windows_scored = Counter(
            "streamwatch_windows_scored", "Windows (or single readings) scored", registry=registry
        )
        self.evicted = Counter(
            "streamwatch_sensors_evicted",
            "Sensors evicted (idle or over the cap)",
            registry=registry,
        )
        self.commands = Counter(
            "streamwatch_commands",
            "Operator commands (MQTT or the live page), by action and result (ok or error)",
            ["action", "result"],
            registry=registry,
        )
        for action in (*ACTIONS, "invalid"):  # zero series from the start, as dashboards need
            for result in ("ok", "error"):
                self.commands.labels(action, result)
        self.feed_outages = Counter(
            "streamwatch_feed_outages",
            "Silences of the whole feed (no sensor reported), taken as one outage each, not "
            "as every sensor's dropout",
            registry=registry,
        )
        self.window_restarts = Counter(
            "streamwatch_window_restarts", "Windows restarted after a gap", registry=registry
        )
        self.sparkplug_events = Counter(
            "streamwatch_sparkplug_events",
            "Sparkplug B births, deaths, seq gaps and rebirth requests, by event",
            ["event"],
            registry=registry,
        )
        for event in sparkplug.EVENTS:
            self.sparkplug_events.labels(event)
        self.silenced = Counter(
            "streamwatch_sensors_silenced",
            "Sensors marked silent by a Sparkplug NDEATH or DDEATH (their windows restart)",
            registry=registry,
        )
        self.group_missing_steps = Counter(
            "streamwatch_group_missing_steps",
            "Group grid steps with a member silent past groups.max_age_s (imputed or "
            "restarted, per groups.missing)",
            registry=registry,
        )
        self.sensor_faults = Counter(
            "streamwatch_sensor_faults",
            "Sensor-fault alerts raised, by fault (stuck, rail, out_of_range, silent, "
            "quantisation)",
            ["fault"],
            registry=registry,
        )
        self.alert_raises = Counter(
            "streamwatch_alert_raises",
            "Alerts raised, by kind (process or sensor_fault)",
            ["kind"],
            registry=registry,
        )
        self.sensors_in_fault = Gauge(
            "streamwatch_sensors_in_fault",
            "Sensors whose latest fault check found a fault, by fault",
            ["fault"],
            registry=registry,
        )
        for fault in ("stuck", "rail", "out_of_range", "silent", "quantisation"):
            self.sensor_faults.labels(fault)
            self.sensors_in_fault.labels(fault)
        for kind in ("process", "sensor_fault"):
            self.alert_raises.labels(kind)
        self.mqtt_connected = Gauge(
            "streamwatch_mqtt_connected", "1 when connected to the broker", registry=registry
        )
        self.reconnects = Counter(
            "streamwatch_mqtt_reconnects", "Connections made after the first", registry=registry
        )
        self.publish_failures = Counter(
            "streamwatch_publish_failures",
            "Alert or state publishes that paho refused",
            registry=registry,
        )
        self.outbox_write_errors = Counter(
            "streamwatch_outbox_write_errors",
            "Worker turns whose alerts could not be written to the outbox (acknowledgements "
            "held back until a write succeeds)",
            registry=registry,
        )
        self.build_info = Gauge(
            "streamwatch_build_info",
            "Build and detector in use",
            ["version", "detector"],
            registry=registry,
        )
        self.model_info = Gauge(
            "streamwatch_model_info",
            "The loaded model",
            ["detector", "config_hash", "source"],
            registry=registry,
        )
        self.auto_train_retries = Counter(
            "streamwatch_auto_train_retries",
            "Auto-trainings retried on freshly collected data after one ended on the plateau",
            registry=registry,
        )
        self.model_on_plateau = Gauge(
            "streamwatch_model_on_plateau",
            "1 when the model in use, or the last auto-trained one (then not swapped in), "
            "ended its training on the LSTM-VAE plateau",
            registry=registry,
        )
        for name, kind, doc, attr in _PER_SENSOR:
            registry.register(_SensorFamily(self, name, kind, doc, attr))
        registry.register(_SensorCollector(self))

    def set_model(
        self, detector: str, config_hash: str, source: str, on_plateau: bool = False
    ) -> None:
        """Record which model is loaded (replacing the previous one), and whether its
        training ended on the plateau."""
        self.build_info.clear()
        self.build_info.labels(package_version(), detector).set(1)
        self.model_info.clear()
        self.model_info.labels(detector, config_hash, source).set(1)
        self.model_on_plateau.set(int(on_plateau))

    def series(self, sensor: str) -> SensorSeries:
        """The record a sensor's values go to: its own while labels last, else ``_other``."""
        s = self._series.get(sensor)
        if s is not None:
            return s
        if len(self._series) >= self.max_sensor_labels:
            return self._other
        s = self._series[sensor] = SensorSeries()
        return s

    def release(self, sensor: str) -> None:
        """Free an evicted sensor's label for another sensor."""
        self._series.pop(sensor, None)

    def per_sensor(self) -> list[tuple[str, SensorSeries]]:
        """A snapshot of the labelled sensors (safe to call from the scrape thread)."""
        return list(self._series.items())

    @property
    def other(self) -> SensorSeries:
        """The catch-all record for sensors past the label cap."""
        return self._other


_PER_SENSOR = (
    # (family name, counter or gauge, help, SensorSeries attribute)
    ("streamwatch_readings", "counter", "Readings accepted", "readings"),
    ("streamwatch_alerts_raised", "counter", "Alerts raised", "raised"),
    ("streamwatch_alerts_cleared", "counter", "Alerts cleared", "cleared"),
    ("streamwatch_score", "gauge", "Latest anomaly score", "score"),
    ("streamwatch_threshold", "gauge", "Calibrated score threshold", "threshold"),
    ("streamwatch_sensor_warming", "gauge", "1 while the sensor warms up", "warming"),
    ("streamwatch_alert_active", "gauge", "1 while the sensor's alert is raised", "active"),
    (
        "streamwatch_last_reading_timestamp_seconds",
        "gauge",
        "Timestamp of the sensor's last accepted reading",
        "last_ts",
    ),
)
"""The per-sensor families, each built by its own collector at scrape time."""


class _SensorFamily(Collector):
    """One per-sensor family. It describes itself, so a scrape restricted to some names
    (``/metrics?name[]=...``) builds only the families asked for."""

    def __init__(self, m: Metrics, name: str, kind: str, doc: str, attr: str) -> None:
        self.m = m
        self.name = name
        self.kind = kind
        self.doc = doc
        self.attr = attr

    def _family(self) -> CounterMetricFamily | GaugeMetricFamily:
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        return cls(self.name, self.doc, labels=["sensor"])

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        fam = self._family()
        attr = self.attr
        add = fam.add_metric
        for sensor, s in self.m.per_sensor():
            v = getattr(s, attr)
            if v == v:  # NaN: no value yet
                add([sensor], v)
        other = self.m.other
        if self.kind == "counter" and (other.readings or other.raised):
            add([OTHER], getattr(other, attr))
        yield fam


class _SensorCollector(Collector):
    """The per-sensor totals, gauges from ``gauges_fn`` and the bulk histograms, at scrape
    time."""

    _NAMES = (
        ("streamwatch_alerts_active", "Sensors in the raised state"),
        ("streamwatch_sensors_warming", "Sensors still warming up"),
        ("streamwatch_sensors_tracked", "Sensors with live window state"),
        ("streamwatch_queue_readings", "Readings waiting for the worker"),
        ("streamwatch_worker_heartbeat_timestamp_seconds", "Last time the worker loop turned"),
    )
    _KEYS = (None, "sensors_warming", "sensors_tracked", "queue_readings", "heartbeat")

    def __init__(self, m: Metrics) -> None:
        self.m = m

    def describe(self) -> list[Metric]:
        out: list[Metric] = [GaugeMetricFamily(n, d) for n, d in self._NAMES]
        out.append(HistogramMetricFamily("streamwatch_processing_latency_seconds", ""))
        out.append(HistogramMetricFamily("streamwatch_score_margin", ""))
        return out

    def collect(self) -> Iterator[Metric]:
        m = self.m
        rows = m.per_sensor()
        n_active = m.other.active + sum(s.active for _, s in rows)
        gauges = m.gauges_fn()
        values: dict[str | None, float] = {None: n_active}
        if "sensors_warming" not in gauges:
            values["sensors_warming"] = sum(s.warming for _, s in rows)
        values.update(gauges)
        for (name, doc), key in zip(self._NAMES, self._KEYS, strict=True):
            if key in values:
                yield _gauge(name, doc, values[key])
        yield m.latency.family(
            "streamwatch_processing_latency_seconds", "Reading arrival to verdict"
        )
        yield m.margin.family(
            "streamwatch_score_margin", "Score minus threshold (nats) of each scored window"
        )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)
