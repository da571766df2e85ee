"""The Fokker-Planck problem on a pixel grid: its settings, its solution type and its coefficients.

Every solution scheme (:mod:`fpjax.solver.log_density` for the papers' log-density
scheme, :mod:`fpjax.solver.linear` for the linear density forms) reads the same
:class:`FPConfig` and returns the same :class:`FPSolution`; this module is the
layer they share, so that neither imports the other's internals.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import typing
import warnings
from collections.abc import Callable
from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from fpjax.solver import linsolve, quadrature, scores, stencil
from fpjax.solver.status import Status, describe

# Each option's choices are written once, as the Literal type that annotates its field (the command line reads
# its choices from these annotations); the tuples are the same values for membership checks.
Linearization = Literal["picard", "newton"]
LINEARIZATIONS = typing.get_args(Linearization)
Advection = Literal["central", "upwind"]
ADVECTIONS = typing.get_args(Advection)
Predictor = Literal["previous", "extrapolate"]
PREDICTORS = typing.get_args(Predictor)


class ConvergenceError(RuntimeError):
    """A Fokker-Planck step did not converge (raised by the non-jitted entry points)."""


def _scalar(value):
    """``value`` as a Python ``int`` or ``float`` if it is one real number (Python, NumPy or a concrete
    JAX scalar; not a bool), else ``None``."""
    if isinstance(value, bool | np.bool_) or isinstance(value, jax.core.Tracer) or np.ndim(value) != 0:
        return None
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        return None
    if array.dtype.kind in "iu":
        return int(array)
    return float(array) if array.dtype.kind == "f" else None


def _count(name: str, value, hint: str) -> int:
    """A positive integer setting: integer-like means an integer (Python, NumPy, JAX) or a float with an
    integer value (``10.0``); returned as ``int`` so that the config stays hashable and static."""
    number = _scalar(value)
    if number is None or not math.isfinite(number) or number != int(number) or number < 1:
        raise ValueError(f"{name} must be a positive integer ({hint}), got {value!r}")
    return int(number)


def _real(name: str, value, hint: str) -> float:
    number = _scalar(value)
    if number is None or not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number ({hint}), got {value!r}")
    return float(number)


def _tolerance(name: str, value, above, hint: str) -> float:
    """A tolerance in ``(0, 1)`` (``above=0.0``) or ``[0, 1)`` (``above=None``: 0 runs every iteration)."""
    number = _real(name, value, hint)
    low_ok = number > 0 if above is not None else number >= 0
    if not (low_ok and number < 1):
        interval = "(0, 1)" if above is not None else "[0, 1) (0: run max_outer iterations)"
        raise ValueError(f"{name} must lie in {interval} ({hint}), got {value!r}")
    return number


def check_diffusion(g, T: int | None = None):
    """``g`` as a float or a tuple of ``T+1`` floats, each finite and ``>= 0``; a function is kept as it is.

    The one check of a diffusion given as ``FPConfig.g`` is (a scalar, ``T+1`` values, a function of ``t``):
    :class:`FPConfig` and :func:`fpjax.diffusion.sde.from_g` call it, so both refuse the same values with the
    same message. ``T=None`` accepts any number of values (at least one).
    """
    if callable(g):
        return g
    hint = "the diffusion coefficient, e.g. g=0.5; 0 means no diffusion"
    if isinstance(g, jax.core.Tracer):
        raise ValueError(
            "FPConfig.g is traced: it is static configuration, build it from concrete values "
            "(to differentiate with respect to g, pass it to fpjax.solve as g=)"
        )
    if np.ndim(g) == 0:
        number = _real("FPConfig.g", g, hint)
        if number < 0:
            raise ValueError(f"FPConfig.g must be >= 0 ({hint}; only g^2 enters), got {g!r}")
        return number
    values = np.asarray(g)
    if values.dtype.kind not in "iuf" or values.ndim != 1:
        raise ValueError(
            f"FPConfig.g must be a number, T+1 numbers or a function of t ({hint}), "
            f"got a {type(g).__name__} of shape {values.shape} and dtype {values.dtype}"
        )
    values = tuple(float(v) for v in values)
    if (len(values) == 0) if T is None else (len(values) != T + 1):
        count = "at least one" if T is None else f"T+1 = {T + 1}"
        raise ValueError(f"FPConfig.g has {len(values)} values; give one per time t_0..t_T, i.e. {count}")
    bad = [i for i, v in enumerate(values) if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise ValueError(
            f"FPConfig.g must be finite and >= 0 at every time ({hint}); "
            f"{len(bad)} values are not, the first g[{bad[0]}] = {values[bad[0]]}"
        )
    return values


def _spacing(spacing) -> tuple[float, float]:
    hint = "(hx, hy), or None for (1/W, 1/H)"
    values = list(spacing) if isinstance(spacing, tuple | list | np.ndarray) else ()
    if len(values) != 2:
        raise ValueError(f"FPConfig.spacing must be two finite positive numbers {hint}, got {spacing!r}")
    numbers_ = tuple(_real("FPConfig.spacing", v, hint) for v in values)
    if min(numbers_) <= 0:
        raise ValueError(f"FPConfig.spacing must be two finite positive numbers {hint}, got {spacing!r}")
    return numbers_


def _choice(owner: str, name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"{owner}.{name} must be one of {options}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Krylov:
    """The options of a scheme's linear solves (shared by :class:`LogDensity` and :class:`Density`).

    Attributes:
      solver: ``"bicgstab"`` (``jax.scipy``), ``"bicgstab_counted"`` (same recurrence, reports iteration
        counts; not differentiable) or ``"gmres"``.
      tol: relative tolerance of each linear solve, in ``(0, 1)``.
      maxiter: the cap on Krylov iterations per solve (a positive integer; ``None``: ``10 H W``).
      preconditioner: ``"dst"`` (the exact fast inverse of ``1/dt - 1/2 g^2 lap``: Krylov iterations per
        solve stay near 2 from 32x32 to 256x256), ``"none"``, or ``"auto"`` (``"dst"`` on accelerators and
        for grids of 128 and more a side, ``"none"`` for smaller grids on a CPU, where the transforms cost
        more than the iterations they save: measured by ``fpjax bench solver``; ``"dst"`` at every size for
        :class:`Density`, where it is the exact inverse of the zero-drift step). The papers use a direct
        solver; the preconditioner never changes the solution.
      transform: how the DST/DCT transforms of the ``"dst"`` preconditioner are applied: ``"auto"``,
        ``"dense"`` or ``"fft"`` (:func:`fpjax.solver.linsolve.resolve_transform`).
    """

    solver: linsolve.Solver = "bicgstab"
    tol: float = 1e-6
    maxiter: int | None = None
    preconditioner: linsolve.Preconditioner = "auto"
    transform: linsolve.Transform = "auto"

    def __post_init__(self):
        owner = type(self).__name__
        if self.maxiter is not None:
            object.__setattr__(self, "maxiter", _count(f"{owner}.maxiter", self.maxiter, "or None for 10 H W"))
        _choice(owner, "solver", self.solver, linsolve.SOLVERS)
        _choice(owner, "preconditioner", self.preconditioner, linsolve.PRECONDITIONERS)
        _choice(owner, "transform", self.transform, linsolve.TRANSFORMS)
        object.__setattr__(self, "tol", _tolerance(f"{owner}.tol", self.tol, 0.0, "e.g. tol=1e-6"))


@dataclasses.dataclass(frozen=True)
class LogDensity(Krylov):
    """The papers' scheme: backward Euler on ``m = log p``, a nonlinear equation per step solved by an outer
    (Picard or Newton) iteration of preconditioned linear solves (:mod:`fpjax.solver.log_density`).

    Attributes:
      linearization: ``"picard"`` (papers' semi-explicit iteration) or ``"newton"`` (damped, falling back to
        a Picard update when the line search fails).
      advection: ``"central"`` (papers' scheme) or ``"upwind"`` (keeps the step matrix an M-matrix where
        advection dominates).
      predictor: where the outer iteration of step ``n`` starts: ``"extrapolate"`` (default:
        ``2 m^(n-1) - m^(n-2)``, second order in ``dt``, used where its nonlinear residual is smaller than
        that of ``m^(n-1)``) or ``"previous"`` (``m^(n-1)``, the papers' and DESIGN.md's choice). Both
        iterate to the same discrete equation ``F(m) = 0``; the extrapolated start needs fewer outer
        iterations (``fpjax bench solver``: 3.2 instead of 3.8 per step at 32x32, 3.3 instead of 4.0 at
        64x64), which is why it is the default.
      outer_tol: the outer iteration stops when ``||m_k - m_(k-1)|| / max(||m_k||, floor) <= outer_tol``
        (``floor``: :func:`fpjax.solver.linsolve.norm_floor`), in ``[0, 1)`` (0 runs ``max_outer``
        iterations and reports the step unconverged unless it is exact).
      max_outer: the cap on outer iterations per step (a positive integer).
      solver, tol, maxiter, preconditioner, transform: the linear solves' options (:class:`Krylov`).
    """

    linearization: Linearization = "picard"
    advection: Advection = "central"
    predictor: Predictor = "extrapolate"
    outer_tol: float = 1e-5
    max_outer: int = 50

    name: typing.ClassVar[str] = "log_density"

    def __post_init__(self):
        super().__post_init__()
        _choice("LogDensity", "linearization", self.linearization, LINEARIZATIONS)
        _choice("LogDensity", "advection", self.advection, ADVECTIONS)
        _choice("LogDensity", "predictor", self.predictor, PREDICTORS)
        object.__setattr__(self, "max_outer", _count("LogDensity.max_outer", self.max_outer, "e.g. max_outer=50"))
        outer_tol = _tolerance("LogDensity.outer_tol", self.outer_tol, None, "e.g. outer_tol=1e-5")
        object.__setattr__(self, "outer_tol", outer_tol)


@dataclasses.dataclass(frozen=True)
class Density(Krylov):
    """Backward Euler on ``p = exp(m)``, whose equation ``p_t = -div(f p) + 1/2 g^2 lap p`` is linear: one
    preconditioned linear solve per step, no outer iteration; any drift, both boundaries; central
    differences of the flux ``f p`` (:mod:`fpjax.solver.linear`).

    Attributes:
      solver, tol, maxiter, preconditioner, transform: the linear solves' options (:class:`Krylov`).
    """

    name: typing.ClassVar[str] = "density"


@dataclasses.dataclass(frozen=True)
class Spectral:
    """Zero drift only: ``p`` then solves the heat equation, which DST-I (zero boundary) or DCT-II (reflect)
    diagonalises for the five-point Laplacian, so ``m`` at every ``t_n`` is exact in time (no time-stepping
    error at all): one forward transform of ``p0`` and one inverse transform per time. ``g`` enters only
    through ``tau(t) = int_0^t 1/2 g^2``, integrated exactly for the rule :func:`diffusion_integral`
    documents (:mod:`fpjax.solver.linear`).

    Attributes:
      transform: how the transforms are applied: ``"auto"``, ``"dense"`` or ``"fft"``
        (:func:`fpjax.solver.linsolve.resolve_transform`).
    """

    transform: linsolve.Transform = "auto"

    name: typing.ClassVar[str] = "spectral"

    def __post_init__(self):
        _choice("Spectral", "transform", self.transform, linsolve.TRANSFORMS)


SCHEME_TYPES = (LogDensity, Density, Spectral)
"""The schemes, each a frozen dataclass holding only the options that apply to it."""
Scheme = LogDensity | Density | Spectral
SchemeName = Literal["log_density", "density", "spectral"]
SCHEMES = typing.get_args(SchemeName)
"""The schemes' names (``FPConfig(scheme="density")`` is shorthand for ``FPConfig(scheme=Density())``)."""


