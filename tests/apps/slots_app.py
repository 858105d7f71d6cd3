"""A Hydra app that is not thaw-train, for the scheduler's tests: each job writes a record (its
trial, the CUDA_VISIBLE_DEVICES it was given, its pid, when it ran, its batch size) to `marks`;
trial 0 can wait for other trials to finish first (a batch barrier never lets them); and a job can
run out of memory (TensorFlow's ResourceExhaustedError) above a batch size."""

import json
import os
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd
from omegaconf import DictConfig

from thaw.sweeper import current_trial


def _wait_for_others(marks: Path, want: int, timeout: float) -> int:
    t0 = time.monotonic()
    while True:
        seen = len(list(marks.glob("*.json")))
        if seen >= want or time.monotonic() - t0 > timeout:
            return seen
        time.sleep(0.1)


def _out_of_memory(cfg, number) -> None:
    message = f"OOM when allocating tensor with shape[{cfg.data.batch_size},224,224,32]"
    if cfg.tell_itself:
        from thaw.sweeper.trial import attach_trial

        handle = attach_trial(HydraConfig.get())
        handle.fail(f"ResourceExhaustedError: {message}")
        handle.close()
    import tensorflow as tf  # the real error, as a trial that ran out of memory raises it

    raise tf.errors.ResourceExhaustedError(None, None, message)


@hydra.main(version_base=None, config_path="slots_conf", config_name="config")
def slots(cfg: DictConfig) -> float:
    number = current_trial().number
    marks = Path(get_original_cwd()) / cfg.marks
    marks.mkdir(parents=True, exist_ok=True)
    record = {
        "trial": number,
        "device": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
        "batch_size": int(cfg.data.batch_size),
        "start": time.time(),
    }
    attempts = marks / "attempts.jsonl"
    with open(attempts, "a") as f:
        f.write(json.dumps(record) + "\n")
    if cfg.oom_above and cfg.data.batch_size > cfg.oom_above:
        _out_of_memory(cfg, number)
    time.sleep(float(cfg.hold))
    if number == 0 and cfg.gate:
        record["gate_seen"] = _wait_for_others(marks, int(cfg.gate), float(cfg.gate_timeout))
    record["end"] = time.time()
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "metrics.json").write_text(json.dumps({"batch_size": record["batch_size"]}))
    (marks / f"{number}.json").write_text(json.dumps(record))
    return float(cfg.x)


if __name__ == "__main__":
    slots()
