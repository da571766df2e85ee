import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fpjax
from fpjax.diffusion import mixtures
from fpjax.diffusion import score_fpe as sf

SDES = [sf.VESDE(0.01, 5.0), sf.VPSDE(), sf.ConstantVE(0.5)]


def _points(mixture, sde, n=12, seed=0):
    x0 = mixture.sample(jax.random.key(seed), n, jnp.float64)
    t = jnp.linspace(0.05, 0.95, n, dtype=jnp.float64)
    return sf.perturb(jax.random.key(seed + 1), x0, t, sde)[0], t


def _wrong_score(x, t):
    """A smooth 3-D field that is not the score of any diffusion: its residual is far from zero."""
    a = jnp.array([[0.3, -0.2, 0.1], [0.4, 0.2, -0.3], [0.0, 0.5, 0.2]], x.dtype)
    return -x / (1.0 + t[:, None]) + t[:, None] * jnp.tanh(x @ a.T) + jnp.sin(3 * t)[:, None] * x**2


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_residual_of_the_exact_mixture_score_is_zero(sde):
    mixture = mixtures.ring()
    x, t = _points(mixture, sde)
    score = mixture.score(sde)
    r = sf.residual(score, x, t, sde)
    scale = jnp.max(jnp.abs(jax.vmap(lambda xi, ti: sf.time_derivative(sf._single(score), xi, ti))(x, t)))
    assert scale > 1.0  # the two sides are large; their difference vanishes
    np.testing.assert_allclose(r, 0.0, atol=1e-10 * scale)
    # The paper's finite difference in t leaves its O(h^2) discretisation error only.
    r_fd = sf.residual(score, x, t, sde, config=sf.ResidualConfig(time_derivative="finite_difference"))
    np.testing.assert_allclose(r_fd, 0.0, atol=1e-3 * scale)


def test_residual_is_not_zero_for_a_wrong_score():
    x = jax.random.normal(jax.random.key(0), (6, 3), jnp.float64)
    t = jnp.full((6,), 0.4, jnp.float64)
    assert jnp.min(jnp.linalg.norm(sf.residual(_wrong_score, x, t, sf.VESDE()), axis=1)) > 0.1


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_estimated_residual_matches_the_exact_one_in_expectation(probe):
    sde = sf.VPSDE(0.1, 5.0)
    x = jax.random.normal(jax.random.key(1), (4, 3), jnp.float64)
    t = jnp.array([0.2, 0.4, 0.6, 0.8])
    exact = sf.residual(_wrong_score, x, t, sde)
    config = sf.ResidualConfig(divergence="hutchinson", probes=20000, probe=probe, time_derivative="finite_difference")
    estimated = sf.residual(_wrong_score, x, t, sde, jax.random.key(2), config)
    np.testing.assert_allclose(estimated, exact, atol=0.03 * float(jnp.max(jnp.abs(exact))))
    # One probe is unbiased but noisy: the mean over keys converges to the exact residual too.
    single = sf.ResidualConfig(divergence="hutchinson", probe=probe)
    draws = jax.vmap(lambda k: sf.residual(_wrong_score, x, t, sde, k, single))(
        jax.random.split(jax.random.key(3), 4000)
    )
    np.testing.assert_allclose(draws.mean(0), exact, atol=0.05 * float(jnp.max(jnp.abs(exact))))


def test_gradient_term_matches_finite_differences():
    sde = sf.VPSDE(0.1, 5.0)
    x = jax.random.normal(jax.random.key(4), (3,), jnp.float64)
    t = jnp.asarray(0.3, jnp.float64)
    s1 = sf._single(_wrong_score)
    grad = jax.grad(lambda y: sf.scalar_term(s1, y, t, sde))(x)
    h = 1e-5
    fd = [(sf.scalar_term(s1, x + h * e, t, sde) - sf.scalar_term(s1, x - h * e, t, sde)) / (2 * h) for e in jnp.eye(3)]
    np.testing.assert_allclose(grad, fd, rtol=1e-7)
    # The divergence itself against central differences of the field.
    div_fd = sum((s1(x + h * e, t)[i] - s1(x - h * e, t)[i]) / (2 * h) for i, e in enumerate(jnp.eye(3)))
    np.testing.assert_allclose(sf.divergence(lambda y: s1(y, t), x), div_fd, rtol=1e-8)


def test_three_point_difference_is_second_order():
    f = lambda x, t: jnp.sin(5 * t) * x
    x = jnp.ones((2,), jnp.float64)
    t = jnp.asarray(0.3, jnp.float64)
    errors = []
    for h in (1e-2, 5e-3):
        config = sf.ResidualConfig(time_derivative="finite_difference", h_s=h, h_d=h / 2)
        errors.append(float(jnp.abs(sf.time_derivative(f, x, t, config) - 5 * jnp.cos(1.5) * x)[0]))
    assert 3.5 < errors[0] / errors[1] < 4.5


def test_curves_vanish_for_the_exact_score_and_not_for_a_wrong_one():
    mixture = mixtures.two_modes()
    sde = sf.VESDE(0.01, 10.0)
    data = mixture.sample(jax.random.key(5), 64, jnp.float64)
    times = jnp.array([0.1, 0.5, 0.9])
    score = mixture.score(sde)
    assert float(jnp.max(sf.residual_curve(score, data, times, jax.random.key(6), sde))) < 1e-8
    wrong = lambda x, t: 1.1 * score(x, t)
    assert float(jnp.min(sf.residual_curve(wrong, data, times, jax.random.key(6), sde))) > 1e-4
    # DSM-like error of the exact score: E|s - grad log p(x_t|x_0)| / D, positive but finite; the conditional
    # score's deviation is ~ 1/sigma(t), larger at small t.
    dsm = sf.dsm_curve(score, data, times, jax.random.key(7), sde)
    assert bool(jnp.all(jnp.isfinite(dsm))) and float(dsm[0]) > float(dsm[-1])


