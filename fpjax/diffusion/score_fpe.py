"""The score Fokker-Planck equation: residual, diagnostics and the FP regulariser (FP-Diffusion, Lai et al. 2023).

For the forward SDE ``dx = f(x, t) dt + g(t) dW`` the scores ``s = grad_x log p_t``
of its marginals satisfy (the paper's eqs. 7-9, DESIGN.md section 6)::

    L[s](x, t) = 1/2 g^2 div_x s + 1/2 g^2 |s|^2 - <f, s> - div_x f          (= d_t log p_t)
    eps[s](x, t) = d_t s - grad_x L[s]                                          (zero for a true score)

A learned score need not satisfy it. :func:`residual` computes ``eps`` for any
score function, with the divergence exact (automatic differentiation, small
dimensions) or by Hutchinson's estimator, and ``d_t s`` exact (forward-mode in
``t``) or by the paper's three-point non-uniform finite difference.
:func:`residual_curve` and :func:`dsm_curve` are the averaged curves of the
paper's Figure 1; :func:`regulariser` is the ``R_FP`` of eq. 19 and
:class:`FPRegularised` adds it to any training objective of
:mod:`fpjax.learn.trainer`.

Score functions take a batch: ``score(x, t)`` with ``x: (B, *shape)`` and
``t: (B,)``; everything here is computed one sample at a time under ``vmap``,
so the batch members never mix. The SDEs are frozen dataclasses (static
arguments) with ``g(t)``, ``drift(x, t)`` (or ``None``), and the transition
kernel ``x_t = mean_scale(t) x_0 + sqrt(variance(t)) z``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

# ----------------------------------------------------------------------------------------------
# SDEs


@dataclasses.dataclass(frozen=True)
class ConstantVE:
    """``dx = g dW`` with constant ``g``: fpjax's and the papers' SDE (``FPConfig.g = 0.5``). Variance ``g^2 t``."""

    g_value: float = 0.5
    drift = None

    def g(self, t):
        return jnp.full(jnp.shape(t), self.g_value, jnp.result_type(t, jnp.float32))

    def mean_scale(self, t):
        return jnp.ones_like(t)

    def variance(self, t):
        return self.g_value**2 * t


@dataclasses.dataclass(frozen=True)
class VESDE:
    """Song et al.'s VE SDE: ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, ``g = sigma sqrt(2 log(max/min))``.

    The transition variance is the exact ``sigma(t)^2 - sigma_min^2`` (zero at ``t = 0``).
    """

    sigma_min: float = 0.01
    sigma_max: float = 10.0
    drift = None

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def g(self, t):
        return self.sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))

    def mean_scale(self, t):
        return jnp.ones_like(t)

    def variance(self, t):
        return self.sigma(t) ** 2 - self.sigma_min**2


@dataclasses.dataclass(frozen=True)
class VPSDE:
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


def perturb(key, x0, t, sde):
    """``x_t = mean_scale(t) x_0 + sqrt(variance(t)) z`` for ``(B, ...)`` data and ``(B,)`` times; returns
    ``(x_t, z)``."""
    z = jax.random.normal(key, x0.shape, x0.dtype)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    return sde.mean_scale(t).reshape(shape) * x0 + jnp.sqrt(sde.variance(t)).reshape(shape) * z, z


# ----------------------------------------------------------------------------------------------
# residual


@dataclasses.dataclass(frozen=True)
class ResidualConfig:
    """How :func:`residual` computes its two derivatives.

    Attributes:
      divergence: ``"exact"`` (trace of the Jacobian by forward-mode AD: ``D`` passes) or ``"hutchinson"``.
      probes: Hutchinson probes per sample (the paper uses 1).
      probe: ``"rademacher"`` or ``"gaussian"``.
      time_derivative: ``"exact"`` (forward-mode AD in ``t``) or ``"finite_difference"``.
      h_s, h_d: the backward and forward steps of the three-point difference (the paper: 1e-3, 5e-4).
    """

    divergence: str = "exact"
    probes: int = 1
    probe: str = "rademacher"
    time_derivative: str = "exact"
    h_s: float = 1e-3
    h_d: float = 5e-4

    def __post_init__(self):
        if self.divergence not in ("exact", "hutchinson"):
            raise ValueError(f"divergence must be 'exact' or 'hutchinson', got {self.divergence!r}")
        if self.probe not in ("rademacher", "gaussian"):
            raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {self.probe!r}")
        if self.time_derivative not in ("exact", "finite_difference"):
            raise ValueError(f"time_derivative must be 'exact' or 'finite_difference', got {self.time_derivative!r}")
        if self.probes < 1 or self.h_s <= 0 or self.h_d <= 0:
            raise ValueError("probes must be >= 1 and the finite-difference steps positive")


EXACT = ResidualConfig()
ESTIMATED = ResidualConfig(divergence="hutchinson", time_derivative="finite_difference")


def _single(score, label=None):
    """``score`` of one sample: ``(shape, ()) -> shape`` (``label``: the sample's, for ``score(x, t, labels)``)."""
    if label is None:
        return lambda x, t: score(x[None], t[None])[0]
    return lambda x, t: score(x[None], t[None], label[None])[0]


def _per_sample(fn, score, x, t, key, labels):
    """``fn(score1, x_i, t_i, key_i)`` under ``vmap`` over the batch (``labels``, if given, batched too)."""
    keys = jax.random.split(jax.random.key(0) if key is None else key, x.shape[0])
    if labels is None:
        return jax.vmap(lambda xi, ti, ki: fn(_single(score), xi, ti, ki))(x, t, keys)
    return jax.vmap(lambda xi, ti, ki, li: fn(_single(score, li), xi, ti, ki))(x, t, keys, labels)


def _probes(key, x, config: ResidualConfig):
    shape = (config.probes,) + x.shape
    if config.probe == "gaussian":
        return jax.random.normal(key, shape, x.dtype)
    return jax.random.rademacher(key, shape, x.dtype)


def divergence(fn: Callable, x, key=None, config: ResidualConfig = ResidualConfig()):
    """``div fn(x) = tr d fn / dx`` for one sample ``x`` (any shape): exact, or Hutchinson's ``E[v^T J v]``."""
    if config.divergence == "exact":
        flat = x.reshape(-1)
        jac = jax.jacfwd(lambda v: fn(v.reshape(x.shape)).reshape(-1))(flat)
        return jnp.trace(jac)
    if key is None:
        raise ValueError("Hutchinson's estimator needs a PRNG key")

    def quadratic(v):
        return jnp.vdot(v, jax.jvp(fn, (x,), (v,))[1])

    return jnp.mean(jax.vmap(quadratic)(_probes(key, x, config)))


def scalar_term(score1: Callable, x, t, sde, key=None, config: ResidualConfig = ResidualConfig()):
    """``L[s](x, t) = 1/2 g^2 (div s + |s|^2) - <f, s> - div f`` for one sample (``score1`` unbatched)."""
    k_s, k_f = (None, None) if key is None else jax.random.split(key)
    s = score1(x, t)
    value = 0.5 * sde.g(t) ** 2 * (divergence(lambda y: score1(y, t), x, k_s, config) + jnp.sum(s**2))
    if sde.drift is not None:
        value = value - jnp.vdot(sde.drift(x, t), s) - divergence(lambda y: sde.drift(y, t), x, k_f, config)
    return value


def time_derivative(score1: Callable, x, t, config: ResidualConfig = ResidualConfig()):
    """``d_t s(x, t)`` for one sample: forward-mode AD, or the paper's three-point non-uniform difference
    ``[h_s^2 s(t + h_d) + (h_d^2 - h_s^2) s(t) - h_d^2 s(t - h_s)] / (h_s h_d (h_s + h_d))`` (error ``O(h^2)``;
    needs ``t >= h_s``)."""
    if config.time_derivative == "exact":
        return jax.jvp(lambda u: score1(x, u), (t,), (jnp.ones_like(t),))[1]
    hs, hd = config.h_s, config.h_d
    forward, centre, backward = (score1(x, t + hd), score1(x, t), score1(x, t - hs))
    return (hs**2 * forward + (hd**2 - hs**2) * centre - hd**2 * backward) / (hs * hd * (hs + hd))


def residual_single(score1: Callable, x, t, sde, key=None, config: ResidualConfig = ResidualConfig()):
    """``eps[s](x, t) = d_t s - grad_x L[s]`` for one sample; Hutchinson uses the same probes in ``L`` and its
    gradient (``key`` is not differentiated)."""
    grad_l = jax.grad(lambda y: scalar_term(score1, y, t, sde, key, config))(x)
    return time_derivative(score1, x, t, config) - grad_l


def residual(score: Callable, x, t, sde, key=None, config: ResidualConfig = ResidualConfig(), labels=None):
    """The score-FPE residual ``eps[s]`` at ``(B, *shape)`` points and ``(B,)`` times -> ``(B, *shape)``.

    ``key`` is needed for Hutchinson's estimator (one independent probe set per sample). With ``labels``
    (``(B,)``, e.g. fpjax's per-image labels) the score is called as ``score(x, t, labels)``.
    """
    if config.divergence == "hutchinson" and key is None:
        raise ValueError("Hutchinson's estimator needs a PRNG key")
    return _per_sample(lambda s1, xi, ti, ki: residual_single(s1, xi, ti, sde, ki, config), score, x, t, key, labels)


def scalar_residual(score: Callable, x, t, sde, key=None, config: ResidualConfig = ResidualConfig(), labels=None):
    """``L[s]`` at ``(B, *shape)`` points -> ``(B,)`` (the right side of the scalar FPE eq. 7)."""
    return _per_sample(lambda s1, xi, ti, ki: scalar_term(s1, xi, ti, sde, ki, config), score, x, t, key, labels)


def _per_dimension_norm(v):
    """``|v|_2 / D`` per sample of ``(B, ...)`` (the paper's normalisation of both curves)."""
    flat = v.reshape(v.shape[0], -1)
    squared = jnp.sum(flat**2, axis=1)
    # A zero residual (e.g. a zero-initialised network) has no derivative of its norm: give it zero, not NaN.
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0) / flat.shape[1]


