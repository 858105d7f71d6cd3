"""Evaluate a finished run's saved model on its held-out test split, once.

Sweeps optimise validation accuracy; trials never look at the test split. Only the best trial is
evaluated on it, after the sweep, so the reported test accuracy is an honest estimate.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import OmegaConf

from thaw.outputs import write_json_atomic

log = logging.getLogger(__name__)


def evaluate_test(run_dir) -> Optional[Dict[str, Any]]:
    """{'test_accuracy', 'test_loss', 'num_test'} for the run's model.keras, or None without a test split."""
    import keras

    from thaw import data as data_mod

    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    has_test = (cfg.data.name == "folder" and cfg.data.test_fraction > 0) or \
        (cfg.data.name == "synthetic" and cfg.data.num_test > 0) or \
        (cfg.data.name == "cats_vs_dogs" and cfg.data.test_fraction > 0)
    model_path = run_dir / "model.keras"
    if not has_test or not model_path.is_file():
        return None
    ds = data_mod.load(cfg.data, int(cfg.backbone.image_size), int(cfg.trainer.seed))
    if ds.test is None or not len(ds.test):
        return None
    model = keras.saving.load_model(model_path, safe_mode=True, compile=False)
    if ds.num_classes == 2:
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        metric = keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)
    else:
        loss, metric = keras.losses.SparseCategoricalCrossentropy(), keras.metrics.SparseCategoricalAccuracy(
            name="accuracy")
    model.compile(loss=loss, metrics=[metric])
    res = model.evaluate(data_mod.to_tf(ds.test, int(cfg.data.batch_size), False, 0), verbose=0, return_dict=True)
    out = {"test_accuracy": float(res["accuracy"]), "test_loss": float(res["loss"]), "num_test": len(ds.test)}
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        metrics.update(out)
        write_json_atomic(metrics_path, metrics)
    return out
