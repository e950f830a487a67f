import numpy as np
import pytest

from nscfate.architectures import (ARCHITECTURES, backbone_input_size, build_backbone, build_model,
                                   count_params)
from nscfate.errors import ConfigError

SIZES = [(45, 60), (60, 60), (75, 75)]


def _images(size, n=2, seed=0):
    rng = np.random.default_rng(seed)
    # raw intensities in an 8-bit-like range: normalisation is inside the model
    return (rng.random((n, *size, 1)) * 200 + 20).astype("float32")


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("size", SIZES)
def test_every_arch_builds_at_paper_sizes(arch, size):
    model = build_model(arch, 4, size)
    assert model.input_shape == (None, *size, 1)
    assert model.output_shape == (None, 4)
    probs = np.asarray(model(_images(size), training=False))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert model.get_layer("normalize") is not None


@pytest.mark.parametrize("arch,size", [(a, SIZES[i % 3]) for i, a in enumerate(ARCHITECTURES)])
def test_save_reload_gives_identical_outputs(tmp_path, arch, size):
    import keras

    model = build_model(arch, 2, size)
    x = _images(size, n=3)
    before = np.asarray(model.predict(x, verbose=0))
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(again.predict(x, verbose=0)), before)


def test_inceptionv3_upsamples_small_inputs_inside_the_model():
    assert backbone_input_size("inceptionv3", (45, 60)) == (75, 100)
    assert backbone_input_size("inceptionv3", (60, 60)) == (75, 75)
    assert backbone_input_size("resnet50", (45, 60)) == (45, 60)
    model = build_model("inceptionv3", 2, (45, 60))
    assert model.get_layer("upsample").output.shape[1:3] == (75, 100)


def test_normalisation_makes_outputs_independent_of_intensity_scale():
    model = build_model("cnn", 3, (32, 32))
    x = _images((32, 32))
    a = np.asarray(model(x, training=False))
    b = np.asarray(model(x * 3.0 + 50.0, training=False))
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet", "cnn"])
def test_pretrained_local_weights_file_is_loaded(tmp_path, arch):
    source = build_backbone(arch, (40, 40))
    path = tmp_path / f"{arch}.weights.h5"
    source.save_weights(path)
    fresh = build_model(arch, 4, (60, 60))
    loaded = build_model(arch, 4, (60, 60), pretrained=path)
    with_weights = [l for l in source.layers if l.get_weights()]
    assert with_weights
    for layer in with_weights:  # every backbone weight arrives, matched by layer name
        for got, want in zip(loaded.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(got, want)
    kernel = with_weights[0].get_weights()[0]
    assert not np.array_equal(fresh.get_layer(with_weights[0].name).get_weights()[0], kernel)


def test_pretrained_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        build_model("cnn", 2, (32, 32), pretrained="imagenet")
    with pytest.raises(ConfigError, match="does not exist"):
        build_model("resnet18", 2, (32, 32), pretrained=tmp_path / "missing.weights.h5")
    wrong = tmp_path / "cnn.weights.h5"
    build_backbone("cnn", (32, 32)).save_weights(wrong)
    with pytest.raises(ConfigError, match="cannot load"):
        build_model("resnet18", 2, (32, 32), pretrained=wrong)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="unknown architecture"):
        build_model("alexnet", 2)
    with pytest.raises(ConfigError):
        build_model("cnn", 1)
    with pytest.raises(ConfigError):
        build_model("cnn", 2, (8, 8))


def test_param_counts_match_the_published_backbones():
    # ResNet18 has 11.2M parameters with a 1000-way head (11.7M); without: ~11.18M
    assert 11_000_000 < count_params(build_backbone("resnet18", (64, 64))) < 11_300_000


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_batchnorm_momentum_is_set_for_short_schedules(tmp_path, arch):
    import keras

    from nscfate.architectures import BN_MOMENTUM

    model = build_model(arch, 2, (32, 32))
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and {l.momentum for l in bns} == {BN_MOMENTUM}
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    assert {l.momentum for l in again.layers if isinstance(l, keras.layers.BatchNormalization)} == {BN_MOMENTUM}


@pytest.mark.parametrize("shape,low,high", [((4, 45, 60, 1), 1.0, 99.0), ((3, 75, 75, 1), 1.0, 99.0),
                                            ((2, 8, 9, 1), 0.0, 100.0), ((2, 16, 16, 1), 5.0, 50.0)])
def test_percentile_normalization_equals_keras_quantile(shape, low, high):
    """The layer ranks the pixels itself (so that TensorFlow Lite can run it): the very floats that
    ops.quantile gives, which the shipped models were trained and checked with."""
    from keras import ops

    from nscfate.layers import PercentileNormalization

    x = (np.random.default_rng(1).normal(size=shape) * 1000).astype("float32")
    q = ops.quantile(x, [low / 100, high / 100], axis=(1, 2, 3), keepdims=True)
    expected = np.asarray((x - q[0]) / ops.maximum(q[1] - q[0], 1e-6))
    np.testing.assert_array_equal(np.asarray(PercentileNormalization(low, high)(x)), expected)


def test_percentile_normalization_of_images_of_unknown_size():
    """Traced for any image size, the layer cannot fix the quantiles' positions: it takes ops.quantile's."""
    import tensorflow as tf

    from nscfate.layers import PercentileNormalization

    layer = PercentileNormalization()
    x = (np.random.default_rng(2).normal(size=(2, 20, 30, 1)) * 100).astype("float32")
    any_size = tf.function(layer, input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)])
    np.testing.assert_array_equal(np.asarray(any_size(x)), np.asarray(layer(x)))


def test_a_model_converts_to_tensorflow_lite_whole():
    """Every operation, the normalization included, is one of TensorFlow Lite's own: a CPU worker can run
    the converted model (bench/inference_engines.py), with the Keras model's outputs."""
    import warnings

    import tensorflow as tf

    model = build_model("cnn", 4, (45, 60))
    x = _images((45, 60), n=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interpreter = tf.lite.Interpreter(model_content=tf.lite.TFLiteConverter.from_keras_model(model).convert())
    inp, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    interpreter.resize_tensor_input(inp, list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp, x)
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(out), np.asarray(model(x, training=False)), atol=1e-5)
