"""What a run may hold in memory and write to disk, decided before training instead of an OOM kill.

`data.max_memory_mb` bounds the decoded images and cached activations thaw holds in memory; what is
larger lives on disk and streams. Its default is half the memory available when the run starts (a
cgroup limit or `ulimit -d` counts: a SLURM job or a container sees its own share). `data.max_disk_mb` bounds what
thaw writes for that (decoded copies, spilled activations); its default is the free space of the
target disk less 1 GB.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import atexit
from pathlib import Path
from typing import Optional

from thaw.errors import DataError

log = logging.getLogger(__name__)

MB = 2 ** 20
DISK_MARGIN = 1024 * MB
# The in-memory path holds the decoded array and the copy tf.data feeds from.
IN_MEMORY_COPIES = 2


def _cgroup_room() -> Optional[int]:
    """Bytes the cgroup (v2 or v1) still allows this process tree, or None if unlimited/unknown."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 2 ** 60:
            return None
        return max(0, int(limit) - usage)
    return None


def _rlimit_room() -> Optional[int]:
    """Bytes under this process's RLIMIT_DATA (ulimit -d), or None if unlimited."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    if soft == resource.RLIM_INFINITY:
        return None
    used = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # an upper bound on what is used now
    return max(0, soft - used)


def available_memory() -> int:
    """Bytes of memory available now: MemAvailable, or the cgroup's or ulimit's room if smaller."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    rooms = [r for r in (_cgroup_room(), _rlimit_room()) if r is not None]
    return min([avail] + rooms)


def memory_budget(cfg_data) -> int:
    """data.max_memory_mb in bytes (default: half the available memory)."""
    mb = cfg_data.get("max_memory_mb") if hasattr(cfg_data, "get") else getattr(cfg_data, "max_memory_mb", None)
    return int(mb) * MB if mb is not None else available_memory() // 2


class DiskLedger:
    """What this process has written to disk for data it cannot hold in memory, against a bound."""

    def __init__(self):
        self.written = 0
        self._tmp: Optional[Path] = None

    def bound(self, cfg_data, where: Path) -> int:
        mb = getattr(cfg_data, "max_disk_mb", None)
        if mb is not None:
            return int(mb) * MB
        return max(0, shutil.disk_usage(_existing(where)).free - DISK_MARGIN) + self.written

    def claim(self, cfg_data, where: Path, nbytes: int, what: str) -> None:
        """Refuse (DataError: one line, exit 2) what would not fit; else count it as written."""
        bound = self.bound(cfg_data, where)
        if self.written + nbytes > bound:
            key = "data.max_disk_mb" if getattr(cfg_data, "max_disk_mb", None) is not None else "free disk space"
            raise DataError(f"{what} needs {nbytes / MB:,.0f} MB on disk at {where}, more than {key} allows "
                            f"({max(0, bound - self.written) / MB:,.0f} MB left); set trainer.cache_dir to a "
                            "larger disk, raise data.max_memory_mb, or lower data.max_per_class")
        self.written += nbytes

    def temp_dir(self) -> Path:
        """A per-process directory for streamed data when no trainer.cache_dir is set; removed at exit."""
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="thaw-stream-"))
            atexit.register(shutil.rmtree, self._tmp, True)
        return self._tmp


def _existing(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


LEDGER = DiskLedger()
