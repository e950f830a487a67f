"""ResNet18 (He et al. 2016, "Deep Residual Learning for Image Recognition", table 1), which
``keras.applications`` does not provide.

The API follows ``keras.applications.ResNet50`` (``input_tensor``/``input_shape``, ``include_top=False``
backbone use, ``weights`` = ``None`` or a local weights file) so :mod:`nscfate.architectures` treats it
like the other backbones. Layer names follow the Keras ResNet naming (``conv2_block1_1_conv`` ...).
There are no ImageNet weights for it here; it is trained from scratch (or from a local weights file).
"""

from __future__ import annotations

import os

import keras
from keras import layers

from nscfate.errors import ConfigError

#: Basic blocks per stage and filters per stage of ResNet18.
BLOCKS: tuple[int, ...] = (2, 2, 2, 2)
FILTERS: tuple[int, ...] = (64, 128, 256, 512)
_BN_EPS = 1.001e-5


def _basic_block(x, filters: int, stride: int, name: str):
    """Two 3x3 convolutions with a residual connection (projected when the shape changes)."""
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_0_conv")(x)
        shortcut = layers.BatchNormalization(epsilon=_BN_EPS, name=f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_1_conv")(x)
    y = layers.BatchNormalization(epsilon=_BN_EPS, name=f"{name}_1_bn")(y)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    y = layers.BatchNormalization(epsilon=_BN_EPS, name=f"{name}_2_bn")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def ResNet18(
    include_top: bool = False,
    weights: str | os.PathLike | None = None,
    input_tensor=None,
    input_shape: tuple[int, int, int] | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    name: str = "resnet18",
) -> keras.Model:
    """Build ResNet18.

    Args:
        include_top: add global average pooling and a softmax ``classes``-way classifier.
        weights: ``None`` (random initialisation) or the path of a Keras weights file
            (``.weights.h5``) saved from a ResNet18 of the same channel count.
        input_tensor: optional Keras tensor to build on (its source input becomes the model input).
        input_shape: ``(height, width, channels)`` when ``input_tensor`` is not given.
        pooling: ``None``, ``"avg"`` or ``"max"`` global pooling when ``include_top`` is false.
        classes: number of classes of the top classifier.
        name: model name.

    Returns:
        A functional ``keras.Model``.

    Raises:
        ConfigError: ``weights="imagenet"`` (none exist for this architecture) or a missing file.
    """
    if weights == "imagenet":
        raise ConfigError("there are no ImageNet weights for resnet18; use a local weights file or none")
    if weights is not None and not os.path.exists(weights):
        raise ConfigError(f"weights file {os.fspath(weights)!r} does not exist")
    if input_tensor is None:
        if input_shape is None:
            raise ConfigError("ResNet18 needs input_shape or input_tensor")
        img_input = keras.Input(shape=input_shape)
    elif keras.backend.is_keras_tensor(input_tensor):
        img_input = input_tensor
    else:
        img_input = keras.Input(tensor=input_tensor, shape=input_shape)

    x = layers.ZeroPadding2D(padding=3, name="conv1_pad")(img_input)
    x = layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPS, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(padding=1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, (blocks, filters) in enumerate(zip(BLOCKS, FILTERS), start=2):
        for block in range(1, blocks + 1):
            stride = 2 if block == 1 and stage > 2 else 1
            x = _basic_block(x, filters, stride, name=f"conv{stage}_block{block}")

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(classes, activation="softmax", name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    # As in keras.applications: the model starts at the source input of a given tensor, so layers
    # applied before the backbone stay part of it.
    inputs = keras.utils.get_source_inputs(img_input)
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        model.load_weights(weights)
    return model

