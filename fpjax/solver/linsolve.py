"""Matrix-free linear solves and the fast spectral ("dst") preconditioner.

The Fokker-Planck step systems ``A x = b`` are applied matrix-free; this
module solves them with a Krylov method and, optionally, preconditions with
the exact fast inverse of their constant-coefficient part
``c0 I - c1 Laplacian`` (``c0 = 1/dt``, ``c1 = g^2/2``): diagonal in the sine
basis (DST-I) for the zero boundary and in the cosine basis (DCT-II) for the
reflecting one.
"""

from __future__ import annotations

import functools
import math
import typing
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jax import lax

Solver = Literal["bicgstab", "bicgstab_counted", "gmres"]
SOLVERS = typing.get_args(Solver)
Preconditioner = Literal["auto", "none", "dst"]
PRECONDITIONERS = typing.get_args(Preconditioner)
AUTO_DST_MIN_SIZE_CPU = (
    128  # `fpjax bench solver` / `bench projection`: below this, on a CPU, "none" was as fast or faster
)
Transform = Literal["auto", "dense", "fft"]
TRANSFORMS = typing.get_args(Transform)
# The one threshold of transform="auto" (the DST preconditioner and the spectral scheme's forward transform):
# measured on the 2-core CPU, `fpjax bench solver` basis matmuls beat JAX's FFT up to 256 and beyond in the
# preconditioner; the spectral scheme's one forward transform cost the same both ways only at 1024 (10 ms), so
# between 512 and 1024 the FFT costs it at most what the dense transform would (linear._Transforms).
DENSE_TRANSFORM_MAX_SIZE = 512


def resolve_transform(transform: str, shape) -> str:
    """``"dense"`` or ``"fft"``: what ``transform`` (``"auto"``, ``"dense"``, ``"fft"``) means on an ``(H, W)`` grid."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    if transform == "auto":
        return "dense" if max(shape) <= DENSE_TRANSFORM_MAX_SIZE else "fft"
    return transform


# ----------------------------------------------------------------------------
# Real trigonometric transforms


def dst1(x, axis: int = -1):
    """DST type I along ``axis``, equal to ``scipy.fft.dst(x, type=1)`` (unnormalised).

    ``y[k] = 2 sum_n x[n] sin(pi (k + 1)(n + 1) / (N + 1))``, computed from
    the FFT of the odd extension ``[0, x, 0, -x[::-1]]`` (JAX has no DST).
    """
    x = jnp.moveaxis(x, axis, -1)
    n = x.shape[-1]
    zero = jnp.zeros(x.shape[:-1] + (1,), x.dtype)
    extended = jnp.concatenate([zero, x, zero, -x[..., ::-1]], axis=-1)
    y = -jnp.imag(jnp.fft.rfft(extended, axis=-1))[..., 1 : n + 1]
    return jnp.moveaxis(y.astype(x.dtype), -1, axis)


@functools.lru_cache(maxsize=64)
def _sine_basis(n: int) -> np.ndarray:
    """Orthonormal, symmetric DST-I matrix ``Q`` (``Q @ Q = I``), float64."""
    k = np.arange(1, n + 1)
    return math.sqrt(2.0 / (n + 1)) * np.sin(np.pi * np.outer(k, k) / (n + 1))


@functools.lru_cache(maxsize=64)
def _cosine_basis(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``C`` (rows are basis vectors, ``C.T @ C = I``), float64."""
    k = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    c = np.cos(np.pi * k * (j + 0.5) / n) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c


def laplacian_eigenvalues(n: int, h: float, boundary: str) -> np.ndarray:
    """Eigenvalues of the 1-D three-point Laplacian on ``n`` points, spacing ``h``.

    ``"zero"``: ``-(4/h^2) sin^2(pi k / (2(n+1)))``, ``k = 1..n`` (sine modes).
    ``"reflect"``: ``-(4/h^2) sin^2(pi k / (2n))``, ``k = 0..n-1`` (cosine modes).
    """
    if boundary == "zero":
        k = np.arange(1, n + 1)
        return -(4.0 / h**2) * np.sin(np.pi * k / (2 * (n + 1))) ** 2
    k = np.arange(n)
    return -(4.0 / h**2) * np.sin(np.pi * k / (2 * n)) ** 2


