"""Cross-matrix Krylov projection (cross-matrix paper, section 3; DESIGN.md section 5).

Images of one dataset give similar step matrices ``A_i^n``. For a *seed*
image, each time step ``n`` gets an orthonormal basis ``V^n`` (``a`` vectors)
of the Krylov space ``K_a(A_seed^n, b_seed^n)`` and the Hessenberg matrix
``H^n = V^T A_seed V`` from Arnoldi. A *target* image's step ``n`` then starts
from the projection ``x0 = V (H^-1 (V^T b_i^n))`` of its own right-hand side
(``"initial_guess"``, the paper's method), uses it as the answer
(``"approximate"``), or projects with its own operator, ``V (V^T A_i V)^-1
V^T b_i`` (``"galerkin"``, ``a`` matvecs per step). The bases carry no
gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from fpjax.solver import log_density as fp
from fpjax.solver.problem import FPConfig, FPSolution, diffusion_schedule, step_coefficients
from fpjax.solver.solve import solve_field

HIGHEST = lax.Precision.HIGHEST  # full float32 products on GPU/TPU too (their default is bf16/TF32)

MODES = ("off", "initial_guess", "approximate", "galerkin")
_REORTHOGONALIZE = 0.7  # DGKS criterion: repeat the Gram-Schmidt pass when it removed more than ~30% of w


def _mgs_pass(basis, w, active):
    """One modified Gram-Schmidt pass of ``w`` against the ``active`` rows of ``basis``."""

    def body(i, state):
        w, h = state
        coefficient = jnp.where(active[i], jnp.vdot(basis[i], w, precision=HIGHEST), 0.0)
        return w - coefficient * basis[i], h.at[i].set(coefficient)

    return lax.fori_loop(0, basis.shape[0], body, (w, jnp.zeros(basis.shape[0], w.dtype)))


def arnoldi(matvec, r0, dim: int):
    """Arnoldi with modified Gram-Schmidt, re-orthogonalised where needed.

    Args:
      matvec: linear map of ``(H, W)`` fields.
      r0: ``(H, W)`` starting vector.
      dim: basis size ``a``.
    Returns:
      ``(V, Hm)``: ``V`` of shape ``(a, H, W)`` with orthonormal rows
      (flattened) spanning ``K_a(A, r0)`` and ``Hm = V^T A V`` of shape
      ``(a, a)``, upper Hessenberg. After a breakdown (an invariant subspace
      reached early) the remaining rows of ``V`` are zero.
    """
    shape = r0.shape
    largest = jnp.max(jnp.abs(r0))  # scaled first: in float32 the squared norm of a 1e-22 field is 0
    flat0 = r0.ravel() / jnp.where(largest > 0, largest, 1)
    norm0 = jnp.linalg.norm(flat0)
    start = jnp.where(norm0 > 0, flat0 / jnp.where(norm0 > 0, norm0, 1), 0.0)  # r0 = 0: no basis, project gives 0
    basis = jnp.zeros((dim + 1, flat0.size), r0.dtype).at[0].set(start)
    hessenberg = jnp.zeros((dim + 1, dim), r0.dtype)
    tiny = jnp.finfo(r0.dtype).eps * 10

    def step(j, state):
        basis, hessenberg = state
        w = matvec(basis[j].reshape(shape)).ravel()
        active = jnp.arange(dim + 1) <= j
        norm_in = jnp.linalg.norm(w)
        w, h = _mgs_pass(basis, w, active)
        w, h = lax.cond(
            jnp.linalg.norm(w) < _REORTHOGONALIZE * norm_in,
            lambda: (lambda w2, h2: (w2, h + h2))(*_mgs_pass(basis, w, active)),
            lambda: (w, h),
        )
        norm = jnp.linalg.norm(w)
        keep = norm > tiny * norm_in
        basis = basis.at[j + 1].set(jnp.where(keep, w / jnp.where(keep, norm, 1.0), 0.0))
        return basis, hessenberg.at[:, j].set(h.at[j + 1].set(jnp.where(keep, norm, 0.0)))

    basis, hessenberg = lax.fori_loop(0, dim, step, (basis, hessenberg))
    return basis[:dim].reshape((dim,) + shape), hessenberg[:dim]


def _coefficients(basis, field):
    return jnp.tensordot(basis, field, axes=2, precision=HIGHEST)


def _expand(basis, alpha):
    return jnp.tensordot(alpha, basis, axes=1, precision=HIGHEST)


def project(basis, hessenberg, b):
    """``x0 = V H^-1 V^T b`` (cross-matrix paper, sec. 3); zero where ``H`` is singular."""
    alpha = jnp.linalg.solve(hessenberg, _coefficients(basis, b))
    return jnp.where(jnp.all(jnp.isfinite(alpha)), _expand(basis, alpha), jnp.zeros_like(b))


def galerkin_project(basis, matvec, b):
    """``x0 = V (V^T A V)^-1 V^T b`` with the target's own operator ``A`` (``a`` matvecs)."""
    a_basis = jax.vmap(matvec)(basis)
    reduced = jnp.tensordot(basis, a_basis, axes=[[1, 2], [1, 2]], precision=HIGHEST)
    alpha = jnp.linalg.solve(reduced, _coefficients(basis, b))
    return jnp.where(jnp.all(jnp.isfinite(alpha)), _expand(basis, alpha), jnp.zeros_like(b))


