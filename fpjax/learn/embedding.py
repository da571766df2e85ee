"""Score embedding: the probability-flow transport of the pre-computed scores into the images.

DESIGN.md section 4 (cross-matrix paper eq. 27, score-embedding paper eqs.
20-21), forward Euler with the solver's ``T``::

    x^0 = image,   x^n = x^(n-1) + (f^(n-1) - 1/2 (g^(n-1))^2 sigma^(n-1)) dt

per channel, with ``sigma^n`` the pixel score of ``m^n`` (pixel units,
``component`` as in :func:`fpjax.pixel_score`) and ``f`` the drift's matching
pixel component (``f_x + f_y`` for ``"sum"``; zero without a drift).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fpjax.solver.problem import FPConfig, diffusion_schedule, drift_fields
from fpjax.solver.scores import pixel_score


def _drift_component(config: FPConfig, shape, dtype, component: str):
    """``(T, H, W)`` pixel component of the drift at ``t_0 .. t_(T-1)``."""
    if config.drift is None:
        return jnp.zeros((config.T,) + tuple(shape), dtype)
    times = jnp.arange(config.T, dtype=dtype) * config.dt
    spacing = config.grid_spacing(shape)
    drift = jax.vmap(lambda t: drift_fields(config, t, shape, dtype, spacing)[0])(times)  # (T, 2, H, W)
    return {"sum": drift[:, 0] + drift[:, 1], "x": drift[:, 0], "y": drift[:, 1]}[component]


def embed_field(channel, m, config: FPConfig, component: str = "sum", g=None):
    """Score-embedded trajectory of one channel.

    Args:
      channel: ``(H, W)`` image channel.
      m: ``(T+1, H, W)`` its log-density trajectory.
      config: the FP configuration ``m`` was solved with (``T``, ``g``, drift, boundary).
      component: pixel-score component, ``"sum"``, ``"x"`` or ``"y"``.
      g: optional ``g`` override, as in :func:`fpjax.solve`.
    Returns:
      ``(T+1, H, W)``: ``x^0 = channel``, ``x^T`` the fully transported image.
    """
    if m.shape[0] != config.T + 1:
        raise ValueError(f"m has {m.shape[0]} time levels; config.T = {config.T} needs T+1 = {config.T + 1}")
    dtype = m.dtype
    g_values = diffusion_schedule(config, g, dtype)[:-1]  # g^(n-1), n = 1..T
    sigma = pixel_score(m[:-1], component, config.boundary)  # sigma^(n-1)
    drift = _drift_component(config, m.shape[1:], dtype, component)
    increments = (drift - 0.5 * g_values[:, None, None] ** 2 * sigma) * config.dt
    steps = jnp.cumsum(increments, axis=0)
    channel = jnp.asarray(channel, dtype)
    return jnp.concatenate([channel[None], channel[None] + steps])


def embed(images, m, config: FPConfig, component: str = "sum", g=None):
    """Score-embedded trajectories of NHWC images.

    Args:
      images: ``(N, H, W, C)`` in ``[0, 1]``.
      m: ``(N, T+1, H, W, K)`` log-densities with ``K = C`` (per channel) or
        ``K = 1`` (one shared density), as :func:`fpjax.precompute` returns
        them; a zarr array from the store is read into memory.
      config: the FP configuration of ``m``.
    Returns:
      ``(N, T+1, H, W, C)`` trajectories (jittable and differentiable in
      ``images``, ``m`` and ``g``).
    """
    if not isinstance(m, jax.Array | np.ndarray):
        m = np.asarray(m[...])  # a zarr array (the store)
    images, m = jnp.asarray(images), jnp.asarray(m)
    if images.ndim != 4 or m.ndim != 5:
        raise ValueError(f"need images (N, H, W, C) and m (N, T+1, H, W, K); got {images.shape} and {m.shape}")
    channels, k = images.shape[-1], m.shape[-1]
    if k not in (1, channels) or m.shape[0] != images.shape[0] or m.shape[2:4] != images.shape[1:3]:
        raise ValueError(f"m of shape {m.shape} does not fit images of shape {images.shape}")
    m = jnp.broadcast_to(m, m.shape[:-1] + (channels,)).astype(jnp.result_type(m.dtype, images.dtype))
    per_channel = jax.vmap(lambda x, mm: embed_field(x, mm, config, component, g), in_axes=(-1, -1), out_axes=-1)
    return jax.vmap(per_channel)(images, m)