def fft_transform_pair(n: int, axis: int, boundary: str):
    """(forward, inverse) orthonormal FFT-based transforms along ``axis``."""
    if boundary == "zero":
        scale = 1.0 / math.sqrt(2.0 * (n + 1))
        forward = lambda x: dst1(x, axis) * scale  # noqa: E731 - orthonormal DST-I is its own inverse
        return forward, forward
    return (
        lambda x: jax.scipy.fft.dct(x, type=2, axis=axis, norm="ortho"),
        lambda x: jax.scipy.fft.idct(x, type=2, axis=axis, norm="ortho"),
    )


def basis_matrix(n: int, boundary: str) -> np.ndarray:
    """Orthonormal ``(n, n)`` float64 basis whose rows are the eigenvectors of the 1-D three-point
    Laplacian, in the order of :func:`laplacian_eigenvalues` (slowest-decaying first): DST-I
    (``"zero"``) or DCT-II (``"reflect"``). Forward transform ``B @ x``, inverse ``B.T @ y``."""
    return _sine_basis(n) if boundary == "zero" else _cosine_basis(n)


def matmul(a, b):
    """``a @ b`` at full float32 precision (on GPU and TPU the default matmul precision is bf16/TF32)."""
    return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)


def resolve_preconditioner(kind: str, shape, scheme: str = "log_density") -> str:
    """The one place that decides what ``preconditioner="auto"`` means.

    ``"dst"`` for ``scheme="density"`` at every size (for zero drift it is the
    step's exact inverse: measured 2.0-4.7x faster than none from 32 to 256 on
    the CPU); for the log-density scheme ``"dst"`` on accelerators and on CPU
    grids of at least ``AUTO_DST_MIN_SIZE_CPU`` pixels a side, else ``"none"``
    (on a CPU the four dense transforms of a small grid cost more than the
    iterations they save: ``fpjax bench solver``). Re-measure on a GPU/TPU with
    ``fpjax bench solver --quick``."""
    if kind != "auto":
        return kind
    if scheme == "density" or jax.default_backend() != "cpu" or max(shape) >= AUTO_DST_MIN_SIZE_CPU:
        return "dst"
    return "none"


def make_helmholtz_inverse(shape, spacing, boundary: str, transform: str = "auto"):
    """Exact fast solver of ``(c0 I - c1 Laplacian) x = r`` on an ``(H, W)`` grid.

    Args:
      shape: ``(H, W)``.
      spacing: ``(hx, hy)``.
      boundary: ``"zero"`` (DST-I) or ``"reflect"`` (DCT-II).
      transform: ``"dense"`` (basis matrices, fastest on CPU for small grids),
        ``"fft"`` or ``"auto"`` (dense up to ``DENSE_TRANSFORM_MAX_SIZE``).

    Returns:
      ``inverse(r, c0, c1)`` for ``r`` of shape ``(H, W)``; linear and
      symmetric in ``r``, so it is also right for transposed solves.
    """
    transform = resolve_transform(transform, shape)
    height, width = shape
    hx, hy = spacing
    lap = laplacian_eigenvalues(height, hy, boundary)[:, None] + laplacian_eigenvalues(width, hx, boundary)[None, :]

    if transform == "dense":
        by, bx = basis_matrix(height, boundary), basis_matrix(width, boundary)

        def inverse(r, c0, c1):
            # plain matmuls on both sides: no transposes of r, which cost more than the products on small grids
            qy, qx = jnp.asarray(by, r.dtype), jnp.asarray(bx, r.dtype)
            spectrum = matmul(matmul(qy, r), qx.T) / (c0 - c1 * jnp.asarray(lap, r.dtype))
            return matmul(matmul(qy.T, spectrum), qx)

        return inverse

    fy, iy = fft_transform_pair(height, -2, boundary)
    fx, ix = fft_transform_pair(width, -1, boundary)

    def inverse(r, c0, c1):
        spectrum = fx(fy(r)) / (c0 - c1 * jnp.asarray(lap, r.dtype))
        return ix(iy(spectrum))

    return inverse


