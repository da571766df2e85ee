"""The forward SDEs: one abstraction for every part that needs the diffusion process.

A forward SDE ``dx = f(x, t) dt + g(t) dW`` on ``t in [0, 1]`` with a Gaussian transition kernel::

    x_t = mean_scale(t) x_0 + sqrt(variance(t)) z,        z ~ N(0, I)

Modelled on score_sde's ``sde_lib.SDE``: an :class:`SDE` is a frozen dataclass (hashable: a static argument of
``jit``) with

* ``g(t)``: the diffusion, vectorised over ``t``;
* ``drift(x, t)``: the drift ``f``, or ``None`` for a variance-exploding SDE; ``t`` a scalar or an array
  broadcastable against ``x``;
* ``mean_scale(t)``, ``variance(t)``: the transition kernel;
* from those, :meth:`SDE.marginal` (score_sde's ``marginal_prob``), :meth:`SDE.prior_sampling` and
  :meth:`SDE.prior_logp`, and the module's :func:`perturb`.

fpjax's own SDE is the one its Fokker-Planck solve defines (DESIGN.md sections 1 and 6): ``dx = g(t) dW`` with
``FPConfig.g``; :func:`from_fp_config` builds it, and every consumer (the sampler, the training objectives, the
score-FPE residual, likelihoods, DSM) takes the SDE rather than rebuilding ``g``. ``FPConfig.g`` as

* a scalar: :class:`ConstantVE` (variance ``g^2 t``, exact);
* ``T+1`` values at ``t_n = n/T``: :class:`PiecewiseLinearVE`, ``g`` linear between the ``t_n`` with the exact
  integral of that ``g^2`` as its variance (the rule :func:`fpjax.solver.problem.diffusion_integral` uses);
* a function of ``t``: :class:`FunctionVE`, its variance integrated numerically (composite Gauss-Legendre, the
  rule :func:`fpjax.solver.problem.diffusion_integral` uses: :mod:`fpjax.solver.quadrature`).

:class:`VESDE` and :class:`VPSDE` are Song et al.'s (DDPM's chain is the discretisation of a VP SDE).
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fpjax.solver import quadrature
from fpjax.solver.problem import FPConfig, check_diffusion


def gaussian_logp(x, variance, mean=0.0):
    """``log N(x; mean, variance I)`` per sample of ``(B, ...)`` -> ``(B,)``."""
    flat = (x - mean).reshape(x.shape[0], -1)
    dim = flat.shape[1]
    return -0.5 * (jnp.sum(flat**2, axis=1) / variance + dim * jnp.log(2.0 * jnp.pi * variance))


def _float_dtype(t):
    """The floating dtype of times ``t`` (integers and booleans: the default float). Unlike
    ``result_type(t, float32)`` it keeps a weakly typed float64 (a Python float under x64) float64."""
    dtype = jnp.asarray(t).dtype
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.asarray(0.0).dtype


def _per_sample(values, ndim: int):
    """``(B,)`` values reshaped to broadcast against ``(B, ...)`` arrays of rank ``ndim``."""
    return jnp.reshape(values, (-1,) + (1,) * (ndim - 1))


class SDE(abc.ABC):
    """A forward SDE ``dx = f dt + g dW`` with the transition kernel ``x_t = mean_scale(t) x_0 + sqrt(variance(t)) z``.

    Subclasses are frozen dataclasses and define ``g`` and ``variance``; ``mean_scale`` is 1 and ``drift`` is
    ``None`` (variance exploding) unless they override them.
    """

    drift: Callable | None = None

    @abc.abstractmethod
    def g(self, t):
        """The diffusion ``g(t)``, elementwise over ``t``."""

    @abc.abstractmethod
    def variance(self, t):
        """The transition variance ``v(t)`` (zero at ``t = 0``), elementwise over ``t``."""

    def mean_scale(self, t):
        """The transition mean factor ``a(t)`` (``x_t`` has mean ``a(t) x_0``), elementwise over ``t``."""
        return jnp.ones_like(t)

    def marginal(self, x0, t):
        """``(mean, std)`` of ``x_t | x_0`` (score_sde's ``marginal_prob``) for ``(B, ...)`` data and ``(B,)``
        times: shapes ``(B, ...)`` and ``(B, 1, ...)``."""
        t = jnp.asarray(t, x0.dtype)
        return _per_sample(self.mean_scale(t), x0.ndim) * x0, _per_sample(jnp.sqrt(self.variance(t)), x0.ndim)

    def prior_sampling(self, key, shape, dtype=jnp.float32, t: float = 1.0):
        """``(shape)`` draws of ``N(0, variance(t) I)``: the reverse process's start about a zero mean (``t = 1``
        by default; a sampler starting earlier passes its ``t_start``)."""
        std = jnp.sqrt(self.variance(jnp.asarray(t, dtype)))
        return std * jax.random.normal(key, shape, dtype)

    def prior_logp(self, z, t: float = 1.0):
        """``log N(z; 0, variance(t) I)`` per sample of ``(B, ...)`` -> ``(B,)``: the density of
        :meth:`prior_sampling`."""
        return gaussian_logp(z, self.variance(jnp.asarray(t, z.dtype)))


def perturb(key, x0, t, sde: SDE):
    """``x_t = mean_scale(t) x_0 + sqrt(variance(t)) z`` for ``(B, ...)`` data and ``(B,)`` times; returns
    ``(x_t, z)``."""
    z = jax.random.normal(key, x0.shape, x0.dtype)
    mean, std = sde.marginal(x0, t)
    return mean + std * z, z


# ----------------------------------------------------------------------------------------------
# variance exploding: dx = g(t) dW


@dataclasses.dataclass(frozen=True)
class ConstantVE(SDE):
    """``dx = g dW`` with constant ``g``: fpjax's and the papers' SDE (``FPConfig.g = 0.5``). Variance ``g^2 t``."""

    g_value: float = 0.5

    def g(self, t):
        return jnp.full(jnp.shape(t), self.g_value, _float_dtype(t))

    def variance(self, t):
        return self.g_value**2 * t


@dataclasses.dataclass(frozen=True)
class PiecewiseLinearVE(SDE):
    """``dx = g(t) dW`` with ``g`` linear between values at ``t_n = n / T``, ``n = 0..T`` (``FPConfig.g`` given
    per step).

    The variance is the exact integral of that ``g^2``: ``h (a^2 + a b + b^2) / 3`` over a whole step of length
    ``h = 1/T`` from ``g = a`` to ``b``, and the matching cubic within a step. Times outside ``[0, 1]`` hold
    ``g`` at its end value but extrapolate the variance of the end step; keep ``t`` in ``[0, 1]``.
    """

    values: tuple[float, ...]

    def __post_init__(self):
        values = tuple(float(v) for v in np.asarray(self.values, np.float64).reshape(-1))
        if len(values) < 2:
            raise ValueError(f"a piecewise-linear g needs at least two values (t_0 and t_1), got {len(values)}")
        object.__setattr__(self, "values", values)

    @property
    def T(self) -> int:
        return len(self.values) - 1

    def _tables(self, dtype):
        values = jnp.asarray(self.values, dtype)
        return values, quadrature.piecewise_linear_integrals(values, 1.0 / self.T)

    def g(self, t):
        dtype = _float_dtype(t)
        grid = jnp.linspace(0.0, 1.0, self.T + 1, dtype=dtype)
        return jnp.interp(jnp.asarray(t, dtype), grid, jnp.asarray(self.values, dtype))

    def variance(self, t):
        dtype = _float_dtype(t)
        t = jnp.asarray(t, dtype)
        values, cumulative = self._tables(dtype)
        h = 1.0 / self.T
        k = jnp.clip(jnp.floor(t * self.T).astype(jnp.int32), 0, self.T - 1)
        a, b = values[k], values[k + 1]
        u = t - k.astype(dtype) * h
        slope = (b - a) / h
        return cumulative[k] + a**2 * u + a * slope * u**2 + slope**2 * u**3 / 3.0


@dataclasses.dataclass(frozen=True, repr=False)
class FunctionVE(SDE):
    """``dx = g(t) dW`` with ``g`` any traceable, vectorised function of ``t`` (``FPConfig.g`` as a function).

    The variance ``int_0^t g^2`` is integrated numerically: 8-point Gauss-Legendre on each of ``intervals`` equal
    pieces of ``[0, t]`` (exact for ``g^2`` polynomial of degree up to 15 per piece; the default, 32, keeps the
    pieces for ``t <= 1`` no longer than the measured rule of :mod:`fpjax.solver.quadrature` allows).
    """

    function: Callable
    intervals: int = quadrature.PIECES_PER_UNIT_TIME

    def __repr__(self):  # stable across processes (checkpoint fingerprints): no object address
        name = getattr(self.function, "__qualname__", type(self.function).__name__)
        return f"FunctionVE(function={getattr(self.function, '__module__', '?')}.{name}, intervals={self.intervals})"

    def g(self, t):
        return jnp.broadcast_to(self.function(t), jnp.shape(t))

    def variance(self, t):
        dtype = _float_dtype(t)
        return quadrature.integral_of_g_squared(self.g, 0.0, jnp.asarray(t, dtype), self.intervals, dtype)


@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
    """Song et al.'s VE SDE: ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, ``g = sigma sqrt(2 log(max/min))``.

    The transition variance is the exact ``sigma(t)^2 - sigma_min^2`` (zero at ``t = 0``).
    """

    sigma_min: float = 0.01
    sigma_max: float = 10.0

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def g(self, t):
        return self.sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))

    def variance(self, t):
        return self.sigma(t) ** 2 - self.sigma_min**2


# ----------------------------------------------------------------------------------------------
# variance preserving


@dataclasses.dataclass(frozen=True)
class VPSDE(SDE):
    """``dx = -1/2 beta(t) x dt + sqrt(beta(t)) dW``, ``beta`` linear from ``beta_min`` to ``beta_max``.

    DDPM's chain (linear betas ``1e-4 .. 0.02`` over 1000 levels) is its discretisation with ``(0.1, 20)``.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def g(self, t):
        return jnp.sqrt(self.beta(t))

    def drift(self, x, t):
        return -0.5 * self.beta(t) * x

    def log_mean_scale(self, t):
        return -0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

    def mean_scale(self, t):
        return jnp.exp(self.log_mean_scale(t))

    def variance(self, t):
        return -jnp.expm1(2.0 * self.log_mean_scale(t))


