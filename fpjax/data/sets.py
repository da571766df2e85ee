"""Image sets read lazily: a step, a batch or a report reads the images it needs, never the whole set.

An *image set* has ``shape`` ``(N, H, W, C)``, ``names`` (``N`` strings), ``len()``, and indexing by an integer
array (or an int, or a slice) that returns float32 images in ``[0, 1]``: what the training data sources
(:mod:`fpjax.learn.sources`) and the reports read. A NumPy array is one too (without ``names``).

* :class:`ArraySet`: an array held in memory, kept in its own dtype (CIFAR-10's uint8 takes a quarter of float32).
* :class:`FolderSet`: the PNG/JPEG files of a folder, decoded when read (their shapes are checked from the
  headers when the set is opened).
* :class:`SyntheticSet`: a set of any size from a small one by a documented, deterministic augmentation (for
  benchmarks at scale: 20,000 images from the 1,010 of the CIFAR-10 subset).
* :class:`Subset`: some rows of a set (the first ``n``), or a set read in another float dtype.

:func:`open_dataset` opens what ``--data`` names as one of these, reading nothing but headers (a folder) or the
compact file (CIFAR-10's uint8); :func:`is_image_set` tells a set from an array.
"""

from __future__ import annotations

import numpy as np

from fpjax import data as data_lib


def _rows(index, count: int) -> tuple[np.ndarray, bool]:
    """``(rows, scalar)``: the integer rows ``index`` selects (an int, a slice or an integer array), checked."""
    if isinstance(index, slice):
        return np.arange(count)[index], False
    rows = np.asarray(index)
    if rows.dtype.kind not in "iu":
        raise TypeError(f"image sets are indexed by integers, got {rows.dtype}")
    if rows.size and (rows.min() < -count or rows.max() >= count):
        raise IndexError(f"image index out of range for a set of {count} images: {rows.min()}..{rows.max()}")
    rows = rows.reshape(-1) if rows.ndim == 0 else rows  # a scalar reads as one row, returned unstacked
    return rows % count if rows.size else rows.astype(int), np.ndim(index) == 0


