"""Isotropic Gaussian mixtures: samples, and exact scores and log-densities under a linear forward SDE.

Under ``x_t = a(t) x_0 + sqrt(v(t)) z`` (an SDE of :mod:`fpjax.diffusion.sde`) a mixture
``sum_k w_k N(mu_k, sd_k^2 I)`` stays one: ``sum_k w_k N(a mu_k, (a^2 sd_k^2 + v) I)``, so its score is known
in closed form at every ``t``: the reference for the score-FPE residual and for likelihoods.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """``means: (K, D)``, ``stds: (K,)``, ``weights: (K,)`` as tuples (hashable: a static argument)."""

    means: tuple
    stds: tuple
    weights: tuple

    @property
    def dim(self) -> int:
        return len(self.means[0])

    def _params(self, dtype):
        return (jnp.asarray(self.means, dtype), jnp.asarray(self.stds, dtype), jnp.asarray(self.weights, dtype))

    def log_prob(self, x, t=None, sde=None):
        """``log p_t(x)`` for ``(B, D)`` points (``t=None``: the data density) -> ``(B,)``."""
        mu, sd, w = self._params(x.dtype)
        t = jnp.zeros(x.shape[:1], x.dtype) if t is None else jnp.broadcast_to(t, x.shape[:1])
        a = jnp.ones_like(t) if sde is None else sde.mean_scale(t)
        v = jnp.zeros_like(t) if sde is None else sde.variance(t)
        var = a[:, None] ** 2 * sd[None] ** 2 + v[:, None]  # (B, K)
        sq = jnp.sum((x[:, None, :] - a[:, None, None] * mu[None]) ** 2, axis=-1)
        comp = jnp.log(w)[None] - 0.5 * sq / var - 0.5 * self.dim * jnp.log(2.0 * jnp.pi * var)
        return jax.scipy.special.logsumexp(comp, axis=1)

    def score(self, sde):
        """The exact ``s(x, t)`` (batched) under ``sde``."""
        return lambda x, t: jax.grad(lambda y: jnp.sum(self.log_prob(y, t, sde)))(x)

    def sample(self, key, n: int, dtype=jnp.float32):
        """``(n, D)`` samples."""
        mu, sd, w = self._params(dtype)
        k_c, k_z = jax.random.split(key)
        c = jax.random.choice(k_c, len(self.weights), (n,), p=w)
        return mu[c] + sd[c][:, None] * jax.random.normal(k_z, (n, self.dim), dtype)


def ring(modes: int = 8, radius: float = 1.0, std: float = 0.1) -> GaussianMixture:
    """The paper's eight-mode mixture: means equally spaced on a circle (section 7.1)."""
    angles = 2 * np.pi * np.arange(modes) / modes
    means = tuple((float(radius * np.cos(a)), float(radius * np.sin(a))) for a in angles)
    return GaussianMixture(means, (std,) * modes, (1.0 / modes,) * modes)


def two_modes(offset: float = 5.0, std: float = 1.0) -> GaussianMixture:
    """The paper's section 6.1 mixture: ``1/2 N((-5, -5), I) + 1/2 N((5, 5), I)``."""
    return GaussianMixture(((-offset, -offset), (offset, offset)), (std, std), (0.5, 0.5))
