import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import float64_run

import fpjax
from fpjax import FPConfig
from fpjax.diffusion import sde as sde_lib

STEPS = (0.1, 0.4, 0.2, 0.5, 0.3)  # g at t_n = n/4


def _trapezoid_variance(g, t, points=200001):
    s = np.linspace(0.0, t, points)
    return float(np.trapezoid(np.asarray(g(jnp.asarray(s))) ** 2, s))


def test_fp_config_g_gives_the_matching_sde():
    assert sde_lib.from_fp_config(FPConfig()) == sde_lib.ConstantVE(0.5)
    assert sde_lib.from_fp_config(FPConfig(T=4, g=0.3)) == sde_lib.ConstantVE(0.3)
    assert sde_lib.from_fp_config(FPConfig(T=4, g=STEPS)) == sde_lib.PiecewiseLinearVE(STEPS)
    assert sde_lib.from_fp_config(FPConfig(T=4, g=(0.3,) * 5)) == sde_lib.ConstantVE(0.3)
    g = lambda t: 0.2 + 0.3 * t
    assert sde_lib.from_fp_config(FPConfig(T=4, g=g)) == sde_lib.FunctionVE(g)
    # The schedule's (T+1,) values are the same SDE as the config's g.
    schedule = float64_run(lambda: fpjax.diffusion_schedule(FPConfig(T=4, g=STEPS), dtype=jnp.float64))
    assert sde_lib.as_sde(schedule) == sde_lib.PiecewiseLinearVE(STEPS)
    assert sde_lib.as_sde(FPConfig(T=4, g=0.3)) == sde_lib.ConstantVE(0.3)


def test_bad_g_and_a_drift_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="T\\+1 = 5"):
        sde_lib.from_g((0.1, 0.2, 0.3), T=4)
    with pytest.raises(ValueError, match=r"FPConfig\.g must be finite and >= 0 at every time"):
        sde_lib.from_g((0.1, -0.2))
    with pytest.raises(ValueError, match="drift"):
        sde_lib.from_fp_config(FPConfig(drift=lambda t: (1.0, 0.0)))


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("t", [0.0, 0.1, 0.25, 0.6, 1.0])
def test_piecewise_linear_variance_is_the_exact_integral_of_g_squared(t):
    sde = sde_lib.PiecewiseLinearVE(STEPS)
    np.testing.assert_allclose(float(sde.variance(jnp.asarray(t))), _trapezoid_variance(sde.g, t), rtol=1e-8,
                               atol=1e-14)  # fmt: skip
    # At the t_n it is twice the solver's tau_n = int 1/2 g^2.
    tau = fpjax.solver.problem.diffusion_integral(FPConfig(T=4, g=STEPS))
    np.testing.assert_allclose(sde.variance(jnp.linspace(0.0, 1.0, 5)), 2 * tau, rtol=1e-12)
    np.testing.assert_allclose(sde.g(jnp.asarray([0.125, 0.5])), [0.25, 0.2], rtol=1e-12)


@pytest.mark.usefixtures("x64")
def test_function_variance_is_integrated_accurately():
    sde = sde_lib.FunctionVE(lambda t: 0.2 + 0.3 * jnp.sin(3 * t))
    t = jnp.array([0.05, 0.5, 1.0])
    np.testing.assert_allclose(sde.variance(t), [_trapezoid_variance(sde.g, float(s)) for s in t], rtol=1e-8)
    assert sde.variance(jnp.ones((2, 3))).shape == (2, 3)
    assert "0x" not in repr(sde)  # a stable repr: checkpoint fingerprints hold it


@pytest.mark.parametrize(
    "sde",
    [sde_lib.ConstantVE(0.3), sde_lib.PiecewiseLinearVE(STEPS), sde_lib.VESDE(0.01, 5.0), sde_lib.VPSDE()],
    ids=lambda s: type(s).__name__,
)
def test_kernel_prior_and_its_density_agree(sde):
    x0 = jnp.full((20000, 2), 0.7)
    t = jnp.full((20000,), 0.6)
    x, z = sde_lib.perturb(jax.random.key(0), x0, t, sde)
    mean, std = sde.marginal(x0, t)
    np.testing.assert_allclose(x, mean + std * z, rtol=1e-12)
    tolerance = 4 * float(std[0, 0]) / np.sqrt(x.size)
    np.testing.assert_allclose(float(jnp.mean(x)), 0.7 * float(sde.mean_scale(0.6)), atol=tolerance)
    np.testing.assert_allclose(float(jnp.var(x)), float(sde.variance(jnp.asarray(0.6))), rtol=0.03)
    prior = sde.prior_sampling(jax.random.key(1), (20000, 2))
    np.testing.assert_allclose(float(jnp.var(prior)), float(sde.variance(jnp.asarray(1.0))), rtol=0.03)
    v = sde.variance(jnp.asarray(1.0))
    expected = -0.5 * jnp.sum(prior[:3] ** 2, axis=1) / v - jnp.log(2 * jnp.pi * v)
    np.testing.assert_allclose(sde.prior_logp(prior[:3]), expected, rtol=1e-12)


def test_equivalent_sdes_agree_to_rounding():
    from_float32 = sde_lib.as_sde(fpjax.diffusion_schedule(FPConfig(T=4, g=0.3)))  # float32 values
    assert from_float32 != sde_lib.ConstantVE(0.3)
    assert sde_lib.equivalent(from_float32, sde_lib.ConstantVE(0.3))
    assert sde_lib.equivalent(sde_lib.PiecewiseLinearVE((0.3,) * 5), sde_lib.ConstantVE(0.3))
    assert not sde_lib.equivalent(sde_lib.ConstantVE(0.5), sde_lib.ConstantVE(0.3))
    assert not sde_lib.equivalent(sde_lib.VPSDE(), sde_lib.ConstantVE(0.5))
