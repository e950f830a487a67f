"""The six architectures of the paper, built by one function: :func:`build_model`.

Every model takes float32 ``(height, width, 1)`` raw intensities from
:func:`nscfate.preprocessing.prepare_image` and carries its intensity preprocessing as layers, so a saved
model needs nothing else:

``input -> PercentileNormalization -> [GreyToRGB -> arch scaling] -> [upsample] -> backbone -> GAP
-> dropout -> softmax``

- ``PercentileNormalization`` maps each image to about [0, 1] (float32 even under mixed precision).
- Backbones built for colour ImageNet images (mobilenet, vgg19, inceptionv3, resnet50) get the grey
  channel replicated to three and rescaled to the range their ImageNet weights expect: [-1, 1] for
  MobileNet/InceptionV3, caffe-style ``x * 255 - channel mean`` for VGG19/ResNet50.
- ``cnn`` and ``resnet18`` are trained from scratch here and take the single grey channel directly.
- BatchNormalization layers use momentum :data:`BN_MOMENTUM` (0.9) for short training schedules.
- Minimum input sizes: keras.applications backbones need at least 32 px a side, InceptionV3 at least
  75. When a side is below the architecture's minimum (InceptionV3 at 45x60 or 60x60), a bilinear
  ``Resizing`` layer inside the model enlarges the image, keeping its aspect ratio, until the short
  side reaches the minimum (45x60 -> 75x100, 60x60 -> 75x75). The model's declared input size is
  unchanged, so callers never see it.

The head is a 2-or-more-way softmax for both tasks (the binary task too), so every model returns one
probability per class in ``nscfate.classes`` task order.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import keras
from keras import layers

from nscfate.errors import ConfigError
from nscfate.layers import GreyToRGB, PercentileNormalization

#: The classifier layer every nscfate model ends with (Dense, softmax); Grad-CAM takes its logits.
HEAD_LAYER = "predictions"

#: BatchNormalization momentum of every backbone (Keras' default is 0.99). Our CPU schedules are
#: short (hundreds to a few thousand steps) and with 0.99 the moving averages lag the changing weights
#: so far that inference-mode accuracy collapses to chance while training accuracy is high; 0.9 keeps
#: them in step.
BN_MOMENTUM = 0.9
#: ImageNet channel means (BGR, 0-255) used by the caffe-style VGG/ResNet50 weights.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class ArchSpec:
    """What :func:`build_model` needs to know about one architecture."""

    name: str
    description: str
    colour: bool  # backbone takes 3 channels (ImageNet-style) rather than the grey channel
    min_side: int  # smallest height/width the backbone accepts
    imagenet: bool  # ImageNet weights exist (keras.applications download path)
    scale: float | tuple[float, ...] = 1.0  # applied after normalisation: x * scale + offset
    offset: float | tuple[float, ...] = 0.0


ARCHITECTURES: dict[str, ArchSpec] = {
    s.name: s
    for s in (
        ArchSpec("cnn", "small custom CNN: 4 blocks of 2x(conv3x3-BN-ReLU) + max-pool (32-256 filters)",
                 colour=False, min_side=16, imagenet=False),
        ArchSpec("mobilenet", "MobileNet v1 (keras.applications), alpha 1.0",
                 colour=True, min_side=32, imagenet=True, scale=2.0, offset=-1.0),
        ArchSpec("vgg19", "VGG19 (keras.applications)",
                 colour=True, min_side=32, imagenet=True, scale=255.0,
                 offset=tuple(-m for m in _CAFFE_MEAN_BGR)),
        ArchSpec("inceptionv3", "InceptionV3 (keras.applications); inputs below 75 px upsampled inside",
                 colour=True, min_side=75, imagenet=True, scale=2.0, offset=-1.0),
        ArchSpec("resnet18", "ResNet18 (nscfate.resnet18, basic blocks 2-2-2-2)",
                 colour=False, min_side=32, imagenet=False),
        ArchSpec("resnet50", "ResNet50 (keras.applications)",
                 colour=True, min_side=32, imagenet=True, scale=255.0,
                 offset=tuple(-m for m in _CAFFE_MEAN_BGR)),
    )
}


def get_arch(name: str) -> ArchSpec:
    """The :class:`ArchSpec` of ``name``; :class:`ConfigError` listing the known ones otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None


def backbone_input_size(arch: str, input_size: tuple[int, int]) -> tuple[int, int]:
    """The size the backbone sees: ``input_size`` enlarged (aspect kept) to the arch's minimum side."""
    spec = get_arch(arch)
    h, w = input_size
    if min(h, w) >= spec.min_side:
        return h, w
    factor = spec.min_side / min(h, w)
    return max(spec.min_side, math.ceil(h * factor - 1e-9)), max(spec.min_side, math.ceil(w * factor - 1e-9))


