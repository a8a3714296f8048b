"""Files the daemon relies on after a crash are synced, renamed, and the rename synced.

A power cut cannot be simulated here, so these tests record the ``os.fsync`` calls (which
file or directory each synced, and what the final name held at that moment) and check that
what was written reads back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from streamwatch.config import from_mapping
from streamwatch.daemon import Daemon
from streamwatch.outputs.outbox import Outbox

Synced = tuple[str, str | None]
"""(the path an fsync'd descriptor pointed at, the text of the watched file at that moment)."""


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch, watched: Path) -> list[Synced]:
    calls: list[Synced] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        text = watched.read_text(encoding="utf-8") if watched.exists() else None
        calls.append((target, text))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_alert_state_is_synced_then_renamed_and_the_rename_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12, item 7: ``alerts.json`` was renamed into place but the directory never
    synced, so after a power cut the old state (or none) could come back and a raised alert
    be raised again or never cleared. Pins: the data is synced in the temporary file before
    the rename; the directory is synced after it (the final name then already holds the new
    text); a new daemon reads the same state back."""
    state = tmp_path / "state"
    cfg = from_mapping({"state_dir": str(state), "detector": {"type": "gaussian"}})
    daemon = Daemon(cfg)
    path = state / "alerts.json"
    raised = {"pump/1": "a1b2", "valve ü": "c3d4"}
    calls = _record_fsyncs(monkeypatch, path)
    daemon._save_alert_state(raised)
    file_sync = [i for i, (p, _) in enumerate(calls) if p == str(path) + ".tmp"]
    dir_sync = [i for i, (p, _) in enumerate(calls) if p == str(state)]
    assert file_sync and dir_sync, calls
    assert file_sync[-1] < dir_sync[-1]
    assert calls[file_sync[-1]][1] is None  # not yet renamed when its data was synced
    assert json.loads(calls[dir_sync[-1]][1] or "") == {"raised": raised, "faults": {}}
    assert not (state / "alerts.json.tmp").exists()
    assert Daemon(cfg)._load_alert_state() == raised


def test_outbox_compaction_syncs_the_directory_after_its_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox is rewritten the same way when compacted (or emptied): an entry still open
    must survive the rename, or its alert would never be resent after a power cut."""
    path = tmp_path / "state" / "outbox.jsonl"
    box = Outbox(path, lambda topic, payload, retain: None)  # never acknowledged: stays open
    box.add("streamwatch/alerts/a", b'{"state": "raised"}')
    box.flush()
    calls = _record_fsyncs(monkeypatch, path)
    box._rewrite()
    assert calls and calls[-1][0] == str(path.parent), calls
    assert [json.loads(line)["topic"] for line in (calls[-1][1] or "").splitlines()] == [
        "streamwatch/alerts/a"
    ]
    box.close()
    assert len(Outbox(path, lambda topic, payload, retain: None)) == 1


def test_acknowledgements_wait_while_the_outbox_cannot_be_written(tmp_path: Path) -> None:
    """Readings whose alerts are not on disk are not acknowledged: their tokens are held (in
    arrival order) and acknowledged with the first turn whose outbox write succeeds, which an
    idle worker turn retries; each failed turn is counted."""
    cfg = from_mapping({"state_dir": str(tmp_path / "s"), "detector": {"type": "gaussian"}})
    daemon = Daemon(cfg)
    acked: list[object] = []
    daemon.link.ack = acked.extend  # type: ignore[method-assign,assignment]
    results = iter([False, False, True])
    daemon.outbox.flush = lambda: next(results)  # type: ignore[method-assign]
    daemon._process([((), 0.0, "t1"), ((), 0.0, None)])
    daemon._process([((), 0.0, "t2")])
    assert acked == [] and daemon._held == ["t1", "t2"]
    daemon._process([])  # the idle retry
    assert acked == ["t1", "t2"] and daemon._held == []
    errors = daemon.metrics.registry.get_sample_value("streamwatch_outbox_write_errors_total")
    assert errors == 2


def test_a_fault_alert_restored_after_a_restart_clears_as_that_fault(tmp_path: Path) -> None:
    """The alert state keeps which raised alerts are sensor faults: after a restart, the
    clear of a ``stuck`` alert still says ``kind: sensor_fault, fault: stuck``."""
    import math
    from types import SimpleNamespace

    from streamwatch.pipeline.alerts import AlertEvent

    cfg = from_mapping({"state_dir": str(tmp_path / "s"), "detector": {"type": "gaussian"}})
    first = Daemon(cfg)
    first.engine.faults.raised_as.update({"pump/1": "stuck", "gone": "silent"})
    first._save_alert_state({"pump/1": "abc", "valve/2": "def"})
    again = Daemon(cfg)
    assert again._load_alert_state() == {"pump/1": "abc", "valve/2": "def"}
    assert again.engine.faults.raised_as == {"pump/1": "stuck"}
    ev = AlertEvent("pump/1", "cleared", 1.0, math.nan, 1.0, "gaussian", 1.0, 1.0, "abc")
    again.engine.faults.cleared(ev, SimpleNamespace(fault=None))
    assert (ev.kind, ev.fault) == ("sensor_fault", "stuck")
    assert again.engine.faults.raised_as == {}
    process = AlertEvent("valve/2", "cleared", 1.0, math.nan, 1.0, "gaussian", 1.0, 1.0, "def")
    again.engine.faults.cleared(process, SimpleNamespace(fault=None))
    assert (process.kind, process.fault) == ("process", None)
