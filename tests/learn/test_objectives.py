import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fpjax.diffusion import sampling
from fpjax.diffusion import score_fpe as sf
from fpjax.diffusion import sde as sde_lib
from fpjax.learn import ddpm as dd
from fpjax.learn import objectives as losses
from fpjax.learn.trainer import TrainConfig

VE = sde_lib.ConstantVE(0.5)


def _network(params):
    """A small nonlinear stand-in for the U-Net: the objectives only need net(x, t, labels)."""

    def net(x, t, labels):
        h = jnp.tanh(x * params["w"] + t[:, None, None, None] * params["v"])
        return h * params["a"] + params["b"][labels][:, None, None, None]

    return net


PARAMS = {"w": 1.3, "v": 0.7, "a": 0.4, "b": jnp.array([0.1, -0.2])}


def test_loss_is_zero_for_the_exact_denoiser_and_positive_otherwise():
    lam = 0.1
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
    z = jax.random.normal(jax.random.key(1), x.shape)
    t = jnp.linspace(0.0, 1.0, 4)
    g = jnp.full((4,), 0.5)
    exact = lambda noisy, t: -(noisy - x) / lam**2  # = -z / lam at the perturbed points
    # float32: (x + lam z) - x is z lam to rounding, 6e-8 / lam in s lam + z (measured loss: 4.4e-14)
    assert float(losses.embedded_denoising_loss(exact, x, t, g, z, lam)) < 1e-10
    zero = lambda noisy, t: jnp.zeros_like(noisy)
    # s = 0 leaves E|z|^2 / (2 g^2) = 1 / (2 * 0.25) = 2 per pixel.
    value = float(losses.embedded_denoising_loss(zero, x, t, g, z, lam))
    np.testing.assert_allclose(value, float(jnp.mean(z**2)) / (2 * 0.25), rtol=1e-6)


def test_loss_weights_by_g_squared():
    x = jnp.zeros((2, 4, 4, 1))
    z = jnp.ones_like(x)
    zero = lambda noisy, t: jnp.zeros_like(noisy)
    value = losses.embedded_denoising_loss(zero, x, jnp.zeros(2), jnp.array([1.0, 2.0]), z)
    np.testing.assert_allclose(float(value), (1 / 2 + 1 / 8) / 2)


def test_time_sampling_covers_every_level():
    T = 10
    uniform = losses.sample_time_indices(jax.random.key(0), 5000, T)
    assert int(uniform.min()) == 0 and int(uniform.max()) == T
    counts = np.bincount(np.asarray(uniform), minlength=T + 1)
    assert counts.min() > 5000 / (T + 1) * 0.8
    stratified = losses.sample_time_indices(jax.random.key(1), T + 1, T, stratified=True)
    np.testing.assert_array_equal(np.sort(np.asarray(stratified)), np.arange(T + 1))


@pytest.mark.parametrize("name", ["fpjax", "DDPM"])
def test_regulariser_plugs_into_both_training_objectives(name):
    base = losses.EmbeddedDenoising(VE) if name == "fpjax" else dd.DDPM()
    objective = losses.FPRegularised(base, sf.Regulariser(gamma=0.15, beta=0.01, weight="g2", m=2))
    config = TrainConfig(batch_size=2, objective=objective)
    images = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3))
    data = losses.TrainData(jnp.repeat(images[:, None], 5, axis=1), jnp.arange(2))
    key = jax.random.key(3)
    total = float(jax.jit(lambda p: objective.loss(_network(p), key, data, config))(PARAMS))
    plain = float(base.loss(_network(PARAMS), jax.random.split(key, 3)[0], data, config))
    assert np.isfinite(total) and total > plain
    grads = jax.jit(jax.grad(lambda p: objective.loss(_network(p), key, data, config)))(PARAMS)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["v"])) > 0  # the penalty reaches the time dependence (d_t s)


