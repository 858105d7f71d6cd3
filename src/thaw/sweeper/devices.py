"""One device per in-flight trial: `hydra.sweeper.devices` and the pool the scheduler draws from.

A trial's device reaches its job as `CUDA_VISIBLE_DEVICES`, through Hydra's own
`hydra.job.env_set` (Hydra sets it in the worker, whichever launcher runs the job, before the task
starts). Never two in-flight trials on one device: a device is taken when its trial is launched and
given back when the trial is settled; trials other workers run (their `device` user attribute) hold
theirs too. More slots than devices is refused (exit 2): sharing a GPU between two trainings is how
the second one runs out of memory.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from omegaconf import OmegaConf

from thaw.errors import ConfigError

DEVICE_ATTR = "device"  # the trial's user attribute: the device its job was given


def parse(value) -> list[str]:
    """The devices setting: unset = every visible GPU (none on a machine without one); a list, or
    a comma-separated string, of device ids; [] or "none" = leave devices to the jobs."""
    if value is None:
        return visible_gpus()
    if isinstance(value, str):
        items = [] if value.strip().lower() in ("", "none") else value.split(",")
    elif isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        items = list(value)
    elif isinstance(value, int):
        items = [value]
    else:
        raise ConfigError(f"hydra.sweeper.devices: expected a list of device ids, got {value!r}")
    devices = [str(d).strip() for d in items]
    if any(not d or "," in d for d in devices) or len(set(devices)) != len(devices):
        raise ConfigError(
            f"hydra.sweeper.devices: expected distinct device ids, got {list(items)!r}"
        )
    return devices


def visible_gpus() -> list[str]:
    """The GPUs this process may use, without importing a framework: CUDA_VISIBLE_DEVICES when set,
    else the GPUs nvidia-smi lists, else none."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [ln.strip() for ln in out.stdout.splitlines() if ln.strip().isdigit()]


def check_slots(devices: list[str], slots: int) -> None:
    if devices and slots > len(devices):
        raise ConfigError(
            f"hydra.sweeper.n_jobs={slots} with {len(devices)} device(s) {devices}: each in-flight "
            "trial gets its own device; lower n_jobs, list more hydra.sweeper.devices, or set "
            "hydra.sweeper.devices=[] to leave devices to the jobs"
        )


class DevicePool:
    """The devices of this worker's in-flight trials; `sticky` (an in-process launcher: the
    framework in this process keeps the device it first initialised) reuses one device."""

    def __init__(self, devices: list[str], sticky: bool = False):
        self.devices, self.sticky = list(devices), sticky
        self.in_use: dict[int, str] = {}  # trial id -> device
        self._mine: str | None = None
        self._returned: tuple[int, str] | None = None  # the last (trial id, device) given back

    def take(self, trial_id: int, held_elsewhere: set[str]) -> str | None:
        """A device no in-flight trial holds (here or, by its user attribute, in another worker);
        None when there are no devices. Another worker's claim is only avoided while a device is
        left for this one. A trial run once more (out of memory) gets the device it gave back."""
        if not self.devices:
            return None
        free = [d for d in self.devices if d not in self.in_use.values()]
        if self.sticky and self._mine is not None:
            device = self._mine
        elif (
            self._returned is not None
            and self._returned[0] == trial_id
            and self._returned[1] in free
        ):
            device = self._returned[1]
        else:
            device = next((d for d in free if d not in held_elsewhere), free[0])
            self._mine = device
        self.in_use[trial_id] = device
        return device

    def give_back(self, trial_id: int) -> None:
        device = self.in_use.pop(trial_id, None)
        if device is not None:
            self._returned = (trial_id, device)


def job_lines(device: str | None) -> list[str]:
    """The overrides that give a job its device (none without devices)."""
    if device is None:
        return []
    return [f"++hydra.job.env_set.CUDA_VISIBLE_DEVICES='{device}'"]
