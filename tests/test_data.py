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


# ----------------------------------------------------------------------------------------------
# Loading errors name the file and what was expected


def test_image_folder_errors_name_the_folder_or_the_file(tmp_path):
    from fpjax.data import image_paths, read_image

    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        load_image_folder(tmp_path / "nowhere")
    (tmp_path / "afile.png").write_bytes(b"not an image")
    with pytest.raises(NotADirectoryError, match="afile.png is a file"):
        image_paths(tmp_path / "afile.png")
    with pytest.raises(ValueError, match=r"cannot read image .*afile\.png"):
        read_image(tmp_path / "afile.png")
    folder = tmp_path / "images"
    folder.mkdir()
    mpimg.imsave(folder / "a.jpg", sample_images(32)[0])
    (folder / "a.jpg").write_bytes((folder / "a.jpg").read_bytes()[:300])  # truncated
    mpimg.imsave(folder / "b.png", sample_images(32)[1])
    with pytest.raises(ValueError, match=r"cannot read image .*a\.jpg .*replace the file"):
        load_image_folder(folder)


def test_grey_and_grey_alpha_images_are_read_as_rgb(tmp_path):
    from PIL import Image

    from fpjax.data import read_image

    grey = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).astype(np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    Image.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), "LA").save(tmp_path / "la.png")
    for name in ("l.png", "la.png"):
        image = read_image(tmp_path / name)
        assert image.shape == (8, 8, 3) and image.dtype == np.float32
        np.testing.assert_allclose(image[..., 1], grey / 255.0, atol=1e-6)


def _cifar_arrays(n=4, label=9):
    images = np.random.default_rng(1).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return images, np.full(n, label)


@pytest.mark.parametrize(
    "write, match",
    [
        (lambda p: p.write_text("hello\n"), r"x\.npz is not a CIFAR-10 npz \(not an \.npz archive\)"),
        (lambda p: p.write_bytes(b"PK\x03\x04 truncated"), r"x\.npz is not a CIFAR-10 npz"),
        (lambda p: np.save(p.with_suffix(".npy"), np.zeros(3)) or p.with_suffix(".npy").rename(p), "single .npy"),
        (lambda p: np.savez(p, x=np.zeros(3)), r"holds arrays \['x'\]; expected .*'images' .*'labels'"),
        (lambda p: np.savez(p, images=_cifar_arrays()[0].transpose(0, 3, 1, 2), labels=np.full(4, 9)), "transpose"),
        (lambda p: np.savez(p, images=_cifar_arrays()[0] / 255.0, labels=np.full(4, 9)), "float64 .* expected uint8"),
        (lambda p: np.savez(p, images=_cifar_arrays()[0], labels=np.full(3, 9)), "'labels' .* expected 4 integers"),
        (lambda p: np.savez(p, images=np.empty(2, object), labels=np.full(2, 9)), "cannot read its arrays"),
    ],
    ids=["text", "truncated-zip", "npy", "other-arrays", "channel-first", "float", "labels-length", "pickled"],
)
def test_a_file_that_is_not_a_cifar_npz_is_named(tmp_path, write, match):
    from fpjax.data import load_cifar10

    path = tmp_path / "x.npz"
    write(path)
    with pytest.raises(ValueError, match=match):
        load_cifar10(path)


def test_cifar_folder_and_class_errors(tmp_path):
    from fpjax.data import load_cifar10

    with pytest.raises(FileNotFoundError, match="nothing.npz does not exist: expected"):
        load_cifar10(tmp_path / "nothing.npz")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="test_batch does not exist"):
        load_cifar10(folder)
    (folder / "test_batch").write_text("not a pickle")
    with pytest.raises(ValueError, match="test_batch is not a CIFAR-10 batch"):
        load_cifar10(folder)
    import pickle

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, f)  # no labels
    with pytest.raises(ValueError, match="test_batch is not a CIFAR-10 batch"):
        load_cifar10(folder)
    images, labels = _cifar_arrays()
    np.savez(tmp_path / "trucks.npz", images=images, labels=labels)
    with pytest.raises(ValueError, match="holds no image of class cat"):
        load_cifar10(tmp_path / "trucks.npz", "cat")
    with pytest.raises(ValueError, match="class 12 out of range"):
        load_cifar10(tmp_path / "trucks.npz", "12")
    assert load_cifar10(tmp_path / "trucks.npz", "9")[0].shape == (4, 32, 32, 3)
    (tmp_path / "trucks.bin").write_bytes((tmp_path / "trucks.npz").read_bytes())  # any name: read as an npz
    assert load_cifar10(tmp_path / "trucks.bin", "truck")[0].shape == (4, 32, 32, 3)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_load_dataset_refuses_a_count_that_is_not_positive(n):
    from fpjax.data import load_dataset

    with pytest.raises(ValueError, match="n must be a positive number of images"):
        load_dataset("samples", 32, n)


def test_load_dataset_refuses_bad_specs_and_sizes(tmp_path):
    from fpjax.data import load_dataset

    for spec in ("cifar10", "cifar10:", "folder:", "imagenet:x"):
        with pytest.raises(ValueError, match="data must be samples"):
            load_dataset(spec)
    with pytest.raises(ValueError, match="size must be a positive"):
        load_dataset("samples", -32)
    with pytest.raises(ValueError, match="for the sample images, got 48"):
        load_dataset("samples", 48)
    images, ids = load_dataset("samples", 32, 3)
    assert images.shape == (3, 32, 32, 3) and len(ids) == 3
