"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def client(nats_server: Any) -> Iterator[Any]:
    """A NATS client (:class:`tests.natsutil.NatsClient`) on the module's ``nats_server``."""
    from tests.natsutil import NatsClient

    c = NatsClient(nats_server.url)
    yield c
    c.close()
