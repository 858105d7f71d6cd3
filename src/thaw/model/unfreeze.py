"""Which layers of the base train in the fine-tuning phase, counted in whole blocks from the top.

Counting blocks rather than layer indices keeps a residual block together: the TensorFlow
tutorial's `fine_tune_at=100` cuts MobileNetV2's block_11 in half.
"""

from __future__ import annotations

from thaw.errors import ConfigError


def layer_blocks(base, spec) -> dict[str, str]:
    """Map each layer of the base to its block; layers without a block name join the previous
    one."""
    current = "stem"
    out = {}
    for layer in base.layers:
        block = spec.block_of(layer.name)
        if block is not None:
            current = block
        out[layer.name] = current
    return out


def block_order(base, spec) -> list[str]:
    order: list[str] = []
    for block in layer_blocks(base, spec).values():
        if block not in order:
            order.append(block)
    return order


def trainable_blocks(base, spec, mode: str, depth: int) -> list[str]:
    order = block_order(base, spec)
    if len(order) != spec.num_blocks:
        raise RuntimeError(
            f"{spec.name}: found {len(order)} blocks, registry says {spec.num_blocks}"
        )
    if mode == "none":
        return []
    if mode == "all":
        return order
    if depth > len(order):
        raise ConfigError(f"unfreeze.depth: {depth} is more than {spec.name}'s {len(order)} blocks")
    return order[len(order) - depth :] if depth else []


def top_block_layers(base, spec, depth: int) -> set:
    """Names of the layers in the top `depth` blocks."""
    blocks = set(trainable_blocks(base, spec, "top_blocks", depth))
    return {name for name, block in layer_blocks(base, spec).items() if block in blocks}


def freeze_all(base) -> None:
    base.trainable = False


def apply(base, spec, mode: str, depth: int, frozen_batchnorm: bool = False) -> list[str]:
    """Make exactly the top `depth` blocks trainable (or none/all); returns their names.

    `frozen_batchnorm`: their BatchNormalization layers stay frozen, which is what keeps them in
    inference mode (Keras runs a BatchNormalization layer on its moving statistics, and updates
    none, only when it is not trainable). Calling the base with training=False does not: inside a
    functional model, fit's training=True reaches the nested base's layers all the same
    (measured on Keras 3.15: the moving means of every unfrozen block moved during fine-tuning)."""
    import keras

    blocks = set(trainable_blocks(base, spec, mode, depth))
    if not blocks:
        base.trainable = False
        return []
    base.trainable = True
    mapping = layer_blocks(base, spec)
    for layer in base.layers:
        layer.trainable = mapping[layer.name] in blocks and not (
            frozen_batchnorm and isinstance(layer, keras.layers.BatchNormalization)
        )
    return [b for b in block_order(base, spec) if b in blocks]
