"""What one process keeps between the runs it trains, in one object passed down explicitly.

The trials of an in-process sweep (or of one joblib, Ray or SLURM worker) reuse the decoded data,
the folder scan, built models, compiled fit steps, cached activations, the distribution strategy
and TensorFlow's seed. All of it lives in a `Workspace`: the command that runs trainings
(thaw-train) creates one per process and hands it to every run; `train(...)` without one gets a
fresh Workspace, which is what turning reuse off means. A run in a used Workspace computes what the
same run computes in a fresh process (tests/train/test_workspace.py).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from dataclasses import dataclass, field

from thaw.data import budget
from thaw.data.state import DataState
from thaw.model.pool import ModelPool
from thaw.train.devices import DeviceState
from thaw.train.feature_cache import ActivationStore

log = logging.getLogger("thaw.workspace")  # hydra.verbose=thaw.workspace: what it keeps, per run


@dataclass(eq=False)
class Workspace:
    data: DataState = field(default_factory=DataState)  # scan, decoded splits, limits
    models: ModelPool = field(default_factory=ModelPool)  # models, compiled steps, GC policy
    activations: ActivationStore = field(default_factory=ActivationStore)  # feature cache
    devices: DeviceState = field(default_factory=DeviceState)  # strategies, TensorFlow's seed
    unclaimed_import_seconds: float = 0.0  # importing TensorFlow, not yet on a run's record

    def import_tensorflow(self):
        """The tensorflow module; the seconds a first import takes go on the next run's record."""
        from thaw.runtime.tf_startup import import_tensorflow

        first, t0 = "tensorflow" not in sys.modules, time.perf_counter()
        tf = import_tensorflow()
        if first:
            self.unclaimed_import_seconds += time.perf_counter() - t0
        return tf

    def claim_import_seconds(self) -> float:
        seconds, self.unclaimed_import_seconds = self.unclaimed_import_seconds, 0.0
        return seconds

    def end_run(self, keep_compiled: bool, failed: bool = False) -> None:
        """A run is over: release its graphs and the memory they held (ModelPool.end_run)."""
        debug = log.isEnabledFor(logging.DEBUG)
        rss_at_end = _rss_mib() if debug else None
        self.models.end_run(keep_compiled, failed)
        if debug:
            rss = {"rss_mib_at_run_end": rss_at_end, "rss_mib_after_release": _rss_mib()}
            log.debug("workspace keeps: %s", json.dumps({**self.kept(), **rss}))

    def kept(self) -> dict:
        """How much this process keeps for later runs (benchmarks/soak.py reads it per trial)."""
        classifiers = [clf for clf, _ in self.models.classifiers.values()]
        return {
            "activation_mib": round(self.activations.memory_bytes() / 2**20, 1),
            "activation_arrays": len(self.activations.memory),
            "bases": len(self.models.bases),
            "classifiers": len(classifiers),
            "fit_models": sum(len(clf.fits or ()) for clf in classifiers),
            "fit_model_weights": sum(clf.fits.weights() for clf in classifiers if clf.fits),
            "compiled": len(self.models.compiled),
            "forward_functions": len(self.models.forward),
        }

    def __reduce__(self):
        # A launcher (joblib, Ray, submitit) pickles the task with its Workspace: each worker
        # process unpickles to its own one Workspace, kept for every job it runs.
        return (of_this_process, ())


def _rss_mib() -> float | None:
    """This process's resident memory (Linux), for the debug line a run's end logs."""
    kib = budget.proc_status_kib("VmRSS")
    return None if kib is None else round(kib / 1024, 1)


@functools.cache  # one per process: the Workspace a launcher's worker hands to every job it runs
def of_this_process() -> Workspace:
    return Workspace()