def _small_cnn(x, name: str = "cnn"):
    """The paper's small custom CNN (its exact layout is not published; this is a plain VGG-style net)."""
    for block, filters in enumerate((32, 64, 128, 256), start=1):
        for conv in (1, 2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{block}_conv{conv}")(x)
            x = layers.BatchNormalization(name=f"block{block}_bn{conv}")(x)
            x = layers.Activation("relu", name=f"block{block}_relu{conv}")(x)
        if block < 4:
            x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return x


def _backbone(arch: str, x, weights):
    """Apply the backbone to the Keras tensor ``x``; returns the backbone as a Model (the layers are
    added to the outer graph, so they are not nested) and its last feature map."""
    apps = keras.applications
    common = dict(include_top=False, weights=weights, input_tensor=x)
    if arch == "cnn":
        out = _small_cnn(x)
        model = keras.Model(keras.utils.get_source_inputs(x), out, name="cnn")
        if weights is not None:
            model.load_weights(weights)
        return model
    if arch == "resnet18":
        from nscfate.resnet18 import ResNet18

        return ResNet18(**common)
    factory = {
        "mobilenet": apps.MobileNet,
        "vgg19": apps.VGG19,
        "inceptionv3": apps.InceptionV3,
        "resnet50": apps.ResNet50,
    }[arch]
    return factory(**common)


def build_model(
    arch: str,
    num_classes: int,
    input_size: tuple[int, int] = (75, 75),
    pretrained: str | os.PathLike | None = None,
    *,
    dropout: float = 0.2,
) -> keras.Model:
    """Build an uncompiled classifier.

    Args:
        arch: one of :data:`ARCHITECTURES` (cnn, mobilenet, vgg19, inceptionv3, resnet18, resnet50).
        num_classes: number of output classes (>= 2; softmax output).
        input_size: ``(height, width)`` of the model input (``prepare_image`` output).
        pretrained: ``None`` (random initialisation), ``"imagenet"`` (keras' download path; needs the
            network), or the path of a local Keras weights file of the bare backbone (``.weights.h5``,
            or a legacy ``.h5`` such as keras' ImageNet files) with the backbone's channel count:
            3 for colour backbones, 1 for cnn/resnet18.
        dropout: dropout rate before the classifier.

    Returns:
        A ``keras.Model`` named ``nscfate_<arch>`` mapping ``(batch, h, w, 1)`` float32 to
        ``(batch, num_classes)`` float32 probabilities.

    Raises:
        ConfigError: unknown arch, bad sizes, ImageNet asked for an arch without ImageNet weights, or
            a weights file that is missing or does not fit the backbone.
    """
    spec = get_arch(arch)
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
    h, w = (int(v) for v in input_size)
    if min(h, w) < 16:
        raise ConfigError(f"input size {h}x{w} is too small; each side must be at least 16 px")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    weights = _check_pretrained(spec, pretrained)

    inputs = keras.Input(shape=(h, w, 1), dtype="float32", name="image")
    # float32 regardless of a mixed-precision policy: percentiles of raw intensities need the precision.
    x = PercentileNormalization(name="normalize", dtype="float32")(inputs)
    if spec.colour:
        x = GreyToRGB(name="grey_to_rgb")(x)
        x = layers.Rescaling(scale=_tuple_or_float(spec.scale), offset=_tuple_or_float(spec.offset),
                             name="backbone_scaling")(x)
    bh, bw = backbone_input_size(arch, (h, w))
    if (bh, bw) != (h, w):
        x = layers.Resizing(bh, bw, interpolation="bilinear", name="upsample")(x)
    try:
        with warnings.catch_warnings():
            # Keras 3.15 walks Functional's internal op-by-depth dict while loading and warns about it
            # for every layer; the weights themselves load (tests compare every backbone weight).
            warnings.filterwarnings("ignore", message="Skipping nested container")
            backbone = _backbone(arch, x, weights)
    except ValueError as exc:  # keras reports shape mismatches of a weights file as ValueError
        raise ConfigError(f"cannot load pretrained weights {os.fspath(pretrained)!r} into {arch}: {exc}") from None
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    x = layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name=HEAD_LAYER)(x)
    return keras.Model(inputs, outputs, name=f"nscfate_{arch}")


def _tuple_or_float(v):
    return list(v) if isinstance(v, tuple) else v


def _check_pretrained(spec: ArchSpec, pretrained) -> str | None:
    if pretrained is None:
        return None
    if pretrained == "imagenet":
        if not spec.imagenet:
            raise ConfigError(f"there are no ImageNet weights for {spec.name}; "
                              "use a local weights file (--pretrained PATH) or none")
        return "imagenet"
    path = os.fspath(pretrained)
    if not os.path.isfile(path):
        raise ConfigError(f"pretrained weights file {path!r} does not exist; "
                          "give 'imagenet' or the path of a .weights.h5/.h5 file")
    if not path.endswith(".h5"):
        raise ConfigError(f"pretrained weights file {path!r} must be a Keras .weights.h5 (or legacy .h5) file")
    return path


def count_params(model: keras.Model) -> int:
    """Total number of parameters (trainable and not)."""
    return int(sum(int(math.prod(v.shape)) for v in model.weights))


def build_backbone(arch: str, input_size: tuple[int, int] = (75, 75), pretrained=None) -> keras.Model:
    """The bare backbone of ``arch`` (no preprocessing layers, no head) on a ``(h, w, c)`` input with
    c = 3 for colour backbones and 1 otherwise. Its ``save_weights`` file is what
    ``build_model(..., pretrained=PATH)`` loads."""
    spec = get_arch(arch)
    weights = _check_pretrained(spec, pretrained)
    x = keras.Input(shape=(*input_size, 3 if spec.colour else 1))
    return _backbone(arch, x, weights)
