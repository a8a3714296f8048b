"""Labelled sensor-stream simulators: signal shapes, anomaly injectors, an MQTT publisher."""

from simulators.generate import (
    ALL_KINDS,
    AnomalySpec,
    Event,
    SensorSpec,
    Simulated,
    read_csv,
    read_events,
    simulate,
)

__all__ = [
    "ALL_KINDS",
    "AnomalySpec",
    "Event",
    "SensorSpec",
    "Simulated",
    "read_csv",
    "read_events",
    "simulate",
]
