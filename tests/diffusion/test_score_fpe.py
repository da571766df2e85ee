import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fpjax.diffusion import mixtures
from fpjax.diffusion import score_fpe as sf
from fpjax.diffusion import sde as sde_lib

SDES = [sde_lib.VESDE(0.01, 5.0), sde_lib.VPSDE(), sde_lib.ConstantVE(0.5)]


def _points(mixture, sde, n=12, seed=0):
    x0 = mixture.sample(jax.random.key(seed), n, jnp.float64)
    t = jnp.linspace(0.05, 0.95, n, dtype=jnp.float64)
    return sde_lib.perturb(jax.random.key(seed + 1), x0, t, sde)[0], t


def _wrong_score(x, t):
    """A smooth 3-D field that is not the score of any diffusion: its residual is far from zero."""
    a = jnp.array([[0.3, -0.2, 0.1], [0.4, 0.2, -0.3], [0.0, 0.5, 0.2]], x.dtype)
    return -x / (1.0 + t[:, None]) + t[:, None] * jnp.tanh(x @ a.T) + jnp.sin(3 * t)[:, None] * x**2


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_residual_of_the_exact_mixture_score_is_zero(sde):
    mixture = mixtures.ring()
    x, t = _points(mixture, sde)
    score = mixture.score(sde)
    r = sf.residual(score, x, t, sde)
    scale = jnp.max(jnp.abs(jax.vmap(lambda xi, ti: sf.time_derivative(sf.single_sample(score), xi, ti))(x, t)))
    assert scale > 1.0  # the two sides are large; their difference vanishes
    np.testing.assert_allclose(r, 0.0, atol=1e-10 * scale)
    # The paper's finite difference in t leaves its O(h^2) discretisation error only.
    r_fd = sf.residual(score, x, t, sde, config=sf.ResidualConfig(time_derivative="finite_difference"))
    np.testing.assert_allclose(r_fd, 0.0, atol=1e-3 * scale)


def test_residual_is_not_zero_for_a_wrong_score():
    x = jax.random.normal(jax.random.key(0), (6, 3))
    t = jnp.full((6,), 0.4)
    assert jnp.min(jnp.linalg.norm(sf.residual(_wrong_score, x, t, sde_lib.VESDE()), axis=1)) > 0.1


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_estimated_residual_matches_the_exact_one_in_expectation(probe):
    sde = sde_lib.VPSDE(0.1, 5.0)
    x = jax.random.normal(jax.random.key(1), (4, 3))
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


@pytest.mark.usefixtures("x64")
def test_gradient_term_matches_finite_differences():
    sde = sde_lib.VPSDE(0.1, 5.0)
    x = jax.random.normal(jax.random.key(4), (3,), jnp.float64)
    t = jnp.asarray(0.3, jnp.float64)
    s1 = sf.single_sample(_wrong_score)
    grad = jax.grad(lambda y: sf.scalar_term(s1, y, t, sde))(x)
    h = 1e-5
    fd = [(sf.scalar_term(s1, x + h * e, t, sde) - sf.scalar_term(s1, x - h * e, t, sde)) / (2 * h) for e in jnp.eye(3)]
    np.testing.assert_allclose(grad, fd, rtol=1e-7)
    # The divergence itself against central differences of the field.
    div_fd = sum((s1(x + h * e, t)[i] - s1(x - h * e, t)[i]) / (2 * h) for i, e in enumerate(jnp.eye(3)))
    np.testing.assert_allclose(sf.divergence(lambda y: s1(y, t), x), div_fd, rtol=1e-8)


@pytest.mark.usefixtures("x64")
def test_three_point_difference_is_second_order():
    f = lambda x, t: jnp.sin(5 * t) * x
    x = jnp.ones((2,), jnp.float64)
    t = jnp.asarray(0.3, jnp.float64)
    errors = []
    for h in (1e-2, 5e-3):
        config = sf.ResidualConfig(time_derivative="finite_difference", h_s=h, h_d=h / 2)
        errors.append(float(jnp.abs(sf.time_derivative(f, x, t, config) - 5 * jnp.cos(1.5) * x)[0]))
    assert 3.5 < errors[0] / errors[1] < 4.5


@pytest.mark.usefixtures("x64")
def test_curves_vanish_for_the_exact_score_and_not_for_a_wrong_one():
    mixture = mixtures.two_modes()
    sde = sde_lib.VESDE(0.01, 10.0)
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


@pytest.mark.usefixtures("x64")
def test_regulariser_is_differentiable_jittable_and_zero_for_the_true_score():
    mixture = mixtures.ring()
    sde = sde_lib.VESDE(0.01, 5.0)
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
        sf.residual(_wrong_score, jnp.ones((1, 3)), jnp.ones(1), sde_lib.VESDE(), None, sf.ESTIMATED)
