"""Per-sensor metric families are built at scrape time, each by its own collector, so a scrape
restricted to some names (``/metrics?name[]=...``) builds only those: what a poller that needs
a few counters asks for, instead of taking the daemon's GIL for every family of every sensor."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from streamwatch.outputs.metrics import Metrics


def _metrics() -> tuple[CollectorRegistry, Metrics]:
    reg = CollectorRegistry()
    m = Metrics(reg, max_sensor_labels=2)
    m.gauges_fn = lambda: {"sensors_tracked": 3.0, "queue_readings": 7.0, "heartbeat": 5.0}
    for i, name in enumerate(["a", "b", "c"]):  # "c" goes under the _other label
        s = m.series(name)
        s.readings = 10 + i
        s.score = 1.5
        s.warming = 0
    m.series("a").active = 1
    return reg, m


def test_a_restricted_scrape_has_only_the_families_asked_for() -> None:
    reg, _ = _metrics()
    names = ["streamwatch_readings_total", "streamwatch_queue_readings"]
    text = generate_latest(reg.restricted_registry(names)).decode()
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert sorted(lines) == [
        "streamwatch_queue_readings 7.0",
        'streamwatch_readings_total{sensor="_other"} 12.0',
        'streamwatch_readings_total{sensor="a"} 10.0',
        'streamwatch_readings_total{sensor="b"} 11.0',
    ]


def test_a_full_scrape_has_every_family() -> None:
    reg, _ = _metrics()
    assert reg.get_sample_value("streamwatch_readings_total", {"sensor": "b"}) == 11
    assert reg.get_sample_value("streamwatch_score", {"sensor": "a"}) == 1.5
    assert reg.get_sample_value("streamwatch_threshold", {"sensor": "a"}) is None  # NaN: unset
    assert reg.get_sample_value("streamwatch_alerts_active") == 1
    assert reg.get_sample_value("streamwatch_sensors_warming") == 0
    assert reg.get_sample_value("streamwatch_sensors_tracked") == 3
    assert reg.get_sample_value("streamwatch_processing_latency_seconds_count") == 0
