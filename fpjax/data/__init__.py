"""Embedded sample images: 16 RGB crops of scikit-image's public-domain/CC0 photographs.

Regenerate with ``python scripts/make_sample_images.py``; sources and
licences are listed in ``fpjax/data/ATTRIBUTION.md``.
"""

from __future__ import annotations

import functools
import os
import pathlib
import pickle

import matplotlib.image as mpimg
import numpy as np

_FILE = pathlib.Path(__file__).with_name("sample_images.npz")
SIZES = (32, 64, 128)
_STORED = 128


@functools.lru_cache(maxsize=1)
def _stored():
    with np.load(_FILE) as data:
        return data["images"], tuple(str(n) for n in data["names"])


def sample_names() -> tuple[str, ...]:
    """Names of the sample images (``photo_rROW_cCOL``), in order."""
    return _stored()[1]


def sample_images(size: int = 64) -> np.ndarray:
    """The 16 sample images as NHWC float32 in ``[0, 1]``, shape ``(16, size, size, 3)``.

    ``size`` is 32, 64 or 128; the smaller sizes are block averages of the
    stored 128x128 crops.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size}")
    images = _stored()[0].astype(np.float32) / 255.0
    block = _STORED // size
    n, _, _, c = images.shape
    return images.reshape(n, size, block, size, block, c).mean(axis=(2, 4)).astype(np.float32)


def load_image_folder(folder, size: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Read every PNG/JPEG in ``folder`` as RGB float32 in ``[0, 1]``, NHWC.

    Images must share one shape unless ``size`` is given (then each is
    resized to ``size x size`` with matplotlib's reader and block averaging
    is not attempted: a bilinear resize via ``numpy`` interpolation).
    """
    paths = sorted(p for p in pathlib.Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise ValueError(f"no .png/.jpg images in {folder}")
    images = []
    for path in paths:
        image = np.asarray(mpimg.imread(path))
        if image.dtype == np.uint8:
            image = image.astype(np.float32) / 255.0
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        image = image[..., :3].astype(np.float32)
        if size is not None:
            image = resize(image, size)
        images.append(image)
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"images in {folder} have different shapes {sorted(shapes)}; pass size= to resize them")
    return np.stack(images), [p.name for p in paths]


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _class_index(selection) -> int:
    if isinstance(selection, str) and not selection.isdigit():
        if selection not in CIFAR10_CLASSES:
            raise ValueError(f"unknown CIFAR-10 class {selection!r}; one of {CIFAR10_CLASSES}")
        return CIFAR10_CLASSES.index(selection)
    return int(selection)


