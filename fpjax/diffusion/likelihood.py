"""Log-likelihood through the probability-flow ODE (instantaneous change of variables).

For the probability-flow ODE ``dx/dt = v(x, t) = f(x, t) - 1/2 g(t)^2 s(x, t)`` of an SDE of
:mod:`fpjax.diffusion.sde`, ``d/dt log p_t(x(t)) = -div v``, so::

    log p_(t_min)(x_0) = log p_prior(x(1)) + int_(t_min)^1 div v(x(t), t) dt

integrated here with fixed-step RK4 in one ``lax.scan`` (the divergence exact or by Hutchinson's estimator with
one fixed probe set per sample, as in FFJORD). :func:`bits_per_dim` turns the result into the paper's metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from fpjax.diffusion.score_fpe import EXACT, ResidualConfig, divergence, single_sample
from fpjax.diffusion.sde import SDE


def pf_ode_logp(score: Callable, x0, sde: SDE, key=None, steps: int = 100, t_min: float = 1e-3,
                config: ResidualConfig = EXACT, prior_logp: Callable | None = None):  # fmt: skip
    """``log p_(t_min)(x_0)`` in nats for ``(B, ...)`` points under the model's probability-flow ODE -> ``(B,)``.

    Args:
      score: ``s(x, t)`` batched, as in :mod:`fpjax.diffusion.score_fpe`.
      x0: ``(B, ...)`` data points.
      sde: the forward :class:`~fpjax.diffusion.sde.SDE`.
      key: PRNG key (Hutchinson's estimator only).
      steps: RK4 steps from ``t_min`` to 1.
      config: ``divergence`` exact or ``"hutchinson"`` (``probes`` per sample, fixed along the path).
      prior_logp: ``log p_1`` of ``(B, ...)`` points; default the SDE's :meth:`~fpjax.diffusion.sde.SDE.prior_logp`,
        ``N(0, variance(1) I)``.
    """
    if config.divergence == "hutchinson" and key is None:
        raise ValueError("Hutchinson's estimator needs a PRNG key")
    s1 = single_sample(score)

    def velocity(x, t):
        v = -0.5 * sde.g(t) ** 2 * s1(x, t)
        return v if sde.drift is None else v + sde.drift(x, t)

    def field(x, t, k):
        return velocity(x, t), divergence(lambda y: velocity(y, t), x, k, config)

    def path(x, k):
        h = (1.0 - t_min) / steps

        def rk4(carry, n):
            x, acc = carry
            t = t_min + n * h
            k1, d1 = field(x, t, k)
            k2, d2 = field(x + 0.5 * h * k1, t + 0.5 * h, k)
            k3, d3 = field(x + 0.5 * h * k2, t + 0.5 * h, k)
            k4, d4 = field(x + h * k3, t + h, k)
            return (x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), acc + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)), None

        (x1, integral), _ = jax.lax.scan(rk4, (x, jnp.zeros((), x.dtype)), jnp.arange(steps, dtype=x.dtype))
        return x1, integral

    keys = jax.random.split(jax.random.key(0) if key is None else key, x0.shape[0])
    x1, integral = jax.vmap(path)(x0, keys)
    prior = prior_logp or sde.prior_logp
    return prior(x1) + integral


def bits_per_dim(logp, dim: int, bin_width: float = 1.0 / 256):
    """Negative log-likelihood in bits per dimension of data quantised to bins of ``bin_width`` (uniformly
    dequantised): ``(-logp - D log bin_width) / (D log 2)``. Images in ``[0, 1]`` with 256 levels: ``1/256``."""
    return (-logp - dim * math.log(bin_width)) / (dim * math.log(2.0))
