"""Backbones from keras.applications, with the block boundaries `unfreeze.depth` counts.

The registry is pure Python so configs can be validated before TensorFlow is imported.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from thaw.errors import ConfigError, WeightsError, first_line


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    constructor: str  # attribute of keras.applications
    preprocess_module: str  # keras.applications.<module>.preprocess_input is the reference
    preprocess: (
        str  # "tf" (x/127.5-1), "caffe" (BGR, mean-subtracted) or "none" (done inside the model)
    )
    block_pattern: str  # regex; group 1 is the block a layer belongs to
    top_pattern: str | None  # layers of the final conv ("top" block), if the backbone has one
    num_blocks: int
    min_size: int = 32
    imagenet_alphas: tuple | None = None  # None: backbone has no width multiplier
    imagenet_sizes: tuple | None = None

    def block_of(self, layer_name: str) -> str | None:
        """The block a layer starts or belongs to; None means 'same block as the previous layer'."""
        if self.top_pattern and re.match(self.top_pattern, layer_name):
            return "top"
        m = re.match(self.block_pattern, layer_name)
        return m.group(1) if m else None


SPECS = {
    "mobilenet_v2": BackboneSpec(
        name="mobilenet_v2",
        constructor="MobileNetV2",
        preprocess_module="mobilenet_v2",
        preprocess="tf",
        block_pattern=r"^(expanded_conv|block_\d+)_",
        top_pattern=r"^(Conv_1|Conv_1_bn|out_relu)$",
        num_blocks=19,  # stem, expanded_conv, block_1..block_16, top
        imagenet_alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
        imagenet_sizes=(96, 128, 160, 192, 224),
    ),
    "mobilenet_v3_small": BackboneSpec(
        name="mobilenet_v3_small",
        constructor="MobileNetV3Small",
        preprocess_module="mobilenet_v3",
        preprocess="none",  # Rescaling is part of the Keras model
        block_pattern=r"^(expanded_conv(?:_\d+)?)_",
        top_pattern=r"^conv_1(_bn)?$",
        num_blocks=13,  # stem, expanded_conv, expanded_conv_1..10, top
        imagenet_alphas=(0.75, 1.0),
    ),
    "efficientnet_b0": BackboneSpec(
        name="efficientnet_b0",
        constructor="EfficientNetB0",
        preprocess_module="efficientnet",
        preprocess="none",  # Rescaling + Normalization are part of the Keras model
        block_pattern=r"^(block\d[a-z])_",
        top_pattern=r"^top_",
        num_blocks=18,  # stem, block1a..block7a (16), top
    ),
    "resnet50": BackboneSpec(
        name="resnet50",
        constructor="ResNet50",
        preprocess_module="resnet50",
        preprocess="caffe",
        block_pattern=r"^(conv\d_block\d+)_",
        top_pattern=None,
        num_blocks=17,  # stem (conv1, pool1), conv2_block1..conv5_block3 (16)
    ),
}


def get_spec(name: str) -> BackboneSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ConfigError(
            f"backbone.name: unknown backbone {name!r}; choose one of {', '.join(sorted(SPECS))}"
        ) from None


def build_base(spec: BackboneSpec, alpha: float, image_size: int, weights: str | None):
    """The convolutional base without its classifier, weights loaded."""
    import keras

    ctor = getattr(keras.applications, spec.constructor)
    kwargs = dict(include_top=False, weights=weights, input_shape=(image_size, image_size, 3))
    if spec.imagenet_alphas is not None:
        kwargs["alpha"] = alpha
    if spec.name == "mobilenet_v3_small":
        kwargs["include_preprocessing"] = True
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # an unreachable download must fail in seconds, not hang
    try:
        return ctor(**kwargs)
    except Exception as exc:  # keras raises plain Exception on URL failures
        first = first_line(exc, None)
        if weights == "imagenet":
            raise WeightsError(
                "backbone.weights=imagenet: could not download the ImageNet weights "
                f"({first[:300]}); "
                "offline, pass a local file with backbone.weights=/path/to/weights.h5 "
                "(or backbone.weights=null for random init)"
            ) from None
        raise WeightsError(
            f"backbone.weights={weights}: cannot load these weights into "
            f"{spec.constructor} ({first[:200]})"
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)


def preprocessing_layer(spec: BackboneSpec):
    """The backbone's preprocess_input as a built-in layer, so model.keras reloads without thaw."""
    import numpy as np
    from keras import layers

    if spec.preprocess == "tf":
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")
    if spec.preprocess == "caffe":
        # RGB -> BGR and ImageNet mean subtraction as a fixed 1x1 convolution.
        mean_bgr = np.array([103.939, 116.779, 123.68], dtype="float32")
        kernel = np.zeros((1, 1, 3, 3), dtype="float32")
        for out_c in range(3):
            kernel[0, 0, 2 - out_c, out_c] = 1.0
        conv = layers.Conv2D(3, 1, name="preprocess", trainable=False)
        conv.build((None, None, None, 3))
        conv.set_weights([kernel, -mean_bgr])
        return conv
    return layers.Identity(name="preprocess")
