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

from fpjax import memory
from fpjax.solver.initial import check_images
from fpjax.solver.problem import FPConfig, FPSolution, diffusion_schedule, drift_fields, is_concrete
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
    sigma = pixel_score(m[:-1], component, config.boundary, channel_axis=None)  # sigma^(n-1): a field
    drift = _drift_component(config, m.shape[1:], dtype, component)
    increments = (drift - 0.5 * g_values[:, None, None] ** 2 * sigma) * config.dt
    steps = jnp.cumsum(increments, axis=0)
    channel = jnp.asarray(channel, dtype)
    return jnp.concatenate([channel[None], channel[None] + steps])


def _solution_field(m, config: FPConfig):
    """``m`` itself, or an image solution's ``m`` once its layout and boundary are checked against ``config``."""
    if not isinstance(m, FPSolution):
        return m
    if m.channel_axis != -1:
        raise ValueError(
            f"expected an image solution (fpjax.solve_images: m (N, T+1, H, W, C)), got a field solution with m of "
            f"shape {jnp.shape(m.m)}"
        )
    if m.boundary != config.boundary:
        raise ValueError(
            f"the solution was solved with boundary={m.boundary!r}, config.boundary is {config.boundary!r}: "
            "pass the config it was solved with"
        )
    return m.m


def _check_layout(images, m, config: FPConfig) -> None:
    """A one-line ``ValueError`` unless ``images`` is ``(N, H, W, C)`` and ``m`` ``(N, T+1, H, W, C or 1)``."""
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, H, W, C), got shape {images.shape}")
    n, height, width, channels = images.shape
    expected = (n, config.T + 1, height, width, channels)
    if m.ndim != 5 or m.shape[:4] != expected[:4] or m.shape[4] not in (1, channels):
        raise ValueError(
            f"expected m of shape (N, T+1, H, W, C) = {expected} (C = 1 for a shared density; channels last, "
            f"docs/conventions.md) for images of shape {images.shape} and T = {config.T}, got shape {m.shape}"
        )


def _check_values(images, m, config: FPConfig) -> None:
    """The images as :func:`fpjax.precompute` takes them (finite, in ``[0, 1]``), a finite ``m`` (naming the images
    that are not), and room for the trajectories (:func:`fpjax.memory.require`)."""
    check_images(images, allow_constant=True)
    finite = np.asarray(jnp.isfinite(m).reshape(m.shape[0], -1).all(axis=1))  # on the device: (N,) bools back
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"m is not finite for {bad.size} of {m.shape[0]} images (the first: image {int(bad[0])}): embed a solve "
            "whose steps converged (FPSolution.status, or precompute's stats['converged'])"
        )
    count, height, width, channels = images.shape
    nbytes = 2 * memory.trajectory_bytes(config.T, (height, width), count * channels, images.dtype)
    what = f"the embedded trajectories of {count} images {height}x{width} with T={config.T}"
    memory.require(nbytes, what, "embed fewer images at a time, or lower T or the image size")


def embed(images, m, config: FPConfig, component: str = "sum", g=None):
    """Score-embedded trajectories of NHWC images.

    Args:
      images: ``(N, H, W, C)`` in ``[0, 1]``.
      m: ``(N, T+1, H, W, K)`` log-densities with ``K = C`` (per channel) or
        ``K = 1`` (one shared density), channels last as :func:`fpjax.precompute`
        and :func:`fpjax.solve_images` return them (``docs/conventions.md``); a
        zarr array from the store is read into memory; an :class:`fpjax.FPSolution`
        of :func:`fpjax.solve_images` is taken with its ``m`` (its boundary must be
        ``config``'s). Another layout is refused with a ``ValueError``.
      config: the FP configuration of ``m``.
    Returns:
      ``(N, T+1, H, W, C)`` trajectories (jittable and differentiable in
      ``images``, ``m`` and ``g``).
    """
    m = _solution_field(m, config)
    if not isinstance(m, jax.Array | np.ndarray):
        m = np.asarray(m[...])  # a zarr array (the store)
    images, m = jnp.asarray(images), jnp.asarray(m)
    _check_layout(images, m, config)
    if is_concrete((images, m)):  # under jit the values cannot be read: the layout alone is checked
        _check_values(images, m, config)
    channels = images.shape[-1]
    m = jnp.broadcast_to(m, m.shape[:-1] + (channels,)).astype(jnp.result_type(m.dtype, images.dtype))
    per_channel = jax.vmap(lambda x, mm: embed_field(x, mm, config, component, g), in_axes=(-1, -1), out_axes=-1)
    return jax.vmap(per_channel)(images, m)


def embedded_batches(images, m, config: FPConfig, batch_size: int = 64, component: str = "sum", g=None):
    """:func:`embed` of a set too large to embed at once, ``batch_size`` images at a time.

    ``images`` ``(N, H, W, C)`` (an array or a lazy image set, :mod:`fpjax.data.sets`) and ``m`` ``(N, T+1, H, W,
    K)`` (an array or a store's checked ``m``, :attr:`fpjax.batch.store.FPStore.m`) are read a batch at a time.
    Yields ``(rows, trajectories)``: the batch's ``(B,)`` indices and ``(B, T+1, H, W, C)`` embedded trajectories.
    """
    count = len(images)
    if len(m) != count:
        raise ValueError(f"{count} images but m holds {len(m)}: pass the m of these images")
    embed_batch = jax.jit(lambda x, mm: embed(x, mm, config, component, g))
    for start in range(0, count, batch_size):
        rows = np.arange(start, min(start + batch_size, count))
        yield rows, embed_batch(jnp.asarray(images[rows]), jnp.asarray(m[rows]))