def residual_curve(score, data, times, key, sde, config: ResidualConfig = ResidualConfig()):
    """``r_FP(t) = E_x0 E_(x|x0) |eps[s](x, t)|_2 / D`` at each of ``(K,)`` times over ``(B, ...)`` data -> ``(K,)``.

    One ``lax.map`` over times; ``x`` drawn from the SDE's transition kernel at each time.
    """

    def at(inputs):
        t, k = inputs
        k_x, k_eps = jax.random.split(k)
        tb = jnp.full((data.shape[0],), t, data.dtype)
        x, _ = perturb(k_x, data, tb, sde)
        return jnp.mean(_per_dimension_norm(residual(score, x, tb, sde, k_eps, config)))

    return jax.lax.map(at, (jnp.asarray(times, data.dtype), jax.random.split(key, len(times))))


def dsm_curve(score, data, times, key, sde):
    """``r_DSM(t) = E |s(x_t, t) - grad log p_0t(x_t | x_0)|_2 / D`` (no time weighting, as in Figure 1) -> ``(K,)``."""

    def at(inputs):
        t, k = inputs
        tb = jnp.full((data.shape[0],), t, data.dtype)
        x, z = perturb(k, data, tb, sde)
        target = -z / jnp.sqrt(sde.variance(t))
        return jnp.mean(_per_dimension_norm(score(x, tb) - target))

    return jax.lax.map(at, (jnp.asarray(times, data.dtype), jax.random.split(key, len(times))))


