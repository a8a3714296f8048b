"""Shared fixtures: a real Mosquitto broker on a free port. Helpers are in tests/helpers.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Mosquitto

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _have_mosquitto() -> bool:
    return bool(shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists())


@pytest.fixture
def mosquitto_dir() -> Iterator[Path]:
    """A folder Mosquitto's own user can write (pytest's tmp_path parents are root-only)."""
    d = Path(tempfile.mkdtemp(prefix="sw-mosquitto-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mosquitto(mosquitto_dir: Path) -> Iterator[Mosquitto]:
    """A fresh Mosquitto for one test."""
    if not _have_mosquitto():
        pytest.fail("mosquitto binary not found: .ci/run installs it (apt-get install mosquitto)")
    broker = Mosquitto(mosquitto_dir)
    broker.start()
    yield broker
    broker.stop()