# ----------------------------------------------------------------------------------------------
# construction


def from_g(g, T: int | None = None) -> SDE:
    """The VE SDE ``dx = g(t) dW`` of a diffusion given as ``FPConfig.g`` is: a scalar (:class:`ConstantVE`),
    ``T+1`` values at ``t_n = n/T`` (:class:`PiecewiseLinearVE`; equal values give :class:`ConstantVE`) or a
    function of ``t`` (:class:`FunctionVE`). ``T``, when given, checks the number of values. ``g`` is checked
    by :func:`fpjax.solver.problem.check_diffusion`, the check of ``FPConfig.g``, with its messages."""
    if isinstance(g, SDE):
        return g
    g = check_diffusion(g, T)
    if callable(g):
        return FunctionVE(g)
    if isinstance(g, float):
        return ConstantVE(g)
    if all(v == g[0] for v in g):
        return ConstantVE(g[0])
    return PiecewiseLinearVE(g)


def from_fp_config(config: FPConfig) -> SDE:
    """The image-space SDE of an :class:`fpjax.FPConfig`: ``dx = g(t) dW`` with ``config.g`` (see :func:`from_g`).

    A drift is refused: the FP drift is a field over pixel *positions* and enters the score embedding as a
    per-pixel transport (DESIGN.md section 4), not as a drift ``f(x, t)`` of the pixel values, so a drifted solve
    defines no SDE that the sampler, the loss weighting or the score-FPE residual could use.
    """
    if config.drift is not None:
        raise ValueError(
            "FPConfig.drift is set, but fpjax's image-space SDE is dx = g(t) dW: the FP drift moves pixel positions "
            "and has no counterpart f(x, t) on the pixel values. Build the SDE you mean to sample with yourself "
            "(fpjax.diffusion.sde), or solve with drift=None"
        )
    return from_g(config.g, config.T)


