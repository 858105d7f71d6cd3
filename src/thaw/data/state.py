"""What the data side keeps between the runs of one process: the last folder scan, the last decoded
data set, one tf.constant per array in memory, and the process's memory and disk limits. A
`DataState` belongs to a Workspace (thaw.train.workspace); a fresh one keeps nothing."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from thaw.data.budget import DiskLedger, measure_available_memory


@dataclass
class Limits:
    """Memory available when first asked (so every run of a sweep gets the same default: later
    readings would count thaw's own caches as used) and what this process wrote to disk against
    data.max_disk_mb."""

    disk: DiskLedger = field(default_factory=DiskLedger)
    _available: int | None = None

    def available_memory(self) -> int:
        if self._available is None:
            self._available = measure_available_memory()
        return self._available


@dataclass
class DataState:
    limits: Limits = field(default_factory=Limits)
    scan: tuple | None = None  # ((config repr, folder stamp), FolderScan)
    decoded: tuple | None = None  # (key, Dataset, folder stamp)
    _constants: dict = field(default_factory=dict)  # id(array) -> its tf.constant

    def constant(self, array) -> Any:
        """One tf.constant per array object (a new one per pipeline made a copy per feature pass:
        8000 images at 160 px, peak RSS 3.8 GB for 0.6 GB of images); dropped with the array."""
        import tensorflow as tf

        key = id(array)
        if key not in self._constants:
            self._constants[key] = tf.constant(array)
            weakref.finalize(array, self._constants.pop, key, None)
        return self._constants[key]

    def forget(self) -> None:
        """The next load scans and decodes again (the limits are kept)."""
        self.scan = self.decoded = None
