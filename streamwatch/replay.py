"""Offline replay: a CSV of readings through exactly the daemon's engine, without a broker.

Readings from all sensors are merged in timestamp order and fed to :class:`Engine` in
chunks, as the worker would drain them. The clock is the readings' own time, so a replay is
deterministic. Each alert transition is one JSON line in the MQTT payload's format: this is
the contract detection quality is judged by.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from streamwatch.config import Config
from streamwatch.detectors.bundle import Model
from streamwatch.ingest.parse import Reading
from streamwatch.outputs.metrics import Metrics
from streamwatch.pipeline.alerts import AlertEvent
from streamwatch.pipeline.engine import Engine
from streamwatch.training import train_in_place

log = logging.getLogger(__name__)

CHUNK = 4096
"""Readings per engine call: about what the worker drains at a high ingest rate."""
LEARNING_CHUNK = 64
"""Readings per engine call while auto-training collects data or waits to swap in."""

Series = Mapping[str, tuple[np.ndarray, np.ndarray]]
"""Per sensor: (timestamps, values)."""


def merged(series: Series, size: Callable[[], int] = lambda: CHUNK) -> Iterator[list[Reading]]:
    """All sensors' readings in timestamp order (stable across sensors), in chunks of
    ``size()`` readings (asked before each chunk)."""
    names = list(series)
    if not names:
        return
    ts = np.concatenate([np.asarray(series[s][0], dtype=np.float64) for s in names])
    vals = np.concatenate([np.asarray(series[s][1], dtype=np.float64) for s in names])
    who = np.concatenate([np.full(len(series[s][0]), i) for i, s in enumerate(names)])
    order = np.argsort(ts, kind="stable")
    ts, vals, who = ts[order].tolist(), vals[order].tolist(), who[order].tolist()
    i = 0
    while i < len(ts):
        j = i + size()
        yield [
            Reading(names[w], t, v) for w, t, v in zip(who[i:j], ts[i:j], vals[i:j], strict=True)
        ]
        i = j


def replay(
    cfg: Config,
    model: Model,
    series: Series,
    registry: CollectorRegistry | None = None,
    group_model: Model | None = None,
) -> list[AlertEvent]:
    """Run the readings through a fresh engine; return every alert transition in order.
    With ``[groups]`` patterns, grouped sensors go through ``group_model`` (default: the
    bundle at ``groups.bundle_dir``, or a fresh one that warms each group up)."""
    events: list[AlertEvent] = []
    metrics = Metrics(registry or CollectorRegistry(), cfg.metrics.max_sensor_labels)
    engine: Engine

    def train_inline(data: dict[str, np.ndarray]) -> None:
        engine.request_swap(train_in_place(cfg, data))

    engine = Engine(
        cfg, model, metrics, events.append, on_training_data=train_inline, group_model=group_model
    )
    # While a model is being trained in, small chunks let the swap land as promptly as it
    # does in the daemon, whose batches are small.
    # Protected adaptation moves a sensor's level between batches, as often as the daemon's
    # small batches would: small chunks here too.
    following = cfg.learning.follow_half_life > 0
    for chunk in merged(series, lambda: LEARNING_CHUNK if following or engine.learning else CHUNK):
        engine.process([(chunk, chunk[-1].ts)], now=chunk[-1].ts)
    return events


def write_jsonl(events: list[AlertEvent], path: Path) -> None:
    """One JSON object per line, as published on MQTT."""
    with path.open("w", encoding="utf-8") as f:
        for ev in events:
            f.write(json.dumps(ev.to_json()) + "\n")
