"""Issue 16's figures: what a kill -9 costs a run, and what its checkpoints cost on disk.

    python benchmarks/resume.py            # ~6 min on 2 CPU cores

One JSON line per figure:
- kills: 5 kill points drawn at random (seeded) from every point of a 3 + 4 epoch recipe; the run
  is killed (SIGKILL, right after that checkpoint) at each in turn and finally let finish: epochs
  trained twice, and the largest per-epoch metric difference from an uninterrupted run, with
  trainer.deterministic=true and false;
- disk: checkpoint.npz at its largest (fine-tuning) against model.keras, MobileNetV2 alpha 0.35 at
  160 px, top 3 blocks and every block unfrozen.
"""

import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, emit  # noqa: E402

SMALL = [
    "experiment=tiny",
    "backbone.image_size=32",
    "data.num_train=96",
    "data.num_val=32",
    "data.batch_size=16",
    "trainer.head_epochs=3",
    "trainer.finetune_epochs=4",
    "logger=none",
    "trainer.save_model=false",
]
POINTS = [
    "head:1",
    "head:2",
    "head:3",
    "head:end",
    "finetune:1",
    "finetune:2",
    "finetune:3",
    "finetune:4",
]


def attempt(args, run_dir, kill_at=None):
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="3",
        WANDB_MODE="disabled",
        THAW_TEST_FAULTS="1",
        THAW_KILL_AFTER_CHECKPOINT=kill_at or "",
    )
    out = subprocess.run(
        [sys.executable, "-m", "thaw.commands.train", *args, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != (-9 if kill_at else 0):
        raise SystemExit(out.stderr[-3000:])
    return out.stdout + out.stderr


def epochs_trained(log):
    return [int(e) for e in re.findall(r"\] epoch (\d+)/", log)]


def max_diff(a, b):
    ha, hb = (json.loads((d / "metrics.json").read_text())["history"] for d in (a, b))
    assert [r["epoch"] for r in ha] == [r["epoch"] for r in hb]
    return max(
        abs(x[k] - y[k])
        for x, y in zip(ha, hb)
        for k in ("loss", "accuracy", "val_loss", "val_accuracy")
    )


def kills(tmp: Path, deterministic: bool, points):
    args = SMALL + [f"trainer.deterministic={str(deterministic).lower()}"]
    attempt(args, tmp / f"ref{deterministic}")
    trained = []
    for point in [*points, None]:
        trained += epochs_trained(attempt(args, tmp / f"run{deterministic}", point))
    redone = len(trained) - len(set(trained))
    emit(
        figure="kills",
        deterministic=deterministic,
        kill_points=points,
        epochs_trained_twice=redone,
        max_abs_metric_diff=max_diff(tmp / f"ref{deterministic}", tmp / f"run{deterministic}"),
    )


def disk(tmp: Path, unfreeze):
    args = [
        "backbone.alpha=0.35",
        "backbone.weights=null",
        "backbone.image_size=160",
        "data=synthetic",
        "data.num_train=64",
        "data.num_val=32",
        "trainer.head_epochs=1",
        "trainer.finetune_epochs=1",
        "logger=none",
        *unfreeze,
    ]
    attempt(args, tmp / "full")
    attempt(args, tmp / "killed", "finetune:1")
    model_mb = (tmp / "full" / "model.keras").stat().st_size / 2**20
    ckpt_mb = (tmp / "killed" / "checkpoint.npz").stat().st_size / 2**20
    emit(
        figure="disk",
        unfreeze=" ".join(unfreeze),
        model_keras_mb=round(model_mb, 2),
        checkpoint_mb=round(ckpt_mb, 2),
        ratio=round(ckpt_mb / model_mb, 2),
    )


def main():
    import argparse

    argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()  # no options: --help says what it measures instead of running it
    points = sorted(random.Random(16).sample(POINTS, 5), key=POINTS.index)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        kills(tmp, True, points)
        kills(tmp, False, points)
        disk(tmp / "top3", ["unfreeze=top_blocks", "unfreeze.depth=3"])
        disk(tmp / "all", ["unfreeze=all"])


if __name__ == "__main__":
    main()