def as_sde(spec, T: int | None = None) -> SDE:
    """An :class:`SDE` from what callers hold: an SDE (returned as is), an :class:`fpjax.FPConfig`
    (:func:`from_fp_config`), or a diffusion ``g`` as a scalar, ``(T+1,)`` values or a function of ``t``
    (:func:`from_g`, e.g. the ``(T+1,)`` :func:`fpjax.diffusion_schedule` of the FP config)."""
    if isinstance(spec, SDE):
        return spec
    if isinstance(spec, FPConfig):
        return from_fp_config(spec)
    return from_g(spec, T)


def equivalent(a: SDE, b: SDE, rtol: float = 1e-5) -> bool:
    """Whether two SDEs agree: equal, or of the same kind with ``g`` and ``variance`` equal to ``rtol`` at 33 times
    in ``[0, 1]`` (e.g. ``from_g`` of float32 schedule values against the config's float64 ``g``)."""
    if a == b:
        return True
    if (a.drift is None) != (b.drift is None) or (a.drift is not None and type(a) is not type(b)):
        return False
    t = np.linspace(0.0, 1.0, 33)
    return all(
        np.allclose(np.asarray(fa(jnp.asarray(t))), np.asarray(fb(jnp.asarray(t))), rtol=rtol, atol=rtol * 1e-3)
        for fa, fb in ((a.g, b.g), (a.variance, b.variance), (a.mean_scale, b.mean_scale))
    )
