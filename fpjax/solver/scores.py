"""Scores from a solved log-density (cross-matrix paper eq. 25; score-embedding paper eq. 19).

Layouts: ``docs/conventions.md``. A field trajectory has its grid on the last two axes, ``(..., H, W)``;
a trajectory of images keeps its channels last, ``(..., H, W, C)`` (``channel_axis=-1``).
"""

from __future__ import annotations

import jax.numpy as jnp

from fpjax.solver import stencil
from fpjax.solver.initial import MIN_GRID

SCORE_COMPONENTS = ("sum", "x", "y")
CHANNEL_AXES = ("auto", None, -1)
"""``channel_axis`` values: ``None`` (fields, ``(..., H, W)``), ``-1`` (channels last, ``(..., H, W, C)``), or
``"auto"`` (the default: fields, refusing a last axis that can only be a channel axis, see :func:`score`)."""


def _fields(m, channel_axis):
    """``m`` with its grid on the last two axes: ``(..., H, W, C) -> (..., C, H, W)`` for ``channel_axis=-1``."""
    if channel_axis not in CHANNEL_AXES:
        raise ValueError(
            f"channel_axis must be None (fields (..., H, W)) or -1 (channels last, (..., H, W, C)), "
            f"got {channel_axis!r}"
        )
    if channel_axis is None:
        return m
    if channel_axis == "auto":
        shape = jnp.shape(m)
        if len(shape) >= 3 and _looks_channels_last(shape):
            raise ValueError(
                f"m of shape {shape} ends in an axis of {shape[-1]}, a channel axis rather than a grid's: a "
                "trajectory of images, channels last (as precompute returns it)? pass channel_axis=-1 "
                "(docs/conventions.md)"
            )
        return m
    if jnp.ndim(m) < 3:
        raise ValueError(f"channel_axis=-1: expected m of shape (..., H, W, C), got shape {jnp.shape(m)}")
    return jnp.moveaxis(m, -1, -3)


def _looks_channels_last(shape) -> bool:
    """A last axis of 1 to 4 (an image's channels) after a grid axis eight or more times as long: a grid that
    narrow is not one fpjax is used on, a channels-last trajectory of images (``precompute``'s ``m``) is;
    below ``MIN_GRID`` it cannot be a grid at all. Pass ``channel_axis=None`` to solve such a strip anyway."""
    return shape[-1] < MIN_GRID or (shape[-1] <= 4 and shape[-2] >= 8 * shape[-1])


def score(m, boundary: str = "zero", *, channel_axis: int | None | str = "auto"):
    """Score ``grad m`` in pixel units (cross-matrix paper, eq. 25): ``(..., H, W) -> (..., H, W, 2)``, or
    with ``channel_axis=-1`` (channels last, as :func:`fpjax.solve_image` and :func:`fpjax.precompute` return
    ``m``) ``(..., H, W, C) -> (..., H, W, C, 2)``.

    ``s_x = (m_E - m_W)/2`` (component 0 of the last axis), ``s_y = (m_N - m_S)/2`` (component 1), the
    component last as everywhere in fpjax (``docs/conventions.md``). ``boundary`` must be the solve's: a
    solution's own :meth:`fpjax.FPSolution.score` reads it, and the layout, from the solution. Left at
    ``"auto"``, ``channel_axis`` takes fields but refuses an ``m`` whose last axis can only be an image's
    channels (``precompute``'s ``(N, T+1, H, W, C)``, which read as fields would give a silently wrong score);
    ``None`` says "fields" without that guess.
    """
    s = jnp.moveaxis(_gradient(_fields(m, channel_axis), boundary), -3, -1)  # (..., [C,] H, W, 2)
    return s if channel_axis != -1 else jnp.moveaxis(s, -4, -2)


def _gradient(m, boundary):
    """``(..., 2, H, W)``: the stencil's layout."""
    return stencil.gradient(m, (1.0, 1.0), boundary)


def pixel_score(m, component: str = "sum", boundary: str = "zero", *, channel_axis: int | None | str = "auto"):
    """Scalar pixel score (score-embedding paper, eq. 19): ``(..., H, W) -> (..., H, W)``, or with
    ``channel_axis=-1`` (channels last) ``(..., H, W, C) -> (..., H, W, C)``.

    ``component``: ``"sum"`` (``s_x + s_y``, default), ``"x"`` (the
    cross-matrix paper's script) or ``"y"``.
    """
    if component not in SCORE_COMPONENTS:
        raise ValueError(f"component must be one of {SCORE_COMPONENTS}, got {component!r}")
    s = _gradient(_fields(m, channel_axis), boundary)
    if component == "sum":
        sigma = s[..., 0, :, :] + s[..., 1, :, :]
    else:
        sigma = s[..., 0 if component == "x" else 1, :, :]
    return sigma if channel_axis != -1 else jnp.moveaxis(sigma, -3, -1)
