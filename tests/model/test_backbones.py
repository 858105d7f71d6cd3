"""Each backbone's declared blocks match the real Keras model; preprocessing matches
preprocess_input."""

import importlib

import numpy as np
import pytest

from thaw.model.backbones import SPECS, build_base, preprocessing_layer
from thaw.model.unfreeze import block_order


@pytest.mark.parametrize("name", sorted(SPECS))
def test_block_count_matches_registry(name):
    spec = SPECS[name]
    base = build_base(spec, 0.35 if name == "mobilenet_v2" else 1.0, 32, None)
    order = block_order(base, spec)
    assert len(order) == spec.num_blocks, order
    assert order[0] == "stem"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_preprocessing_layer_equals_keras_preprocess_input(name):
    spec = SPECS[name]
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    module = importlib.import_module(f"keras.applications.{spec.preprocess_module}")
    expected = np.asarray(module.preprocess_input(x.copy()))
    got = np.asarray(preprocessing_layer(spec)(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)


def test_every_backbone_config_reads_its_block_count_from_the_registry():
    from conftest import compose_cfg

    for name, spec in SPECS.items():
        assert compose_cfg([f"backbone={name}"]).backbone.num_blocks == spec.num_blocks
        # a user's own backbone file names the architecture and nothing else: the count follows it
        assert compose_cfg([f"backbone.name={name}"]).backbone.num_blocks == spec.num_blocks


def test_weights_from_a_local_file_load(mnv2_weights):
    """The offline path: backbone.weights=/path/to/file.h5 gives the pretrained (not random)
    base."""
    spec = SPECS["mobilenet_v2"]
    loaded = build_base(spec, 0.35, 96, str(mnv2_weights))
    random = build_base(spec, 0.35, 96, None)
    w_loaded = loaded.get_layer("Conv1").get_weights()[0]
    w_random = random.get_layer("Conv1").get_weights()[0]
    assert not np.allclose(w_loaded, w_random)
    # the pretrained BatchNorm statistics are not the initial ones
    assert not np.allclose(loaded.get_layer("bn_Conv1").moving_variance.numpy(), 1.0)
