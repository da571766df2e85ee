"""The log-density Fokker-Planck equation on an image's pixel grid (DESIGN.md section 2).

For ``dx = f dt + g dW`` the log-density ``m = log p`` solves (cross-matrix
paper, eq. 5)::

    m_t = -div f - <f, grad m> + 1/2 g^2 lap m + 1/2 g^2 |grad m|^2

discretised with backward Euler in time and the five-point stencil in space
(eqs. 6-17). Each time step solves the nonlinear equation ``F(m) = 0`` with::

    F(m) = m/dt - 1/2 g^2 lap m + <f - 1/2 g^2 grad m, grad m> + div f - m_prev/dt

by Picard iteration (freeze ``grad m`` in the advection velocity: one linear
system ``A(m~) m = b`` per outer iteration, eqs. 10-18) or by damped Newton.
Both stop on the relative change ``||m_k - m_(k-1)|| / max(||m_k||, floor) <= outer_tol``, with
``floor = sqrt(H W) tiny / eps`` (:func:`fpjax.solver.linsolve.norm_floor`: float32 ``9.9e-32`` per
pixel), below which a field counts as zero to rounding; every norm is scaled against underflow, and
each linear solve by ``max|b|`` (:func:`fpjax.solver.linsolve.linear_solve`), so a correct solve whose
``m`` decays to ``1e-30`` or to exactly ``0`` (the zero boundary's steady state) is reported converged.

Each step solve carries an implicit custom JVP (one lineax linear solve per
step, never differentiating the iteration), so the solution is differentiable
in every mode with respect to the initial field and ``g``: ``jvp``, ``grad``,
``jacfwd``, ``hessian`` and ``vmap`` of each (reverse over reverse excepted:
:func:`_implicit_step` says why).

:func:`fpjax.solve` (:mod:`fpjax.solver.solve`) runs this scheme or a linear one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fpjax.solver import linsolve, status, stencil
from fpjax.solver.problem import FPConfig, FPSolution, StepCoefficients, diffusion_schedule, step_coefficients
from fpjax.solver.status import Status

_LINE_SEARCH_HALVINGS = 8


# ----------------------------------------------------------------------------
# Operators of one step


def advection_velocity(m_frozen, step: StepCoefficients, spacing, boundary):
    """``f - 1/2 g^2 grad m~`` , ``(2, H, W)``: the velocity of the frozen-gradient advection term."""
    return step.drift - step.c1 * stencil.gradient(m_frozen, spacing, boundary)


def picard_operator(m_frozen, step: StepCoefficients, spacing, boundary, advection="central"):
    """The matrix-free step matrix ``A(m~)`` of eqs. 11-16.

    ``v -> v/dt - 1/2 g^2 lap v + <f - 1/2 g^2 grad m~, grad v>``.
    """
    velocity = advection_velocity(m_frozen, step, spacing, boundary)

    def matvec(v):
        return (
            step.c0 * v
            - step.c1 * stencil.laplacian(v, spacing, boundary)
            + stencil.advect(v, velocity, spacing, boundary, advection)
        )

    return matvec


def step_rhs(m_prev, step: StepCoefficients):
    """Right-hand side ``b = m_prev/dt - div f`` (eq. 17)."""
    return step.c0 * m_prev - step.div_drift


def step_residual(m, m_prev, step: StepCoefficients, spacing, boundary, advection="central"):
    """Nonlinear step residual ``F(m) = A(m) m - b``; zero at the backward-Euler solution."""
    return picard_operator(m, step, spacing, boundary, advection)(m) - step_rhs(m_prev, step)


def _operator_norm_bound(step: StepCoefficients, velocity, spacing):
    """Row-sum bound on ``||A||`` for the stencil (used for backward errors)."""
    return stencil.operator_norm_bound(step.c0, step.c1, velocity, spacing)


def _relative_change(new, old):
    """``||new - old|| / max(||new||, floor)``, scaled against underflow (:func:`fpjax.solver.linsolve.norm_floor`)."""
    return linsolve.relative_norm(new - old, new)


def _norm_scale(*fields):
    """``max |fields|`` (at least ``tiny``, no gradient): divide by it before taking norms that could underflow."""
    largest = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(f)) for f in fields])
    return lax.stop_gradient(jnp.maximum(largest, jnp.finfo(fields[0].dtype).tiny))


def relative_step_residual(m, m_prev, step: StepCoefficients, spacing, boundary, advection="central"):
    """``||F(m)|| / max(||m_prev/dt||, ||A|| floor)``, scaled against underflow: ``floor`` is
    :func:`fpjax.solver.linsolve.norm_floor` of ``m`` (below it rounding is all a residual can show) and
    ``||A||`` the norm bound of the step matrix's diffusion part ``1/dt - 1/2 g^2 lap``
    (:func:`fpjax.solver.linsolve.relative_norm`)."""
    hx, hy = spacing
    floor = linsolve.norm_floor(m) * (step.c0 + 4 * step.c1 * (1 / hx**2 + 1 / hy**2))
    return linsolve.relative_norm(step_residual(m, m_prev, step, spacing, boundary, advection), step.c0 * m_prev, floor)


# ----------------------------------------------------------------------------
# One nonlinear step


def _outer_loop(update, m_init, config: FPConfig):
    """Run ``update(m) -> (m_new, linear_iters, backward_error)`` until the relative change <= outer_tol."""
    dtype = m_init.dtype

    def cond(state):
        k, _, change, *_ = state
        return (k < config.scheme.max_outer) & (change > config.scheme.outer_tol)  # NaN change stops the loop

    def body(state):
        k, m, _, iters, _ = state
        m_new, it, err = update(m)
        return k + 1, m_new, _relative_change(m_new, m), iters + it, err

    init = (jnp.int32(0), m_init, jnp.asarray(jnp.inf, dtype), jnp.int32(0), jnp.asarray(0.0, dtype))
    k, m, change, iters, err = lax.while_loop(cond, body, init)
    return m, (k, change, iters, err)


def _preconditioner(shape, step: StepCoefficients, config: FPConfig, spacing):
    if linsolve.resolve_preconditioner(config.scheme.preconditioner, shape) != "dst":
        return None
    helmholtz = linsolve.make_helmholtz_inverse(shape, spacing, config.boundary, config.scheme.transform)
    return lambda r: helmholtz(r, step.c0, step.c1)


def _iterate_step(m_prev, m_guess, step: StepCoefficients, config: FPConfig, spacing, guarded: bool):
    """Outer iteration of one step: ``(m, outer_iterations, linear_iterations, backward_error, change)``."""
    boundary, advection = config.boundary, config.scheme.advection
    precond = _preconditioner(m_prev.shape, step, config, spacing)
    solve_kw = dict(solver=config.scheme.solver, tol=config.scheme.tol, maxiter=config.scheme.maxiter, precond=precond)
    residual_fn = lambda m: step_residual(m, m_prev, step, spacing, boundary, advection)  # noqa: E731
    rhs = step_rhs(m_prev, step)

    def picard_update(m):
        matvec = picard_operator(m, step, spacing, boundary, advection)
        m_new, it, _ = linsolve.linear_solve(matvec, rhs, m, **solve_kw)
        norm = _operator_norm_bound(step, advection_velocity(m, step, spacing, boundary), spacing)
        return m_new, it, linsolve.backward_error(matvec, m_new, rhs, norm)

    def newton_update(m):
        f_m, jvp = jax.linearize(residual_fn, m)
        d, it, _ = linsolve.linear_solve(jvp, -f_m, None, **solve_kw)
        velocity = step.drift - 2 * step.c1 * stencil.gradient(m, spacing, boundary)
        err = linsolve.backward_error(jvp, d, -f_m, _operator_norm_bound(step, velocity, spacing))
        scale = _norm_scale(f_m)  # the line search compares norms of F, which underflow in float32 below ~1e-19
        norm_f = jnp.linalg.norm(f_m / scale)

        def insufficient(state):
            j, lam = state
            trial = jnp.linalg.norm(residual_fn(m + lam * d) / scale)
            return (j < _LINE_SEARCH_HALVINGS) & ~(trial <= (1 - 1e-4 * lam) * norm_f)

        j, lam = lax.while_loop(insufficient, lambda s: (s[0] + 1, s[1] / 2), (jnp.int32(0), jnp.ones((), m.dtype)))
        accepted = (j < _LINE_SEARCH_HALVINGS) & jnp.all(jnp.isfinite(d))
        return lax.cond(
            accepted,
            lambda: (m + lam * d, it, err),
            lambda: (lambda p: (p[0], it + p[1], p[2]))(picard_update(m)),
        )

    update = newton_update if config.scheme.linearization == "newton" else picard_update
    start = m_prev
    if guarded:
        # A predictor is only a guess: where the solution turns abruptly (the first steps build the
        # boundary layer) extrapolation overshoots, so start from whichever candidate has the smaller residual.
        # (unscaled norms: where they underflow to 0 the comparison is False and m_prev, always safe, is used)
        better = jnp.linalg.norm(residual_fn(m_guess)) < jnp.linalg.norm(residual_fn(m_prev))
        start = jnp.where(better, m_guess, m_prev)
    m, (k, change, iters, err) = _outer_loop(update, start, config)
    return m, k, iters, err, change


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def _implicit_step(m_prev, m_guess, step: StepCoefficients, config: FPConfig, spacing, guarded: bool):
    """``m^n`` from ``m^(n-1)`` with implicit-function-theorem derivatives in every mode.

    The forward pass iterates to ``F(m) = 0`` and is never differentiated. Its
    JVP is the tangent of the solution: ``J dm = -(dF/dm_prev dm_prev + dF/dstep
    dstep)`` with ``J = dF/dm`` at the solution, one linear solve through
    ``lineax.linear_solve`` (:func:`fpjax.solver.linsolve.implicit_tangent`,
    DST-preconditioned). Reverse mode is JAX's transpose of that rule (lineax
    transposes the solve); second derivatives differentiate the rule, which
    calls this function again for its primal, so the iteration is never traced
    by autodiff: ``jvp``, ``grad``, ``jacfwd``, ``jacrev``, ``hessian`` (forward
    over reverse) and ``vmap`` of each work. Reverse over reverse
    (``grad(grad)``) does not: transposing the scan of time steps a second time
    makes JAX place this step's primal ``while_loop`` in the part it transposes,
    and it raises "Reverse-mode differentiation does not work for
    lax.while_loop"; use ``jax.hessian`` or ``jax.jacfwd(jax.grad(f))``, which
    give the same numbers (tested). The statistics outputs have zero tangents.
    """
    return _iterate_step(m_prev, m_guess, step, config, spacing, guarded)


@_implicit_step.defjvp
def _implicit_step_jvp(config, spacing, guarded, primals, tangents):
    m_prev, m_guess, step = primals
    dm_prev, _, dstep = tangents  # the solution does not depend on where the iteration starts
    out = _implicit_step(m_prev, m_guess, step, config, spacing, guarded)
    m = out[0]
    residual = lambda m_, m_prev_, step_: step_residual(  # noqa: E731
        m_, m_prev_, step_, spacing, config.boundary, config.scheme.advection
    )
    _, forcing = jax.jvp(lambda m_prev_, step_: residual(m, m_prev_, step_), (m_prev, step), (dm_prev, dstep))
    jacobian_vp = lambda v: jax.jvp(lambda m_: residual(m_, m_prev, step), (m,), (v,))[1]  # noqa: E731
    dm = linsolve.implicit_tangent(
        jacobian_vp, -forcing, solver=config.scheme.solver, tol=config.scheme.tol, maxiter=config.scheme.maxiter,
        # the preconditioner never changes the solution: it carries no derivative (lineax refuses one)
        precond=_preconditioner(m.shape, lax.stop_gradient(step), config, spacing),
    )  # fmt: skip
    return out, (dm,) + tuple(_zero_tangent(x) for x in out[1:])


def _zero_tangent(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.integer):
        return np.zeros(x.shape, jax.dtypes.float0)
    return jnp.zeros_like(x)


def _solve_step(m_prev, m_guess, step: StepCoefficients, config: FPConfig, spacing, guarded: bool = True):
    """One time step with its statistics: ``(m, outer_iterations, linear_iterations, residual, converged)``.

    ``guarded``: start from ``m_guess`` only where its residual beats ``m_prev``'s (off when they are the same).
    """
    m, k, iters, err, change = _implicit_step(m_prev, lax.stop_gradient(m_guess), step, config, spacing, guarded)
    if config.scheme.solver != "bicgstab_counted":
        iters = jnp.int32(-1)
    m_stopped = lax.stop_gradient(m)
    residual = relative_step_residual(m_stopped, m_prev, step, spacing, config.boundary, config.scheme.advection)
    eps = jnp.finfo(m.dtype).eps
    maxiter = 10 * m.size if config.scheme.maxiter is None else config.scheme.maxiter
    step_status = status.first(
        [
            (Status.NON_FINITE, ~(jnp.all(jnp.isfinite(m_stopped)) & jnp.isfinite(residual))),
            (Status.OUTER_ITERATION_CAP, ~(change <= config.scheme.outer_tol)),
        ]
    )
    krylov = status.krylov(err <= jnp.maximum(10 * config.scheme.tol, 100 * eps), iters, maxiter)
    step_status = jnp.where(step_status == Status.CONVERGED, krylov, step_status)
    return m, k, iters, lax.stop_gradient(residual), step_status


# ----------------------------------------------------------------------------
# Time stepping


def trajectory(m0, g, config: FPConfig, guides=None, guess_fn=None, approximate=False) -> FPSolution:
    """The papers' scheme over ``t_1 .. t_T`` from ``m0`` ``(H, W)`` (jittable; ``config`` static).

    ``g``: ``None`` (``config.g``) or an override (scalar or ``(T+1,)``).
    ``guess_fn(guide_n, m_prev, step) -> (H, W)``, with ``guides`` scanned over
    the steps, replaces the predictor (cross-matrix projection); ``approximate``
    takes that guess as the step's solution without iterating."""
    shape, dtype = m0.shape, m0.dtype
    g_values = diffusion_schedule(config, g, dtype)
    spacing = config.grid_spacing(shape)

    def time_step(carry, inputs):
        m_prev, m_before = carry
        t, g, guide = inputs
        step = step_coefficients(config, t, g, shape, dtype)
        if guess_fn is not None:
            guess = guess_fn(guide, m_prev, step)
            # a start carries no derivative (the step's solution does not depend on it); an approximate
            # solution is the projection itself, whose derivative is that of the projection map
            guess = guess if approximate else lax.stop_gradient(guess)
        else:
            guess = 2 * m_prev - m_before if config.scheme.predictor == "extrapolate" else m_prev
        if approximate:
            m = guess
            residual = relative_step_residual(m, m_prev, step, spacing, config.boundary, config.scheme.advection)
            finite = jnp.all(jnp.isfinite(m)) & jnp.isfinite(residual)
            stats = (jnp.int32(0), jnp.int32(0), residual, jnp.where(finite, Status.CONVERGED, Status.NON_FINITE))
        else:
            guarded = guess_fn is not None or config.scheme.predictor == "extrapolate"
            m, *stats = _solve_step(m_prev, guess, step, config, spacing, guarded)
        return (m, m_prev), (m, *stats)

    times = jnp.arange(1, config.T + 1, dtype=dtype) * config.dt
    xs = (times, g_values[1:].astype(dtype), guides)
    _, (ms, k, iters, residual, step_status) = lax.scan(time_step, (m0, m0), xs)
    m = jnp.concatenate([m0[None], ms])
    return FPSolution(m, k, iters, residual, step_status.astype(jnp.int32), config.boundary, spacing)


def step_residuals(m, config: FPConfig, g=None):
    """The discrete log-density FP residual of every step of a ``(T+1, H, W)`` trajectory ``m`` (of any
    scheme), recomputed from it: ``(T,)`` ``||F(m^n)|| / ||m^(n-1) / dt||``. A log-density solution's sits at
    the outer iteration's tolerance; another scheme's measures how far it is from the papers' discrete steps."""
    g_values = diffusion_schedule(config, g, m.dtype)
    spacing = config.grid_spacing(m.shape[-2:])
    times = jnp.arange(1, config.T + 1, dtype=m.dtype) * config.dt

    def one(m_now, m_prev, t, g_t):
        step = step_coefficients(config, t, g_t, m.shape[-2:], m.dtype)
        return relative_step_residual(m_now, m_prev, step, spacing, config.boundary, config.scheme.advection)

    return jax.vmap(one)(m[1:], m[:-1], times, g_values[1:])
