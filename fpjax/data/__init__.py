"""Embedded sample images: 16 RGB crops of scikit-image's public-domain/CC0 photographs.

Regenerate with ``python scripts/make_sample_images.py``; sources and
licences are listed in ``fpjax/data/ATTRIBUTION.md``.
"""

from __future__ import annotations

import functools
import pathlib

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
    import matplotlib.image as mpimg

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
            image = _resize(image, size)
        images.append(image)
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"images in {folder} have different shapes {sorted(shapes)}; pass size= to resize them")
    return np.stack(images), [p.name for p in paths]


def _resize(image: np.ndarray, size: int) -> np.ndarray:
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
