"""Models a process keeps between its runs, and the garbage-collection policy keeping them needs.

A sweep's trials in one process reuse the built base and classifier (initial weights put back in
memory), each classifier's compiled fit models (thaw.model.compiled) and the traced forward
function of each frozen prefix (thaw.train.frozen_pass): a trial at a depth seen before pays no
trace. A `ModelPool` belongs to a Workspace (thaw.train.workspace); a fresh one keeps nothing.
"""

from __future__ import annotations

import gc
import sys
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


def give_back_freed_memory() -> bool:
    """Memory a run freed stays in the C allocator's arenas, scattered between what later runs
    keep and counted in the process's RSS until it exits, so a long in-process sweep's memory
    creeps up (benchmarks/soak.py). glibc's malloc_trim hands those free pages back to the system
    (a few ms). False where the C library has none (musl, macOS, Windows): nothing to do there.
    Under a preloaded allocator (jemalloc, tcmalloc) the call reaches glibc's idle heap and gives
    back little; those allocators return memory on their own."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):  # TypeError: Windows has no CDLL(None)
        return False
    trim(0)
    return True


def release_frozen() -> None:
    """A kept model (or its compiled step) was dropped: objects frozen out of garbage collection
    (ModelPool.end_run) go back to it, so the dropped graphs' reference cycles are collected."""
    gc.unfreeze()


class ModelPool:
    MAX_BASES = 2
    MAX_CLASSIFIERS = 2
    FULL_COLLECTION_EVERY = 10  # runs

    def __init__(self):
        # key -> (model, its initial state): built bases and whole classifiers
        self.bases: OrderedDict[Hashable, tuple] = OrderedDict()
        self.classifiers: OrderedDict[Hashable, tuple] = OrderedDict()
        # model -> (how it was compiled, its optimizer's variables right after building)
        self.compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # frozen prefix model -> its traced forward function
        self.forward: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._runs_ended = 0
        self._unfreeze_next = False

    def get(self, kind: str, key: Hashable) -> tuple | None:
        """The kept (model, initial state) of `kind` ("bases" or "classifiers"), most recent now."""
        store = getattr(self, kind)
        hit = store.get(key)
        if hit is not None:
            store.move_to_end(key)
        return hit

    def keep(self, kind: str, key: Hashable, model: Any, initial: Any) -> None:
        """Keep a newly built model; the least recently used one over the bound is dropped."""
        store = getattr(self, kind)
        store[key] = (model, initial)
        limit = self.MAX_BASES if kind == "bases" else self.MAX_CLASSIFIERS
        while len(store) > limit:
            store.popitem(last=False)
            release_frozen()

    def end_run(self, keep_compiled: bool, failed: bool = False) -> None:
        """Trials that share a process would otherwise keep every earlier trial's graphs. With the
        classifier and its compiled fit models kept for later trials (trainer.reuse_compiled), one
        garbage collection frees the rest; clear_session (another collection, and TensorFlow's
        kernel cache, which the kept models would rebuild) costs ~0.7 s a trial for nothing kept.
        What survives the collection (TensorFlow, the kept models) is frozen out of later
        collections, which then scan only what the next trial allocated (0.4 s -> ~0.05 s a trial).
        Frozen objects that later become garbage are collected when a kept model is dropped
        (release_frozen), after a failed trial (its traceback held the trial's objects) and every
        FULL_COLLECTION_EVERY runs. The memory freed goes back to the system
        (give_back_freed_memory)."""
        if "keras" not in sys.modules:
            return
        if keep_compiled:
            self._runs_ended += 1
            if self._unfreeze_next or self._runs_ended % self.FULL_COLLECTION_EVERY == 0:
                gc.unfreeze()
            self._unfreeze_next = failed
            gc.collect()
            gc.freeze()
        else:
            import keras

            keras.backend.clear_session()  # collects garbage too
        give_back_freed_memory()
