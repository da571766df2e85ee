import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fpjax
from fpjax import FPConfig
from fpjax.diffusion import sampling
from fpjax.diffusion import score_fpe as sf
from fpjax.diffusion import sde as sde_lib
from fpjax.eval import metrics
from fpjax.learn import objectives as losses
from fpjax.learn import trainer as training
from fpjax.learn.models import UNetConfig

TINY = UNetConfig(channels=8, channel_mult=(1, 2), attention_resolutions=(8,), groups=4)
SIZE, T = 16, 10


def _data(count=2):
    """Smooth random images and trajectories that drift slowly away from them (float32)."""
    key = jax.random.key(42)
    coarse = jax.random.uniform(key, (count, 4, 4, 3), jnp.float32)
    images = jax.image.resize(coarse, (count, SIZE, SIZE, 3), "linear")
    drift = jnp.linspace(0.0, 0.02, T + 1, dtype=jnp.float32)[None, :, None, None, None]
    return images, images[:, None] + drift, jnp.full((T + 1,), 0.5, jnp.float32)


def _config(**changes):
    base = dict(
        batch_size=4,
        steps_per_call=5,
        max_steps=10,
        target_ssim=None,
        sampler=sampling.SamplerConfig(steps=8, method="ode"),
    )
    return training.TrainConfig(**{**base, **changes})


def _fixed_loss(graphdef, params, config, trajectories, g):
    x = trajectories[0]
    z = jax.random.normal(jax.random.key(7), x.shape, x.dtype)
    t = jnp.linspace(0.0, 1.0, T + 1, dtype=x.dtype)
    score = training.score_function(graphdef, params, config)
    return float(losses.embedded_denoising_loss(score, x, t, g, z, config.lam))


def test_a_few_steps_lower_the_loss_and_raise_denoising_ssim():
    images, trajectories, g = _data(1)
    config = training.bind_sde(_config(), g)
    graphdef, params = training.create_model(TINY, 3, SIZE, jax.random.key(0))
    state = training.init_state(params, config, jax.random.key(1))
    data = training.TrainData(trajectories, jnp.zeros(1, jnp.int32))
    before = _fixed_loss(graphdef, state.params, config, trajectories, g)
    state, step_losses = training.train_steps(graphdef, state, data, config, 60, False)
    after = _fixed_loss(graphdef, state.params, config, trajectories, g)
    assert np.all(np.isfinite(step_losses)) and int(state.step) == 60
    assert after < 0.7 * before
    noisy = sampling.noisy_copy(jax.random.key(3), images, 0.5)
    denoised, quality = training.evaluate(
        graphdef, state.ema, noisy, images, jnp.zeros(1, jnp.int32), g, jax.random.key(4), config, False
    )
    assert float(quality["ssim"][0]) > float(metrics.ssim(jnp.clip(noisy, 0, 1), images)[0]) + 0.1