# ----------------------------------------------------------------------------
# Krylov solves


def _bicgstab_counted(matvec, b, x0, *, tol, atol, maxiter, precond):
    """Preconditioned BiCGSTAB, the same recurrence as ``jax.scipy.sparse.linalg.bicgstab``,
    also returning the number of iterations run (a breakdown stops the loop;
    the caller's true-residual check reports it)."""
    vdot = lambda u, v: jnp.sum(u * v)  # noqa: E731
    atol2 = jnp.maximum(tol**2 * vdot(b, b), atol**2)

    def cond(state):
        _, r, *_, k, _ = state
        return (vdot(r, r) > atol2) & (k < maxiter) & (k >= 0)

    def body(state):
        x, r, rhat, alpha, omega, rho, p, q, k, count = state
        rho_ = vdot(rhat, r)
        beta = rho_ / rho * alpha / omega
        p_ = r + beta * (p - omega * q)
        phat = precond(p_)
        q_ = matvec(phat)
        alpha_ = rho_ / vdot(rhat, q_)
        s = r - alpha_ * q_
        exit_early = vdot(s, s) < atol2
        shat = precond(s)
        t = matvec(shat)
        omega_ = vdot(t, s) / vdot(t, t)
        x_ = jnp.where(exit_early, x + alpha_ * phat, x + alpha_ * phat + omega_ * shat)
        r_ = jnp.where(exit_early, s, s - omega_ * t)
        k_ = jnp.where((omega_ == 0) | (alpha_ == 0), -11, k + 1)
        k_ = jnp.where(rho_ == 0, -10, k_)
        return x_, r_, rhat, alpha_, omega_, rho_, p_, q_, k_, count + 1

    r0 = b - matvec(x0)
    one = jnp.ones((), b.dtype)
    init = (x0, r0, r0, one, one, one, r0, r0, jnp.int32(0), jnp.int32(0))
    x, *_, count = lax.while_loop(cond, body, init)
    return x, count


def norm_floor(x) -> float:
    """``sqrt(x.size) tiny / eps`` for ``x``'s dtype: the smallest norm at which a field keeps relative
    precision ``eps`` (float32: ``9.9e-32`` per entry, float64: ``1.0e-292``).

    Below it, the entries the field's norm depends on reach the subnormal range, which XLA flushes to zero
    on CPUs and GPUs: a float32 field of size ``1e-35`` loses its smaller entries outright. Every relative
    measure of the solvers (outer change, step residual, backward error) therefore divides by
    ``max(||x||, norm_floor(x))``: a field below the floor counts as zero to within rounding, its error
    as an absolute one. Static (a Python float)."""
    info = jnp.finfo(x.dtype)
    return math.sqrt(max(1, math.prod(jnp.shape(x)))) * float(info.tiny) / float(info.eps)


def _max_abs(*arrays):
    return functools.reduce(jnp.maximum, [jnp.max(jnp.abs(a)) for a in arrays])


def relative_norm(r, reference, floor=None):
    """``||r|| / max(||reference||, floor)`` without underflow or overflow: both are scaled by the larger
    maximum first (a float32 field of size 1e-22 has a squared norm of 0). ``floor`` defaults to
    :func:`norm_floor` of ``reference`` (a residual passes ``||A||`` times its solution's floor). ``0``
    when ``r = 0``. No gradient."""
    r, reference = lax.stop_gradient(r), lax.stop_gradient(reference)
    floor = norm_floor(reference) if floor is None else lax.stop_gradient(floor)
    scale = jnp.maximum(_max_abs(r, reference), floor)
    numerator, denominator = jnp.linalg.norm(r / scale), jnp.linalg.norm(reference / scale)
    return numerator / jnp.maximum(denominator, floor / scale)


