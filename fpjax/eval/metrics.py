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
    lead = a.shape[:-3]
    flat = (-1,) + a.shape[-3:]  # dm-pix takes one batch axis at most
    return dm_pix.ssim(a.reshape(flat), b.reshape(flat), max_val=1.0).reshape(lead)


def psnr(a, b):
    """Peak signal-to-noise ratio in dB (data range 1) of ``(..., H, W, C)`` images -> ``(...)``."""
    return dm_pix.psnr(*_pair(a, b))


def mse(a, b):
    """Mean squared error per image of ``(..., H, W, C)`` images -> ``(...)``."""
    return dm_pix.mse(*_pair(a, b))


def quality(estimate, reference) -> dict:
    """``{"ssim", "psnr", "mse"}`` of ``estimate`` against ``reference``, each of shape ``(...)``."""
    return {"ssim": ssim(estimate, reference), "psnr": psnr(estimate, reference), "mse": mse(estimate, reference)}


def nearest_ssim(samples, references):
    """For each of ``(S, H, W, C)`` samples, the best SSIM to any of ``(R, H, W, C)`` references.

    Returns ``(best (S,), index (S,))``: the papers' generation metric (SSIM to the nearest training image).
    """
    samples, references = jnp.asarray(samples), jnp.asarray(references)
    shape = (samples.shape[0], references.shape[0]) + references.shape[1:]
    table = ssim(jnp.broadcast_to(samples[:, None], shape), jnp.broadcast_to(references[None], shape))
    return jnp.max(table, axis=1), jnp.argmax(table, axis=1)
