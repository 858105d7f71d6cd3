"""unfreeze.depth counts whole blocks from the top."""

import pytest

from thaw.errors import ConfigError
from thaw.model import unfreeze
from thaw.model.backbones import SPECS, build_base


@pytest.fixture(scope="module")
def mnv2():
    spec = SPECS["mobilenet_v2"]
    return spec, build_base(spec, 0.35, 32, None)


def _trainable_blocks(base, spec):
    mapping = unfreeze.layer_blocks(base, spec)
    return {mapping[l.name] for l in base.layers if l.trainable and l.weights}


def test_depth_zero_freezes_everything(mnv2):
    spec, base = mnv2
    assert unfreeze.apply(base, spec, "top_blocks", 0) == []
    assert base.trainable_weights == []


@pytest.mark.parametrize("depth", [1, 3, 7, 19])
def test_depth_unfreezes_exactly_the_top_blocks(mnv2, depth):
    spec, base = mnv2
    names = unfreeze.apply(base, spec, "top_blocks", depth)
    order = unfreeze.block_order(base, spec)
    assert names == order[-depth:]
    assert _trainable_blocks(base, spec) == set(order[-depth:])
    # a block is never cut in half: every weighted layer of block_11 trains together, or none does
    mapping = unfreeze.layer_blocks(base, spec)
    flags = {l.trainable for l in base.layers if mapping[l.name] == "block_11" and l.weights}
    assert len(flags) == 1


def test_depth_one_is_the_final_conv(mnv2):
    spec, base = mnv2
    unfreeze.apply(base, spec, "top_blocks", 1)
    trainable = sorted(l.name for l in base.layers if l.trainable and l.weights)
    assert trainable == ["Conv_1", "Conv_1_bn"]


def test_all_and_none(mnv2):
    spec, base = mnv2
    assert len(unfreeze.apply(base, spec, "all", 0)) == spec.num_blocks
    assert all(l.trainable for l in base.layers)
    assert unfreeze.apply(base, spec, "none", 5) == []
    assert base.trainable_weights == []


def test_depth_past_the_blocks_is_an_error(mnv2):
    spec, base = mnv2
    with pytest.raises(ConfigError, match="unfreeze.depth"):
        unfreeze.apply(base, spec, "top_blocks", 20)