def backward_error(matvec, x, b, operator_norm):
    """Normwise backward error ``||b - A x|| / (||A|| max(||x||, floor) + ||b||)`` of a solve, scaled against
    underflow and overflow (as :func:`relative_norm`, whose :func:`norm_floor` it uses); ``operator_norm``
    bounds ``||A||``. Rounding level (a few eps) for a backward-stable solve, whatever the conditioning.
    No gradient."""
    r, x, b = (lax.stop_gradient(a) for a in (b - matvec(x), x, b))
    floor = norm_floor(x)
    scale = jnp.maximum(_max_abs(r, x, b), floor)
    norm = lambda a: jnp.linalg.norm(a / scale)  # noqa: E731
    return norm(r) / (operator_norm * jnp.maximum(norm(x), floor / scale) + norm(b))


def relative_residual(matvec, x, b, operator_norm=None):
    """``||b - A x|| / max(||b||, floor)`` (:func:`relative_norm`): ``floor`` is :func:`norm_floor` of ``b``,
    or, given a bound ``operator_norm`` on ``||A||``, ``||A||`` times that of ``x`` (below it rounding, with
    subnormals flushed, is all a residual can show)."""
    floor = None if operator_norm is None else operator_norm * norm_floor(x)
    return relative_norm(b - matvec(x), b, floor)


def _scale_of(b):
    """``(s, safe)``: ``s = max|b|`` (no gradient) and ``s`` where positive, else 1."""
    scale = lax.stop_gradient(jnp.max(jnp.abs(b)))
    return scale, jnp.where(scale > 0, scale, 1)


