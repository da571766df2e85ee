import matplotlib.image as mpimg
import numpy as np
import pytest
from skimage.transform import downscale_local_mean

from fpjax.data import load_image_folder, sample_images, sample_names


@pytest.mark.parametrize("size", [32, 64, 128])
def test_sample_images_are_nhwc_float32_in_unit_range(size):
    images = sample_images(size)
    assert images.shape == (16, size, size, 3) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert len(sample_names()) == 16
    assert np.std(images, axis=(1, 2, 3)).min() > 0.01  # none is blank


def test_small_sizes_are_block_averages_of_the_stored_crops():
    full = sample_images(128)
    for size in (32, 64):
        factor = 128 // size
        expected = np.stack([downscale_local_mean(im, (factor, factor, 1)) for im in full])
        np.testing.assert_allclose(sample_images(size), expected, rtol=1e-6, atol=1e-6)


def test_bad_size_is_named():
    with pytest.raises(ValueError, match="size must be one of"):
        sample_images(48)


def test_image_folder_round_trip(tmp_path):
    images = sample_images(32)[:3]
    for i, image in enumerate(images):
        mpimg.imsave(tmp_path / f"im{i}.png", image)
    loaded, names = load_image_folder(tmp_path)
    assert names == ["im0.png", "im1.png", "im2.png"]
    np.testing.assert_allclose(loaded, np.round(images * 255) / 255, atol=1.0 / 255 + 1e-6)
    resized, _ = load_image_folder(tmp_path, size=16)
    assert resized.shape == (3, 16, 16, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .png"):
        load_image_folder(tmp_path / "empty")