def load_cifar10(path, class_name=None, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 as NHWC float32 in ``[0, 1]`` and labels, optionally one class (the papers' trucks).

    ``path`` is the extracted ``cifar-10-batches-py`` folder of the python
    pickle release (``split`` = ``"test"`` reads ``test_batch``, ``"train"``
    the five ``data_batch_*``) or an ``.npz`` with ``images`` (uint8 NHWC)
    and ``labels`` (such as ``../shared/data/cifar10_subset.npz``).
    """
    path = pathlib.Path(path)
    if path.suffix == ".npz":
        with np.load(path) as data:
            images, labels = data["images"], data["labels"]
    else:
        names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
        batches = []
        for name in names:
            with open(path / name, "rb") as f:
                batches.append(pickle.load(f, encoding="bytes"))
        raw = np.concatenate([b[b"data"] for b in batches])
        images = raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.concatenate([np.asarray(b[b"labels"]) for b in batches])
    labels = np.asarray(labels)
    if class_name is not None:
        keep = labels == _class_index(class_name)
        images, labels = images[keep], labels[keep]
    return images.astype(np.float32) / 255.0, labels


def load_celeba_folder(folder, size: int = 64, n: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Images of a folder in CelebA's ``img_align_celeba`` layout: centre-cropped to a square, resized.

    Returns NHWC float32 in ``[0, 1]`` of shape ``(N, size, size, 3)`` and file names.
    """
    paths = sorted(p for p in pathlib.Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise ValueError(f"no .png/.jpg images in {folder}")
    paths = paths[:n] if n is not None else paths
    images = []
    for path in paths:
        image = np.asarray(mpimg.imread(path))
        image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        image = np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3]
        h, w, _ = image.shape
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        images.append(resize(image[top : top + side, left : left + side], size))
    return np.stack(images), [p.name for p in paths]


def load_dataset(spec: str, size: int | None = None, n: int | None = None) -> tuple[np.ndarray, list[str]]:
    """``"samples"``, ``"cifar10:PATH[:CLASS]"`` or ``"folder:PATH"`` -> (NHWC float32 images, ids)."""
    kind, _, rest = spec.partition(":")
    if kind == "samples":
        images, ids = sample_images(size or 32), list(sample_names())
    elif kind == "cifar10":
        path, _, class_name = rest.partition(":")
        images, labels = load_cifar10(path, class_name or None)
        ids = [f"cifar10_{i}" for i in range(len(images))]
        if size not in (None, 32):
            images = np.stack([resize(im, size) for im in images])
    elif kind == "folder":
        images, ids = load_celeba_folder(rest, size or 64, n)
    else:
        raise ValueError(f"data must be samples, cifar10:PATH[:CLASS] or folder:PATH, got {spec!r}")
    return images[:n], list(ids)[:n]


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of an ``(H, W, C)`` image to ``(size, size, C)``."""
    h, w, _ = image.shape
    rows = np.linspace(0, h - 1, size)
    cols = np.linspace(0, w - 1, size)
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
    fr, fc = (rows - r0)[:, None, None], (cols - c0)[None, :, None]
    top = image[r0][:, c0] * (1 - fc) + image[r0][:, c1] * fc
    bottom = image[r1][:, c0] * (1 - fc) + image[r1][:, c1] * fc
    return np.clip(top * (1 - fr) + bottom * fr, 0, 1).astype(np.float32)


DATA_ROOT_VARIABLE = "FPJAX_DATA_ROOT"
CIFAR_SUBSET = "cifar10_subset.npz"
# Where the development checkout keeps shared data, relative to the working directory: searched only when
# neither an option nor FPJAX_DATA_ROOT names a root (nothing is ever downloaded).
_CONVENTIONAL_ROOTS = ("shared/data", "../shared/data")


def data_root(root=None) -> pathlib.Path | None:
    """The folder holding optional datasets: ``root`` if given, else ``$FPJAX_DATA_ROOT``, else the first
    existing of ``shared/data`` and ``../shared/data`` below the working directory; ``None`` if none exists."""
    if root is not None:
        return pathlib.Path(root)
    if os.environ.get(DATA_ROOT_VARIABLE):
        return pathlib.Path(os.environ[DATA_ROOT_VARIABLE])
    return next((pathlib.Path(c) for c in _CONVENTIONAL_ROOTS if pathlib.Path(c).is_dir()), None)


def cifar_subset(root=None) -> pathlib.Path | None:
    """The shared 1010-image CIFAR-10 test subset under :func:`data_root`, or ``None`` where it is absent."""
    folder = data_root(root)
    path = None if folder is None else folder / CIFAR_SUBSET
    return path if path is not None and path.exists() else None


def benchmark_images(size: int, count: int, source: str = "cifar", cifar=None) -> tuple[np.ndarray, str]:
    """``count`` float32 ``(size, size, 3)`` images for benchmarks and experiments, and where they came from.

    ``source="samples"``: the embedded crops at ``size`` (32, 64, 128; other sizes resized from the 128
    crops). ``source="cifar"``: CIFAR-10 test trucks from ``cifar`` (a path) or :func:`cifar_subset`,
    resized bilinearly, falling back to the samples where the subset is absent. Repeated if too few.
    """
    if source not in ("cifar", "samples"):
        raise ValueError(f"source must be 'cifar' or 'samples', got {source!r}")
    path = (cifar if cifar is not None else cifar_subset()) if source == "cifar" else None
    if path is not None and pathlib.Path(path).exists():
        images, _ = load_cifar10(path, "truck")
        origin = f"CIFAR-10 test trucks ({path})"
    else:
        images = sample_images(size if size in SIZES else _STORED)
        origin = "fpjax sample images" + (" (CIFAR-10 subset absent)" if source == "cifar" else "")
    images = np.concatenate([images] * (-(-count // len(images))))[:count]
    if size != images.shape[1]:
        images = np.stack([resize(im, size) for im in images])
    return np.asarray(images, np.float32), origin
