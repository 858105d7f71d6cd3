"""Where a run computes: logical CPU devices, the distribution strategy (one per process and
setting), TensorFlow's seed and the precision policy."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("thaw.train")


def configure_devices(cfg_trainer):
    """Memory growth on every GPU (two workers can share a card) and, optionally, logical CPUs.
    Must run before TensorFlow initialises its devices; later calls in the same process are
    no-ops."""
    import tensorflow as tf

    try:
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
        if cfg_trainer.cpu_devices:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * int(cfg_trainer.cpu_devices)
            )
    except RuntimeError as exc:  # devices already initialised (an earlier trial in this process)
        log.debug("device configuration unchanged: %s", exc)


@dataclass
class DeviceState:
    """What a Workspace keeps of where its runs compute: one MirroredStrategy per device set
    (models kept for later runs belong to the strategy they were built under, and TensorFlow
    refuses to mix two), and TensorFlow's global seed as the Workspace last set it."""

    strategies: dict[tuple, Any] = field(default_factory=dict)
    tf_seed: int | None = None


def make_strategy(cfg_trainer, state: DeviceState):
    import tensorflow as tf

    if cfg_trainer.strategy != "mirrored":
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    devices = tuple(d.name for d in (gpus or tf.config.list_logical_devices("CPU")))
    if devices not in state.strategies:
        state.strategies[devices] = tf.distribute.MirroredStrategy(devices=list(devices))
    return state.strategies[devices]


def seed_and_precision(cfg_trainer, state: DeviceState) -> None:
    import keras

    seed = int(cfg_trainer.seed)
    if cfg_trainer.reuse_compiled and state.tf_seed == seed:
        _reseed_keeping_kernels(seed)
    else:
        keras.utils.set_random_seed(seed)
        state.tf_seed = seed
    # float32, or mixed precision on a GPU (the output layer stays float32, see heads.py)
    keras.mixed_precision.set_global_policy(str(cfg_trainer.precision))
    if cfg_trainer.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def _reseed_keeping_kernels(seed: int) -> None:
    """keras.utils.set_random_seed without setting TensorFlow's global seed again (it is already
    this seed): setting it clears TensorFlow's kernel cache, so every function of the kept compiled
    models (thaw.model.compiled) would be instantiated again on its next call (2-4 s a trial at
    depth 8 on 2 CPU cores). thaw's TensorFlow random ops are stateless or take an op seed, so
    nothing else changes."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    # the rest of what set_random_seed does: Keras' global SeedGenerator restarts from the seed
    try:
        from keras.src.backend.common import global_state
        from keras.src.random import seed_generator

        global_state.set_global_attribute("global_random_seed", seed)
        global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    except (ImportError, AttributeError):  # another Keras layout: the full reseed, kernels and all
        import keras

        keras.utils.set_random_seed(seed)
