import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fpjax.diffusion import likelihood, mixtures
from fpjax.diffusion import score_fpe as sf
from fpjax.diffusion import sde as sde_lib

GAUSSIAN = mixtures.GaussianMixture(((0.5, -1.0),), (0.7,), (1.0,))


@pytest.mark.parametrize("sde", [sde_lib.VESDE(0.01, 5.0), sde_lib.VPSDE()], ids=["VE", "VP"])
def test_pf_ode_log_likelihood_of_a_gaussian_is_exact(sde):
    x = GAUSSIAN.sample(jax.random.key(0), 6, jnp.float64)
    prior = lambda y: GAUSSIAN.log_prob(y, jnp.ones(y.shape[0], y.dtype), sde)
    logp = jax.jit(lambda x: likelihood.pf_ode_logp(GAUSSIAN.score(sde), x, sde, steps=100, prior_logp=prior))(x)
    np.testing.assert_allclose(logp, GAUSSIAN.log_prob(x, jnp.full(6, 1e-3), sde), rtol=1e-6)


def test_hutchinson_log_likelihood_is_unbiased_on_a_mixture():
    sde = sde_lib.VESDE(0.01, 5.0)
    mixture = mixtures.ring(modes=4, radius=1.0, std=0.3)
    x = mixture.sample(jax.random.key(1), 2, jnp.float64)
    prior = lambda y: mixture.log_prob(y, jnp.ones(y.shape[0], y.dtype), sde)
    exact = likelihood.pf_ode_logp(mixture.score(sde), x, sde, steps=100, prior_logp=prior)
    np.testing.assert_allclose(exact, mixture.log_prob(x, jnp.full(2, 1e-3), sde), atol=2e-3)
    config = sf.ResidualConfig(divergence="hutchinson", probe="gaussian", probes=2000)
    estimated = likelihood.pf_ode_logp(mixture.score(sde), x, sde, jax.random.key(2), steps=100, config=config,
                                       prior_logp=prior)  # fmt: skip
    np.testing.assert_allclose(estimated, exact, atol=0.05)


def test_default_prior_is_the_wide_gaussian_and_float32_matches_float64():
    sde = sde_lib.VESDE(0.01, 20.0)
    x = GAUSSIAN.sample(jax.random.key(3), 4, jnp.float64)
    score = GAUSSIAN.score(sde)
    logp64 = likelihood.pf_ode_logp(score, x, sde, steps=50)
    logp32 = likelihood.pf_ode_logp(score, x.astype(jnp.float32), sde, steps=50)
    assert logp32.dtype == jnp.float32
    np.testing.assert_allclose(logp32, logp64, rtol=1e-4)
    # With sigma_max = 20 the N(0, sigma_max^2) prior is almost p_1: the data density is recovered closely.
    np.testing.assert_allclose(logp64, GAUSSIAN.log_prob(x, jnp.full(4, 1e-3), sde), atol=0.1)


def test_bits_per_dim_closed_form():
    # A uniform density on [0, 1]^D has log p = 0: 8 bits per dimension at 256 levels.
    assert likelihood.bits_per_dim(0.0, 10) == pytest.approx(8.0)
    assert likelihood.bits_per_dim(-10 * math.log(2.0), 10, bin_width=1.0) == pytest.approx(1.0)
