import pathlib

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


def test_cifar10_pickle_and_npz_with_class_selection(tmp_path):
    import pickle

    from fpjax.data import load_cifar10, load_dataset

    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(6, 3072), dtype=np.uint8)
    labels = [9, 1, 9, 0, 9, 3]
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": raw, b"labels": labels}, f)
    images, got = load_cifar10(folder, "truck")
    assert images.shape == (3, 32, 32, 3) and (got == 9).all()
    # CIFAR rows are channel-major: R plane, G plane, B plane, each row-major 32x32
    np.testing.assert_allclose(images[0, 0, 1, 2], raw[0, 2 * 1024 + 1] / 255.0)
    np.savez(tmp_path / "subset.npz", images=raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels=labels)
    from_npz, _ = load_cifar10(tmp_path / "subset.npz", 9)
    np.testing.assert_array_equal(from_npz, images)
    data, ids = load_dataset(f"cifar10:{folder}:truck", n=2)
    assert data.shape == (2, 32, 32, 3) and len(ids) == 2
    with pytest.raises(ValueError, match="unknown CIFAR-10 class"):
        load_cifar10(folder, "lorry")


def test_celeba_folder_centre_crop(tmp_path):
    from fpjax.data import load_celeba_folder

    image = np.zeros((60, 40, 3), np.float32)
    image[10:50] = 1.0  # the centre 40x40 square is white, the top and bottom bands black
    mpimg.imsave(tmp_path / "000001.jpg", image)
    mpimg.imsave(tmp_path / "000002.png", image)
    images, names = load_celeba_folder(tmp_path, size=8)
    assert images.shape == (2, 8, 8, 3) and names == ["000001.jpg", "000002.png"]
    assert images[1].min() > 0.99  # only the white square survives the crop
    assert images[0].min() > 0.9  # JPEG: nearly


def test_shared_cifar_subset_if_present():
    from fpjax.data import load_cifar10

    path = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_subset.npz"
    if not path.exists():
        pytest.skip("../shared/data/cifar10_subset.npz is absent")
    trucks, labels = load_cifar10(path, "truck")
    assert trucks.shape == (200, 32, 32, 3) and (labels == 9).all()
