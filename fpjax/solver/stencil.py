"""Matrix-free five-point stencil operators on ``(..., H, W)`` fields.

Conventions (DESIGN.md section 1): axis -1 is ``x`` ("east" = +x), axis -2 is
``y`` ("north" = +y). Spacings are given as ``(hx, hy)``, in the order of the
vector components ``(x, y)``. Vector fields carry their components on axis -3:
``(..., 2, H, W)`` with component 0 = x.

Boundaries (the only place that knows them is :func:`shift`):

* ``"zero"``: values outside the image are 0 (the papers' zero padding).
* ``"reflect"``: zero flux; the ghost value equals the boundary value
  (half-sample symmetric reflection), so one-sided differences across the
  boundary vanish.
"""

from __future__ import annotations

import typing
from typing import Literal

import jax.numpy as jnp

Boundary = Literal["zero", "reflect"]
BOUNDARIES = typing.get_args(Boundary)
_AXIS_OF_COMPONENT = (-1, -2)  # component 0 (x) lives on axis -1, component 1 (y) on axis -2


def check_boundary(boundary: str) -> str:
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    return boundary


def shift(u: jnp.ndarray, offset: int, axis: int, boundary: str) -> jnp.ndarray:
    """Neighbour values: ``shift(u, +1, -1, b)[..., i, j] = u[..., i, j + 1]``.

    Args:
      u: field ``(..., H, W)``.
      offset: +1 or -1.
      axis: -1 (x) or -2 (y).
      boundary: ``"zero"`` or ``"reflect"``; decides the value past the edge.
    """
    check_boundary(boundary)
    if offset not in (1, -1):
        raise ValueError(f"offset must be +1 or -1, got {offset}")
    axis = axis % u.ndim
    pad = [(0, 0)] * u.ndim
    pad[axis] = (0, 1) if offset == 1 else (1, 0)
    mode = "constant" if boundary == "zero" else "edge"
    padded = jnp.pad(u, pad, mode=mode)
    start = 1 if offset == 1 else 0
    return jnp.moveaxis(jnp.moveaxis(padded, axis, 0)[start : start + u.shape[axis]], 0, axis)


def central_difference(u, axis: int, h: float, boundary: str):
    """``(u[i+1] - u[i-1]) / (2h)`` along ``axis``."""
    return (shift(u, 1, axis, boundary) - shift(u, -1, axis, boundary)) / (2 * h)


def forward_difference(u, axis: int, h: float, boundary: str):
    """``(u[i+1] - u[i]) / h`` along ``axis``."""
    return (shift(u, 1, axis, boundary) - u) / h


def backward_difference(u, axis: int, h: float, boundary: str):
    """``(u[i] - u[i-1]) / h`` along ``axis``."""
    return (u - shift(u, -1, axis, boundary)) / h


def gradient(u, spacing, boundary: str):
    """Central gradient ``(..., H, W) -> (..., 2, H, W)``, component 0 = x.

    ``spacing = (hx, hy)``; DESIGN.md section 2, eq. 7 of the cross-matrix paper.
    """
    return jnp.stack(
        [central_difference(u, ax, h, boundary) for ax, h in zip(_AXIS_OF_COMPONENT, spacing, strict=False)],
        axis=-3,
    )


def laplacian(u, spacing, boundary: str):
    """Five-point Laplacian of ``(..., H, W)``; cross-matrix paper eq. 8."""
    return sum(
        (shift(u, 1, ax, boundary) - 2 * u + shift(u, -1, ax, boundary)) / h**2
        for ax, h in zip(_AXIS_OF_COMPONENT, spacing, strict=False)
    )


def divergence(v, spacing, boundary: str):
    """Central divergence of a vector field ``(..., 2, H, W) -> (..., H, W)``; eq. 9."""
    return sum(
        central_difference(v[..., c, :, :], ax, h, boundary)
        for c, (ax, h) in enumerate(zip(_AXIS_OF_COMPONENT, spacing, strict=False))
    )


def advect(u, velocity, spacing, boundary: str, scheme: str = "central"):
    """``<velocity, grad u>`` with central or first-order upwind differences.

    Args:
      u: field ``(..., H, W)``.
      velocity: ``(..., 2, H, W)``, component 0 = x.
      scheme: ``"central"`` (second order; loses the M-matrix property where
        advection dominates) or ``"upwind"`` (differences taken from the side
        the velocity comes from, so ``u -> <velocity, grad u>`` has a
        non-negative diagonal and non-positive off-diagonals).
    """
    total = 0.0
    for c, (ax, h) in enumerate(zip(_AXIS_OF_COMPONENT, spacing, strict=False)):
        a = velocity[..., c, :, :]
        if scheme == "central":
            total = total + a * central_difference(u, ax, h, boundary)
        elif scheme == "upwind":
            total = total + (
                jnp.maximum(a, 0) * backward_difference(u, ax, h, boundary)
                + jnp.minimum(a, 0) * forward_difference(u, ax, h, boundary)
            )
        else:
            raise ValueError(f"advection must be 'central' or 'upwind', got {scheme!r}")
    return total


def operator_norm_bound(c0, c1, velocity, spacing):
    """Row-sum bound on the norm of ``v -> c0 v - c1 lap v + (advection or flux divergence with velocity)``
    for the five-point stencil; ``velocity`` is ``(2, H, W)``."""
    hx, hy = spacing
    return (
        c0 + 4 * c1 * (1 / hx**2 + 1 / hy**2) + jnp.max(jnp.abs(velocity[0])) / hx + jnp.max(jnp.abs(velocity[1])) / hy
    )


def flux_divergence(flux, spacing, boundary: str):
    """Conservative central divergence of a flux ``(..., 2, H, W) -> (..., H, W)``.

    In the interior it equals :func:`divergence` (the face flux is the mean
    of its two cells). At the edge, ``"zero"`` takes the flux outside as 0
    (as :func:`divergence` does); ``"reflect"`` makes the flux through the
    boundary face vanish (ghost = minus the edge value), so that the sum of
    the result over the grid is zero and ``-div(f p)`` conserves mass.
    """
    total = divergence(flux, spacing, boundary="zero")
    if boundary == "zero":
        return total
    check_boundary(boundary)
    for c, (ax, h) in enumerate(zip(_AXIS_OF_COMPONENT, spacing, strict=False)):
        component = flux[..., c, :, :]
        n = component.shape[ax]
        edge = jnp.zeros(n, component.dtype).at[0].set(1.0).at[-1].set(-1.0)
        edge = edge if ax == -1 else edge[:, None]
        total = total + jnp.broadcast_to(edge, component.shape) * component / (2 * h)
    return total