def _as_float(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    return images.astype(np.float32, copy=False)


def is_image_set(images) -> bool:
    """Whether ``images`` is an image set (read by indexing, never whole) rather than an array."""
    return hasattr(images, "names") and hasattr(images, "shape") and not hasattr(images, "__array__")


def _resized(images: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or images.shape[1:3] == (size, size):
        return images
    return np.stack([data_lib.resize(image, size) for image in images]) if len(images) else images


class ArraySet:
    """An ``(N, H, W, C)`` array (uint8 in ``0..255`` or floats in ``[0, 1]``) as an image set; ``size``: each
    image resized to ``size x size`` as it is read."""

    def __init__(self, images, names=None, size: int | None = None):
        self.images = np.asarray(images)
        if self.images.ndim != 4:
            raise ValueError(f"an image set is (N, H, W, C), got shape {self.images.shape}")
        data_lib.check_size(size)
        self.size = size
        height, width = (size, size) if size is not None else self.images.shape[1:3]
        self.shape = (len(self.images), height, width, self.images.shape[3])
        self.names = list(names) if names is not None else [f"image_{i}" for i in range(len(self.images))]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        rows, scalar = _rows(index, len(self))
        out = _resized(_as_float(self.images[rows]), self.size)
        return out[0] if scalar else out


class FolderSet:
    """The PNG/JPEG files of ``folder`` (sorted by name), decoded as they are read; ``size``: resized to
    ``size x size`` as read (otherwise every file must have the first one's shape, checked from the headers);
    ``crop``: each image's centred square first (:func:`fpjax.data.centre_square`, CelebA's layout).

    Raises:
      FileNotFoundError, NotADirectoryError, ValueError: as :func:`fpjax.data.image_paths`; or naming a file whose
      shape differs.
    """

    def __init__(self, folder, size: int | None = None, crop: bool = False):
        self.paths = data_lib.image_paths(folder)
        self.names = [p.name for p in self.paths]
        data_lib.check_size(size)
        self.size, self.crop = size, crop
        if size is None and crop:
            raise ValueError("a cropped folder set needs a size: the squares of differently shaped files differ")
        if size is None:
            first = data_lib.read_image(self.paths[0]).shape
            for path in self.paths[1:]:
                header = data_lib.image_shape(path)
                if header is not None and header != first[:2]:
                    raise ValueError(
                        f"{path.name} is {header[0]}x{header[1]}, {self.paths[0].name} {first[0]}x{first[1]}: "
                        "the images of a folder share one shape; pass a size to resize them"
                    )
            height, width = first[:2]
        else:
            height = width = size
        self.shape = (len(self.paths), height, width, 3)

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, row: int) -> np.ndarray:
        image = data_lib.read_image(self.paths[row])
        image = data_lib.centre_square(image) if self.crop else image
        if self.size is not None:
            image = data_lib.resize(image, self.size)
        if image.shape != self.shape[1:]:
            raise ValueError(f"{self.paths[row]} decodes to shape {image.shape}, the set's images are {self.shape[1:]}")
        return image

    def __getitem__(self, index) -> np.ndarray:
        rows, scalar = _rows(index, len(self))
        out = np.stack([self._read(int(r)) for r in rows]) if rows.size else np.zeros((0,) + self.shape[1:], np.float32)
        return out[0] if scalar else out


class SyntheticSet:
    """``count`` images made from the ``B`` images of ``base`` (an image set or array), deterministically.

    Image ``i`` is base image ``i mod B``; the first ``B`` are the base images unchanged, and every later copy
    ``k = i // B >= 1`` is flipped left-right when ``k`` is odd and shifted circularly by ``(dy, dx)`` pixels,
    each in ``-shift..shift``, drawn from ``numpy.random.default_rng((seed, i))``: the same image for the same
    ``(seed, i)`` on every machine, read without the others. The images keep the base's statistics (pixel
    values are moved, never changed), which is what a throughput or memory benchmark needs; they are not new
    data for measuring a model's quality.
    """

    def __init__(self, base, count: int, seed: int = 0, shift: int = 4):
        self.base = base if hasattr(base, "names") else ArraySet(base)
        if not (isinstance(count, int | np.integer) and count > 0):
            raise ValueError(f"count must be a positive integer, got {count!r}")
        self.count, self.seed, self.shift = int(count), int(seed), int(shift)
        self.shape = (self.count,) + tuple(self.base.shape[1:])
        self.names = [f"synthetic_{i}" for i in range(self.count)]

    def __len__(self) -> int:
        return self.count

    def _augment(self, image: np.ndarray, i: int) -> np.ndarray:
        copy = i // len(self.base)
        if copy == 0:
            return image
        dy, dx = np.random.default_rng((self.seed, i)).integers(-self.shift, self.shift + 1, size=2)
        image = image[:, ::-1] if copy % 2 else image
        return np.roll(image, (int(dy), int(dx)), axis=(0, 1))

    def __getitem__(self, index) -> np.ndarray:
        rows, scalar = _rows(index, len(self))
        base = self.base[rows % len(self.base)] if rows.size else np.zeros((0,) + self.shape[1:], np.float32)
        out = np.stack([self._augment(b, int(i)) for b, i in zip(base, rows, strict=True)]) if rows.size else base
        return out[0] if scalar else out


class Subset:
    """Rows ``rows`` of the image set (or array) ``base`` (default all), read as ``dtype`` (a float dtype:
    float64 for a float64 solve)."""

    def __init__(self, base, rows=None, dtype=np.float32):
        self.base = base
        self.rows = np.arange(len(base)) if rows is None else _rows(rows, len(base))[0]
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise TypeError(f"an image set is read as floats in [0, 1], not {self.dtype}")
        names = getattr(base, "names", None) or [f"image_{i}" for i in range(len(base))]
        self.names = [names[i] for i in self.rows]
        self.shape = (len(self.rows),) + tuple(base.shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        rows, scalar = _rows(index, len(self))
        out = np.asarray(self.base[self.rows[rows]], dtype=self.dtype)
        return out[0] if scalar else out


def _cifar_subset_or_samples():
    """The uint8 CIFAR-10 subset (:func:`fpjax.data.cifar_subset`), or the embedded samples where it is absent."""
    path = data_lib.cifar_subset()
    return data_lib.load_cifar10(path, raw=True)[0] if path is not None else data_lib.sample_images(32)


def open_dataset(spec: str, size: int | None = None, n: int | None = None):
    """The image set ``spec`` names, opened without reading its images (a folder: their headers; CIFAR-10: its
    uint8 arrays, a quarter of float32):

    * ``"samples"``: the embedded sample images (at ``size``: 32, 64 or 128);
    * ``"cifar10:PATH[:CLASS]"``: an ``.npz`` or the python release's ``cifar-10-batches-py`` folder
      (:func:`fpjax.data.load_cifar10`; ``cifar10_I`` names, ``I`` its index in the file or the class);
    * ``"folder:PATH"``: PNG/JPEG files, centre-cropped to squares and resized to ``size`` (default 64) as read;
    * ``"synthetic:N"``: :class:`SyntheticSet` of ``N`` images grown from the CIFAR-10 subset (the embedded
      samples where it is absent).

    ``size`` resizes every image as it is read; ``n``: the first ``n`` images. The images are the same as
    :func:`fpjax.data.load_dataset`'s (which reads them all).

    Raises:
      ValueError: as :func:`fpjax.data.load_dataset` (an unknown ``spec``, ``n`` or ``size`` not positive, more
        images asked for than there are); FileNotFoundError: the path does not exist.
    """
    data_lib.check_size(size)
    data_lib.check_count(n)
    kind, _, rest = spec.partition(":")
    if kind == "samples":
        image_set = ArraySet(data_lib.sample_images(size or 32), data_lib.sample_names())
    elif kind == "cifar10" and rest:
        path, _, class_name = rest.partition(":")
        raw = data_lib.load_cifar10(path, class_name or None, raw=True)[0]
        image_set = ArraySet(raw, [f"cifar10_{i}" for i in range(len(raw))], size)
    elif kind == "folder" and rest:
        image_set = FolderSet(rest, size or 64, crop=True)
    elif kind == "synthetic":
        if not (rest.isdigit() and int(rest) > 0):
            raise ValueError(f"synthetic data is synthetic:N with N a positive number of images, got {spec!r}")
        image_set = SyntheticSet(ArraySet(_cifar_subset_or_samples(), size=size), int(rest))  # resized, then moved
    else:
        raise ValueError(f"data must be samples, cifar10:PATH[:CLASS], folder:PATH or synthetic:N, got {spec!r}")
    if len(image_set) == 0:
        raise ValueError(f"{spec} selects no image")
    if n is not None and n > len(image_set):
        raise ValueError(
            f"{spec} has {len(image_set)} images, fewer than the {n} asked for: ask for {len(image_set)} or fewer"
        )
    return image_set if n is None or n == len(image_set) else Subset(image_set, np.arange(n))