def linear_solve(
    matvec, b, x0=None, *, solver="bicgstab", tol=1e-6, atol=0.0, maxiter=None, precond=None, operator_norm=None
):
    """Solve ``matvec(x) = b`` for a field ``b`` of any shape.

    The system is solved for ``b / s`` with ``s = max|b|`` and the answer
    scaled back: the Krylov recurrences compute squared norms and inner
    products, which in float32 underflow to zero for ``|b|`` below about
    ``1e-19`` (the solvers then stop at once and return ``x0``) and overflow
    above about ``1e19``. The scaling changes nothing else (the system is
    linear); ``b = 0`` gives ``x = 0``.

    Args:
      matvec: linear function ``x -> A x``.
      b, x0: right-hand side and initial guess (default zeros), same shape;
        ``x0`` is scaled by ``1/s`` too, so it should be of the solution's scale
        (a previous iterate or time step is).
      solver: ``"bicgstab"`` (``jax.scipy.sparse.linalg.bicgstab``, the
        default), ``"bicgstab_counted"`` (the same recurrence, but counting
        its iterations) or ``"gmres"`` (``jax.scipy``, restart 20).
      tol, atol: stop when ``||r|| <= max(tol ||b||, atol)``.
      maxiter: iteration cap (default ``10 * b.size``, SciPy's).
      precond: linear function approximating ``A^-1`` (default identity).
      operator_norm: optional bound on ``||A||`` for the residual's floor (:func:`relative_residual`).

    Returns:
      ``(x, iterations, rel_residual)``: the solution, the iterations used
      (``-1`` where the backend does not count them)
      and the true relative residual ``||b - A x|| / ||b||`` (:func:`relative_residual`), recomputed
      because the JAX solvers report no convergence information.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    maxiter = 10 * b.size if maxiter is None else maxiter
    precond = (lambda r: r) if precond is None else precond
    scale, safe = _scale_of(b)
    b_scaled, atol = b / safe, atol / safe
    # b = 0: start from x0 = 0, where every solver stops at once with x = 0 (from another start it would
    # chase ||r|| <= 0 for maxiter iterations)
    x0 = jnp.zeros_like(b) if x0 is None else jnp.where(scale > 0, x0 / safe, 0)
    if solver == "bicgstab_counted":
        x, iterations = _bicgstab_counted(matvec, b_scaled, x0, tol=tol, atol=atol, maxiter=maxiter, precond=precond)
    elif solver == "bicgstab":
        x, _ = jax.scipy.sparse.linalg.bicgstab(matvec, b_scaled, x0, tol=tol, atol=atol, maxiter=maxiter, M=precond)
        iterations = jnp.int32(-1)
    else:
        x, _ = jax.scipy.sparse.linalg.gmres(
            matvec, b_scaled, x0, tol=tol, atol=atol, restart=20, maxiter=maxiter, M=precond
        )
        iterations = jnp.int32(-1)
    x = x * safe
    return x, iterations, relative_residual(matvec, x, b, operator_norm)


# ----------------------------------------------------------------------------
# lineax: differentiable solves (implicit differentiation of the schemes' steps)


class ScipyKrylov(lx.AbstractLinearSolver):
    """A lineax solver that runs ``jax.scipy.sparse.linalg``'s BiCGSTAB (or GMRES) on a lineax operator.

    lineax then supplies the transpose (reverse mode) and the derivative with
    respect to the operator (second order). Measured alternatives, so that
    nobody need repeat them (issue 15): lineax's own float32 ``BiCGStab`` stops
    on a false breakdown (its test fires on legitimately negative ``rho`` /
    ``omega``: true residual 6.3 where ``jax.scipy`` reaches 4e-6) and returns
    NaN for a zero right-hand side; its GMRES stagnated at 1e-6 in float32 and
    was 3-8x slower. The preconditioner is the ``"preconditioner"`` option
    (a lineax operator), as for lineax's own Krylov solvers.
    """

    method: str = eqx.field(static=True, default="bicgstab")
    rtol: float = eqx.field(static=True, default=1e-6)
    maxiter: int | None = eqx.field(static=True, default=None)

    def init(self, operator, options):
        return operator

    def compute(self, state, vector, options):
        operator = state
        preconditioner = options.get("preconditioner")
        zero = jnp.all(vector == 0)  # jax.scipy's BiCGSTAB divides by rho = 0 for a zero right-hand side
        safe = jnp.where(zero, jnp.ones_like(vector), vector)
        x, _, residual = linear_solve(
            operator.mv, safe, solver=self.method, tol=self.rtol, maxiter=self.maxiter,
            precond=None if preconditioner is None else preconditioner.mv,
        )  # fmt: skip
        x = jnp.where(zero, jnp.zeros_like(x), x)
        good = zero | (residual <= jnp.maximum(10 * self.rtol, 100 * jnp.finfo(vector.dtype).eps))
        result = lx.RESULTS.where(good, lx.RESULTS.successful, lx.RESULTS.max_steps_reached)
        return x, result, {}

    def transpose(self, state, options):
        operator = state
        transposed = {"preconditioner": options["preconditioner"].transpose()} if "preconditioner" in options else {}
        return operator.transpose(), transposed

    def conj(self, state, options):
        operator = state
        conjugated = {"preconditioner": lx.conj(options["preconditioner"])} if "preconditioner" in options else {}
        return lx.conj(operator), conjugated

    def assume_full_rank(self):
        return True


def implicit_tangent(jacobian_vp, rhs, *, solver: str = "bicgstab", tol: float = 1e-6, maxiter=None, precond=None):
    """``J^-1 rhs`` for the implicit-function tangent of a step, through ``lineax.linear_solve``.

    ``jacobian_vp``: the linear map ``v -> J v`` (``J = dF/dm`` at the solution); ``precond``: a linear,
    symmetric approximation of ``J^-1`` (the DST inverse) or ``None``. Linear in ``rhs`` and differentiable
    with respect to everything ``jacobian_vp`` closes over, so ``jvp``, ``grad`` and their compositions
    all pass through it.
    """
    structure = jax.ShapeDtypeStruct(rhs.shape, rhs.dtype)
    operator = lx.FunctionLinearOperator(jacobian_vp, structure)
    options = {}
    if precond is not None:
        options["preconditioner"] = lx.FunctionLinearOperator(precond, structure, lx.symmetric_tag)
    method = "gmres" if solver == "gmres" else "bicgstab"
    krylov = ScipyKrylov(method=method, rtol=tol, maxiter=maxiter)
    # throw=True: a failed tangent solve raises in forward mode as it does in reverse mode (lineax's transpose
    # throws), instead of being dropped silently
    return lx.linear_solve(operator, rhs, krylov, options=options, throw=True).value
