"""Classifier heads on top of the convolutional base."""

from __future__ import annotations


def build_head(x, cfg, num_classes: int):
    """Pool, dropout, (hidden layer), output. Binary tasks get one logit; others a softmax."""
    from keras import layers

    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    if cfg.name == "mlp":
        x = layers.Dense(cfg.hidden_units, activation=cfg.activation, name="head_hidden")(x)
    if cfg.dropout > 0:
        x = layers.Dropout(cfg.dropout, name="head_dropout")(x)
    if num_classes == 2:
        return layers.Dense(1, name="head_logit", dtype="float32")(x)
    return layers.Dense(num_classes, activation="softmax", name="head_softmax", dtype="float32")(x)
