"""Regenerate fpjax/data/sample_images.npz from scikit-image's bundled photographs.

    pip install scikit-image && python scripts/make_sample_images.py

Each photograph is scaled (anti-aliased) so that its shorter side is ``scale``
pixels, then 128x128 crops are cut at the listed corners. The crops are
stored as uint8 (16, 128, 128, 3); ``fpjax.data.sample_images`` derives the
64x64 and 32x32 versions by block averaging. Attribution: fpjax/data/ATTRIBUTION.md.
"""

from __future__ import annotations

import pathlib

import numpy as np
import skimage.data
from skimage.transform import resize

SIZE = 128
# (skimage.data function, shorter side after scaling, [(row, col) of each crop's top-left corner])
CROPS = [
    ("astronaut", 256, [(0, 64), (64, 96), (128, 0), (128, 128)]),
    ("coffee", 256, [(64, 96), (96, 200), (128, 32)]),
    ("chelsea", 256, [(32, 128), (96, 200), (128, 40)]),
    ("rocket", 256, [(40, 150), (128, 250)]),
    ("hubble_deep_field", 300, [(20, 40), (150, 180)]),
    ("immunohistochemistry", 256, [(64, 64)]),
    ("retina", 256, [(64, 64)]),
]
OUT = pathlib.Path(__file__).resolve().parents[1] / "fpjax" / "data" / "sample_images.npz"


def scaled(name: str, shorter: int) -> np.ndarray:
    photo = getattr(skimage.data, name)()[..., :3]
    factor = shorter / min(photo.shape[:2])
    shape = (round(photo.shape[0] * factor), round(photo.shape[1] * factor))
    return resize(photo, shape, anti_aliasing=True, preserve_range=True)


def main() -> None:
    images, names = [], []
    for name, shorter, corners in CROPS:
        photo = scaled(name, shorter)
        for row, col in corners:
            crop = photo[row : row + SIZE, col : col + SIZE]
            assert crop.shape == (SIZE, SIZE, 3), (name, row, col, crop.shape)
            images.append(np.clip(np.round(crop), 0, 255).astype(np.uint8))
            names.append(f"{name}_r{row}_c{col}")
    np.savez_compressed(OUT, images=np.stack(images), names=np.array(names))
    print(f"wrote {len(images)} images to {OUT} ({OUT.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
