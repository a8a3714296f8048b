"""The alert outbox: durable before acknowledgement, resent after a restart until acknowledged."""

from __future__ import annotations

import json
from pathlib import Path

from streamwatch.outputs.outbox import Outbox


class _Broker:
    """Publishes into a list and hands out message ids, as paho does."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool]] = []

    def publish(self, topic: str, payload: bytes, retain: bool) -> int:
        self.sent.append((topic, payload, retain))
        return len(self.sent)


def test_entries_are_on_disk_before_they_are_sent(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    broker = _Broker()
    box = Outbox(path, broker.publish)
    box.add("streamwatch/alerts/a", b'{"state":"raised"}')
    assert broker.sent == [] and len(box) == 1  # nothing leaves before flush ...
    box.flush()
    assert broker.sent == [("streamwatch/alerts/a", b'{"state":"raised"}', False)]
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines == [
        {
            "seq": 1,
            "topic": "streamwatch/alerts/a",
            "payload": '{"state":"raised"}',
            "retain": False,
        }
    ]  # ... and it was written first


def test_a_restart_resends_what_the_broker_never_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    first = _Broker()
    box = Outbox(path, first.publish)
    for i in range(3):
        box.add(f"t/{i}", f"p{i}".encode(), retain=i == 2)
    box.flush()
    box.published(1)  # only the first was acknowledged before the crash
    box.flush()
    box.close()
    again = _Broker()
    box2 = Outbox(path, again.publish)
    assert len(box2) == 2
    box2.flush()
    assert again.sent == [("t/1", b"p1", False), ("t/2", b"p2", True)]
    box2.published(1)
    box2.published(2)
    box2.flush()
    assert len(box2) == 0
    assert len(Outbox(path, _Broker().publish)) == 0


def test_a_damaged_line_is_skipped_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    path.write_text('{"seq": 1, "topic": "t", "payload": "p", "retain": false}\n{"seq": 2, "to\n')
    broker = _Broker()
    box = Outbox(path, broker.publish)
    box.flush()
    assert broker.sent == [("t", b"p", False)]


def test_without_a_state_directory_it_lives_in_memory() -> None:
    broker = _Broker()
    box = Outbox(None, broker.publish)
    box.add("t", b"p")
    box.flush()
    assert broker.sent == [("t", b"p", False)] and len(box) == 1
    box.published(1)
    box.flush()
    assert len(box) == 0


def test_a_failed_write_is_reported_and_retried_while_the_alert_still_goes_out(
    tmp_path: Path,
) -> None:
    """A full disk (here: the outbox's folder is a file): flush says the entry is not durable,
    publishes it anyway, and writes it on the first flush that can."""
    blocker = tmp_path / "state"
    blocker.write_text("not a folder")
    broker = _Broker()
    box = Outbox(blocker / "outbox.jsonl", broker.publish)
    box.add("streamwatch/alerts/a", b'{"state":"raised"}')
    assert box.flush() is False
    assert [t for t, _, _ in broker.sent] == ["streamwatch/alerts/a"]
    assert box.flush() is False  # still failing: still not durable, not sent twice
    assert len(broker.sent) == 1
    blocker.unlink()
    assert box.flush() is True
    lines = [json.loads(x) for x in (blocker / "outbox.jsonl").read_text().splitlines()]
    assert [x.get("topic") for x in lines] == ["streamwatch/alerts/a"]
    assert len(broker.sent) == 1
