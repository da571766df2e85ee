"""Image quality: SSIM, PSNR and MSE through dm-pix, for images in ``[0, 1]``.

SSIM is the standard Gaussian-window SSIM (11x11, sigma 1.5, data range 1,
``k1 = 0.01``, ``k2 = 0.03``; DESIGN.md section 6), which equals
scikit-image's ``structural_similarity(..., gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1)``. The papers' own
scripts used other windows; figures quoted from them are not comparable
digit for digit.
"""

from __future__ import annotations

import dm_pix
import jax.numpy as jnp


def _pair(a, b):
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim < 3:
        raise ValueError(f"expected (..., H, W, C) images, got shape {a.shape}")
    return a, b


def ssim(a, b):
    """Gaussian-window SSIM of ``(..., H, W, C)`` images (``H, W >= 11``) -> ``(...)``."""
    a, b = _pair(a, b)
    if min(a.shape[-3:-1]) < 11:
        raise ValueError(f"SSIM's 11x11 window needs images of at least 11x11 pixels, got {a.shape[-3:-1]}")
    return dm_pix.ssim(a, b, max_val=1.0)


def psnr(a, b):
    """Peak signal-to-noise ratio in dB (data range 1) of ``(..., H, W, C)`` images -> ``(...)``."""
    return dm_pix.psnr(*_pair(a, b))


def mse(a, b):
    """Mean squared error per image of ``(..., H, W, C)`` images -> ``(...)``."""
    return dm_pix.mse(*_pair(a, b))


def quality(estimate, reference) -> dict:
    """``{"ssim", "psnr", "mse"}`` of ``estimate`` against ``reference``, each of shape ``(...)``."""
    return {"ssim": ssim(estimate, reference), "psnr": psnr(estimate, reference), "mse": mse(estimate, reference)}
