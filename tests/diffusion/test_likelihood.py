import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import float64_run

from fpjax.diffusion import likelihood, mixtures
from fpjax.diffusion import score_fpe as sf
from fpjax.diffusion import sde as sde_lib

GAUSSIAN = mixtures.GaussianMixture(((0.5, -1.0),), (0.7,), (1.0,))


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("sde", [sde_lib.VESDE(0.01, 5.0), sde_lib.VPSDE()], ids=["VE", "VP"])
def test_pf_ode_log_likelihood_of_a_gaussian_is_exact(sde):
    x = GAUSSIAN.sample(jax.random.key(0), 6, jnp.float64)
    prior = lambda y: GAUSSIAN.log_prob(y, jnp.ones(y.shape[0], y.dtype), sde)
    logp = jax.jit(lambda x: likelihood.pf_ode_logp(GAUSSIAN.score(sde), x, sde, steps=100, prior_logp=prior))(x)
    np.testing.assert_allclose(logp, GAUSSIAN.log_prob(x, jnp.full(6, 1e-3), sde), rtol=1e-6)


def test_hutchinson_log_likelihood_is_unbiased_on_a_mixture():
    sde = sde_lib.VESDE(0.01, 5.0)
    mixture = mixtures.ring(modes=4, radius=1.0, std=0.3)
    x = mixture.sample(jax.random.key(1), 2)
    prior = lambda y: mixture.log_prob(y, jnp.ones(y.shape[0], y.dtype), sde)
    exact = likelihood.pf_ode_logp(mixture.score(sde), x, sde, steps=100, prior_logp=prior)
    np.testing.assert_allclose(exact, mixture.log_prob(x, jnp.full(2, 1e-3), sde), atol=2e-3)
    # One estimate with 2000 probes has a standard deviation of 0.11-0.12 nats here (measured over 16 keys, in
    # float32 and float64 alike): its mean over 16 keys must lie within 4 standard errors of the exact value.
    # (A single key within 0.05 held for one lucky key only: with x drawn in float32 it missed by 0.17.)
    config = sf.ResidualConfig(divergence="hutchinson", probe="gaussian", probes=2000)
    estimate = lambda key: likelihood.pf_ode_logp(  # noqa: E731
        mixture.score(sde), x, sde, key, steps=100, config=config, prior_logp=prior
    )
    draws = np.asarray(jax.jit(jax.vmap(estimate))(jax.random.split(jax.random.key(2), 16)))
    standard_error = draws.std(axis=0, ddof=1) / np.sqrt(16)
    assert np.all(np.abs(draws.mean(axis=0) - np.asarray(exact)) < 4 * standard_error)
    assert np.all(standard_error < 0.05)  # the estimator is not so noisy that the check says nothing


def test_default_prior_is_the_wide_gaussian_and_float32_matches_float64():
    sde = sde_lib.VESDE(0.01, 20.0)
    score = GAUSSIAN.score(sde)

    def run64():
        x = GAUSSIAN.sample(jax.random.key(3), 4, jnp.float64)
        return x, likelihood.pf_ode_logp(score, x, sde, steps=50), GAUSSIAN.log_prob(x, jnp.full(4, 1e-3), sde)

    x, logp64, data_logp = float64_run(run64)
    logp32 = likelihood.pf_ode_logp(score, jnp.asarray(x, jnp.float32), sde, steps=50)
    assert logp32.dtype == jnp.float32
    np.testing.assert_allclose(logp32, logp64, rtol=1e-4)
    # With sigma_max = 20 the N(0, sigma_max^2) prior is almost p_1: the data density is recovered closely.
    np.testing.assert_allclose(logp64, data_logp, atol=0.1)


def test_bits_per_dim_closed_form():
    # A uniform density on [0, 1]^D has log p = 0: 8 bits per dimension at 256 levels.
    assert likelihood.bits_per_dim(0.0, 10) == pytest.approx(8.0)
    assert likelihood.bits_per_dim(-10 * math.log(2.0), 10, bin_width=1.0) == pytest.approx(1.0)
