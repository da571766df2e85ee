import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fpjax.learn import ddpm as dd
from fpjax.learn import trainer as training
from fpjax.learn.models import UNetConfig
from fpjax.learn.objectives import TrainData

MU, V0 = 0.3, 0.09


def test_closed_form_marginals_match_the_markov_chain():
    """q(x_i | x_0) in closed form against iterating x_i = sqrt(1 - beta_i) x_(i-1) + sqrt(beta_i) z."""
    model = dd.DDPM(steps=200)
    x0 = jnp.full((20000, 1), 0.7)
    betas = model.betas()

    def chain(x, inputs):
        beta, k = inputs
        return jnp.sqrt(1 - beta) * x + jnp.sqrt(beta) * jax.random.normal(k, x.shape), x

    level = 120
    x, _ = jax.lax.scan(chain, x0, (jnp.asarray(betas[: level + 1]), jax.random.split(jax.random.key(0), level + 1)))
    ab = model.alphas_bar()[level]
    closed = dd.q_sample(model, x0, jnp.full((20000,), level), jax.random.normal(jax.random.key(1), x0.shape))
    for sample in (x, closed):
        np.testing.assert_allclose(float(jnp.mean(sample)), np.sqrt(ab) * 0.7, atol=0.02)
        np.testing.assert_allclose(float(jnp.var(sample)), 1 - ab, rtol=0.05)
    np.testing.assert_allclose(model.alphas_bar()[-1], np.prod(1 - np.linspace(1e-4, 0.02, 200)))


def test_loss_is_zero_for_the_true_noise():
    model = dd.DDPM()
    x0 = jax.random.uniform(jax.random.key(0), (1, 1, 8, 8, 3))  # one image, T+1 = 1 level
    data = TrainData(x0, jnp.zeros(1, jnp.int32), jnp.asarray(0))
    config = training.TrainConfig(batch_size=4, objective=model)
    ab = jnp.asarray(model.alphas_bar(), jnp.float32)

    def oracle(xt, t, labels):
        level = jnp.round(t * model.steps).astype(int)
        a = ab[level][:, None, None, None]
        return (xt - jnp.sqrt(a) * (2 * x0[0, 0] - 1)[None]) / jnp.sqrt(1 - a)

    assert float(model.loss(oracle, jax.random.key(1), data, config)) < 1e-8
    assert float(model.loss(lambda x, t, labels: jnp.zeros_like(x), jax.random.key(1), data, config)) > 0.5


def _gaussian_eps(model):
    ab = jnp.asarray(model.alphas_bar(), jnp.float32)

    def eps(x, level):
        a = ab[level.astype(int)][:, None]
        return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * MU) / (a * V0 + 1 - a)

    return eps


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_samplers_recover_a_gaussian_from_its_exact_noise(sampler):
    # DDIM's error is first order in its step: 100 steps give variance 0.084, 1000 steps 0.090.
    model = dd.DDPM(sampler=sampler, sampler_steps=1000)
    x = jax.random.normal(jax.random.key(0), (20000, 1))
    out = jax.jit(lambda x: dd.reverse(_gaussian_eps(model), x, jax.random.key(1), model))(x)
    np.testing.assert_allclose(float(jnp.mean(out)), MU, atol=0.01)
    np.testing.assert_allclose(float(jnp.var(out)), V0, rtol=0.04)


def test_denoising_starts_at_the_matching_level():
    model = dd.DDPM()
    level = model.level_for_noise(1.0)
    ab = model.alphas_bar()
    assert abs(np.sqrt((1 - ab[level]) / ab[level]) - 1.0) < 0.02
    levels = dd.ddim_levels(model, level, 100)
    assert levels[0] == level and levels[-1] == 0 and np.all(np.diff(levels) < 0)


def test_training_a_tiny_ddpm_runs_through_the_shared_loop():
    images = jax.image.resize(jax.random.uniform(jax.random.key(0), (1, 4, 4, 3)), (1, 16, 16, 3), "linear")
    config = training.TrainConfig(
        batch_size=4, steps_per_call=5, max_steps=10, target_ssim=None, objective=dd.DDPM(sampler_steps=20)
    )
    unet = UNetConfig(channels=8, channel_mult=(1, 2), attention_resolutions=(), groups=4)
    result = training.train(images, images[:, None], None, unet_config=unet, config=config, progress=False)
    assert [r["step"] for r in result.log] == [5, 10]
    out = dd.generate(dd.eps_function(result), (2, 16, 16, 3), jax.random.key(1), config.objective)
    assert out.shape == (2, 16, 16, 3) and bool(jnp.all((out >= 0) & (out <= 1)))


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_preconditioner_scales_the_noise_term(sampler):
    """With M = 2 I and zero added noise the chain equals the plain one with 4 eps."""

    class Double:
        apply = staticmethod(lambda v: 0 * v)  # no noise: compares the drift alone
        gram = staticmethod(lambda v: 4 * v)

    model = dd.DDPM(sampler=sampler, sampler_steps=50)
    eps = _gaussian_eps(model)
    x = jax.random.normal(jax.random.key(0), (8, 1))
    pre = dd.reverse(eps, x, jax.random.key(1), model, start=200, preconditioner=Double())
    noiseless = dataclasses.replace(model, eta=0.0)
    plain = dd.reverse(lambda x, i: 4 * eps(x, i), x, jax.random.key(1), noiseless, start=200,
                       preconditioner=type("NoNoise", (), {"apply": staticmethod(lambda v: 0 * v),
                                                           "gram": staticmethod(lambda v: v)})())  # fmt: skip
    np.testing.assert_allclose(pre, plain, rtol=1e-5, atol=1e-6)


def test_ddpm_chain_is_the_vp_sde_it_claims():
    ddpm = dd.DDPM()
    levels = np.array([10, 100, 500, 900])
    # Level i has taken i + 1 steps: log alpha_bar at t = (i + 1) / steps against the discrete chain's.
    log_ab = 2 * ddpm.sde.log_mean_scale((levels + 1) / ddpm.steps)
    np.testing.assert_allclose(log_ab, np.log(ddpm.alphas_bar()[levels]), rtol=0.02, atol=2e-4)


def test_train_result_score_is_the_objectives_score():
    """Issue 14: TrainResult.score of a DDPM model is DDPM's -eps / sqrt(1 - alpha_bar) on the same network, not
    the embedded objective's -net / lambda."""
    model = dd.DDPM()
    config = training.bind_sde(training.TrainConfig(objective=model), 0.5)
    unet = UNetConfig(channels=8, channel_mult=(1, 2), attention_resolutions=(), groups=4)
    graphdef, params = training.create_model(unet, 3, 16, jax.random.key(0))
    # A fresh U-Net outputs zeros (zero-initialised last layer): move every weight so the two scores differ.
    params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(3), a.shape, a.dtype), params)
    result = training.TrainResult(graphdef, training.init_state(params, config, jax.random.key(1)), [], [], config)
    x = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
    t = jnp.array([0.1, 0.6])
    expected = model.score(training.network(graphdef, params, False), None, config)(x, t)
    np.testing.assert_allclose(result.score()(x, t), expected, rtol=1e-5, atol=1e-6)
    assert result.sde == model.sde
    # The two objectives' scores differ on the same network: a score taken from the wrong one would show.
    embedded = training.score_function(graphdef, params, training.TrainConfig())(x, t)
    assert float(jnp.max(jnp.abs(embedded - expected))) > 1.0
