"""What a run may hold in memory and write to disk, decided before training instead of an OOM kill.

`data.max_memory_mb` bounds the decoded images and cached activations thaw holds in memory; what is
larger lives on disk and streams. Its default is half the memory available when the run starts (a
cgroup limit or `ulimit -d` counts: a SLURM job or a container sees its own share).
`data.max_disk_mb` bounds what thaw writes for that (decoded copies, spilled activations); its
default is the free space of the target disk less 1 GB.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

from thaw.errors import DataError

log = logging.getLogger(__name__)

MB = 2**20
DISK_MARGIN = 1024 * MB
# Decoded images are held in memory when three times their size fits the bound: the array, the
# tf.constant tf.data gathers from, and decoding buffers / allocator slack (measured: peak RSS grows
# ~3.1x the decoded bytes, 4k -> 16k images at 160 px).
IN_MEMORY_COPIES = 3


def _cgroup_dirs():
    """This process's own cgroup directories, innermost first (a SLURM job's limit sits below the
    root of the hierarchy, which does not show it), from /proc/self/cgroup."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # cgroup v2
            root, limit, usage = Path("/sys/fs/cgroup"), "memory.max", "memory.current"
        elif "memory" in controllers.split(","):  # cgroup v1
            root, limit, usage = (
                Path("/sys/fs/cgroup/memory"),
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        else:
            continue
        d = root / rel.lstrip("/")
        while True:
            yield d, limit, usage
            if d == root or root not in d.parents:
                break
            d = d.parent


def _cgroup_room() -> int | None:
    """Bytes the tightest memory cgroup above this process still allows (page cache that can be
    dropped not counted as used), or None if none limits it."""
    rooms = []
    for d, limit_file, usage_file in _cgroup_dirs() or ():
        try:
            limit = (d / limit_file).read_text().strip()
            usage = int((d / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 2**60:
            continue
        try:
            stat = dict(line.split() for line in (d / "memory.stat").read_text().splitlines())
            usage -= int(stat.get("inactive_file", stat.get("total_inactive_file", 0)))
        except (OSError, ValueError):
            pass
        rooms.append(max(0, int(limit) - usage))
    return min(rooms) if rooms else None


def _rlimit_room() -> int | None:
    """Bytes under this process's RLIMIT_DATA (ulimit -d), or None if unlimited. The limit counts
    the data segment (heap, private mappings, stacks): VmData, not the resident set."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    if soft == resource.RLIM_INFINITY:
        return None
    kib = proc_status_kib("VmData")
    used = (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return max(0, soft - used)


def proc_status_kib(key: str) -> int | None:
    """A KiB field of /proc/self/status (VmData, VmRSS, ...); None where there is none (not
    Linux)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(ln.split()[1]) for ln in lines if ln.startswith(f"{key}:")), None)


def measure_available_memory() -> int:
    """Bytes of memory available now: MemAvailable, or the cgroup's or ulimit's room if smaller
    (thaw.data.state.Limits measures it once per Workspace)."""
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


def memory_budget(cfg_data, limits) -> int:
    """data.max_memory_mb in bytes (default: half the memory `limits`, a thaw.data.state.Limits,
    found available)."""
    mb = cfg_data.get("max_memory_mb")
    return int(mb) * MB if mb is not None else limits.available_memory() // 2


class DiskLedger:
    """What this process has written to disk for data it cannot hold in memory, against a bound
    (per process: each worker of a parallel sweep has its own)."""

    def __init__(self):
        self.written = 0
        self._tmp: Path | None = None

    def bound(self, cfg_data, where: Path) -> int:
        mb = getattr(cfg_data, "max_disk_mb", None)
        if mb is not None:
            return int(mb) * MB
        return max(0, shutil.disk_usage(_existing(where)).free - DISK_MARGIN) + self.written

    def claim(self, cfg_data, where: Path, nbytes: int, what: str) -> None:
        """Refuse (DataError: one line, exit 2) what would not fit; else count it as written."""
        bound = self.bound(cfg_data, where)
        if self.written + nbytes > bound:
            key = (
                "data.max_disk_mb"
                if getattr(cfg_data, "max_disk_mb", None) is not None
                else "free disk space"
            )
            raise DataError(
                f"{what} needs {nbytes / MB:,.0f} MB on disk at {where}, more than {key} allows "
                f"({max(0, bound - self.written) / MB:,.0f} MB left); set trainer.cache_dir to a "
                "larger disk, raise data.max_memory_mb, or lower data.max_per_class"
            )
        self.written += nbytes

    def release(self, nbytes: int) -> None:
        """What a claim wrote was removed (a failed or lost write)."""
        self.written = max(0, self.written - nbytes)

    def temp_dir(self) -> Path:
        """A per-process directory for streamed data when no trainer.cache_dir is set; removed at
        exit, and by a later process if this one was killed."""
        if self._tmp is None:
            remove_stale(Path(tempfile.gettempdir()), "thaw-stream-")
            self._tmp = Path(tempfile.mkdtemp(prefix=f"thaw-stream-{os.getpid()}-"))
            atexit.register(shutil.rmtree, self._tmp, True)
        return self._tmp


def tmp_tag() -> str:
    """Marks a temp file or dir as this process's (host and pid: cache dirs may be shared by
    nodes)."""
    return f"tmp-{socket.gethostname()}-{os.getpid()}-"


def remove_stale(where: Path, prefix: str = "") -> None:
    """Remove temp entries (`<prefix><pid>-*`, or `*tmp-<this host>-<pid>-*`) left in `where` by
    processes of this host that are gone (killed before cleaning up)."""
    mark = f"tmp-{socket.gethostname()}-"
    try:
        entries = list(os.scandir(where))
    except OSError:
        return
    for e in entries:
        if prefix and e.name.startswith(prefix):
            pid = e.name[len(prefix) :].split("-", 1)[0]
        elif mark in e.name:
            pid = e.name.split(mark, 1)[1].split("-", 1)[0]
        else:
            continue
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(e.path, ignore_errors=True) if e.is_dir() else Path(e.path).unlink(
                missing_ok=True
            )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _existing(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
