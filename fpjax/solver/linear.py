"""The Fokker-Planck equation for the density ``p = exp(m)``: linear, so solved without outer iteration.

DESIGN.md section 2, "Linear formulations". The log-density equation
``m_t = -div f - <f, grad m> + 1/2 g^2 (lap m + |grad m|^2)`` is, for
``p = exp(m)`` (Cole-Hopf), the linear equation::

    p_t = -div(f p) + 1/2 g^2 lap p

with the zero boundary ``m = 0`` outside the image becoming ``p = 1`` outside,
and the reflecting (zero-flux) boundary staying zero flux. Two schemes:

* :func:`spectral_solve` (``FPConfig(scheme="spectral")``, zero drift): the
  heat equation, diagonalised for the five-point Laplacian by DST-I (zero) or
  DCT-II (reflect). With ``tau(t) = int_0^t 1/2 g^2``::

      p(t) = u(t) + S(t) p0,   S(t) = exp(tau(t) lap_h),   u(t) = 1 - S(t) 1

  exact in time. ``u`` does not depend on the image and separates,
  ``u = b_y + b_x - b_y b_x`` with the 1-D ``b = 1 - exp(tau lap) 1``, which
  is computed in float64 (in the interior ``p ~ 1/(H W)`` lies far below the
  boundary value 1, and ``q = p - 1`` transformed in float32 loses it).
* :func:`density_solve` (``FPConfig(scheme="density")``, any drift):
  backward Euler on ``p``, one preconditioned Krylov solve per step, split the
  same way into a float64 boundary part and the image's part.

Both return ``m = log p`` and are differentiable in every mode (``grad``,
``jvp``, ``hessian``) with respect to ``m0`` and ``g`` with no custom rules
beyond the float64 boundary layer's (whose derivative is the heat equation
itself).
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fpjax.solver import linsolve, status, stencil
from fpjax.solver.problem import (
    FPConfig,
    FPSolution,
    diffusion_integral,
    diffusion_schedule,
    is_concrete,
    step_coefficients,
)
from fpjax.solver.status import Status

SPECTRAL_RESIDUAL_EPS = 1000.0  # "spectral" converged: residual (a normwise backward error) <= this many eps
_NEGLIGIBLE_DECAY = 1e-4  # modes whose factor exp(tau lambda) is below eps * this are dropped (below rounding)
_EXP_SHIFT_FLOOR = 0.9  # m0 is shifted by c = max(m0) clipped at -0.9 log(finfo.max): exp(-c) stays finite


# ----------------------------------------------------------------------------
# Shared pieces


def _safe_log(p):
    """``log p`` with ``-inf`` (and a zero, not NaN, gradient) where ``p <= 0``."""
    positive = p > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, p, 1)), -jnp.inf)


def _shift(m0):
    """``c`` with ``exp(m0 - c) <= 1`` and ``exp(-c)`` finite: ``p = exp(c) (exp(-c) u + exp(m0 - c))``."""
    floor = -_EXP_SHIFT_FLOOR * math.log(jnp.finfo(m0.dtype).max)
    return lax.stop_gradient(jnp.maximum(jnp.max(m0), floor))


def _log_density(c, boundary_part, homogeneous_part):
    """``m = c + log(exp(-c) u + v)`` for ``p = u + exp(c) v``."""
    return c + _safe_log(boundary_part * jnp.exp(-c) + homogeneous_part)


# ----------------------------------------------------------------------------
# The float64 boundary layer of the zero boundary


def boundary_layer(tau, n: int, h: float, boundary: str) -> np.ndarray:
    """``b(tau) = 1 - exp(tau L) 1`` for the 1-D three-point Laplacian ``L`` on ``n`` points, in float64.

    Args:
      tau: ``(...,)`` values of ``int 1/2 g^2 dt``.
      n, h: points and spacing of the axis.
      boundary: ``"zero"`` (ghost value 1 for ``p``) or ``"reflect"`` (``b = 0``).
    Returns:
      ``(..., n)`` float64 NumPy array; ``u = b_y + b_x - b_y b_x`` on the grid.
    """
    tau = np.asarray(tau, np.float64)
    if boundary == "reflect":
        return np.zeros(tau.shape + (n,))
    basis = linsolve.basis_matrix(n, boundary)
    lam = linsolve.laplacian_eigenvalues(n, h, boundary)
    return (-np.expm1(tau[..., None] * lam) * (basis @ np.ones(n))) @ basis


def _ghost_one_laplacian(b, h):
    """``d b / d tau`` of the 1-D boundary layer: the three-point Laplacian with ghost value 1."""
    padded = jnp.pad(b, [(0, 0)] * (b.ndim - 1) + [(1, 1)], constant_values=1.0)
    return (padded[..., 2:] - 2 * b + padded[..., :-2]) / h**2


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _traced_boundary_layer(tau, n: int, h: float, boundary: str):
    """:func:`boundary_layer` of a traced ``tau``: float64 on the host, derivative from the heat equation."""
    shape = jax.ShapeDtypeStruct(tau.shape + (n,), tau.dtype)
    host = lambda t: boundary_layer(t, n, h, boundary).astype(tau.dtype)  # noqa: E731
    return jax.pure_callback(host, shape, tau, vmap_method="broadcast_all")


@_traced_boundary_layer.defjvp
def _traced_boundary_layer_jvp(n, h, boundary, primals, tangents):
    (tau,), (dtau,) = primals, tangents
    b = _traced_boundary_layer(tau, n, h, boundary)
    if boundary == "reflect":
        return b, jnp.zeros_like(b)
    return b, _ghost_one_laplacian(b, h) * dtau[..., None]


def _boundary_layers(tau, shape, spacing, boundary, dtype):
    """``(b_y, b_x)`` of shapes ``(len(tau), H)`` and ``(len(tau), W)`` in ``dtype``."""
    (height, width), (hx, hy) = shape, spacing
    if is_concrete(tau):
        return (
            jnp.asarray(boundary_layer(tau, height, hy, boundary), dtype),
            jnp.asarray(boundary_layer(tau, width, hx, boundary), dtype),
        )
    tau = tau.astype(dtype)
    return _traced_boundary_layer(tau, height, hy, boundary), _traced_boundary_layer(tau, width, hx, boundary)


# ----------------------------------------------------------------------------
# "spectral": exact in time


def _mode_counts(tau, eigenvalues, dtype) -> np.ndarray:
    """Per time, how many of an axis's slowest modes are above rounding, rounded up to a few levels.

    Levels ``4, 6, 8, 12, 16, 24, ...`` (at most 1.5x the modes needed), so
    that the times fall into a few groups of one static size each.
    """
    threshold = math.log(float(jnp.finfo(dtype).eps) * _NEGLIGIBLE_DECAY)
    needed = np.maximum(1, np.sum(np.asarray(tau)[:, None] * eigenvalues[None, :] > threshold, axis=1))
    n = len(eigenvalues)
    levels = sorted({min(n, v) for j in range(2, 16) for v in (2**j, 3 * 2 ** (j - 1))})
    return np.asarray([next(level for level in levels if level >= k) for k in needed])


def _time_groups(tau, lam_y, lam_x, dtype, truncate: bool):
    """``[(start, stop, ky, kx)]`` over the times ``tau[1:]``: consecutive times sharing their mode counts."""
    n_times = len(tau) - 1
    if not truncate:
        return [(0, n_times, len(lam_y), len(lam_x))]
    ky, kx = _mode_counts(tau[1:], lam_y, dtype), _mode_counts(tau[1:], lam_x, dtype)
    changes = (ky[1:] != ky[:-1]) | (kx[1:] != kx[:-1])
    starts = np.flatnonzero(np.concatenate([[True], changes]))
    stops = np.append(starts[1:], n_times)
    return [(int(a), int(b), int(ky[a]), int(kx[a])) for a, b in zip(starts, stops, strict=True)]


def _decay(tau, lam, k, dtype):
    """``exp(tau lambda_j)``, ``(len(tau), k)``: float64 on the host where ``tau`` is concrete."""
    if is_concrete(tau):
        return jnp.asarray(np.exp(np.asarray(tau, np.float64)[:, None] * lam[None, :k]), dtype)
    return jnp.exp(tau.astype(dtype)[:, None] * jnp.asarray(lam[:k], dtype)[None, :])


class _Transforms:
    """Forward and (truncated) inverse DST-I / DCT-II of ``(H, W)`` fields.

    ``"auto"`` inverts with the dense basis matrices, truncated to the modes
    each time needs, at every size, and transforms ``p0`` forward densely up to
    ``linsolve.DENSE_TRANSFORM_MAX_SIZE`` and by FFT beyond: measured on the 2-core CPU
    (float32, T = 20, whole trajectory), dense against FFT both ways took
    0.6 / 1.8 / 8.0 / 73 ms against 2.7 / 24 / 71 / 345 ms at 128 / 256 / 512
    / 1024; the one forward transform cost the same both ways at 1024 (10 ms).
    """

    def __init__(self, shape, spacing, boundary, transform, dtype):
        (self.height, self.width), (hx, hy) = shape, spacing
        self.boundary, self.dtype = boundary, dtype
        self.lam_y = linsolve.laplacian_eigenvalues(self.height, hy, boundary)
        self.lam_x = linsolve.laplacian_eigenvalues(self.width, hx, boundary)
        self.forward_kind = linsolve.resolve_transform(transform, shape)
        self.kind = "fft" if transform == "fft" else "dense"  # of the inverse
        self.by = jnp.asarray(linsolve.basis_matrix(self.height, boundary), dtype)
        self.bx = jnp.asarray(linsolve.basis_matrix(self.width, boundary), dtype)

    def forward(self, field):
        if self.forward_kind == "fft":
            fy, _ = linsolve.fft_transform_pair(self.height, -2, self.boundary)
            fx, _ = linsolve.fft_transform_pair(self.width, -1, self.boundary)
            return fx(fy(field))
        return linsolve.matmul(linsolve.matmul(self.by, field), self.bx.T)

    def inverse(self, spectra):
        """``(B, ky, kx)`` coefficients of the slowest modes -> ``(B, H, W)`` fields."""
        ky, kx = spectra.shape[-2:]
        if self.kind == "fft":
            pad = [(0, 0)] * (spectra.ndim - 2) + [(0, self.height - ky), (0, self.width - kx)]
            _, iy = linsolve.fft_transform_pair(self.height, -2, self.boundary)
            _, ix = linsolve.fft_transform_pair(self.width, -1, self.boundary)
            return ix(iy(jnp.pad(spectra, pad)))
        # the small contraction first: the large one then needs no transpose of its (B, H, W) result
        rows = jnp.einsum("hk,...kl->...hl", self.by.T[:, :ky], spectra, precision=lax.Precision.HIGHEST)
        return linsolve.matmul(rows, self.bx[:kx, :])


class _Probe:
    """A one-probe estimate of the semi-discrete equation's normwise backward error.

    For ``w = S p0`` the spectral form gives ``dw/dt = B^T (Lambda C) B``
    exactly, which must equal the stencil's ``lap_h w``. The residual
    ``r = dw/dt - lap_h w`` is rounding when the transforms are right; its
    norm would cost a second inverse transform per time (measured: twice the
    whole solve), so a fixed Gaussian probe ``z`` estimates it instead
    (``E <z, r>^2 = ||r||^2``), using ``<z, lap_h w> = <lap_h z, w>``
    (``lap_h`` is symmetric for both boundaries) and ``<z, B^T X B> =
    <B z B^T, X>``: one extra reduction over ``w``.
    """

    def __init__(self, transforms: _Transforms, spacing, boundary):
        dtype = transforms.dtype
        z = np.random.default_rng(0).standard_normal((transforms.height, transforms.width))
        self.lap_z = stencil.laplacian(jnp.asarray(z, dtype), spacing, boundary)
        by = linsolve.basis_matrix(transforms.height, boundary)
        bx = linsolve.basis_matrix(transforms.width, boundary)
        lam = transforms.lam_y[:, None] + transforms.lam_x[None, :]
        self.weights = jnp.asarray((by @ z @ bx.T) * lam, dtype)
        self.operator_norm = float(np.max(-transforms.lam_y) + np.max(-transforms.lam_x))

    def backward_error(self, coefficients, w):
        """``|<z, dw/dt - lap_h w>| / (||lap_h|| max(||w||, floor))`` per time:
        ``(B, ky, kx)``, ``(B, H, W)`` -> ``(B,)``."""
        ky, kx = coefficients.shape[-2:]
        spectral = jnp.sum(self.weights[None, :ky, :kx] * coefficients, axis=(-2, -1))
        stencil_side = jnp.sum(self.lap_z[None] * w, axis=(-2, -1))
        # ||w|| = ||coefficients|| (orthonormal bases): no second pass over w; below the floor w is
        # rounding next to the boundary part and its subnormal entries are flushed (linsolve.norm_floor)
        floor = linsolve.norm_floor(w[0])
        scale = lax.stop_gradient(jnp.maximum(jnp.max(jnp.abs(coefficients), axis=(-2, -1)), floor))
        norm_w = jnp.linalg.norm(coefficients / scale[:, None, None], axis=(-2, -1)) * scale
        error = jnp.abs(spectral - stencil_side) / (self.operator_norm * jnp.maximum(norm_w, floor))
        return lax.stop_gradient(error)


def spectral_solve(m0, tau, spacing, boundary: str = "zero", transform: str = "auto"):
    """``m`` at the times ``tau`` of the zero-drift equation, exact in time.

    Args:
      m0: ``(H, W)`` initial log-density (float32 or float64).
      tau: ``(T+1,)`` values of ``int_0^(t_n) 1/2 g^2 dt`` with ``tau[0] = 0``
        (:func:`fpjax.solver.problem.diffusion_integral`); concrete (NumPy) values
        let each time keep only the modes above rounding, traced ones (when
        differentiating with respect to ``g``) use every mode.
      spacing: ``(hx, hy)``.
      boundary: ``"zero"`` or ``"reflect"``.
      transform: ``"dense"`` (basis matrices), ``"fft"`` or ``"auto"`` (the
        measured choice, :class:`_Transforms`).

    Returns:
      ``(m, residual)``: ``(T+1, H, W)`` with ``m[0] = m0``, and the
      ``(T,)`` normwise backward error of the semi-discrete equation at each
      ``t_n``, ``||dw/dt - lap_h w|| / (||lap_h|| ||w||)`` for ``w = S p0``,
      ``dw/dt`` from the spectral form and ``lap_h`` the stencil, estimated
      with one fixed Gaussian probe (:class:`_Probe`).
    """
    dtype, shape = m0.dtype, m0.shape
    transforms = _Transforms(shape, spacing, boundary, transform, dtype)
    c = _shift(m0)
    spectrum = transforms.forward(jnp.exp(m0 - c))
    truncate = is_concrete(tau) and transforms.kind == "dense"
    tau_dtype = tau if is_concrete(tau) else tau.astype(dtype)
    layer_y, layer_x = _boundary_layers(tau_dtype[1:], shape, spacing, boundary, dtype)
    probe = _Probe(transforms, spacing, boundary)
    m = jnp.zeros((len(tau),) + shape, dtype).at[0].set(m0)
    residuals = []
    for start, stop, ky, kx in _time_groups(tau, transforms.lam_y, transforms.lam_x, dtype, truncate):
        times = tau_dtype[1 + start : 1 + stop]
        decay_y = _decay(times, transforms.lam_y, ky, dtype)
        decay_x = _decay(times, transforms.lam_x, kx, dtype)
        coefficients = decay_y[:, :, None] * spectrum[None, :ky, :kx] * decay_x[:, None, :]
        w = transforms.inverse(coefficients)
        b_y, b_x = layer_y[start:stop, :, None], layer_x[start:stop, None, :]
        m = m.at[1 + start : 1 + stop].set(_log_density(c, b_y + b_x - b_y * b_x, w))  # in place: no concatenation
        residuals.append(probe.backward_error(coefficients, w))
    return m, jnp.concatenate(residuals)


# ----------------------------------------------------------------------------
# "density": backward Euler on p


def _homogeneous_operator(step, spacing, boundary):
    """``v -> v/dt - 1/2 g^2 lap_h v + div_h(f v)`` with homogeneous boundary values."""

    def matvec(v):
        return (
            step.c0 * v
            - step.c1 * stencil.laplacian(v, spacing, boundary)
            + stencil.flux_divergence(step.drift * v[None], spacing, boundary)
        )

    return matvec


def _boundary_source(shape, spacing, dtype):
    """``r`` with ``lap_h`` (ghost value 1) ``= lap_h`` (ghost 0) ``+ r``: ``1/h^2`` per edge a pixel touches."""
    return -stencil.laplacian(jnp.ones(shape, dtype), spacing, "zero")


def _backward_euler(x0, source, g_values, config: FPConfig, tol, maxiter):
    """``A_n x^n = x^(n-1)/dt + c1_n source`` for ``n = 1..T``.

    Returns ``(x (T+1, H, W), iterations (T,), relative residual (T,), normwise backward error (T,))``.
    """
    shape, dtype = x0.shape, x0.dtype
    spacing = config.grid_spacing(shape)
    precond_kind = linsolve.resolve_preconditioner(config.scheme.preconditioner, shape, config.scheme.name)
    helmholtz = (
        linsolve.make_helmholtz_inverse(shape, spacing, config.boundary, config.scheme.transform)
        if precond_kind == "dst"
        else None
    )

    def step(x_prev, inputs):
        t, g = inputs
        coefficients = step_coefficients(config, t, g, shape, dtype)
        matvec = _homogeneous_operator(coefficients, spacing, config.boundary)
        rhs = coefficients.c0 * x_prev + coefficients.c1 * source
        precond = None if helmholtz is None else (lambda r: helmholtz(r, coefficients.c0, coefficients.c1))
        norm = stencil.operator_norm_bound(coefficients.c0, coefficients.c1, coefficients.drift, spacing)
        x, iterations, residual = linsolve.linear_solve(
            matvec,
            rhs,
            x_prev,
            solver=config.scheme.solver,
            tol=tol,
            maxiter=maxiter,
            precond=precond,
            operator_norm=norm,
        )
        return x, (x, iterations, residual, linsolve.backward_error(matvec, x, rhs, norm))

    times = jnp.arange(1, config.T + 1, dtype=dtype) * config.dt
    _, (xs, iterations, residual, error) = lax.scan(step, x0, (times, g_values[1:].astype(dtype)))
    return jnp.concatenate([x0[None], xs]), iterations, residual, error


@functools.lru_cache(maxsize=4)  # each entry is a (T+1, H, W) trajectory: 416 MB in float32 at 255x255, T = 1600
def _float64_boundary_part(config: FPConfig, shape, g_values: tuple, dtype: str) -> np.ndarray:
    """The image-independent part ``u`` of ``"density"`` (``u^0 = 0``), solved in float64 once per grid and
    config, returned in ``dtype``."""
    with jax.enable_x64(True), jax.ensure_compile_time_eval():
        spacing = config.grid_spacing(shape)
        source = _boundary_source(shape, spacing, jnp.float64)
        u, *_ = _backward_euler(
            jnp.zeros(shape, jnp.float64), source, jnp.asarray(g_values, jnp.float64), config, 1e-13, None
        )
        return np.asarray(u).astype(dtype)


def density_solve(m0, g_values, config: FPConfig):
    """Backward Euler on ``p = exp(m)``: ``(m (T+1, H, W), linear_iterations, residual, backward_error)``,
    the last three ``(T,)``.

    ``p^n = u^n + v^n``: the boundary part ``u`` (zero boundary only: ``p = 1``
    outside) does not depend on the image and is computed once per grid and
    configuration in float64 when ``g_values`` are concrete (a NumPy array);
    the image's part ``v`` (``v^0 = p0``) takes one preconditioned Krylov solve
    per step in ``m0``'s dtype. ``residual`` is the relative residual of those
    solves, ``backward_error`` their normwise backward error (rounding level for
    an exact solve even where the step is ill-conditioned: 1e-5 relative
    residual is rounding for float32 at 256x256). With traced ``g_values`` (differentiating with respect to ``g``)
    ``u`` is solved in ``m0``'s dtype too, which in float32 costs accuracy
    where ``p`` is small (a warning says so).
    """
    shape, dtype = m0.shape, m0.dtype
    c = _shift(m0)
    zeros = jnp.zeros(shape, dtype)
    v, iterations, residual, error = _backward_euler(
        jnp.exp(m0 - c), zeros, g_values, config, config.scheme.tol, config.scheme.maxiter
    )
    if config.boundary == "reflect":
        u = jnp.zeros_like(v)
    elif is_concrete(g_values):
        g64 = tuple(float(x) for x in np.asarray(g_values, np.float64))
        u = jnp.asarray(_float64_boundary_part(config, tuple(shape), g64, jnp.dtype(dtype).name))
    else:
        if dtype == jnp.float32:
            warnings.warn(
                "scheme='density' with a traced g in float32: the boundary part is solved in float32, which "
                "loses accuracy where p is small; use float64 (jax.config.update('jax_enable_x64', True)) "
                "for accurate derivatives with respect to g",
                RuntimeWarning,
                stacklevel=4,
            )
        source = _boundary_source(shape, config.grid_spacing(shape), dtype)
        u, *_ = _backward_euler(zeros, source, g_values, config, config.scheme.tol, config.scheme.maxiter)
    return _log_density(c, u, v).at[0].set(m0), iterations, residual, error


# ----------------------------------------------------------------------------
# Entry point


def _float64_schedule(config: FPConfig, g):
    """``g(t_n)`` as float64 NumPy where ``g`` (or ``config.g``) is concrete, else traced in ``dtype``."""
    with jax.enable_x64(True), jax.ensure_compile_time_eval():
        return np.asarray(diffusion_schedule(config, g, jnp.float64), np.float64)


def _finite_steps(m):
    return jnp.all(jnp.isfinite(m[1:]), axis=(-2, -1))


def solve(m0, g, config: FPConfig) -> FPSolution:
    """The ``"density"`` or ``"spectral"`` solve of one ``(H, W)`` field (jittable, vmappable).

    ``g``: ``None`` (``config.g``) or an override (scalar or ``(T+1,)``,
    possibly traced). See :class:`fpjax.FPSolution` for what the statistics
    mean for each scheme.
    """
    dtype, T = m0.dtype, config.T
    eps = float(jnp.finfo(dtype).eps)
    spacing = config.grid_spacing(m0.shape)
    source = config.g if g is None else g
    if config.scheme.name == "spectral":
        tau = diffusion_integral(config, g, dtype)
        m, residual = spectral_solve(m0, tau, spacing, config.boundary, config.scheme.transform)
        step_status = status.first(
            [
                (Status.NON_FINITE, ~_finite_steps(m)),
                (Status.SPECTRAL_INACCURATE, ~(residual <= SPECTRAL_RESIDUAL_EPS * eps)),
            ]
        )
        zeros = jnp.zeros((T,), jnp.int32)
        return FPSolution(m, zeros, zeros, residual, step_status, config.boundary, spacing)
    if config.scheme.name != "density":
        raise ValueError(f"linear_fp solves scheme 'density' or 'spectral', got {config.scheme.name!r}")
    g_values = _float64_schedule(config, g) if is_concrete(source) else diffusion_schedule(config, g, dtype)
    m, iterations, residual, error = density_solve(m0, g_values, config)
    maxiter = 10 * m0.size if config.scheme.maxiter is None else config.scheme.maxiter
    step_status = status.first(
        [
            (Status.DENSITY_NOT_POSITIVE, jnp.any(m[1:] == -jnp.inf, axis=(-2, -1))),
            (Status.NON_FINITE, ~_finite_steps(m)),
        ]
    )
    krylov = status.krylov(error <= max(10 * config.scheme.tol, 100 * eps), iterations, maxiter)
    step_status = jnp.where(step_status == Status.CONVERGED, krylov, step_status)
    return FPSolution(m, jnp.ones((T,), jnp.int32), iterations, lax.stop_gradient(residual), step_status,
                      config.boundary, spacing)  # fmt: skip
