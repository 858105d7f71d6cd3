"""Composition with Hydra's compose API: every group option, experiments, typed schema,
validation."""

import pytest
from conftest import compose_cfg, need_cats_dogs, need_mnv2_weights
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from thaw.config.checks import validate
from thaw.errors import ConfigError, DataError

GROUPS = {
    "backbone": ["mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "resnet50"],
    "head": ["linear", "mlp"],
    "lr": ["constant", "cosine"],
    "unfreeze": ["top_blocks", "none", "all"],
    "data": ["synthetic", "folder", "cats_vs_dogs"],
    "logger": ["none"],
}


def test_defaults_match_the_spec():
    cfg = compose_cfg()
    assert cfg.backbone.name == "mobilenet_v2"
    assert cfg.backbone.alpha == 1.0 and cfg.backbone.image_size == 160
    assert cfg.backbone.weights == "imagenet"
    assert cfg.head.name == "linear"
    assert cfg.lr.name == "constant" and cfg.lr.base == 1e-4 and cfg.lr.finetune_factor == 0.1
    assert cfg.unfreeze.name == "top_blocks"
    assert cfg.trainer.objective == "val_accuracy"
    validate(cfg)


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_group_option_composes(group, option):
    cfg = compose_cfg([f"{group}={option}"])
    assert cfg[group].name == option


@pytest.mark.parametrize("experiment", ["smoke", "tiny", "cats_vs_dogs", "cats_vs_dogs_local"])
def test_experiments_compose_and_validate(experiment):
    if (
        experiment == "cats_vs_dogs_local"
    ):  # its weights and data are the shared files: validate checks them
        need_cats_dogs()
        need_mnv2_weights()
    cfg = compose_cfg([f"experiment={experiment}"])
    assert cfg.name == experiment
    validate(cfg)


def test_smoke_and_tiny_are_offline():
    for name in ("smoke", "tiny"):
        cfg = compose_cfg([f"experiment={name}"])
        assert cfg.backbone.weights is None and cfg.backbone.alpha == 0.35
        assert 32 <= cfg.backbone.image_size <= 96
        assert cfg.data.name == "synthetic"
    tiny = compose_cfg(["experiment=tiny"])
    assert tiny.trainer.head_epochs == 1 and tiny.trainer.finetune_epochs == 1
    smoke = compose_cfg(
        ["experiment=smoke"]
    )  # learns from scratch: every layer, BatchNorm statistics that keep up
    assert smoke.unfreeze.name == "all" and smoke.backbone.batchnorm_momentum == 0.9


def test_unknown_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException):
        compose_cfg(["backbone.nope=1"])


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "+trainer.head_epoch=3",
            "trainer.head_epoch: no such setting in trainer; did you mean trainer.head_epochs?",
        ),
        ("+data.pth=/photos", "data.pth: no such setting in data; did you mean data.path?"),
        ("+seed=3", "seed: no such setting at the top level"),
    ],
)
def test_a_key_appended_where_the_schema_has_none_is_refused(override, message):
    """`+key=value` slips past the schema; nothing would read the key, so validate refuses it."""
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg([override]))
    assert str(err.value).startswith(message)


def test_wrong_type_fails_at_composition():
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_cfg(["trainer.head_epochs=many"])


def _typed_fields():
    """Every schema field with a closed set of values (a StrEnum default), as (key, choices)."""
    import dataclasses
    import enum

    from thaw.config.schema import TrainConfig

    for group in dataclasses.fields(TrainConfig):
        if not dataclasses.is_dataclass(group.default_factory):
            continue
        for f in dataclasses.fields(group.default_factory):
            if isinstance(f.default, enum.Enum):
                yield f"{group.name}.{f.name}", [m.value for m in type(f.default)]


@pytest.mark.parametrize("key,choices", list(_typed_fields()))
def test_a_value_outside_a_typed_field_fails_at_composition_naming_the_choices(key, choices):
    with pytest.raises((ConfigCompositionException, ValidationError)) as info:
        compose_cfg([f"{key}=not_a_choice"])
    assert f"expected one of [{', '.join(choices)}]" in str(info.value) + str(info.value.__cause__)
    cfg = compose_cfg([f"{key}={choices[-1]}"])  # every choice is a plain string to the code
    node, name = key.split(".")
    assert cfg[node][name] == choices[-1] and f"{cfg[node][name]}" == choices[-1]


def test_typed_fields_cover_the_closed_sets():
    keys = dict(_typed_fields())
    assert {"trainer.resume", "trainer.precision", "trainer.optimizer", "augment.flip"} <= set(keys)
    assert len(keys) >= 13, keys


def test_unknown_group_option_fails():
    with pytest.raises(Exception, match="backbone/vgg99"):
        compose_cfg(["backbone=vgg99"])


@pytest.mark.parametrize(
    "override,key",
    [
        ("lr.base=0", "lr.base"),
        ("lr.base=-1e-3", "lr.base"),
        ("lr.base=nan", "lr.base"),
        ("lr.finetune_factor=0", "lr.finetune_factor"),
        ("unfreeze.depth=-1", "unfreeze.depth"),
        ("unfreeze.depth=20", "unfreeze.depth"),
        ("backbone.image_size=31", "backbone.image_size"),
        ("backbone.alpha=0.6", "backbone.alpha"),
        ("backbone.weights=/no/such/file.h5", "backbone.weights"),
        ("backbone.num_blocks=5", "backbone.num_blocks"),
        ("trainer.objective=accuracy_at_5", "trainer.objective"),
        ("head.dropout=1.0", "head.dropout"),
        ("data.batch_size=0", "data.batch_size"),
        ("trainer.kept_fit_models=0", "trainer.kept_fit_models"),
    ],
)
def test_bad_values_name_their_key(override, key):
    cfg = compose_cfg([override])
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert str(info.value).startswith(key)


def test_depth_limit_follows_the_backbone():
    validate(compose_cfg(["backbone=resnet50", "unfreeze.depth=17"]))
    with pytest.raises(ConfigError, match="resnet50's 17 blocks"):
        validate(compose_cfg(["backbone=resnet50", "unfreeze.depth=18"]))


def test_random_init_allows_any_alpha():
    validate(compose_cfg(["backbone.weights=null", "backbone.alpha=0.6"]))


def test_folder_without_path_is_refused():
    with pytest.raises(ConfigError, match="data.path"):
        validate(compose_cfg(["data=folder"]))


def test_folder_missing_path_is_refused(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        validate(compose_cfg(["data=folder", f"data.path={tmp_path / 'nope'}"]))