# ----------------------------------------------------------------------------------------------
# regulariser


@dataclasses.dataclass(frozen=True)
class Regulariser:
    """``R_FP = gamma E[w(t) (|eps|_2 / D)^m] + beta E[(L[s] / D)^2]^(1/2)`` (eq. 19 and the authors' code).

    Defaults are the paper's for synthetic data, ``(gamma, beta, w, m) = (0.0015, 0, 1, 1)``; for images it uses
    ``(0.15, 0.01, g^2, 2)``. ``weight``: ``"constant"`` or ``"g2"``. ``config``: how the residual is computed
    (Hutchinson and the finite difference by default, as in the paper).
    """

    gamma: float = 0.0015
    beta: float = 0.0
    weight: str = "constant"
    m: int = 1
    config: ResidualConfig = ESTIMATED

    def __post_init__(self):
        if self.weight not in ("constant", "g2"):
            raise ValueError(f"weight must be 'constant' or 'g2', got {self.weight!r}")


def regulariser(score: Callable, x, t, sde, key, reg: Regulariser = Regulariser(), labels=None):
    """``R_FP`` at ``(B, *shape)`` points and ``(B,)`` times (a scalar; differentiable in the score's parameters).

    ``labels``: as in :func:`residual`."""
    k_vec, k_scalar = jax.random.split(key)
    w = jnp.ones_like(t) if reg.weight == "constant" else sde.g(t) ** 2
    total = 0.0
    if reg.gamma:
        total = reg.gamma * jnp.mean(
            w * _per_dimension_norm(residual(score, x, t, sde, k_vec, reg.config, labels)) ** reg.m
        )
    if reg.beta:
        dim = math.prod(x.shape[1:])
        total = total + reg.beta * jnp.sqrt(
            jnp.mean((scalar_residual(score, x, t, sde, k_scalar, reg.config, labels) / dim) ** 2)
        )
    return total