def test_fpe_points_can_be_drawn_at_given_times():
    images = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3))
    trajectories = images[:, None] + jnp.arange(5.0)[None, :, None, None, None]  # step n adds n
    data = losses.TrainData(trajectories, jnp.arange(2))
    config = TrainConfig(batch_size=3, lam=1e-6)
    t = jnp.full((3,), 0.5)
    x, tb, _ = losses.EmbeddedDenoising().fpe_points(jax.random.key(1), data, config, t)
    np.testing.assert_allclose(tb, 0.5)
    assert bool(jnp.all(jnp.abs(x - 2.0 - 0.5) <= 0.5 + 1e-4))  # step 2 of the trajectory: image + 2
    _, tb, _ = dd.DDPM().fpe_points(jax.random.key(1), data, config, t)
    np.testing.assert_allclose(tb, 0.5)


def test_embedded_denoising_weights_checks_and_regularises_with_its_sde():
    """Every part of the objective reads g from its SDE: the eq. 29 weight 1/(2 g^2), the check's sampler and the
    g^2-weighted regulariser."""
    images = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3))
    data = losses.TrainData(jnp.repeat(images[:, None], 5, axis=1), jnp.arange(2))
    config = TrainConfig(batch_size=4, sampler=sampling.SamplerConfig(steps=4, method="ode", clip=False))
    net, key = _network(PARAMS), jax.random.key(1)
    a, b = losses.EmbeddedDenoising(sde_lib.ConstantVE(0.3)), losses.EmbeddedDenoising(VE)
    np.testing.assert_allclose(float(a.loss(net, key, data, config)), float(b.loss(net, key, data, config)) * 25 / 9,
                               rtol=1e-5)  # fmt: skip
    # The ODE check moves its input by int 1/2 g^2 s dt over t in [0, 1]: -0.09 for g = 0.3 and a constant s = -2.
    constant = lambda x, t, labels: jnp.full_like(x, 0.2)  # s = -0.2 / lambda
    moved = a.denoise(constant, images, jnp.arange(2), key, config) - images
    np.testing.assert_allclose(moved, -0.5 * 0.09 * 2.0, rtol=1e-5)
    reg = sf.Regulariser(gamma=1.0, weight="g2", config=sf.EXACT)
    k_loss, k_points, k_reg = jax.random.split(key, 3)  # FPRegularised's split of its key
    penalties = [
        float(losses.FPRegularised(o, reg).loss(net, key, data, config) - o.loss(net, k_loss, data, config))
        for o in (a, b)
    ]
    x, t, labels = a.fpe_points(k_points, data, config)
    score = lambda x, t, labels: a.score(net, labels, config)(x, t)
    expected = float(sf.regulariser(score, x, t, sde_lib.ConstantVE(0.3), k_reg, reg, labels))
    np.testing.assert_allclose(penalties[0], expected, rtol=1e-4)
    assert abs(penalties[0] - penalties[1]) > 1e-3 * abs(penalties[1])


def test_an_objective_is_bound_to_one_sde():
    bound = losses.EmbeddedDenoising().with_sde(VE)
    assert bound.sde == VE and bound.with_sde(sde_lib.PiecewiseLinearVE((0.5,) * 3)) is bound
    with pytest.raises(ValueError, match="not the one the trajectories were made with"):
        bound.with_sde(sde_lib.ConstantVE(0.3))
    assert losses.FPRegularised(losses.EmbeddedDenoising()).with_sde(VE).sde == VE
    assert dd.DDPM().with_sde(VE).sde == dd.DDPM().sde  # DDPM keeps its VP SDE
    data = losses.TrainData(jnp.zeros((1, 3, 4, 4, 1)), jnp.zeros(1, jnp.int32))
    with pytest.raises(ValueError, match="no SDE yet"):
        losses.EmbeddedDenoising().loss(_network(PARAMS), jax.random.key(0), data, TrainConfig(batch_size=2))
