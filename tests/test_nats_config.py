"""The [ingest] and [nats] config: the transport switch and static partition ownership."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from streamwatch.config import Config, ConfigError, from_mapping, parse_partitions
from streamwatch.ingest.link import make_link
from streamwatch.ingest.mqtt import MQTTLink
from streamwatch.outputs.metrics import Metrics


def test_default_transport_is_mqtt_owning_every_partition() -> None:
    cfg = Config()
    assert cfg.ingest.transport == "mqtt"
    assert cfg.nats.owned() == list(range(32))


def test_partitions_take_ranges_and_numbers() -> None:
    assert parse_partitions("0-3, 8,10-11") == [0, 1, 2, 3, 8, 10, 11]
    cfg = from_mapping({"nats": {"partitions": "60-63", "partition_count": 64}})
    assert cfg.nats.owned() == [60, 61, 62, 63]


@pytest.mark.parametrize(
    ("nats", "key", "says"),
    [
        ({"partitions": "a-b"}, "nats.partitions", "not a partition number"),
        ({"partitions": "5-2"}, "nats.partitions", "bad range"),
        ({"partitions": "0-3,3"}, "nats.partitions", "listed twice"),
        ({"partitions": ""}, "nats.partitions", "not a partition number"),
        ({"partitions": "0-32"}, "nats", "not below partition_count"),
        ({"url": "mqtt://x:1883"}, "nats.url", "nats://HOST:PORT"),
        ({"subject_prefix": "a.>"}, "nats.subject_prefix", "wildcards"),
        ({"subject_prefix": "a..b"}, "nats.subject_prefix", "wildcards"),
        ({"partition_count": 0}, "nats.partition_count", "greater than or equal to 1"),
        ({"ownership": "lease", "partitions": "0-3"}, "nats", "not used with ownership"),
        ({"ownership": "auto"}, "nats.ownership", "'static' or 'lease'"),
        ({"ownership": "lease", "lease_ttl_s": 1}, "nats.lease_ttl_s", "greater than or equal"),
        ({"ownership": "lease", "daemon_id": "a.b"}, "nats.daemon_id", "letters, digits"),
        ({"ownership": "lease", "consumer": "sw.x"}, "nats", "consumer: letters, digits"),
        ({"replay_s": -1}, "nats.replay_s", "greater than or equal to 0"),
    ],
)
def test_bad_nats_settings_name_their_key(nats: dict[str, object], key: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_mapping({"nats": nats})
    (line,) = err.value.lines
    assert line.startswith(f"config: {key}: ") and says in line


def test_unknown_transport_is_a_keyed_error() -> None:
    with pytest.raises(ConfigError) as err:
        from_mapping({"ingest": {"transport": "kafka"}})
    assert err.value.lines[0].startswith("config: ingest.transport: ")


def test_make_link_picks_the_transport() -> None:
    metrics = Metrics(CollectorRegistry())
    assert isinstance(make_link(Config(), metrics, lambda *a: 0), MQTTLink)
    from streamwatch.ingest.jetstream import JetStreamLink

    cfg = from_mapping({"ingest": {"transport": "jetstream"}, "nats": {"partitions": "2-4"}})
    link = make_link(cfg, Metrics(CollectorRegistry()), lambda *a: 0)
    assert isinstance(link, JetStreamLink)
    assert link.partitions == [2, 3, 4]
    assert not link.subscribed.is_set() and link.last_error  # nothing started


def test_lease_ownership_needs_no_partitions_and_names_its_buckets() -> None:
    cfg = from_mapping({"nats": {"ownership": "lease", "partition_count": 64}})
    assert cfg.nats.ownership == "lease" and cfg.nats.lease_ttl_s == 10.0
    assert (cfg.nats.lease_bucket, cfg.nats.alert_bucket) == (
        "streamwatch_leases",
        "streamwatch_alerts",
    )
    link = make_link(
        from_mapping({"ingest": {"transport": "jetstream"}, "nats": {"ownership": "lease"}}),
        Metrics(CollectorRegistry()),
        lambda *a: 0,
    )
    assert link.partitions == [] and link.owned == []  # type: ignore[attr-defined]
    assert Config().nats.ownership == "static"  # the default stays static
