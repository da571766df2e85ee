"""Embedded sample images: 16 RGB crops of scikit-image's public-domain/CC0 photographs.

Regenerate with ``python scripts/make_sample_images.py``; sources and
licences are listed in ``fpjax/data/ATTRIBUTION.md``.
"""

from __future__ import annotations

import codecs
import functools
import os
import pathlib
import pickle
import zipfile

import matplotlib.image as mpimg
import numpy as np
import PIL.Image

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
        raise ValueError(f"size must be one of {SIZES} for the sample images, got {size!r} (other sizes: resize())")
    images = _stored()[0].astype(np.float32) / 255.0
    block = _STORED // size
    n, _, _, c = images.shape
    return images.reshape(n, size, block, size, block, c).mean(axis=(2, 4)).astype(np.float32)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def image_paths(folder) -> list[pathlib.Path]:
    """The PNG/JPEG files of ``folder``, sorted by name.

    Raises:
      FileNotFoundError: ``folder`` does not exist; NotADirectoryError: it is a file;
      ValueError: it holds no PNG/JPEG file.
    """
    folder = pathlib.Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder of .png/.jpg images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f"no .png/.jpg images in {folder}")
    return paths


def image_shape(path) -> tuple[int, int] | None:
    """``(H, W)`` of a PNG/JPEG from its header, without decoding it; ``None`` where the header cannot be read
    (:func:`read_image` then names the problem)."""
    limit, PIL.Image.MAX_IMAGE_PIXELS = PIL.Image.MAX_IMAGE_PIXELS, None  # a header only: no bomb to fear
    try:
        with PIL.Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError):
        return None
    finally:
        PIL.Image.MAX_IMAGE_PIXELS = limit
    return height, width


def read_image(path) -> np.ndarray:
    """One PNG/JPEG file as RGB float32 ``(H, W, 3)`` in ``[0, 1]`` (grey is repeated, alpha dropped).

    Raises:
      ValueError: naming the file, where it is not a readable image (truncated, not a PNG/JPEG, ...).
    """
    try:
        image = np.asarray(mpimg.imread(path))
    except PIL.Image.DecompressionBombError as error:
        raise ValueError(f"cannot read image {path}: {error}; resize it first") from error
    except (OSError, SyntaxError, ValueError) as error:  # PIL: OSError (truncated), SyntaxError (bad PNG header)
        fix = "replace the file or remove it from the folder"
        raise ValueError(f"cannot read image {path} ({error}): {fix}") from error
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        image = image.astype(np.float32) / 65535.0
    if image.ndim == 3 and image.shape[-1] in (1, 2):  # grey, grey + alpha
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"cannot read image {path}: it decodes to an array of shape {image.shape}")
    return image[..., :3].astype(np.float32)


