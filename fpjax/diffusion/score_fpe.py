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
paper's Figure 1; :func:`regulariser` is the ``R_FP`` of eq. 19
(:class:`fpjax.learn.objectives.FPRegularised` adds it to a training objective).

Score functions take a batch: ``score(x, t)`` with ``x: (B, *shape)`` and
``t: (B,)``; everything here is computed one sample at a time under ``vmap``,
so the batch members never mix. ``sde`` is any :class:`fpjax.diffusion.sde.SDE`
(``g(t)``, ``drift(x, t)`` or ``None``, the transition kernel).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

# The SDEs live in fpjax.diffusion.sde; re-exported here until the callers of their old location move.
from fpjax.diffusion.sde import perturb

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


def single_sample(score, label=None):
    """``score`` of one sample: ``(shape, ()) -> shape`` (``label``: the sample's, for ``score(x, t, labels)``)."""
    if label is None:
        return lambda x, t: score(x[None], t[None])[0]
    return lambda x, t: score(x[None], t[None], label[None])[0]


def _per_sample(fn, score, x, t, key, labels):
    """``fn(score1, x_i, t_i, key_i)`` under ``vmap`` over the batch (``labels``, if given, batched too)."""
    keys = jax.random.split(jax.random.key(0) if key is None else key, x.shape[0])
    if labels is None:
        return jax.vmap(lambda xi, ti, ki: fn(single_sample(score), xi, ti, ki))(x, t, keys)
    return jax.vmap(lambda xi, ti, ki, li: fn(single_sample(score, li), xi, ti, ki))(x, t, keys, labels)


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


def per_dimension_norm(v):
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
        return jnp.mean(per_dimension_norm(residual(score, x, tb, sde, k_eps, config)))

    return jax.lax.map(at, (jnp.asarray(times, data.dtype), jax.random.split(key, len(times))))


def dsm_curve(score, data, times, key, sde):
    """``r_DSM(t) = E |s(x_t, t) - grad log p_0t(x_t | x_0)|_2 / D`` (no time weighting, as in Figure 1) -> ``(K,)``."""

    def at(inputs):
        t, k = inputs
        tb = jnp.full((data.shape[0],), t, data.dtype)
        x, z = perturb(k, data, tb, sde)
        target = -z / jnp.sqrt(sde.variance(t))
        return jnp.mean(per_dimension_norm(score(x, tb) - target))

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
            w * per_dimension_norm(residual(score, x, t, sde, k_vec, reg.config, labels)) ** reg.m
        )
    if reg.beta:
        dim = math.prod(x.shape[1:])
        total = total + reg.beta * jnp.sqrt(
            jnp.mean((scalar_residual(score, x, t, sde, k_scalar, reg.config, labels) / dim) ** 2)
        )
    return total


# ----------------------------------------------------------------------------------------------
# fpjax's own solution
