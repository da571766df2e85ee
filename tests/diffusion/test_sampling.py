import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fpjax import FPConfig
from fpjax.diffusion import pds, sampling
from fpjax.diffusion import sde as sde_lib

MU, V0, G = 0.3, 0.04, 0.5


def gaussian_score(x, t):
    """Exact score of N(MU, V0) diffused by the VE SDE dx = G dW: N(MU, V0 + G^2 t)."""
    return -(x - MU) / (V0 + G**2 * t[:, None])


@pytest.mark.parametrize("method", ["sde", "ode"])
@pytest.mark.parametrize("schedule", ["uniform", "quadratic"])
def test_reverse_process_recovers_a_gaussian(method, schedule):
    n = 20000
    sde = sde_lib.ConstantVE(G)
    config = sampling.SamplerConfig(steps=400, method=method, schedule=schedule, clip=False, final_noise=True)
    x1 = sampling.prior_sample(jax.random.key(0), (n, 1), sde, mean=MU) * 1.0
    # The exact marginal at t = 1 is N(MU, V0 + G^2): rescale the prior (variance G^2) to it.
    x1 = MU + (x1 - MU) * np.sqrt((V0 + G**2) / G**2)
    x0 = jax.jit(lambda x, k: sampling.reverse_sample(gaussian_score, x, k, sde, config))(x1, jax.random.key(1))
    # Sampling error of mean/variance over n draws, plus Euler's O(dt) bias.
    np.testing.assert_allclose(float(jnp.mean(x0)), MU, atol=4 * np.sqrt(V0 / n) + 2e-3)
    np.testing.assert_allclose(float(jnp.var(x0)), V0, rtol=0.05)


def test_tweedie_step_denoises_a_point_mass_exactly():
    clean = jnp.full((1, 16, 16, 1), 0.4)
    lam = 0.1
    score = lambda x, t: -(x - clean) / lam**2
    config = sampling.SamplerConfig(steps=3, method="ode", t_start=0.2, tweedie=lam**2, clip=False)
    out = sampling.denoise(score, clean + 0.3, jax.random.key(0), sde_lib.ConstantVE(G), config)
    np.testing.assert_allclose(out, clean, atol=1e-6)


def test_schedules():
    uniform = sampling.SamplerConfig(steps=4).times()
    np.testing.assert_allclose(uniform, [1.0, 0.75, 0.5, 0.25, 0.0])
    quad = sampling.SamplerConfig(steps=4, schedule="quadratic", t_end=0.0).times()
    np.testing.assert_allclose(quad, [1.0, 0.5625, 0.25, 0.0625, 0.0])
    with pytest.raises(ValueError, match="t_start"):
        sampling.SamplerConfig(t_start=0.0)
    with pytest.raises(ValueError, match="method"):
        sampling.SamplerConfig(method="euler")


def test_the_sdes_g_interpolates_the_fp_configs_steps():
    g = sde_lib.from_fp_config(FPConfig(T=4, g=(0.1, 0.2, 0.3, 0.4, 0.5))).g
    np.testing.assert_allclose(g(jnp.array([0.0, 0.125, 1.0])), [0.1, 0.15, 0.5], rtol=1e-6)


@pytest.mark.parametrize("g", [0.3, (0.1, 0.2, 0.3, 0.4, 0.5), lambda t: 0.2 + 0.3 * t], ids=["scalar", "steps", "fn"])
def test_the_prior_spread_is_the_sdes_variance(g):
    """The prior of generation is N(mean, int_0^t_start g^2): a bare g function and the SDE give the same one."""
    sde = sde_lib.from_fp_config(FPConfig(T=4, g=g))
    x = sampling.prior_sample(jax.random.key(0), (40000, 1), sde, t_start=0.8, mean=0.5)
    assert abs(float(jnp.mean(x)) - 0.5) < 4 * np.sqrt(float(sde.variance(0.8)) / 40000)
    np.testing.assert_allclose(float(jnp.var(x)), float(sde.variance(0.8)), rtol=0.03)
    bare = sampling.prior_sample(jax.random.key(0), (8, 1), sde_lib.from_g(g, 4).g, t_start=0.8)
    np.testing.assert_allclose(bare, sampling.prior_sample(jax.random.key(0), (8, 1), sde, 0.8), rtol=1e-5)


def test_the_sampler_follows_the_sdes_drift():
    """The probability-flow ODE of the VP SDE with the exact score of N(0, I), which it keeps, stays put."""
    sde = sde_lib.VPSDE(0.1, 5.0)
    config = sampling.SamplerConfig(steps=400, method="ode", clip=False)
    x = jax.random.normal(jax.random.key(0), (4, 3))
    out = sampling.reverse_sample(lambda x, t: -x, x, jax.random.key(1), sde, config)
    np.testing.assert_allclose(out, x, rtol=1e-10)
    drifted = sampling.reverse_sample(lambda x, t: -x, x, jax.random.key(1), sde_lib.ConstantVE(1.0), config)
    assert float(jnp.max(jnp.abs(drifted - x))) > 0.1


def test_sde_noise_depends_on_the_key_and_ode_does_not():
    x = jnp.full((2, 16, 16, 1), 0.5)
    score = lambda x, t: -x
    sde = sde_lib.ConstantVE(G)
    for method, differs in (("sde", True), ("ode", False)):
        config = sampling.SamplerConfig(steps=5, method=method)
        a = sampling.reverse_sample(score, x, jax.random.key(0), sde, config)
        b = sampling.reverse_sample(score, x, jax.random.key(1), sde, config)
        assert bool(jnp.any(a != b)) == differs


