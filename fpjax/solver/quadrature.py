"""Integrals of ``g(t)^2``: the one implementation of each rule that the solver and the SDEs share.

* :func:`integral_of_g_squared`: a function ``g`` of ``t``, by composite 8-point Gauss-Legendre
  (:func:`fpjax.solver.problem.diffusion_integral` for the ``"spectral"`` scheme's
  ``tau_n = int_0^(t_n) 1/2 g^2``, :class:`fpjax.diffusion.sde.FunctionVE` for its variance).
* :func:`piecewise_linear_integrals`: ``g`` given at ``t_n = n dt`` and linear in between, integrated
  exactly (:func:`fpjax.solver.problem.diffusion_integral` for ``T+1`` values of ``FPConfig.g``,
  :class:`fpjax.diffusion.sde.PiecewiseLinearVE` for its variance at the ``t_n``).

Both are jittable and differentiable in the values of ``g``.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

GAUSS_LEGENDRE_POINTS = 8  # per piece: exact for g^2 polynomial of degree <= 15
# The longest piece of the composite rule, as pieces per unit time: 8-point Gauss-Legendre on pieces of length
# 1/16 integrates g^2 over [0, 1] to float64 rounding (relative error <= 5e-16, against closed forms) for
# g = 0.1 25^t, t^8 (g^2 of degree 16), 0.2 + 0.3 sin 3t, 0.5 + 0.4 sin 20t and Song et al.'s VE g with
# sigma from 0.01 to 50; with pieces of length 1 (one per step at T = 1) the errors were 4e-11, 6e-9, 1e-11,
# 6e-2 and 8e-6, of length 1/2 up to 2e-4, of length 1/4 up to 3e-9. 1/32 leaves a margin: the error of the
# rule falls as the piece length to the 17th power.
PIECES_PER_UNIT_TIME = 32


def unit_rule(pieces: int):
    """Nodes in ``[0, 1]`` and weights (summing to 1) of ``pieces`` equal pieces with 8 points each, float64."""
    nodes, weights = np.polynomial.legendre.leggauss(GAUSS_LEGENDRE_POINTS)
    u = ((np.arange(pieces)[:, None] + (nodes + 1.0) / 2.0) / pieces).reshape(-1)
    w = np.tile(weights / 2.0, pieces) / pieces
    return u, w


def pieces_for(length: float) -> int:
    """Pieces of an interval of ``length`` (time) so that none is longer than ``1 / PIECES_PER_UNIT_TIME``."""
    return max(1, math.ceil(length * PIECES_PER_UNIT_TIME - 1e-9))


def integral_of_g_squared(g, start, length, pieces: int, dtype):
    """``int_start^(start + length) g(s)^2 ds`` by composite Gauss-Legendre: ``pieces`` equal pieces of the
    interval, :data:`GAUSS_LEGENDRE_POINTS` points on each.

    Args:
      g: a traceable function of ``t``, elementwise (its result is broadcast to the shape of ``t``).
      start, length: the intervals, arrays broadcastable against each other: shape ``(...)``.
      pieces: pieces per interval (:func:`pieces_for` gives the measured rule's number).
      dtype: the floating dtype of the computation.
    Returns:
      ``(...)`` integrals in ``dtype``.
    """
    start, length = jnp.broadcast_arrays(jnp.asarray(start, dtype), jnp.asarray(length, dtype))
    u, w = unit_rule(pieces)
    points = (1,) * start.ndim + (-1,)
    s = start[..., None] + length[..., None] * jnp.asarray(u, dtype).reshape(points)
    values = jnp.broadcast_to(g(s), s.shape)
    return length * jnp.sum(values**2 * jnp.asarray(w, dtype).reshape(points), axis=-1)


def piecewise_linear_integrals(values, dt: float):
    """``int_0^(t_n) g^2`` at ``t_n = n dt`` for ``g`` linear between its ``(T+1,)`` ``values``: ``(T+1,)``, 0 first.

    Exact: over a step from ``g = a`` to ``b``, ``int g^2 = dt (a^2 + a b + b^2) / 3``. ``values`` is an array of
    the dtype to compute in.
    """
    a, b = values[:-1], values[1:]
    pieces = dt * (a**2 + a * b + b**2) / 3.0
    return jnp.concatenate([jnp.zeros((1,), values.dtype), jnp.cumsum(pieces)])
