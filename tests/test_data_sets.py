"""Lazy image sets: each read decodes only the images asked for, and the synthetic set is the documented one."""

import numpy as np
import PIL.Image
import pytest

from fpjax import data
from fpjax.data import sets


def _uint8_images(count=5, size=8):
    return np.random.default_rng(0).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_an_array_set_keeps_uint8_and_reads_floats():
    raw = _uint8_images()
    image_set = sets.ArraySet(raw)
    assert image_set.images.dtype == np.uint8 and len(image_set) == 5 and image_set.names[4] == "image_4"
    np.testing.assert_array_equal(image_set[np.array([3, 1])], raw[[3, 1]].astype(np.float32) / 255)
    np.testing.assert_array_equal(image_set[2], raw[2] / np.float32(255))
    with pytest.raises(IndexError, match="out of range for a set of 5"):
        image_set[np.array([5])]


def test_a_folder_set_decodes_only_what_is_read(tmp_path, monkeypatch):
    raw = _uint8_images(4)
    for i, image in enumerate(raw):
        PIL.Image.fromarray(image).save(tmp_path / f"im{i}.png")
    read = []
    original = data.read_image
    monkeypatch.setattr(data, "read_image", lambda path: read.append(path.name) or original(path))
    image_set = sets.FolderSet(tmp_path)
    assert image_set.shape == (4, 8, 8, 3) and image_set.names == [f"im{i}.png" for i in range(4)]
    read.clear()
    np.testing.assert_array_equal(image_set[np.array([2, 0])], raw[[2, 0]] / np.float32(255))
    assert read == ["im2.png", "im0.png"]
    PIL.Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match="odd.png is 6x8"):
        sets.FolderSet(tmp_path)
    assert sets.FolderSet(tmp_path, size=4).shape == (5, 4, 4, 3)


def test_the_synthetic_set_is_the_documented_augmentation():
    raw = _uint8_images(3, 10)
    base = raw.astype(np.float32) / 255
    synthetic = sets.SyntheticSet(raw, 20, seed=7, shift=2)
    images = synthetic[np.arange(20)]
    np.testing.assert_array_equal(images[:3], base)  # the first copy is the base itself
    for i in (3, 8, 19):  # copy 1 (flipped), copy 2 (not flipped), copy 6 (not flipped)
        dy, dx = np.random.default_rng((7, i)).integers(-2, 3, size=2)
        image = base[i % 3][:, ::-1] if (i // 3) % 2 else base[i % 3]
        np.testing.assert_array_equal(images[i], np.roll(image, (dy, dx), axis=(0, 1)))
    np.testing.assert_array_equal(sets.SyntheticSet(raw, 20, seed=7, shift=2)[13], images[13])  # any order, any run
    assert not np.array_equal(sets.SyntheticSet(raw, 20, seed=8, shift=2)[13], images[13])
    with pytest.raises(ValueError, match="positive integer"):
        sets.SyntheticSet(raw, 0)


def test_synthetic_data_on_the_command_line_is_the_synthetic_set_of_the_cifar_subset():
    path = data.cifar_subset()
    base = data.load_cifar10(path)[0] if path is not None else data.sample_images(32)
    image_set = sets.open_dataset("synthetic:30", n=25)
    images = image_set[np.arange(25)]
    assert image_set.shape == (25,) + base.shape[1:] and image_set.names[24] == "synthetic_24"
    np.testing.assert_array_equal(images[: len(base[:25])], base[:25])  # the first copy is the base itself
    np.testing.assert_array_equal(images, sets.SyntheticSet(base, 30)[np.arange(25)])
    with pytest.raises(ValueError, match="positive number of images"):
        sets.open_dataset("synthetic:x")


def test_an_opened_dataset_reads_the_images_load_dataset_reads(tmp_path, monkeypatch):
    """open_dataset reads nothing until indexed, then the same images and names as load_dataset (which reads
    them all): the samples resized, a CIFAR-10 npz of one class, a folder in CelebA's layout."""
    raw = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "cifar.npz", images=raw, labels=np.array([9, 1, 9, 9, 2, 9]))
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(3):
        PIL.Image.fromarray(np.random.default_rng(i).integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(
            folder / f"{i:03d}.png"
        )
    read = []
    original = data.read_image
    monkeypatch.setattr(data, "read_image", lambda path: read.append(path.name) or original(path))
    for spec, size, n in (("samples", 64, 5), (f"cifar10:{tmp_path / 'cifar.npz'}:truck", 16, None),
                          (f"folder:{folder}", 12, 2)):  # fmt: skip
        read.clear()
        image_set = sets.open_dataset(spec, size, n)
        assert read == [], spec  # opening decodes no file
        images, names = data.load_dataset(spec, size, n)
        assert image_set.shape == images.shape and list(image_set.names) == list(names), spec
        np.testing.assert_allclose(image_set[np.arange(len(images))], images, atol=1e-6, err_msg=spec)
        np.testing.assert_allclose(image_set[len(images) - 1], images[-1], atol=1e-6, err_msg=spec)
    with pytest.raises(ValueError, match="fewer than the 9 asked for"):
        sets.open_dataset(f"cifar10:{tmp_path / 'cifar.npz'}:truck", n=9)
    with pytest.raises(ValueError, match="data must be"):
        sets.open_dataset("imagenet")
    as64 = sets.Subset(sets.open_dataset("samples"), [3, 1], dtype=np.float64)
    assert as64[np.arange(2)].dtype == np.float64 and as64.names == [data.sample_names()[3], data.sample_names()[1]]
    with pytest.raises(TypeError, match="read as floats"):
        sets.Subset(raw, dtype=np.uint8)