def scheme_named(name) -> Scheme:
    """The default scheme object of ``name`` (one of :data:`SCHEMES`)."""
    for cls in SCHEME_TYPES:
        if name == cls.name:
            return cls()
    raise ValueError(
        f"FPConfig.scheme must be a scheme object ({', '.join(c.__name__ for c in SCHEME_TYPES)}) "
        f"or one of the names {SCHEMES}, got {name!r}"
    )


@dataclasses.dataclass(frozen=True)
class FPConfig:
    """The Fokker-Planck problem and the scheme that solves it; hashable, usable as a static argument.

    The problem (``T``, ``g``, ``drift``, ``boundary``, ``spacing``) is apart from the method
    (``scheme``: a :class:`LogDensity`, :class:`Density` or :class:`Spectral` object, each holding only the
    options that apply to it). Every value is checked here and in the scheme: a bad one raises a one-line
    ``ValueError`` naming the field and what to pass. Counts are integer-like (a Python, NumPy or JAX
    integer, or a float with an integer value such as ``10.0``) and stored as ``int``; numbers are stored as
    Python floats and sequences as tuples, so that equal settings hash equally.

    Attributes:
      T: number of time steps (a positive integer); ``dt = 1/T``, ``t_n = n dt``.
      g: diffusion coefficient, finite and ``>= 0`` (only ``g^2`` enters; ``g = 0``
        is no diffusion: ``m`` stays ``m0`` under zero drift): a scalar, a length
        ``T+1`` sequence (value at each ``t_n``) or a function of ``t`` (traceable
        with ``jax.numpy``; not checked). To differentiate with respect to ``g``,
        pass it to :func:`fpjax.solve` as ``g=`` instead.
      drift: ``None`` (zero drift) or a traceable function ``t -> (f_x, f_y)``
        returning fields broadcastable to ``(H, W)``.
      boundary: ``"zero"`` (papers' zero padding: ``m = 0``, i.e. ``p = 1``,
        outside the image) or ``"reflect"`` (zero flux).
      spacing: ``(hx, hy)``, finite and positive; default ``(1/W, 1/H)`` (the papers' text; their
        script uses ``1/(H-1)``).
      scheme: how the equation is solved, every scheme returning the same :class:`FPSolution`:
        :class:`LogDensity` (default, the papers' scheme: backward Euler on ``m = log p`` with an outer
        Picard or Newton iteration), :class:`Density` (backward Euler on the linear equation of
        ``p = exp(m)``: one linear solve per step) or :class:`Spectral` (zero drift: exact in time). A name
        (``"log_density"``, ``"density"``, ``"spectral"``) is shorthand for that scheme's defaults.
    """

    T: int = 100
    g: float | tuple | Callable = 0.5
    drift: Callable | None = None
    boundary: stencil.Boundary = "zero"
    spacing: tuple | None = None
    scheme: Scheme = LogDensity()

    def __post_init__(self):
        object.__setattr__(self, "T", _count("FPConfig.T", self.T, "the number of time steps, e.g. T=100"))
        _choice("FPConfig", "boundary", self.boundary, stencil.BOUNDARIES)
        if not isinstance(self.scheme, SCHEME_TYPES):
            object.__setattr__(self, "scheme", scheme_named(self.scheme))
        if isinstance(self.scheme, Spectral) and self.drift is not None:
            raise ValueError(
                "FPConfig(scheme=Spectral()) solves the zero-drift equation exactly; "
                "with a drift use scheme=Density() (or LogDensity())"
            )
        if self.drift is not None and not callable(self.drift):
            raise ValueError(f"FPConfig.drift must be None or a function t -> (f_x, f_y), got {self.drift!r}")
        object.__setattr__(self, "g", check_diffusion(self.g, self.T))
        if self.spacing is not None:
            object.__setattr__(self, "spacing", _spacing(self.spacing))

    @property
    def dt(self) -> float:
        return 1.0 / self.T

    def grid_spacing(self, shape) -> tuple[float, float]:
        """``(hx, hy)`` for a field of shape ``(H, W)``."""
        height, width = shape[-2:]
        return self.spacing if self.spacing is not None else (1.0 / width, 1.0 / height)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FPSolution:
    """Solution of :func:`fpjax.solve`, :func:`fpjax.solve_image` or :func:`fpjax.solve_images`; a pytree, so
    it passes through ``jit`` and ``vmap``. The layouts are in ``docs/conventions.md``.

    Attributes:
      m: ``(T+1, H, W)`` log-density trajectory of one field, ``m[0] = m0`` (:func:`fpjax.solve`); an image's
        keeps its channels last, ``(T+1, H, W, C)`` (``(N, T+1, H, W, C)`` from :func:`fpjax.solve_images`).
        The statistics below are per field, ``(T,)`` (an image's ``(C, T)``, a batch's ``(N, C, T)``).
      outer_iterations: ``(T,)`` int: outer iterations of each step
        (``"log_density"``); 1 for ``"density"`` (one linear solve, nothing
        iterates outside it); 0 for ``"spectral"`` (nothing iterates).
      linear_iterations: ``(T,)`` int: Krylov iterations of the step, summed
        over its outer iterations (``-1`` where the solver does not count
        them); 0 for ``"spectral"``.
      residual: ``(T,)`` relative residual of each step:

        * ``"log_density"``: the nonlinear step residual ``||F(m^n)|| / ||m^(n-1)/dt||``;
        * ``"density"``: the linear step residual ``||A v^n - v^(n-1)/dt|| / ||v^(n-1)/dt||``
          of the image's part ``v`` of ``p = u + v`` (the boundary part ``u``
          does not depend on the image and is computed in float64);
        * ``"spectral"``: the residual of the semi-discrete equation at
          ``t_n``, ``||dp/dt - 1/2 g^2 lap_h p|| / ||1/2 g^2 lap_h p||``, with
          ``dp/dt`` from the spectral form and ``lap_h`` the five-point
          stencil: a check of the transforms (rounding level when they are right).

      status: ``(T,)`` int32: why each step did or did not converge, a
        :class:`fpjax.solver.status.Status` code (``0`` is ``CONVERGED``; ``describe(code)`` says why and what to
        try). ``"log_density"``: the outer iteration met ``outer_tol`` within ``max_outer``
        (else ``OUTER_ITERATION_CAP``) and the last linear solve's normwise backward error is within
        ``max(10 tol, 100 eps)`` (else a ``KRYLOV_*`` code); ``"density"``: the linear solve's backward error
        is within ``max(10 tol, 100 eps)``, and ``p > 0`` (else ``DENSITY_NOT_POSITIVE``); ``"spectral"``:
        the residual is within ``SPECTRAL_RESIDUAL_EPS`` machine epsilons (:mod:`fpjax.solver.linear`; else
        ``SPECTRAL_INACCURATE``); every scheme: everything finite (else ``NON_FINITE``). Every relative
        measure is scaled against underflow and taken against ``max(||x||, sqrt(H W) tiny / eps)``
        (:func:`fpjax.solver.linsolve.norm_floor`), so a field that decays towards ``0`` (the zero
        boundary's steady state) is judged to rounding, never reported unconverged for being small.
      boundary, spacing: the grid the solve ran on (static, not leaves): ``config.boundary`` and
        ``(hx, hy)``. :meth:`score` and :meth:`pixel_score` read the boundary from here, so a
        ``"reflect"`` solve's scores use the reflect stencil without being told.
      channel_axis: the layout of ``m`` (static): ``None``, a field's (grid on the last two axes), or ``-1``,
        an image's (channels last, grid on axes ``(-3, -2)``). :meth:`score` and :meth:`pixel_score` read it.

    Properties: ``converged`` (``status == 0``, ``(T,)`` bool) and ``outcome`` (the solve's status: the
    first failed step's code, ``0`` when every step converged; ``()`` int32, ``(...)`` under ``vmap``).
    """

    m: jax.Array
    outer_iterations: jax.Array
    linear_iterations: jax.Array
    residual: jax.Array
    status: jax.Array
    boundary: str = dataclasses.field(default="zero", metadata=dict(static=True))
    spacing: tuple = dataclasses.field(default=(1.0, 1.0), metadata=dict(static=True))
    channel_axis: int | None = dataclasses.field(default=None, metadata=dict(static=True))

    @property
    def converged(self) -> jax.Array:
        """``(T,)`` bool (``(..., T)`` batched): ``status == CONVERGED``."""
        return self.status == Status.CONVERGED

    @property
    def outcome(self) -> jax.Array:
        """The solve's status: the code of its first failed step, ``CONVERGED`` (0) if none; over the last axis."""
        failed = self.status != Status.CONVERGED
        index = jnp.argmax(failed, axis=-1)
        return jnp.take_along_axis(self.status, index[..., None], axis=-1)[..., 0]

    def score(self):
        """Score ``grad m`` in pixel units on this solve's boundary and in its layout (:func:`fpjax.score`):
        ``(..., H, W) -> (..., H, W, 2)`` for a field, ``(..., H, W, C) -> (..., H, W, C, 2)`` for an image."""
        return scores.score(self.m, self.boundary, channel_axis=self.channel_axis)

    def pixel_score(self, component: str = "sum"):
        """Scalar pixel score on this solve's boundary and in its layout (:func:`fpjax.pixel_score`): the shape
        of ``m``."""
        return scores.pixel_score(self.m, component, self.boundary, channel_axis=self.channel_axis)


