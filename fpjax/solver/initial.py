"""Initial log-densities of images (DESIGN.md section 3).

Every method maps an image ``(H, W, C)`` in ``[0, 1]`` to a log-density:
``(H, W)`` when one field serves all channels, ``(C, H, W)`` per channel.
The computations are pure ``jax.numpy``, so they jit, vmap and differentiate
with respect to the image; input checks run on concrete arrays only.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from fpjax.solver.linsolve import matmul

METHODS = ("position_kde", "intensity_kde", "intensity")
DENSITY_FLOOR = 1e-10
MIN_GRID = 3


CHANNEL_COUNTS = (1, 3, 4)  # a leading axis of this size with larger trailing axes is taken for channel-first


def _promoted(image):
    """``image`` as an array; a floating dtype narrower than float32 (float16, bfloat16) becomes float32."""
    if not hasattr(image, "dtype"):
        image = np.asarray(image)
    if jnp.issubdtype(image.dtype, jnp.floating) and jnp.dtype(image.dtype).itemsize < 4:
        return image.astype(jnp.float32)
    return image


def _check_layout(shape, what: str, axis: int) -> None:
    """Shape checks of an ``(H, W, C)`` image (``axis`` = where ``H`` sits: 0, or 1 in a batch)."""
    height, width, channels = shape[axis:]
    if height == 0 or width == 0:
        raise ValueError(f"{what} is empty (shape {shape}); fpjax needs at least {MIN_GRID}x{MIN_GRID} pixels")
    if channels == 0:
        raise ValueError(f"{what} has no channels (shape {shape}); fpjax expects (H, W, C) with C >= 1")
    if height in CHANNEL_COUNTS and width > height and channels > height:
        raise ValueError(
            f"{what} of shape {shape} looks channel-first (C, H, W); fpjax expects channels last: "
            f"pass np.moveaxis(x, {axis}, -1)"
        )
    if height < MIN_GRID or width < MIN_GRID:
        raise ValueError(f"{what} grid {height}x{width} is too small; fpjax needs at least {MIN_GRID}x{MIN_GRID}")


def _check_values(values, what: str, allow_constant: bool) -> None:
    """Value checks of a concrete image (NumPy)."""
    if not np.issubdtype(values.dtype, np.floating):
        raise ValueError(f"{what} must be floating point in [0, 1], got dtype {values.dtype}; divide uint8 data by 255")
    n_nan, n_inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
    if n_nan or n_inf:
        raise ValueError(f"{what} has NaN at {n_nan} and inf at {n_inf} pixels; fpjax expects finite values in [0, 1]")
    n_out = int(((values < 0) | (values > 1)).sum())
    if n_out:
        raise ValueError(
            f"{what} has {n_out} values outside [0, 1] (min {values.min():.4g}, max {values.max():.4g}); "
            "rescale it to [0, 1]"
        )
    if not allow_constant and values.min() == values.max():
        raise ValueError(
            f"{what} is constant (every value is {values.min():.4g}); its density carries no image "
            "structure (pass allow_constant=True to accept it)"
        )


def check_image(image, *, allow_constant: bool = False):
    """The one check of an ``(H, W, C)`` image entering fpjax; returns it, promoted, or raises ``ValueError``.

    Rules, each failure a one-line ``ValueError`` naming the problem and the fix:

    * shape ``(H, W, C)`` with ``H, W >= 3`` and ``C >= 1``; a leading axis of 1, 3 or 4 with both trailing
      axes larger (``(3, 32, 32)``) is taken for channel-first and refused (``np.moveaxis(x, 0, -1)``);
    * floating point (integers are refused: divide 8-bit data by 255); a floating dtype narrower than
      float32 (float16, bfloat16) is **promoted to float32**, because the solve needs float32's range
      and precision (float16's squares underflow below 2.4e-4, its rounding is 1e-3);
    * finite, within ``[0, 1]``, and not constant unless ``allow_constant``.

    Value checks run on concrete arrays only; under ``jit``/``vmap`` only the shape is checked.
    """
    what = "image"
    image = _promoted(image)
    shape = tuple(jnp.shape(image))
    if len(shape) != 3:
        raise ValueError(
            f"{what} must have shape (H, W, C), got shape {shape}; for a grey-scale (H, W) image pass x[..., None]"
        )
    _check_layout(shape, what, 0)
    if not isinstance(image, jax.core.Tracer):
        _check_values(np.asarray(image), what, allow_constant)
    return image


def check_images(images, *, allow_constant: bool = False):
    """:func:`check_image` for an NHWC batch (messages name the image: ``"image 3: image has NaN ..."``); returns
    the batch, promoted. Refuses an empty batch and a channel-first ``(N, C, H, W)`` one
    (``np.moveaxis(x, 1, -1)``)."""
    images = _promoted(images)
    shape = tuple(jnp.shape(images))
    if len(shape) != 4:
        raise ValueError(f"images must be a batch of shape (N, H, W, C), got shape {shape}")
    if shape[0] == 0:
        raise ValueError(f"images is an empty batch (shape {shape}); pass at least one image")
    _check_layout(shape, "images", 1)
    if not isinstance(images, jax.core.Tracer):
        for i, image in enumerate(np.asarray(images)):
            try:
                check_image(image, allow_constant=allow_constant)
            except ValueError as error:
                raise ValueError(f"image {i}: {error}") from None
    return images


def _weighted_std(positions, weights):
    """Standard deviation with NumPy's ``cov(aweights=...)`` convention (as scipy's gaussian_kde)."""
    w = weights / jnp.sum(weights)
    mean = jnp.sum(w * positions)
    return jnp.sqrt(jnp.sum(w * (positions - mean) ** 2) / (1.0 - jnp.sum(w**2)))


def _gaussian_matrix(n: int, sigma, dtype):
    """``G[i, k] = N(i - k; 0, sigma^2)`` on pixel indices."""
    idx = jnp.arange(n, dtype=dtype)
    d = idx[:, None] - idx[None, :]
    return jnp.exp(-0.5 * (d / sigma) ** 2) / (math.sqrt(2 * math.pi) * sigma)


def position_kde(weights):
    """Weighted Gaussian KDE over pixel positions, evaluated on the pixel grid.

    Every pixel is a sample at its (row, column) index with weight
    ``weights[i, j]``; the bandwidth is Scott's rule, ``n_eff^(-1/6)`` times
    the weighted standard deviation of the positions per axis (a diagonal
    covariance, so the estimate is a separable Gaussian blur of the weights).

    Args:
      weights: ``(H, W)`` positive weights.
    Returns:
      ``(H, W)`` density in pixel units (per pixel area); sums to about 1.
    """
    height, width = weights.shape
    dtype = weights.dtype
    w = weights / jnp.sum(weights)
    n_eff = 1.0 / jnp.sum(w**2)
    factor = n_eff ** (-1.0 / 6.0)
    rows = jnp.broadcast_to(jnp.arange(height, dtype=dtype)[:, None], weights.shape)
    cols = jnp.broadcast_to(jnp.arange(width, dtype=dtype)[None, :], weights.shape)
    sigma_y = factor * _weighted_std(rows, weights)
    sigma_x = factor * _weighted_std(cols, weights)
    return matmul(matmul(_gaussian_matrix(height, sigma_y, dtype), w), _gaussian_matrix(width, sigma_x, dtype).T)


def _scott_bandwidth(values, bandwidth):
    n = values.size
    if bandwidth == "scott":
        return n ** (-0.2) * jnp.std(values, ddof=1)
    if bandwidth == "sklearn_scott":
        return jnp.asarray(n ** (-0.2), values.dtype)
    return jnp.asarray(bandwidth, values.dtype)


def intensity_kde(channel, bandwidth="scott", levels: int = 256):
    """1-D linear-kernel KDE of the intensities of one channel, at each pixel.

    The intensities are binned on ``levels`` equally spaced levels in
    ``[0, 1]`` (exact for 8-bit data, ``levels=256``); the density of each
    level is the kernel sum over the histogram.

    Args:
      channel: ``(H, W)`` intensities in ``[0, 1]``.
      bandwidth: ``"scott"`` (``n^(-1/5)`` times the sample standard
        deviation, the textbook rule), ``"sklearn_scott"`` (``n^(-1/5)``
        alone: what scikit-learn's ``KernelDensity(bandwidth="scott")``, the
        score-embedding paper's tool, computes) or a float.
    Returns:
      ``(H, W)`` density of each pixel's intensity.
    """
    dtype = channel.dtype
    h = _scott_bandwidth(channel, bandwidth)
    idx = jnp.clip(jnp.round(channel * (levels - 1)).astype(jnp.int32), 0, levels - 1)
    counts = jnp.zeros(levels, dtype).at[idx.ravel()].add(1.0)
    grid = jnp.arange(levels, dtype=dtype) / (levels - 1)
    u = jnp.abs(grid[:, None] - grid[None, :]) / h
    kernel = jnp.maximum(1.0 - u, 0.0) / h
    density_at_level = matmul(kernel, counts) / channel.size
    return density_at_level[idx]


def initial_log_density(
    image,
    method: str = "position_kde",
    *,
    per_channel: bool | None = None,
    offset: float = 0.1,
    bandwidth="scott",
    allow_constant: bool = False,
):
    """Initial log-density ``m0`` of an image (DESIGN.md section 3).

    Args:
      image: ``(H, W, C)`` floating point in ``[0, 1]`` (:func:`check_image`: float16 is promoted to
        float32, channel-first input refused).
      method: ``"position_kde"`` (default; a density over pixel positions,
        weights ``mean_c x + offset``), ``"intensity_kde"`` (per channel, the
        density of each pixel's intensity) or ``"intensity"``
        (``log((x + offset) / sum(x + offset))`` per channel).
      per_channel: one field per channel (``(C, H, W)``) or one shared field
        (``(H, W)``). Default: shared for ``"position_kde"``, per channel for
        the intensity methods (which are per channel by definition).
      offset: added to the intensities before weighting (0.1, the published
        script's value; it keeps black regions from taking log 0).
      bandwidth: for ``"intensity_kde"``, see :func:`intensity_kde`.
      allow_constant: accept a constant image.

    Returns:
      ``(H, W)`` or ``(C, H, W)`` log-density, dtype of ``image`` (float32 for float16). For
      ``"position_kde"`` the density is floored at 1e-10 and normalised to
      unit mass on the grid (``sum exp(m0) = 1``), so ``m0`` is the log of a
      probability per pixel.

    Raises:
      ValueError: for a bad image (NaN/inf, outside ``[0, 1]``, constant,
        wrong rank, channel-first, no channels, grid smaller than 3x3) or an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    image = jnp.asarray(check_image(image, allow_constant=allow_constant))
    if per_channel is None:
        per_channel = method != "position_kde"
    channels = jnp.moveaxis(image, -1, 0)  # (C, H, W)
    if not per_channel:
        channels = jnp.mean(channels, axis=0, keepdims=True)

    if method == "position_kde":
        density = jax.vmap(position_kde)(channels + offset)
        density = jnp.maximum(density, DENSITY_FLOOR)
        m0 = jnp.log(density) - jnp.log(jnp.sum(density, axis=(-2, -1), keepdims=True))
    elif method == "intensity_kde":
        m0 = jnp.log(jnp.maximum(jax.vmap(lambda c: intensity_kde(c, bandwidth))(channels), DENSITY_FLOOR))
    else:
        shifted = channels + offset
        m0 = jnp.log(shifted) - jnp.log(jnp.sum(shifted, axis=(-2, -1), keepdims=True))
    return m0 if per_channel else m0[0]
