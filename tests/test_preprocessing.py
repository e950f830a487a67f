import numpy as np
import pytest

from nscfate.errors import ConfigError, InvalidPixelValuesError
from nscfate.preprocessing import estimate_background, median, pad_to_aspect, percentile, parse_input_size, prepare_image


def _crop(h=47, w=60, bg=0.4):
    rng = np.random.default_rng(0)
    img = np.full((h, w), bg, np.float32) + rng.normal(0, 0.01, (h, w)).astype(np.float32)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < 64] = 0.1
    return img


def test_pad_fills_with_background_not_zero():
    img = _crop(bg=0.6)
    out = pad_to_aspect(img, 1.0)
    assert out.shape == (60, 60)
    assert np.allclose(out[0], estimate_background(img))
    assert out.min() > 0.05


@pytest.mark.parametrize("size", [(45, 60), (60, 60), (75, 75)])
def test_prepare_image_shape_and_determinism(size):
    img = _crop()
    a, b = prepare_image(img, size), prepare_image(img.copy(), size)
    assert a.shape == (*size, 1) and a.dtype == np.float32
    assert np.array_equal(a, b)


def test_prepare_image_rejects_nan():
    img = _crop()
    img[3, 3] = np.nan
    with pytest.raises(InvalidPixelValuesError):
        prepare_image(img)


def test_parse_input_size():
    assert parse_input_size("75") == (75, 75)
    assert parse_input_size("45x60") == (45, 60)
    with pytest.raises(ConfigError):
        parse_input_size("big")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_median_is_numpys_median_exactly(dtype):
    rng = np.random.default_rng(5)
    for n in [*range(1, 12), 236, 237, 1000]:
        for values in (rng.normal(100, 30, n), rng.integers(0, 4, n), rng.uniform(0, 1e-3, n)):
            values = values.astype(dtype)
            assert median(values) == float(np.median(values)), (n, values)


def test_median_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        median(np.array([], np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_percentile_is_numpys_percentile_exactly(dtype):
    rng = np.random.default_rng(6)
    for n in [*range(1, 12), 199, 200, 201, 3000]:  # 200: 99.5% falls on an element; 201: interpolated
        for values in (rng.normal(100, 30, n), rng.integers(0, 4, n), rng.uniform(0, 1e-3, n)):
            values = values.astype(dtype)
            for q in (0, 1, 37.3, 50, 99.5, 99.9, 100):
                assert percentile(values, q) == float(np.percentile(values, q)), (n, q, values)


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        percentile(np.array([], np.float32), 99.5)
