"""Per-sensor parameters as rows of numpy arrays, for the per-reading detectors' hot path.

One row per sensor in each column, so a batch of readings from many sensors is scored with a
single fancy-index per column. Rows of forgotten (evicted) sensors are reused before the
arrays grow, and the arrays grow by doubling, so adding a sensor costs O(1) amortised.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


class SensorTable:
    """Named columns of per-sensor rows: ``columns`` maps a name to (row shape, fill value)."""

    def __init__(self, columns: dict[str, tuple[tuple[int, ...], float]]) -> None:
        self._spec = columns
        self._row: dict[str, int] = {}
        self._free: list[int] = []
        self._used = 0
        self.cols = {name: np.full((0, *shape), fill) for name, (shape, fill) in columns.items()}
        """The columns, ``capacity`` rows each; index them with :meth:`rows`."""

    def __contains__(self, sensor: object) -> bool:
        return sensor in self._row

    def __len__(self) -> int:
        return len(self._row)

    def __iter__(self) -> Iterator[str]:
        return iter(self._row)

    @property
    def capacity(self) -> int:
        """Rows allocated (used, free and spare)."""
        return next(iter(self.cols.values())).shape[0]

    def row(self, sensor: str) -> int:
        """The sensor's row (KeyError if unknown)."""
        return self._row[sensor]

    def rows(self, sensors: Sequence[str]) -> np.ndarray:
        """The rows of a batch of sensors, for indexing every column at once."""
        return np.fromiter((self._row[s] for s in sensors), dtype=np.intp, count=len(sensors))

    def set(self, sensor: str, **values: np.ndarray | float) -> None:
        """Store a sensor's row in every column (a new sensor takes a free or new row)."""
        r = self._row.get(sensor)
        if r is None:
            r = self._free.pop() if self._free else self._grow()
            self._row[sensor] = r
        for name, value in values.items():
            self.cols[name][r] = value

    def forget(self, sensor: str) -> None:
        """Free the sensor's row for the next new sensor."""
        r = self._row.pop(sensor, None)
        if r is not None:
            self._free.append(r)

    def _grow(self) -> int:
        if self._used == self.capacity:
            new = max(8, 2 * self.capacity)
            for name, (shape, fill) in self._spec.items():
                col = np.full((new, *shape), fill)
                col[: self._used] = self.cols[name][: self._used]
                self.cols[name] = col
        self._used += 1
        return self._used - 1