@dataclasses.dataclass(frozen=True)
class FPRegularised:
    """A training objective plus ``R_FP`` at the objective's own noisy inputs: ``loss + regulariser``.

    ``objective`` is any :mod:`fpjax.learn.trainer` objective with ``fpe_points(key, data, config) -> (x, t, labels)``,
    ``score(net, labels, config)`` and ``sde`` (:class:`fpjax.learn.trainer.EmbeddedDenoising`,
    :class:`fpjax.learn.ddpm.DDPM`); the check (``denoise``) is the objective's. Hashable, so it can be a
    :class:`~fpjax.learn.trainer.TrainConfig`'s ``objective``.
    """

    objective: object
    reg: Regulariser = Regulariser()

    def score(self, net, labels, config):
        return self.objective.score(net, labels, config)

    def loss(self, net, key, data, config):
        k_loss, k_points, k_reg = jax.random.split(key, 3)
        x, t, labels = self.objective.fpe_points(k_points, data, config)
        score = lambda x, t, labels: self.score(net, labels, config)(x, t)
        penalty = regulariser(score, x, t, self.objective.sde, k_reg, self.reg, labels)
        return self.objective.loss(net, k_loss, data, config) + penalty

    def denoise(self, net, noisy, labels, key, g_values, config):
        return self.objective.denoise(net, noisy, labels, key, g_values, config)


# ----------------------------------------------------------------------------------------------
# fpjax's own solution


def fp_step_residuals(m, config, g=None):
    """The discrete log-density FP residual of every step of a ``(T+1, H, W)`` log-density trajectory ``m``
    (e.g. :func:`fpjax.solver.log_density.solve`'s ``.m``), recomputed from it: ``(T,)``
    ``||F(m^n)|| / ||m^(n-1) / dt||`` (a solution's sits at the outer iteration's tolerance)."""
    from fpjax.solver import log_density as fp

    g_values = fp.diffusion_schedule(config, g, m.dtype)
    spacing = config.grid_spacing(m.shape[-2:])
    times = jnp.arange(1, config.T + 1, dtype=m.dtype) * config.dt

    def one(m_now, m_prev, t, g_t):
        step = fp.step_coefficients(config, t, g_t, m.shape[-2:], m.dtype)
        r = fp.step_residual(m_now, m_prev, step, spacing, config.boundary, config.advection)
        return jnp.linalg.norm(r) / jnp.linalg.norm(m_prev / config.dt)

    return jax.vmap(one)(m[1:], m[:-1], times, g_values[1:])
