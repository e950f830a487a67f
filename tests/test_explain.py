import numpy as np
import pytest

from nscfate.architectures import ARCHITECTURES, build_model
from nscfate.explain import PREPROCESSING_LAYERS, GradCam, find_cam_layer, overlay_png
from nscfate.testing import cell_image


def _prepared(seed=0, size=(45, 60), radius=9):
    from nscfate.preprocessing import prepare_image

    return prepare_image(cell_image(np.random.default_rng(seed), radius=radius), size)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_cam_layer_is_a_spatial_backbone_map(arch):
    model = build_model(arch, 4, (45, 60))
    name = find_cam_layer(model)
    assert name not in PREPROCESSING_LAYERS
    assert type(model.get_layer(name)).__name__ != "ZeroPadding2D"  # its zero rows would shift the heat
    if arch == "inceptionv3" or arch.startswith("resnet"):  # a block's output, not a branch inside a block
        assert name.startswith("mixed") if arch == "inceptionv3" else name.endswith("_out"), name
    shape = model.get_layer(name).output.shape
    assert len(shape) == 4 and min(shape[1], shape[2]) >= 2
    heat = GradCam(model, name)(_prepared())
    assert heat.shape == (45, 60) and np.isfinite(heat).all() and 0.0 <= heat.min() and heat.max() <= 1.0


def test_gradcam_map_shape_range_and_dependence_on_input(tmp_path):
    from nscfate.modeldir import load_keras_model
    from nscfate.testing import make_tiny_model_dir

    model = load_keras_model(make_tiny_model_dir(tmp_path / "tiny", input_size=(45, 60)))
    cam = GradCam(model)
    a = cam(_prepared(0, radius=7))
    b = cam(_prepared(1, radius=13))
    assert a.shape == b.shape == (45, 60)
    assert a.dtype == np.float32 and 0.0 <= a.min() and a.max() == pytest.approx(1.0)
    assert not np.allclose(a, b, atol=0.05)


def test_a_saturated_prediction_still_gets_a_map(tmp_path):
    """With the head's weights scaled up the softmax gives exactly 1.0, whose gradient is zero: the map
    comes from the class logit, so it is the same as before scaling (up to its normalisation)."""
    from nscfate.modeldir import load_keras_model
    from nscfate.testing import make_tiny_model_dir

    model = load_keras_model(make_tiny_model_dir(tmp_path / "tiny", input_size=(45, 60)))
    # A cell whose map is not blank to begin with: which ones are depends on the fixture's brief
    # training, which lands differently across CPUs (radius 9 has no positive evidence on a Zen 3).
    image, before = next((im, m) for im in (_prepared(0, radius=r) for r in (9, 7, 11, 13))
                         if (m := GradCam(model)(im)).max() > 0)
    head = model.get_layer("predictions")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 1e4, bias * 1e4])
    assert float(model(image[np.newaxis]).numpy().max()) == 1.0  # saturated
    after = GradCam(model)(image)
    assert after.max() == pytest.approx(1.0)
    np.testing.assert_allclose(after, before, atol=1e-3)


def test_overlay_png_decodes_to_the_enlarged_image():
    import cv2

    image = _prepared()
    png = overlay_png(image, np.linspace(0, 1, 45 * 60, dtype=np.float32).reshape(45, 60), scale=2)
    out = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert out.shape == (90, 120, 3)
