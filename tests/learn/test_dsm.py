import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fpjax.diffusion import mixtures
from fpjax.diffusion import score_fpe as sf
from fpjax.diffusion import sde as sde_lib
from fpjax.learn import dsm

SDE = sde_lib.VESDE(0.01, 5.0)
GAUSSIAN = mixtures.GaussianMixture(((0.5, -1.0),), (0.5,), (1.0,))


def _fit(reg):
    data = GAUSSIAN.sample(jax.random.key(0), 2048)
    config = dsm.DSMConfig(steps=600, chunk=200, batch_size=128, hidden=64, depth=2, reg=reg)
    graphdef, params, losses = dsm.train_score(data, SDE, jax.random.key(1), config)
    return dsm.score_function(graphdef, params, SDE), losses


def test_dsm_learns_the_score_of_a_gaussian_and_the_regulariser_lowers_the_residual():
    x0 = GAUSSIAN.sample(jax.random.key(2), 256)
    t = jnp.full((256,), 0.5)
    x, _ = sde_lib.perturb(jax.random.key(3), x0, t, SDE)
    exact = GAUSSIAN.score(SDE)(x, t)
    plain, losses = _fit(None)
    assert losses[-1] < losses[0]
    assert float(jnp.linalg.norm(plain(x, t) - exact) / jnp.linalg.norm(exact)) < 0.2
    regularised, _ = _fit(sf.Regulariser(gamma=1.0))
    times = jnp.array([0.1, 0.3, 0.5, 0.8])
    r_plain = sf.residual_curve(plain, x0[:64], times, jax.random.key(4), SDE)
    r_reg = sf.residual_curve(regularised, x0[:64], times, jax.random.key(4), SDE)
    assert float(jnp.mean(r_reg)) < 0.5 * float(jnp.mean(r_plain))


def test_dsm_loss_of_the_exact_score_is_the_closed_form_minimum():
    # For the exact score E|sigma s(x_t) + z|^2 / D = 1 - sigma^2 / (sd^2 + sigma^2) per dimension, averaged over t.
    x0 = GAUSSIAN.sample(jax.random.key(5), 200000)
    loss = dsm.dsm_loss(GAUSSIAN.score(SDE), x0, jax.random.key(6), SDE, 1e-3)
    t = np.linspace(1e-3, 1.0, 100001)
    var = np.asarray(SDE.variance(t))
    expected = np.mean(0.25 / (0.25 + var))
    np.testing.assert_allclose(float(loss), expected, atol=3e-3)


def test_bad_data_shape_is_refused():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        dsm.train_score(jnp.ones((4, 2, 2)), SDE, jax.random.key(0))


def test_no_key_serves_two_purposes_in_a_step_or_across_steps():
    """Every key of the first steps, by purpose, is distinct from every other (the batch's and the
    regulariser's were the same key: fold_in(k, 1) == split(k, 4)[1] with JAX's keys)."""
    key = jax.random.key(0)
    keys = [k for step in range(4) for k in dsm.step_keys(key, step).values()]
    data = {tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in keys}
    assert len(data) == len(keys) == 4 * len(dsm.STEP_KEYS)
    old_batch, old_reg = jax.random.fold_in(key, 1), jax.random.split(key, 4)[1]
    assert np.array_equal(jax.random.key_data(old_batch), jax.random.key_data(old_reg))  # the collision fixed
