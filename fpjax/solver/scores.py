"""Scores from a solved log-density (cross-matrix paper eq. 25; score-embedding paper eq. 19)."""

from __future__ import annotations

import jax.numpy as jnp

from fpjax.solver import stencil

SCORE_COMPONENTS = ("sum", "x", "y")


def score(m, boundary: str = "zero"):
    """Score ``grad m`` in pixel units (cross-matrix paper, eq. 25): ``(..., H, W) -> (..., H, W, 2)``.

    ``s_x = (m_E - m_W)/2`` (component 0 of the last axis), ``s_y = (m_N - m_S)/2`` (component 1), the
    component last as everywhere in fpjax. ``boundary`` must be the solve's: a solution's own
    :meth:`fpjax.FPSolution.score` reads it from the solution.
    """
    return jnp.moveaxis(_gradient(m, boundary), -3, -1)


def _gradient(m, boundary):
    """``(..., 2, H, W)``: the stencil's layout."""
    return stencil.gradient(m, (1.0, 1.0), boundary)


def pixel_score(m, component: str = "sum", boundary: str = "zero"):
    """Scalar pixel score (score-embedding paper, eq. 19): ``(..., H, W) -> (..., H, W)``.

    ``component``: ``"sum"`` (``s_x + s_y``, default), ``"x"`` (the
    cross-matrix paper's script) or ``"y"``.
    """
    if component not in SCORE_COMPONENTS:
        raise ValueError(f"component must be one of {SCORE_COMPONENTS}, got {component!r}")
    s = _gradient(m, boundary)
    if component == "sum":
        return s[..., 0, :, :] + s[..., 1, :, :]
    return s[..., 0 if component == "x" else 1, :, :]