def load_image_folder(folder, size: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Read every PNG/JPEG in ``folder`` as RGB float32 in ``[0, 1]``, NHWC.

    Images must share one shape unless ``size`` is given (then each is
    resized to ``size x size`` with matplotlib's reader and block averaging
    is not attempted: a bilinear resize via ``numpy`` interpolation).

    Raises:
      FileNotFoundError, NotADirectoryError, ValueError: naming the folder or the file at fault
      (:func:`image_paths`, :func:`read_image`), or the differing shapes.
    """
    check_size(size)
    paths = image_paths(folder)
    images = []
    for path in paths:
        image = read_image(path)
        if size is not None:
            image = resize(image, size)
        images.append(image)
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"images in {folder} have different shapes {sorted(shapes)}; pass size= to resize them")
    return np.stack(images), [p.name for p in paths]


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR_FORMS = (
    "the extracted cifar-10-batches-py folder of the python release, or an .npz with arrays "
    "'images' (uint8, N x 32 x 32 x 3) and 'labels' (N integers)"
)


def _class_index(selection) -> int:
    text = str(selection).strip()
    if text.isdigit():
        index = int(text)
        if not 0 <= index < len(CIFAR10_CLASSES):
            raise ValueError(f"CIFAR-10 class {index} out of range: 0-9 or one of {CIFAR10_CLASSES}")
        return index
    if text not in CIFAR10_CLASSES:
        raise ValueError(f"unknown CIFAR-10 class {selection!r}; one of {CIFAR10_CLASSES} or 0-9")
    return CIFAR10_CLASSES.index(text)


def _read_cifar_npz(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """``images`` and ``labels`` of a CIFAR-10 ``.npz``, checked; a ValueError naming the file otherwise."""
    try:
        data = np.load(path)  # allow_pickle=False: a pickle or a text file raises ValueError
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a CIFAR-10 npz (not an .npz archive): expected {_CIFAR_FORMS}") from error
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is not a CIFAR-10 npz (a single .npy array): expected {_CIFAR_FORMS}")
    with data:
        if not {"images", "labels"} <= set(data.files):
            raise ValueError(f"{path} is not a CIFAR-10 npz: it holds arrays {data.files}; expected {_CIFAR_FORMS}")
        try:
            images, labels = data["images"], np.asarray(data["labels"])
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path}: cannot read its arrays ({error}); expected {_CIFAR_FORMS}") from error
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{path}: 'images' is {images.dtype} of shape {images.shape}; expected uint8 (N, H, W, 3), "
            "channels last (transpose channel-first data with images.transpose(0, 2, 3, 1))"
        )
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: 'labels' is {labels.dtype} {labels.shape}; expected {len(images)} integers")
    return images, labels


# What a CIFAR-10 python batch holds: a dict of bytes, lists of ints and bytes, and one uint8 array. The release
# (Python 2, NumPy 1.x) rebuilds the array through numpy.core.multiarray._reconstruct, ndarray and dtype; a
# batch pickled again under Python 3 may also name _codecs.encode (bytes at protocol 2) or NumPy's _frombuffer
# (protocol 5). Each is resolved here to NumPy's own function, whatever module name the file gives.
_CIFAR_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
    ("numpy.core.numeric", "_frombuffer"): np.zeros(1).__reduce_ex__(5)[0],
    ("numpy._core.numeric", "_frombuffer"): np.zeros(1).__reduce_ex__(5)[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only what a CIFAR-10 batch holds: anything else (a function to call, a class
    to build) is refused before it runs, so a crafted file cannot run code (``pickle.load`` would)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it asks to build {module}.{name}, which a CIFAR-10 batch never holds")
        return _CIFAR_PICKLE_GLOBALS[module, name]


def _read_cifar_batches(folder: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The pickled batches of the python release's ``cifar-10-batches-py`` folder, checked."""
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: expected {_CIFAR_FORMS}")
        try:
            with open(path, "rb") as f:
                batch = _CifarUnpickler(f, encoding="bytes").load()
            if not isinstance(batch, dict):
                raise TypeError(f"it holds a {type(batch).__name__}, not a dict")
            raw, batch_labels = np.asarray(batch[b"data"], np.uint8), np.asarray(batch[b"labels"])
            images.append(raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"{path} is not a CIFAR-10 batch ({type(error).__name__}: {error})") from error
        labels.append(batch_labels)
    return np.concatenate(images), np.concatenate(labels)


def load_cifar10(path, class_name=None, split: str = "test", raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 as NHWC float32 in ``[0, 1]`` (``raw``: the file's uint8 in ``0..255``, a quarter of the memory)
    and labels, optionally one class (the papers' trucks).

    ``path`` is the extracted ``cifar-10-batches-py`` folder of the python
    pickle release (``split`` = ``"test"`` reads ``test_batch``, ``"train"``
    the five ``data_batch_*``) or an ``.npz`` with ``images`` (uint8 NHWC)
    and ``labels`` (such as ``../shared/data/cifar10_subset.npz``).
    ``class_name``: a name of ``CIFAR10_CLASSES`` or its index 0-9.

    Raises:
      FileNotFoundError: ``path`` (or a batch file in it) does not exist.
      ValueError: naming the file, where it is not in one of the two forms; or no image of the class.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        images, labels = _read_cifar_batches(path, split)
    elif path.is_file():
        images, labels = _read_cifar_npz(path)
    else:
        raise FileNotFoundError(f"CIFAR-10 data {path} does not exist: expected {_CIFAR_FORMS}")
    if class_name is not None:
        index = _class_index(class_name)
        keep = labels == index
        if not keep.any():
            raise ValueError(f"{path} holds no image of class {CIFAR10_CLASSES[index]} ({index}): choose another")
        images, labels = images[keep], labels[keep]
    return (images if raw else images.astype(np.float32) / 255.0), labels


def centre_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square of an ``(H, W, C)`` image (CelebA's ``img_align_celeba`` is 178x218)."""
    h, w, _ = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


def load_celeba_folder(folder, size: int = 64, n: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Images of a folder in CelebA's ``img_align_celeba`` layout: centre-cropped to a square, resized.

    Returns NHWC float32 in ``[0, 1]`` of shape ``(N, size, size, 3)`` and file names.

    Raises:
      FileNotFoundError, NotADirectoryError, ValueError: as :func:`load_image_folder`.
    """
    check_size(size)
    check_count(n)
    paths = image_paths(folder)
    paths = paths[:n] if n is not None else paths
    images = []
    for path in paths:
        images.append(resize(centre_square(read_image(path)), size))
    return np.stack(images), [p.name for p in paths]


def load_dataset(spec: str, size: int | None = None, n: int | None = None) -> tuple[np.ndarray, list[str]]:
    """``"samples"``, ``"cifar10:PATH[:CLASS]"`` or ``"folder:PATH"`` -> (NHWC float32 images, ids)
    (:func:`fpjax.data.sets.open_dataset` opens the same without reading them, and ``"synthetic:N"``).

    ``n``: only the first ``n`` images (a positive count, at most the number there is; ``None``: all).

    Raises:
      ValueError: an unknown ``spec``, ``n`` or ``size`` not positive, more images asked for than there are, or
        no image selected;
      FileNotFoundError: the path does not exist (and the loaders' errors, which name the file).
    """
    check_size(size)
    check_count(n)
    kind, _, rest = spec.partition(":")
    if kind == "samples":
        images, ids = sample_images(size or 32), list(sample_names())
    elif kind == "cifar10" and rest:
        path, _, class_name = rest.partition(":")
        images, labels = load_cifar10(path, class_name or None)
        ids = [f"cifar10_{i}" for i in range(len(images))]
        if size not in (None, images.shape[1]) and len(images):
            images = np.stack([resize(im, size) for im in images])
    elif kind == "folder" and rest:
        images, ids = load_celeba_folder(rest, size or 64, n)
    else:
        raise ValueError(f"data must be samples, cifar10:PATH[:CLASS] or folder:PATH, got {spec!r}")
    if len(images) == 0:
        raise ValueError(f"{spec} selects no image")
    if n is not None and n > len(images):
        raise ValueError(
            f"{spec} has {len(images)} images, fewer than the {n} asked for: ask for {len(images)} or fewer"
        )
    return images[:n], list(ids)[:n]


def check_size(size) -> None:
    if size is not None and (isinstance(size, bool) or not isinstance(size, int | np.integer) or size <= 0):
        raise ValueError(f"size must be a positive number of pixels, got {size!r}")


def check_count(n) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0):
        raise ValueError(f"n must be a positive number of images (None: all), got {n!r}")


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
