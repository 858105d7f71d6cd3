"""Typed config schema (Hydra structured configs): a wrong key fails at composition, before any
training; the values' own checks are in thaw.config.checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from omegaconf import OmegaConf

from thaw.model.optimizers import NAMES as OPTIMIZER_NAMES


def _choices(name: str, values: tuple[str, ...]) -> type[StrEnum]:
    """A closed set of values as a typed field: a value outside it fails at composition, naming
    the key and the choices. A StrEnum member equals, hashes and prints as its string."""
    return StrEnum(name, {v: v for v in values}, module=__name__)


BatchNormMode = _choices("BatchNormMode", ("auto", "inference", "train"))
HeadName = _choices("HeadName", ("linear", "mlp"))
LRName = _choices("LRName", ("constant", "cosine"))
UnfreezeName = _choices("UnfreezeName", ("top_blocks", "none", "all"))
DataName = _choices("DataName", ("synthetic", "folder", "cats_vs_dogs"))
OnBadImage = _choices("OnBadImage", ("error", "skip"))
Flip = _choices("Flip", ("none", "horizontal", "vertical", "horizontal_and_vertical"))
OptimizerName = _choices("OptimizerName", OPTIMIZER_NAMES)
Precision = _choices("Precision", ("float32", "mixed_float16", "mixed_bfloat16"))
Strategy = _choices("Strategy", ("default", "mirrored"))
Resume = _choices("Resume", ("auto", "never"))
LoggerName = _choices("LoggerName", ("none", "wandb"))
WandbMode = _choices("WandbMode", ("online", "offline", "disabled", "auto"))


def _num_blocks(name: str) -> int:
    """backbone.num_blocks of an architecture: its registry entry, the one place the fact lives."""
    from thaw.model.backbones import get_spec

    return get_spec(str(name)).num_blocks


# replace=True: importing this module twice (tests, launcher workers) registers the same function
OmegaConf.register_new_resolver("thaw.num_blocks", _num_blocks, replace=True)


@dataclass
class BackboneConfig:
    name: str = "mobilenet_v2"
    alpha: float = 1.0
    image_size: int = 160
    weights: str | None = "imagenet"  # "imagenet", null (random init) or a path to a weights file
    # read from the architecture's entry in thaw.model.backbones (stated there only); a different
    # value is refused. unfreeze.depth counts these
    num_blocks: int = "${thaw.num_blocks:${.name}}"
    # BatchNorm mode: "auto" = inference mode for a pretrained base, normal training for random init
    batchnorm: BatchNormMode = BatchNormMode.auto
    # BatchNorm moving-average momentum; null keeps the architecture's (0.999 for MobileNetV2, tuned
    # for long ImageNet runs). A short from-scratch run needs a faster one (0.9) or its validation,
    # which uses the moving statistics, stays at chance while training accuracy climbs.
    batchnorm_momentum: float | None = None


@dataclass
class HeadConfig:
    name: HeadName = HeadName.linear
    dropout: float = 0.2
    hidden_units: int = 0  # mlp: size of the hidden layer
    activation: str = "relu"


@dataclass
class LRConfig:
    name: LRName = LRName.constant
    base: float = 1e-4
    finetune_factor: float = 0.1
    # cosine: learning rate at the end of a phase, as a fraction of its start
    final_fraction: float = 0.0
    # per-block (discriminative) rates in the fine-tuning phase: the top unfrozen block trains at
    # the phase's rate, each block below at layer_decay times the block above, the head at the
    # full rate; 1.0: one rate for all
    layer_decay: float = 1.0


@dataclass
class UnfreezeConfig:
    name: UnfreezeName = UnfreezeName.top_blocks
    depth: int = 3


@dataclass
class DataConfig:
    name: DataName = DataName.synthetic
    path: str | None = None
    batch_size: int = 32
    augment: bool = False
    num_classes: int | None = None  # inferred from class folders where possible
    val_fraction: float = 0.2  # folder without train/ + validation/: share held out for validation
    test_fraction: float = 0.0  # share of the validation split held out as a test split
    max_per_class: int | None = None  # cap images per class and split (quick runs)
    # "error": refuse the data set; "skip": drop the file with a warning
    on_bad_image: OnBadImage = OnBadImage.error
    # retraining a winner: validation images join training (needs restore_best=false)
    train_on_val: bool = False
    # decoded images and cached activations held in memory; larger data streams from disk
    # (null: half the memory available when the run starts, cgroup limits included)
    max_memory_mb: int | None = None
    # bound on what streaming writes to disk (null: free space less 1 GB)
    max_disk_mb: int | None = None
    # synthetic
    num_train: int = 256
    num_val: int = 128
    num_test: int = 0
    # TensorFlow Datasets
    tfds_name: str = "cats_vs_dogs"
    tfds_data_dir: str | None = None
    tfds_train_split: str = "train[:80%]"
    tfds_val_split: str = "train[80%:90%]"
    tfds_test_split: str | None = "train[90%:]"


@dataclass
class AugmentConfig:
    """Training-image augmentation (thaw.data.augment); validation and test images are never
    augmented."""

    name: str = "none"
    flip: Flip = Flip.none  # mirror the image across its vertical and/or horizontal axis
    rotation: float = 0.0  # +- this fraction of a full turn (Keras RandomRotation's factor)
    zoom: float = 0.0  # scale in [1 - zoom, 1 + zoom]
    translate: float = 0.0  # shift up to +- this fraction of the image side
    contrast: float = 0.0  # contrast factor in [1 - contrast, 1 + contrast]


@dataclass
class TrainerConfig:
    head_epochs: int = 10
    finetune_epochs: int = 10
    seed: int = 42
    objective: Any = "val_accuracy"  # a metric name, or a list of them for multi-objective sweeps
    optimizer: OptimizerName = OptimizerName.adam
    deterministic: bool = False
    save_model: bool = True
    export_h5: bool = False
    # Frozen-prefix activation cache: auto (on when the base is in inference mode and augmentation,
    # if any, uses cached views), true, false. Bounded in memory (cache_max_mb); shared across
    # processes via cache_dir.
    cache_features: Any = "auto"
    cache_dir: str | None = None
    cache_max_mb: int = 2048
    # Augmented views per training image computed once through the frozen layers and cached
    # (epoch e uses view (e + offset) % V); 0 = a fresh draw every epoch, on images, no cache.
    augment_views: int = 8
    # the augmentation draws' seed (null: trainer.seed); a sweep's confirmation runs set it to the
    # search's seed so they reuse its cached views, while their own trainer.seed reassigns the views
    # to epochs, draws the head and orders the data
    view_seed: int | None = None
    restore_best: bool = True  # model.keras and the objective come from the best validation epoch
    patience: int = 0  # stop a phase after this many epochs without improvement (0: never)
    precision: Precision = Precision.float32  # or mixed_float16 (GPU)
    jit_compile: Any = "auto"  # Keras: XLA on GPU, off on CPU (where it is ~10x slower)
    # default: one device; mirrored: tf.distribute.MirroredStrategy over all visible GPUs (or CPUs)
    strategy: Strategy = Strategy.default
    cpu_devices: int | None = None  # split the CPU into N logical devices (tests multi-device code)
    # a checkpoint.npz in the run dir after every epoch (deleted when the run ends or is pruned)
    checkpoint: bool = True
    # trials of a process reuse compiled fit models (a depth seen before is not traced again),
    # and optimizer/metric state is built before tracing (one trace, not two); false: plain Keras
    # compile
    reuse_compiled: bool = True
    # how many fit models (the head's, each depth's, the test split's) each kept classifier holds
    # with their traced steps for later trials, least recently used dropped first: fewer holds less
    # memory in a long sweep and traces again more often; a run uses 2 or 3, so 3 or more let the
    # next run reuse its steps (benchmarks/soak.py; docs/scheduling.md)
    kept_fit_models: int = 8
    # optimizer=adam updates each variable with TensorFlow's fused Adam kernel
    # (thaw.model.optimizers: a new depth's first step traces half the ops); false: Keras' own Adam
    fused_optimizer: bool = True
    # auto: a run dir holding a checkpoint (a killed run re-run with the same hydra.run.dir, a
    # retried or requeued sweep trial) continues from its last epoch; never: always from epoch 1
    resume: Resume = Resume.auto
    # targets (1 - s) one-hot + s / classes: the head stops pushing logits to infinity on small data
    label_smoothing: float = 0.0


@dataclass
class OptimizerConfig:
    # decoupled weight decay, AdamW-style (each step w -= lr * weight_decay * w, apart from the
    # gradient's update; Keras' weight_decay on every optimizer); 0: off (trainer.optimizer=adamw
    # then keeps Keras' own default, 0.004)
    weight_decay: float = 0.0


@dataclass
class LoggerConfig:
    name: LoggerName = LoggerName.none
    # wandb
    project: str = "thaw"
    entity: str | None = None
    mode: WandbMode = WandbMode.auto  # auto: online with credentials, else offline
    group: str | None = None  # default: the study name in sweeps, else the run name
    tags: list[str] = field(default_factory=list)
    log_model: bool = False  # upload model.keras as an artifact
    dir: str | None = None  # default: the Hydra run dir
    init_timeout: float = 30.0


@dataclass
class TrainConfig:
    name: str = "default"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    lr: LRConfig = field(default_factory=LRConfig)
    unfreeze: UnfreezeConfig = field(default_factory=UnfreezeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


OBJECTIVES = (
    "val_accuracy",
    "val_loss",
    "train_accuracy",
    "train_loss",
    "test_accuracy",
    "wall_seconds",
    "trainable_params",
)


def register_configs() -> None:
    """Put the schema and the experiment presets in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    from thaw.config.paths import experiments_dir

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    exp_dir = experiments_dir()
    if exp_dir.is_dir():
        for path in sorted(exp_dir.glob("*.yaml")):
            cs.store(
                group="experiment",
                name=path.stem,
                node=OmegaConf.load(path),
                package="_global_",
                provider="thaw",
            )


def compose_train(overrides=(), hydra_config: bool = False):
    """thaw-train's config composed from conf/ with Hydra's compose API, outside a run: for the
    generated reference, benchmarks and tests. `hydra_config`: keep the `hydra` node (sweeper,
    launcher) as a multirun sees it."""
    from hydra import compose, initialize_config_dir

    from thaw.config.paths import conf_dir

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name="train"):
        return compose(
            config_name="train", overrides=list(overrides), return_hydra_config=hydra_config
        )
