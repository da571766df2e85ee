"""Why a Fokker-Planck step did or did not converge: one integer code per step, in the spirit of lineax's ``RESULTS``.

:class:`FPSolution.status <fpjax.FPSolution>` holds a ``(T,)`` int32 array of these codes (``(..., T)`` under
``vmap``); ``converged`` is ``status == CONVERGED``. Codes are plain integers so that they pass through ``jit``,
``vmap``, ``scan`` and the store; :func:`describe` turns one into the sentence a person reads, with what to try.
When a step fails for several reasons the first that applies in this order is recorded: a non-finite field
(and, for the density scheme, the density not positive, the usual cause), then the outer iteration's cap, then
the linear solve's failure, then the spectral transforms' accuracy.
"""

from __future__ import annotations

import enum

import jax.numpy as jnp


class Status(enum.IntEnum):
    """Per-step outcome codes (int32 in arrays)."""

    CONVERGED = 0
    NON_FINITE = 1  # the step's field or residual is not finite
    DENSITY_NOT_POSITIVE = 2  # "density": p <= 0 somewhere, so m = log p is -inf there
    OUTER_ITERATION_CAP = 3  # "log_density": max_outer outer iterations without meeting outer_tol
    KRYLOV_ITERATION_CAP = 4  # the linear solve used maxiter iterations without meeting tol (counted solver)
    KRYLOV_BREAKDOWN = 5  # the linear solve stopped early without meeting tol (counted solver: a breakdown)
    KRYLOV_FAILED = 6  # the linear solve missed tol; the solver does not count, so cap and breakdown look alike
    SPECTRAL_INACCURATE = 7  # "spectral": the transforms' residual is above its rounding bound


_ADVICE = {
    Status.CONVERGED: "converged",
    Status.NON_FINITE: "the solution is not finite; check m0 for extreme values or use float64",
    Status.DENSITY_NOT_POSITIVE: (
        "the density went negative: central differences of a drift that dominates diffusion on this grid "
        "(|f| h > g^2); refine the grid or use scheme='log_density' with advection='upwind'"
    ),
    Status.OUTER_ITERATION_CAP: (
        "the outer iteration reached max_outer; try a larger T, advection='upwind', linearization='newton' or a "
        "larger max_outer"
    ),
    Status.KRYLOV_ITERATION_CAP: "the linear solve reached maxiter; raise maxiter or use preconditioner='dst'",
    Status.KRYLOV_BREAKDOWN: "the linear solve broke down; try solver='gmres' or preconditioner='dst'",
    Status.KRYLOV_FAILED: (
        "the linear solve missed its tolerance (iteration cap or breakdown); raise maxiter, use "
        "preconditioner='dst' or solver='gmres' (solver='bicgstab_counted' tells which)"
    ),
    Status.SPECTRAL_INACCURATE: "the transforms lost accuracy; check m0 for extreme values or use float64",
}


def describe(code) -> str:
    """The reason and the fix for one status code, as a sentence fragment."""
    return f"{Status(int(code)).name}: {_ADVICE[Status(int(code))]}"


def first(conditions):
    """The code of the first failed condition per step: ``conditions`` a sequence of ``(code, failed)`` pairs,
    ``failed`` boolean arrays broadcastable to each other, earlier pairs winning; ``CONVERGED`` where none is."""
    status = jnp.int32(Status.CONVERGED)
    for code, failed in reversed(conditions):
        status = jnp.where(failed, jnp.int32(code), status)
    return jnp.asarray(status, jnp.int32)


def krylov(error_ok, iterations, maxiter):
    """The linear solve's share of a step's status: ``CONVERGED``, or why it failed.

    ``iterations``: the counted solver's iterations (``-1`` where the solver does not count them).
    """
    counted = iterations >= 0
    failed = ~error_ok
    return first(
        [
            (Status.KRYLOV_FAILED, failed & ~counted),
            (Status.KRYLOV_ITERATION_CAP, failed & (iterations >= maxiter)),
            (Status.KRYLOV_BREAKDOWN, failed),
        ]
    )
