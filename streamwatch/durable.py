"""Files that survive a power cut: written, synced, renamed into place, and the rename synced.

A rename is durable only once the directory that holds the name is synced too: without that
a crash soon after can bring back the old file (or none) although the new one's data was on
disk (ext4 ``data=ordered``, XFS).
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Sync the directory ``path`` (its entries: names created, renamed or removed)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` so that after a crash it holds the old text or the new,
    whole: written and synced beside it, renamed over it, the directory synced. Raises
    OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)