class StepCoefficients(NamedTuple):
    """Coefficients of one backward-Euler step: ``c0 = 1/dt``, ``c1 = g^2/2``, drift ``(2, H, W)``, ``div f``."""

    c0: jax.Array
    c1: jax.Array
    drift: jax.Array
    div_drift: jax.Array


def diffusion_schedule(config: FPConfig, g=None, dtype=jnp.float32):
    """``g(t_n)`` for ``n = 0..T`` as a ``(T+1,)`` array.

    ``g`` overrides ``config.g`` (a scalar or ``(T+1,)`` array, possibly
    traced: this is the handle for differentiating with respect to ``g``).
    """
    source = config.g if g is None else g
    times = jnp.arange(config.T + 1, dtype=dtype) * config.dt
    if callable(source):
        values = source(times)
    else:
        values = jnp.asarray(source, dtype)
    values = jnp.asarray(values, dtype)
    if values.ndim == 0:
        return jnp.broadcast_to(values, times.shape)
    if values.shape != times.shape:
        raise ValueError(
            f"g must be a scalar or have shape ({config.T + 1},) (one value per t_0..t_T), got {values.shape}"
        )
    return values


def is_concrete(x) -> bool:
    """Whether no leaf of the pytree ``x`` is a tracer (its values can be read now, e.g. in float64)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def diffusion_integral(config: FPConfig, g=None, dtype=jnp.float32):
    """``tau_n = int_0^(t_n) 1/2 g(t)^2 dt`` for ``n = 0..T``: ``(T+1,)``, ``tau_0 = 0``.

    The rule, by the form of ``g`` (``config.g``, or the override ``g``):

    * a scalar: ``tau_n = 1/2 g^2 t_n`` (exact);
    * ``T+1`` values: ``g`` is taken piecewise linear between the ``t_n``,
      whose ``1/2 g^2`` integrates exactly to ``dt (g_a^2 + g_a g_b + g_b^2) / 6``
      over each interval;
    * a function of ``t``: 8-point Gauss-Legendre on each step, split into pieces no
      longer than 1/32 (:mod:`fpjax.solver.quadrature`, where the measurement that
      chose the rule is; exact for ``g^2`` polynomial of degree up to 15 per piece).

    A concrete ``g`` gives a float64 NumPy array (so that derived boundary
    terms can be computed in float64); a traced one a ``dtype`` array.
    """
    source = config.g if g is None else g
    if is_concrete(source):
        with jax.enable_x64(True), jax.ensure_compile_time_eval():
            return np.asarray(_integral(config, source, jnp.float64), np.float64)
    return _integral(config, source, dtype)


def _integral(config: FPConfig, source, dtype):
    dt = config.dt
    if callable(source):
        starts = jnp.arange(config.T, dtype=dtype) * dt
        g = lambda t: jnp.asarray(source(t), dtype)  # noqa: E731
        steps = quadrature.integral_of_g_squared(g, starts, dt, quadrature.pieces_for(dt), dtype)
        return jnp.concatenate([jnp.zeros((1,), dtype), jnp.cumsum(0.5 * steps)])
    values = jnp.asarray(source, dtype)
    if values.ndim == 0:
        return 0.5 * values**2 * jnp.arange(config.T + 1, dtype=dtype) * dt
    return 0.5 * quadrature.piecewise_linear_integrals(diffusion_schedule(config, values, dtype), dt)


def drift_fields(config: FPConfig, t, shape, dtype, spacing=None):
    """Drift ``(2, H, W)`` (component 0 = x) at time ``t`` and its central divergence ``(H, W)``."""
    spacing = config.grid_spacing(shape) if spacing is None else spacing
    if config.drift is None:
        drift = jnp.zeros((2,) + tuple(shape), dtype)
    else:
        drift = jnp.stack([jnp.asarray(f, dtype) for f in _drift_pair(config.drift(t), tuple(shape))])
    return drift, stencil.divergence(drift, spacing, config.boundary)


def _drift_pair(value, shape):
    """The two drift components broadcast to ``shape``, or a ``ValueError`` naming the drift and the shapes."""
    hint = f"FPConfig.drift(t) must return two fields (f_x, f_y), each broadcastable to the grid (H, W) = {shape}"
    if hasattr(value, "shape") and jnp.ndim(value) >= 1 and jnp.shape(value)[0] == 2:
        value = (value[0], value[1])  # a (2, ...) array: its two components
    if not isinstance(value, tuple | list) or len(value) != 2:
        kind = f"{len(value)} values" if isinstance(value, tuple | list) else f"a {type(value).__name__}"
        kind = f"an array of shape {jnp.shape(value)}" if hasattr(value, "shape") else kind
        raise ValueError(f"{hint}; it returned {kind}")
    shapes = [jnp.shape(f) for f in value]
    try:
        return [jnp.broadcast_to(f, shape) for f in value]
    except (ValueError, TypeError):
        raise ValueError(f"{hint}; it returned fields of shapes {shapes[0]} and {shapes[1]}") from None


def step_coefficients(config: FPConfig, t, g, shape, dtype) -> StepCoefficients:
    """Coefficients of the step ending at time ``t`` with diffusion ``g`` (a scalar)."""
    drift, div_drift = drift_fields(config, t, shape, dtype)
    return StepCoefficients(jnp.asarray(1.0 / config.dt, dtype), 0.5 * g**2, drift, div_drift)


def check_solution(solution: FPSolution, config: FPConfig, on_failure: str = "raise") -> FPSolution:
    """Raise :class:`ConvergenceError` (or warn) naming the first step that failed and why.

    ``on_failure``: ``"raise"``, ``"warn"`` or ``"ignore"``. Concrete solutions are checked here, with a
    message naming the step, its status (:mod:`fpjax.solver.status`) and what to try. Under ``jit``, ``vmap``
    or ``grad`` the statistics are traced: ``"raise"`` then raises at run time through ``equinox.error_if``
    (an ``EqxRuntimeError`` naming the first failed status code; ``"warn"`` cannot warn from inside a
    transformation and checks nothing), so a failure never passes silently under either; read
    ``solution.status`` to handle failures yourself with ``"ignore"``.
    """
    if on_failure not in ("raise", "warn", "ignore"):
        raise ValueError(f"on_failure must be 'raise', 'warn' or 'ignore', got {on_failure!r}")
    if on_failure == "ignore":
        return solution
    if isinstance(solution.status, jax.core.Tracer):
        if on_failure == "raise":
            failed = jnp.any(solution.status != Status.CONVERGED)
            message = (
                f"Fokker-Planck solve (scheme={config.scheme.name!r}) did not converge: a step's status is not "
                "CONVERGED (fpjax.solver.status.Status); pass on_failure='ignore' and read solution.status to see which"
            )
            m = eqx.error_if(solution.m, failed, message)
            return dataclasses.replace(solution, m=m)
        return solution
    step_status = np.asarray(solution.status)
    failed = step_status != Status.CONVERGED
    if not failed.any():
        return solution
    bad = np.argwhere(failed)[0]
    n = int(bad[-1]) + 1
    index = tuple(int(i) for i in bad)
    message = (
        f"Fokker-Planck solve (scheme={config.scheme.name!r}) did not converge at step n={n} (t={n * config.dt:.4g})"
        + (f" of batch member {index[:-1]}" if len(index) > 1 else "")
        + f": {describe(step_status[index])}. {int(np.asarray(solution.outer_iterations)[index])} outer iterations"
        + (f" (max_outer={config.scheme.max_outer})" if isinstance(config.scheme, LogDensity) else "")
        + f", relative residual {float(np.asarray(solution.residual)[index]):.3g}; "
        f"{int(failed.sum())} of {failed.size} steps failed."
    )
    if on_failure == "raise":
        raise ConvergenceError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    return solution


FUNCTION_DIGITS = 9
"""Significant digits of a callable ``g``'s or drift's values that :func:`function_digest` keeps: the same
function evaluated by another process, or another machine whose last bits differ, gives the same digest."""


def function_digest(config: FPConfig, shape) -> dict:
    """What identifies ``config``'s callable ``g`` and ``drift`` across processes (a store's metadata records
    this instead of the functions' ``repr``, which holds a memory address): for each one that is a function, a
    SHA-256 of its values at every time the solvers read it, in float64, rounded to :data:`FUNCTION_DIGITS`
    significant digits. Two functions are "the same" when they agree there: ``g`` at ``t_n`` (``n = 0..T``)
    and at the Gauss-Legendre nodes of every step (the spectral scheme's quadrature,
    :mod:`fpjax.solver.quadrature`); the drift ``(f_x, f_y)`` on the ``(H, W)`` grid at every ``t_n``. ``{}``
    when neither is a function."""
    recorded = {}
    with jax.enable_x64(True), jax.ensure_compile_time_eval():
        if callable(config.g):
            times = jnp.arange(config.T + 1, dtype=jnp.float64) * config.dt
            nodes, _ = quadrature.unit_rule(quadrature.pieces_for(config.dt))  # where diffusion_integral reads g
            inner = (times[:-1, None] + jnp.asarray(nodes * config.dt)[None, :]).ravel()
            values = jnp.concatenate([times, inner])
            recorded["g"] = _values_digest(jnp.broadcast_to(jnp.asarray(config.g(values), jnp.float64), values.shape))
        if config.drift is not None:
            times = jnp.arange(config.T + 1, dtype=jnp.float64) * config.dt
            fields = jax.vmap(lambda t: drift_fields(config, t, tuple(shape), jnp.float64)[0])(times)
            recorded["drift"] = _values_digest(fields)
    return recorded


def _values_digest(values) -> str:
    """SHA-256 of ``values`` rounded to :data:`FUNCTION_DIGITS` significant digits (their decimal mantissas and
    exponents, so that the rounding is exact), with the shape."""
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    values = np.where(finite, values, 0.0)  # non-finite values enter through the mask
    nonzero = values != 0
    exponent = np.where(nonzero, np.floor(np.log10(np.abs(np.where(nonzero, values, 1.0)))), 0).astype(np.int64)
    mantissa = np.round(values * 10.0 ** (FUNCTION_DIGITS - 1 - exponent)).astype(np.int64)
    carried = np.abs(mantissa) >= 10**FUNCTION_DIGITS  # 9.9999999996 rounds up to 10.00000000: one digit more
    mantissa, exponent = np.where(carried, mantissa // 10, mantissa), exponent + carried
    payload = mantissa.tobytes() + exponent.tobytes() + finite.tobytes() + str(values.shape).encode()
    return "sha256:" + hashlib.sha256(payload).hexdigest()
