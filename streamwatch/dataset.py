"""Read sensor readings from CSV: ``timestamp,sensor,value[,label,...]``.

The header names the columns, in any order; ``timestamp``, ``sensor`` and ``value`` are
required, ``label`` (0 normal, non-zero anomalous) is optional and any other column is
ignored. Timestamps are epoch seconds or ISO 8601 (a time without a zone is taken as UTC).
Every bad row is an error naming the file and line; nothing is skipped silently.
"""

from __future__ import annotations

import csv
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REQUIRED = ("timestamp", "sensor", "value")

Series = tuple[np.ndarray, np.ndarray, np.ndarray | None]
"""(timestamps in epoch seconds, values, labels or None), sorted by timestamp."""


class DatasetError(ValueError):
    """A CSV file that cannot be read as readings; the message names the file and line."""


def parse_timestamp(text: str) -> float:
    """Epoch seconds from epoch seconds or ISO 8601 text; ValueError if it is neither."""
    text = text.strip()
    try:
        ts = float(text)
    except ValueError:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ts = dt.timestamp()
    if not math.isfinite(ts):
        raise ValueError("not a finite time")
    return ts


def read_csv(path: Path) -> dict[str, Series]:
    """Readings per sensor from a CSV file, each sensor's sorted by timestamp.

    Raises :class:`DatasetError` (a ValueError) on a missing column or a bad row, and
    OSError if the file cannot be opened.
    """
    path = Path(path)
    rows: dict[str, tuple[list[float], list[float], list[int]]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration:
            raise DatasetError(f"{path}: empty file (expected a header line)") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}:1: cannot read the header: {exc}") from None
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise DatasetError(
                f"{path}:1: header lacks column(s) {', '.join(missing)} "
                f"(need {','.join(REQUIRED)}[,label])"
            )
        i_ts, i_sensor, i_value = (header.index(c) for c in REQUIRED)
        i_label = header.index("label") if "label" in header else None
        width = max(i_ts, i_sensor, i_value, -1 if i_label is None else i_label) + 1
        line = 1
        try:
            for line, row in enumerate(reader, start=2):
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) < width:
                    raise DatasetError(f"{path}:{line}: {len(row)} columns, expected {width}")
                sensor = row[i_sensor].strip()
                if not sensor:
                    raise DatasetError(f"{path}:{line}: empty sensor")
                try:
                    ts = parse_timestamp(row[i_ts])
                except ValueError:
                    raise DatasetError(f"{path}:{line}: bad timestamp {row[i_ts]!r}") from None
                try:
                    value = float(row[i_value])
                except ValueError:
                    raise DatasetError(f"{path}:{line}: bad value {row[i_value]!r}") from None
                if not math.isfinite(value):
                    raise DatasetError(f"{path}:{line}: value {row[i_value]!r} is not finite")
                label = 0
                if i_label is not None:
                    try:
                        label = int(float(row[i_label]))
                    except ValueError:
                        raise DatasetError(f"{path}:{line}: bad label {row[i_label]!r}") from None
                ts_list, v_list, l_list = rows.setdefault(sensor, ([], [], []))
                ts_list.append(ts)
                v_list.append(value)
                l_list.append(label)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}:{line + 1}: unreadable: {exc}") from None
    if not rows:
        raise DatasetError(f"{path}: no readings after the header")
    out: dict[str, Series] = {}
    for sensor, (ts_list, v_list, l_list) in rows.items():
        stamps = np.asarray(ts_list, dtype=np.float64)
        order = np.argsort(stamps, kind="stable")
        labels = np.asarray(l_list, dtype=np.int64)[order] if i_label is not None else None
        out[sensor] = (stamps[order], np.asarray(v_list, dtype=np.float64)[order], labels)
    return out