def test_regulariser_is_differentiable_jittable_and_zero_for_the_true_score():
    mixture = mixtures.ring()
    sde = sf.VESDE(0.01, 5.0)
    x, t = _points(mixture, sde, n=8)
    score = mixture.score(sde)
    exact = sf.Regulariser(gamma=1.0, beta=0.0, config=sf.ResidualConfig())
    assert float(sf.regulariser(score, x, t, sde, jax.random.key(0), exact)) < 1e-9

    def penalty(c):
        return sf.regulariser(lambda x, t: c * score(x, t), x, t, sde, jax.random.key(0), sf.Regulariser(1.0, 0.5))

    value, grad = jax.jit(jax.value_and_grad(penalty))(1.2)
    h = 1e-6
    jitted = jax.jit(penalty)
    np.testing.assert_allclose(grad, (jitted(1.2 + h) - jitted(1.2 - h)) / (2 * h), rtol=1e-5)
    assert value > 0


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="divergence"):
        sf.ResidualConfig(divergence="trace")
    with pytest.raises(ValueError, match="weight"):
        sf.Regulariser(weight="g")
    with pytest.raises(ValueError, match="PRNG key"):
        sf.residual(_wrong_score, jnp.ones((1, 3)), jnp.ones(1), sf.VESDE(), None, sf.ESTIMATED)


def test_fp_step_residuals_sit_at_the_solver_tolerance():
    from fpjax.solver import log_density as fp

    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 1.0, (12, 12))
    config = fp.FPConfig(T=10, outer_tol=1e-6)
    solution = fpjax.solve(jnp.log(image / image.sum()), config)
    r = np.asarray(sf.fp_step_residuals(solution.m, config))
    assert r.shape == (10,) and np.all(r < 1e-4)
    # A trajectory that is not the solution has a large residual: the check can fail.
    wrong = solution.m.at[5].add(0.01)
    assert np.asarray(sf.fp_step_residuals(wrong, config))[4] > 100 * r.max()


def test_ddpm_chain_is_the_vp_sde_it_claims():
    from fpjax.learn import ddpm as dd

    ddpm = dd.DDPM()
    levels = np.array([10, 100, 500, 900])
    # Level i has taken i + 1 steps: log alpha_bar at t = (i + 1) / steps against the discrete chain's.
    log_ab = 2 * ddpm.sde.log_mean_scale((levels + 1) / ddpm.steps)
    np.testing.assert_allclose(log_ab, np.log(ddpm.alphas_bar()[levels]), rtol=0.02, atol=2e-4)


@pytest.mark.parametrize("name", ["fpjax", "DDPM"])
def test_regulariser_plugs_into_both_training_objectives(name):
    from fpjax.learn import ddpm as dd
    from fpjax.learn import trainer as training

    base = training.EmbeddedDenoising() if name == "fpjax" else dd.DDPM()
    objective = sf.FPRegularised(base, sf.Regulariser(gamma=0.15, beta=0.01, weight="g2", m=2))
    config = training.TrainConfig(batch_size=2, objective=objective)
    images = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3))
    data = training.TrainData(jnp.repeat(images[:, None], 5, axis=1), jnp.arange(2), jnp.full((5,), 0.5))

    def network(params):
        # A small nonlinear stand-in for the U-Net: the objectives only need net(x, t, labels).
        def net(x, t, labels):
            h = jnp.tanh(x * params["w"] + t[:, None, None, None] * params["v"])
            return h * params["a"] + params["b"][labels][:, None, None, None]

        return net

    params = {"w": 1.3, "v": 0.7, "a": 0.4, "b": jnp.array([0.1, -0.2])}
    key = jax.random.key(3)
    total = float(jax.jit(lambda p: objective.loss(network(p), key, data, config))(params))
    plain = float(base.loss(network(params), jax.random.split(key, 3)[0], data, config))
    assert np.isfinite(total) and total > plain
    grads = jax.jit(jax.grad(lambda p: objective.loss(network(p), key, data, config)))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["v"])) > 0  # the penalty reaches the time dependence (d_t s)


def test_fpe_points_can_be_drawn_at_given_times():
    from fpjax.learn import ddpm as dd
    from fpjax.learn import trainer as training

    images = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3))
    trajectories = images[:, None] + jnp.arange(5.0)[None, :, None, None, None]  # step n adds n
    data = training.TrainData(trajectories, jnp.arange(2), jnp.full((5,), 0.5))
    config = training.TrainConfig(batch_size=3, lam=1e-6)
    t = jnp.full((3,), 0.5)
    x, tb, _ = training.EmbeddedDenoising().fpe_points(jax.random.key(1), data, config, t)
    np.testing.assert_allclose(tb, 0.5)
    assert bool(jnp.all(jnp.abs(x - 2.0 - 0.5) <= 0.5 + 1e-4))  # step 2 of the trajectory: image + 2
    _, tb, _ = dd.DDPM().fpe_points(jax.random.key(1), data, config, t)
    np.testing.assert_allclose(tb, 0.5)