@functools.partial(jax.jit, static_argnames=("config", "dim"))
def seed_bases(m_seed, config: FPConfig, dim: int = 20, g_values=None):
    """Per-step Krylov bases of a seed's converged step matrices.

    Args:
      m_seed: ``(T+1, H, W)`` the seed's solved trajectory.
      config: the FP configuration the seed was solved with.
      dim: basis size ``a`` (the paper's default 20).
      g_values: ``(T+1,)`` diffusion values (default from ``config``).
    Returns:
      ``(V, Hm)`` of shapes ``(T, a, H, W)`` and ``(T, a, a)``, without gradient.
    """
    m_seed = lax.stop_gradient(m_seed)
    shape, dtype = m_seed.shape[1:], m_seed.dtype
    g_values = diffusion_schedule(config, None, dtype) if g_values is None else g_values
    spacing = config.grid_spacing(shape)
    times = jnp.arange(1, config.T + 1, dtype=dtype) * config.dt

    def one_step(args):
        m_prev, m, t, g = args
        step = step_coefficients(config, t, g, shape, dtype)
        matvec = fp.picard_operator(m, step, spacing, config.boundary, config.scheme.advection)
        return arnoldi(matvec, fp.step_rhs(m_prev, step), dim)

    return lax.map(one_step, (m_seed[:-1], m_seed[1:], times, g_values[1:].astype(dtype)))


def make_guess_fn(mode: str, config: FPConfig):
    """The per-step initial guess of a projection mode, for :func:`solve_projected`."""
    spacing_of = config.grid_spacing

    def guess(guide, m_prev, step):
        basis, hessenberg = guide
        b = fp.step_rhs(m_prev, step)
        if mode == "galerkin":
            matvec = fp.picard_operator(
                m_prev, step, spacing_of(m_prev.shape), config.boundary, config.scheme.advection
            )
            return galerkin_project(basis, matvec, b)
        return project(basis, hessenberg, b)

    return guess


@functools.lru_cache(maxsize=32)
def _guess_fn(mode: str, config: FPConfig):
    return make_guess_fn(mode, config)  # cached, so jit sees the same static function each call


def solve_projected(m0, bases, config: FPConfig, mode: str = "initial_guess") -> FPSolution:
    """Solve a target from the seed's per-step bases (jittable, vmappable over ``m0``).

    Args:
      m0: ``(H, W)`` target initial log-density.
      bases: ``(V, Hm)`` from :func:`seed_bases`.
      mode: ``"initial_guess"``, ``"approximate"``, ``"galerkin"`` or ``"off"``
        (the plain solve: the bases are ignored).
    """
    if mode not in MODES:
        raise ValueError(f"projection mode must be one of {MODES}, got {mode!r}")
    if mode == "off":
        return solve_field(m0, None, config)
    guess_mode = "galerkin" if mode == "galerkin" else "initial_guess"
    return solve_field(m0, None, config, lax.stop_gradient(bases), _guess_fn(guess_mode, config), mode == "approximate")
