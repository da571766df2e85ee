"""Training losses on score-embedded trajectories.

The score-embedded denoising loss (cross-matrix paper eq. 29, DESIGN.md
section 6)::

    L = E_{n, z} || s_theta(x^n + lambda z, t_n) lambda + z ||^2 / (2 g(t_n)^2)

with ``x^n`` the score-embedded image at ``t_n`` and ``lambda = 0.1``. The
squared norm is averaged over pixels and channels rather than summed (a
constant factor ``H W C``; it keeps one learning rate right for every image
size) and over the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_time_indices(key, batch: int, T: int, stratified: bool = False):
    """``(batch,)`` time indices in ``0..T``: uniform, or one per equal stratum of ``[0, T+1)``."""
    if not stratified:
        return jax.random.randint(key, (batch,), 0, T + 1)
    u = (jnp.arange(batch) + jax.random.uniform(key, (batch,))) / batch
    return jnp.minimum(jnp.floor(u * (T + 1)).astype(jnp.int32), T)


def embedded_denoising_loss(score, x, t, g_t, z, lam: float = 0.1):
    """Eq. 29 for one batch.

    Args:
      score: ``s(x, t)`` for ``(B, H, W, C)`` images and ``(B,)`` times.
      x: ``(B, H, W, C)`` score-embedded images ``x^n``.
      t: ``(B,)`` their times ``t_n``.
      g_t: ``(B,)`` the diffusion ``g(t_n)``.
      z: ``(B, H, W, C)`` standard normal noise.
      lam: the perturbation ``lambda``.
    Returns:
      the scalar loss.
    """
    s = score(x + lam * z, t)
    per_image = jnp.mean((s * lam + z) ** 2, axis=(1, 2, 3)) / (2 * g_t**2)
    return jnp.mean(per_image)