def test_fused_and_stepwise_training_agree():
    images, trajectories, g = _data(1)
    graphdef, params = training.create_model(TINY, 3, SIZE, jax.random.key(0))
    data = training.TrainData(trajectories, jnp.zeros(1, jnp.int32))
    results = []
    for fuse in (True, False):
        config = training.bind_sde(_config(fuse_steps=fuse), g)
        state = training.init_state(params, config, jax.random.key(1))
        results.append(training.train_steps(graphdef, state, data, config, 3, False))
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(results[0][0].params), jax.tree.leaves(results[1][0].params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_early_stopping_stops_at_the_target():
    images, trajectories, g = _data(1)
    result = training.train(images, trajectories, g, unet_config=TINY, config=_config(max_steps=15), progress=False)
    assert [r["step"] for r in result.log] == [5, 10, 15] and not result.images[0]["reached"]
    # A target reached in the middle of the run stops exactly at the first evaluation that meets it.
    ssims = [r["ssim"] for r in result.log]
    target = ssims[1]  # met at the second evaluation at the latest
    rerun = training.train(
        images, trajectories, g, unet_config=TINY, config=_config(max_steps=15, target_ssim=target), progress=False
    )
    stop = next(i for i, s in enumerate(ssims) if s >= target)
    assert len(rerun.log) == stop + 1 and rerun.images[0]["reached"]
    for record in rerun.log:
        assert record["wall_seconds"] == pytest.approx(record["train_seconds"])


def test_mixed_training_with_per_image_labels():
    images, trajectories, g = _data(2)
    config = UNetConfig(channels=8, channel_mult=(1, 2), attention_resolutions=(), groups=4, num_images=2)
    result = training.train(images, trajectories, g, unet_config=config, config=_config(), mode="mixed", progress=False)
    assert len(result.images) == 1 and result.images[0]["steps"] == 10
    assert result.uses_labels
    out = result.score(labels=jnp.array([0, 1]))(images, jnp.array([0.5, 0.5]))
    assert out.shape == images.shape and bool(jnp.all(jnp.isfinite(out)))


def test_bad_inputs_are_named():
    images, trajectories, g = _data(1)
    with pytest.raises(ValueError, match="trajectories"):
        training.train(images, trajectories[:, :, :8], g, unet_config=TINY, progress=False)
    with pytest.raises(ValueError, match="g_values"):
        training.train(images, trajectories, g[:-1], unet_config=TINY, progress=False)
    with pytest.raises(ValueError, match="mode"):
        training.train(images, trajectories, g, unet_config=TINY, mode="batched", progress=False)
    with pytest.raises(ValueError, match="parametrization"):
        training.TrainConfig(parametrization="eps")


@pytest.mark.parametrize(
    "g, where", [(0.0, "g is 0 at t = 0 (11 of the 11"), (jnp.linspace(0.0, 0.5, T + 1), "g is 0 at t = 0 (1 of")]
)
def test_a_g_that_is_zero_at_a_step_time_is_refused_before_training(g, where):
    """Eq. 29 weights by 1 / (2 g(t_n)^2): FPConfig(g=0) is accepted (no diffusion) but cannot be trained on."""
    images, trajectories, _ = _data(1)
    with pytest.raises(ValueError, match=re.escape(where) + ".*1 / \\(2 g\\^2\\)"):
        training.train(images, trajectories, FPConfig(T=T, g=g), unet_config=TINY, progress=False)


def test_replay_draws_earlier_images_in_the_stated_fraction():
    trajectories = jnp.arange(4, dtype=jnp.float32)[:, None, None, None, None] * jnp.ones((4, T + 1, 2, 2, 1))
    labels = jnp.arange(4)
    config = _config(batch_size=4000, replay=0.3)

    def drawn(current):
        data = training.TrainData(trajectories, labels, jnp.asarray(current))
        x = losses.trajectory_batch(jax.random.key(0), data, config)[0]
        return np.asarray(x[:, 0, 0, 0]).astype(int)

    counts = np.bincount(drawn(2), minlength=4)
    assert counts[3] == 0 and abs(counts[2] / 4000 - 0.7) < 0.03 and abs(counts[0] - counts[1]) < 200
    assert set(drawn(0)) == {0}
    assert np.all(np.abs(np.bincount(drawn(-1), minlength=4) / 4000 - 0.25) < 0.03)


def test_every_component_sees_the_fp_configs_g():
    """Issue 14: a run made with FPConfig.g = 0.3 weights its loss, checks, regularises and samples with g = 0.3
    (the objective's SDE was a fixed ConstantVE(0.5) before, whatever the FP config)."""
    fp_config, g_03 = FPConfig(T=T, g=0.3), sde_lib.ConstantVE(0.3)
    images, trajectories, _ = _data(1)
    config = _config(batch_size=2, steps_per_call=2, max_steps=2)
    result = training.train(images, trajectories, fp_config, unet_config=TINY, config=config, progress=False)
    assert int(result.state.step) == 2 and np.isfinite(result.log[-1]["loss"])
    times = jnp.linspace(0.0, 1.0, 5)
    for sde in (result.sde, result.config.objective.sde):
        np.testing.assert_allclose(sde.g(times), 0.3, rtol=1e-6)
        np.testing.assert_allclose(sde.variance(times), 0.09 * times, rtol=1e-6, atol=1e-12)
    # The (T+1,) g values callers pass today bind the same SDE.
    assert sde_lib.equivalent(training.bind_sde(config, fpjax.diffusion_schedule(fp_config)).objective.sde, g_03)

    net = training.network(result.graphdef, result.state.ema, False)
    data = training.TrainData(trajectories, jnp.zeros(1, jnp.int32), jnp.asarray(0))
    key = jax.random.key(5)
    # Loss weighting: eq. 29 with 1 / (2 * 0.3^2).
    x, t, z, labels = losses.trajectory_batch(key, data, result.config)
    expected = losses.embedded_denoising_loss(result.score(), x, t, jnp.full(t.shape, 0.3), z, result.config.lam)
    np.testing.assert_allclose(float(result.config.objective.loss(net, key, data, result.config)), float(expected),
                               rtol=1e-5)  # fmt: skip
    # The score-FPE regulariser of a regularised run: its residual and g^2 weight under g = 0.3 (a small stand-in
    # network: the double derivative through the U-Net costs minutes on a CPU).
    reg = sf.Regulariser(gamma=1.0, weight="g2", config=sf.EXACT)
    regularised = training.bind_sde(_config(objective=losses.FPRegularised(losses.EmbeddedDenoising(), reg)),
                                    fp_config).objective  # fmt: skip
    assert regularised.sde == g_03
    toy = lambda x, t, labels: jnp.tanh(x) * (0.3 + t[:, None, None, None])
    small = losses.TrainData(trajectories[:, :, :4, :4], jnp.zeros(1, jnp.int32), jnp.asarray(0))
    values = [
        float(o.loss(toy, key, small, config))
        for o in (regularised, losses.FPRegularised(losses.EmbeddedDenoising(g_03), reg),
                  losses.FPRegularised(losses.EmbeddedDenoising(sde_lib.ConstantVE(0.5)), reg))
    ]  # fmt: skip
    assert values[0] == values[1] and abs(values[2] - values[0]) > 1e-3 * values[0]
    # The denoising check and generation sample with g = 0.3, from a prior of spread 0.3.
    noisy = sampling.noisy_copy(jax.random.key(6), images, 0.5)
    checked, _ = training.evaluate(result.graphdef, result.state.ema, noisy, images, jnp.zeros(1, jnp.int32), None,
                                   key, result.config, False)  # fmt: skip
    np.testing.assert_allclose(checked, sampling.denoise(result.score(), noisy, key, g_03, config.sampler), rtol=1e-4,
                               atol=1e-5)  # fmt: skip
    prior = sampling.prior_sample(jax.random.key(7), (20000, 1), result.sde, mean=0.0)
    np.testing.assert_allclose(float(jnp.std(prior)), 0.3, rtol=0.02)
    shape = (1, SIZE, SIZE, 3)
    generated = sampling.generate(result.score(), shape, key, result.sde, config.sampler)
    np.testing.assert_allclose(generated, sampling.generate(result.score(), shape, key, g_03, config.sampler),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_trajectories_and_fp_config_must_agree():
    images, trajectories, _ = _data(1)
    with pytest.raises(ValueError, match="T = 4"):
        training.train(images, trajectories, FPConfig(T=4), unet_config=TINY, progress=False)
    with pytest.raises(ValueError, match="needs the SDE of the trajectories"):
        training.train(images, trajectories, None, unet_config=TINY, progress=False)
    with pytest.raises(ValueError, match="drift"):
        training.train(images, trajectories, FPConfig(T=T, drift=lambda t: (1.0, 0.0)), unet_config=TINY,
                       progress=False)  # fmt: skip
