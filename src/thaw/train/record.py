"""The run record: what metrics.json says about one run, rewritten atomically after every epoch.

A crash, a pruned trial or Ctrl-C keeps everything recorded so far; `finish` adds the summary
(last and best epoch, objective) that sweeps and users read.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

from thaw.errors import TrainingError
from thaw.runtime.outputs import write_json_atomic


class RunRecord:
    def __init__(self, path, **fields: Any):
        self.path = Path(path)
        self.started = time.perf_counter()
        self.history: list[dict[str, Any]] = []
        self.phases: dict[str, dict[str, Any]] = {}
        self.data: dict[str, Any] = {
            "status": "running",
            **fields,
            "history": self.history,
            "phases": self.phases,
        }

    @classmethod
    def for_run(cls, path, cfg, ds, replicas: int, **timings: float) -> RunRecord:
        objectives = objective_names(cfg)
        return cls(
            path,
            name=cfg.name,
            objective_name=objectives[0] if len(objectives) == 1 else objectives,
            backbone=cfg.backbone.name,
            image_size=int(cfg.backbone.image_size),
            unfreeze={"mode": cfg.unfreeze.name, "depth": int(cfg.unfreeze.depth)},
            lr={
                "base": float(cfg.lr.base),
                "finetune": float(cfg.lr.base * cfg.lr.finetune_factor),
                "schedule": cfg.lr.name,
                "layer_decay": float(cfg.lr.get("layer_decay", 1.0)),
            },
            regularization={
                "weight_decay": float(cfg.get("optimizer", {}).get("weight_decay", 0.0)),
                "label_smoothing": float(cfg.trainer.get("label_smoothing", 0.0)),
            },
            classes=ds.class_names,
            num_train=len(ds.train),
            num_val=len(ds.val),
            num_test=len(ds.test) if ds.test else 0,
            skipped_files=ds.skipped,
            num_skipped_files=len(ds.skipped),
            **timings,
            strategy={"name": cfg.trainer.strategy, "replicas": replicas},
        )

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def update(self, **fields: Any) -> None:
        self.data.update(fields)

    def phase(self, name: str) -> dict[str, Any]:
        """The mutable record of one phase (epochs, learning rate, seconds, cache, ...)."""
        return self.phases.setdefault(name, {})

    def add_epoch(self, row: dict[str, Any]) -> int:
        """Append one epoch's row and rewrite the file; returns the epoch's global step
        (0-based)."""
        self.history.append(row)
        self.write("running")
        return len(self.history) - 1

    def write(self, status: str) -> None:
        self.data["status"] = status
        self.data["wall_seconds"] = time.perf_counter() - self.started
        self.data["time_breakdown"] = self.time_breakdown()
        write_json_atomic(self.path, self.data)

    def time_breakdown(self) -> dict[str, float]:
        """Where the run's time went, in seconds; the parts sum to `total` (TensorFlow's import,
        when this run paid it, plus wall_seconds). `trace`: each phase's first epoch beyond its
        steady epochs (a one-epoch phase cannot tell them apart: all compute); `other`: compiling,
        callbacks, restoring weights, the rest."""
        trace = compute = 0.0
        for name in dict.fromkeys(r["phase"] for r in self.history):
            secs = [float(r.get("seconds") or 0.0) for r in self.history if r["phase"] == name]
            steady = statistics.median(secs[1:]) if len(secs) > 1 else secs[0]
            first_extra = max(0.0, secs[0] - steady)
            trace, compute = trace + first_extra, compute + sum(secs) - first_extra
        d = self.data
        parts = {
            "import": d.get("import_seconds", 0.0),
            "data": d.get("data_seconds", 0.0),
            "build": d.get("build_seconds", 0.0),
            "feature_extraction": sum(
                float(p.get("cache_seconds") or 0.0) for p in self.phases.values()
            ),
            "trace": trace,
            "compute": compute,
            "checkpoint": d.get("checkpoint_seconds", 0.0),
            "save": d.get("save_seconds", 0.0),
            "test_evaluation": d.get("test_seconds", 0.0),
        }
        total = parts["import"] + d.get("wall_seconds", 0.0)
        parts["other"] = max(0.0, total - sum(parts.values()))
        return {
            **{k: round(v, 3) for k, v in parts.items()},
            "total": round(max(total, sum(parts.values())), 3),
        }

    def fail(self, exc: BaseException) -> None:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self.data["error"] = f"{type(exc).__name__}: {first}"
        self.write("failed")

    def best_epoch(self, objective: str = "val_accuracy") -> int:
        """Index in the history of the epoch with the best validation value (the first of equals;
        a missing or non-finite value never wins)."""
        sign = -1.0 if objective.endswith("loss") else 1.0

        def score(row):
            v = row.get(objective)
            return sign * v if v is not None and math.isfinite(v) else -math.inf

        return max(range(len(self.history)), key=lambda i: score(self.history[i]))

    def epoch_number(self, index: int) -> int:
        """The planned epoch number of a history row (1-based; a phase stopped early by patience
        leaves a gap before the next phase's epochs)."""
        return int(self.history[index]["epoch"])

    def summarize(self, monitor: str = "val_accuracy", restore_best: bool = False) -> None:
        """After training ended normally: the figures of the epoch whose weights the model holds
        (the best by `monitor` with restore_best, else the last) and which epoch that is."""
        chosen = self.best_epoch(monitor) if restore_best else len(self.history) - 1
        row = self.history[chosen]
        self.data.update(
            val_accuracy=row.get("val_accuracy"),
            val_loss=row.get("val_loss"),
            train_accuracy=row.get("accuracy"),
            train_loss=row.get("loss"),
            objective_epoch=self.epoch_number(chosen),
            objective_from=f"best epoch by {monitor}" if restore_best else "last epoch",
            kept_phase=row.get("phase"),  # "head": fine-tuning never beat the frozen base
            last_val_accuracy=self.history[-1].get("val_accuracy"),
        )
        best = self.best_epoch("val_accuracy")
        self.data["best_epoch"] = self.epoch_number(best)
        self.data["best_val_accuracy"] = self.history[best].get("val_accuracy")
        self.data["trainable_params"] = self.phases.get("finetune", {}).get("trainable_params")

    def complete(self, objectives: list[str]) -> Any:
        """Write the final record; returns the objective value (a list for several objectives)."""
        values = [self._objective_value(name) for name in objectives]
        self.data["objective"] = values[0] if len(values) == 1 else values
        self.write("complete")
        return self.data["objective"]

    def _objective_value(self, name: str) -> float:
        value: float | None = self.data.get(name)
        if value is None:
            raise TrainingError(f"trainer.objective: {name} was not measured in this run")
        return float(value)


def objective_names(cfg) -> list[str]:
    obj = cfg.trainer.objective
    return [obj] if isinstance(obj, str) else list(obj)