def test_generate_has_the_closed_form_law_of_the_reverse_sde():
    """Generation from the prior N(0.5, G^2) with the exact score of N(MU, V0) under dx = G dW.

    The reverse SDE with an exact Gaussian score is linear: a start off the true marginal N(MU, V0 + G^2) keeps
    its offsets from it scaled by r(t) = (V0 + G^2 t) / (V0 + G^2), the mean offset by r and the variance offset
    by r^2. At t = 0, r0 = V0 / (V0 + G^2): mean MU + (0.5 - MU) r0, variance V0 - r0^2 V0 (not the data's MU and
    V0: the prior is not the marginal). Batched images; within Monte Carlo error plus Euler-Maruyama's O(dt)."""
    shape = (4096, 2, 2, 1)
    n = int(np.prod(shape))
    config = sampling.SamplerConfig(steps=500, clip=False, final_noise=True)
    out = jax.jit(lambda k: sampling.generate(gaussian_score_image, shape, k, sde_lib.ConstantVE(G), config, mean=0.5))(
        jax.random.key(0)
    )
    assert out.shape == shape
    r0 = V0 / (V0 + G**2)
    mean, var = MU + (0.5 - MU) * r0, V0 * (1.0 - r0**2)
    assert abs(float(jnp.mean(out)) - mean) < 4 * np.sqrt(var / n) + 2e-3
    np.testing.assert_allclose(float(jnp.var(out)), var, rtol=4 * np.sqrt(2.0 / n) + 0.01)
    assert abs(float(jnp.mean(out)) - MU) > 0.02  # the closed form is not the data's law: the check can tell


@pytest.mark.usefixtures("x64")
def test_sampler_is_differentiable_in_its_start():
    """The ODE sampler of a linear score is linear: its gradient matches central differences (float64)."""
    config = sampling.SamplerConfig(steps=20, method="ode", clip=False)
    sde = sde_lib.ConstantVE(G)
    x = jnp.linspace(0.0, 1.0, 6, dtype=jnp.float64).reshape(6, 1)

    def total(x):
        return jnp.sum(sampling.reverse_sample(gaussian_score, x, jax.random.key(0), sde, config) ** 2)

    grad = jax.grad(total)(x)
    eps = 1e-6
    bump = jnp.zeros_like(x).at[2, 0].set(eps)
    fd = (total(x + bump) - total(x - bump)) / (2 * eps)
    np.testing.assert_allclose(float(grad[2, 0]), float(fd), rtol=1e-6)


@pytest.mark.run_bound
def test_preconditioned_corrector_keeps_a_gaussian_target():
    """PDS (theorems 2-3): Langevin steps x + eps M M^T s + sqrt(2 eps) M z keep N(mean, var) stationary.

    Song et al.'s step rule sets eps from |z| / |M^T s| per sample; in few dimensions those norms
    fluctuate and the state-dependent step biases the variance (27% at 16 pixels), so the check uses
    256 pixels, where they concentrate. (Fixed steps: ``tests/test_pds.py``.)
    """
    shape = (16, 16, 1)
    mean = jnp.linspace(0.2, 0.8, 256).reshape(shape)
    var = jnp.full(shape, 0.05)
    score = lambda x, t: -(x - jnp.broadcast_to(mean, x.shape)) / jnp.broadcast_to(var, x.shape)  # noqa: E731
    data = jax.random.uniform(jax.random.key(0), (32,) + shape)
    m = pds.from_data(data, alpha=2.0)

    def chain(x, k):
        return sampling.corrector_step(score(x, None), x, k, 0.1, m), None

    x0 = jnp.zeros((1000,) + shape)
    x, _ = jax.jit(lambda x: jax.lax.scan(chain, x, jax.random.split(jax.random.key(1), 1500)))(x0)
    flat = np.asarray(x).reshape(1000, -1)
    np.testing.assert_allclose(flat.mean(0), np.asarray(mean).ravel(), atol=0.04)
    np.testing.assert_allclose(flat.var(0).mean(), 0.05, rtol=0.06)
    np.testing.assert_allclose(flat.var(0), 0.05, rtol=0.25)


def test_preconditioner_enters_the_sampler():
    """With M = 2 I the ODE's score term is scaled by M M^T = 4: compare with the plain sampler at 4 s."""

    class Double:
        apply = transpose = staticmethod(lambda v: 2 * v)
        gram = staticmethod(lambda v: 4 * v)

    sde = sde_lib.ConstantVE(G)
    config = sampling.SamplerConfig(steps=10, method="ode", clip=False)
    x = jnp.full((2, 4, 4, 1), 0.9)
    pre = sampling.reverse_sample(gaussian_score_image, x, jax.random.key(0), sde, config, preconditioner=Double())
    plain = sampling.reverse_sample(lambda x, t: 4 * gaussian_score_image(x, t), x, jax.random.key(0), sde, config)
    np.testing.assert_allclose(pre, plain, rtol=1e-6)


def gaussian_score_image(x, t):
    return -(x - MU) / (V0 + G**2 * t[:, None, None, None])
