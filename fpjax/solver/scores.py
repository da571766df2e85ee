"""Scores from a solved log-density (cross-matrix paper eq. 25; score-embedding paper eq. 19).

Layouts: ``docs/conventions.md``. A field trajectory has its grid on the last two axes, ``(..., H, W)``;
a trajectory of images keeps its channels last, ``(..., H, W, C)`` (``channel_axis=-1``).
"""

from __future__ import annotations

import jax.numpy as jnp

from fpjax.solver import stencil
from fpjax.solver.initial import MIN_GRID

SCORE_COMPONENTS = ("sum", "x", "y")
CHANNEL_AXES = (None, -1)
"""``channel_axis`` values: ``None`` (fields, ``(..., H, W)``) or ``-1`` (channels last, ``(..., H, W, C)``)."""


def _fields(m, channel_axis):
    """``m`` with its grid on the last two axes: ``(..., H, W, C) -> (..., C, H, W)`` for ``channel_axis=-1``."""
    if channel_axis not in CHANNEL_AXES:
        raise ValueError(
            f"channel_axis must be None (fields (..., H, W)) or -1 (channels last, (..., H, W, C)), "
            f"got {channel_axis!r}"
        )
    if channel_axis is None:
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
    """A last axis of 1 to 4 (the channels of an image) after a grid axis four or more times as long: no grid fpjax
    solves has that shape (at least ``MIN_GRID`` a side), every channels-last trajectory of images does."""
    return shape[-1] < MIN_GRID or (shape[-1] <= 4 and shape[-2] >= 4 * shape[-1])


def score(m, boundary: str = "zero", *, channel_axis: int | None = None):
    """Score ``grad m`` in pixel units (cross-matrix paper, eq. 25): ``(..., H, W) -> (..., H, W, 2)``, or
    with ``channel_axis=-1`` (channels last, as :func:`fpjax.solve_image` and :func:`fpjax.precompute` return
    ``m``) ``(..., H, W, C) -> (..., H, W, C, 2)``.

    ``s_x = (m_E - m_W)/2`` (component 0 of the last axis), ``s_y = (m_N - m_S)/2`` (component 1), the
    component last as everywhere in fpjax (``docs/conventions.md``). ``boundary`` must be the solve's: a
    solution's own :meth:`fpjax.FPSolution.score` reads it, and the layout, from the solution.
    """
    s = jnp.moveaxis(_gradient(_fields(m, channel_axis), boundary), -3, -1)  # (..., [C,] H, W, 2)
    return s if channel_axis is None else jnp.moveaxis(s, -4, -2)


def _gradient(m, boundary):
    """``(..., 2, H, W)``: the stencil's layout."""
    return stencil.gradient(m, (1.0, 1.0), boundary)


def pixel_score(m, component: str = "sum", boundary: str = "zero", *, channel_axis: int | None = None):
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
    return sigma if channel_axis is None else jnp.moveaxis(sigma, -3, -1)
