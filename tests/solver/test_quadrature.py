"""The integrals of g^2 (fpjax.solver.quadrature) and the one check of g, against closed forms and SciPy.

Both users of each rule are checked here: the solver's ``tau_n = int_0^(t_n) 1/2 g^2``
(:func:`fpjax.solver.problem.diffusion_integral`) and the SDEs' variances ``int_0^t g^2``
(:class:`fpjax.diffusion.sde.FunctionVE`, :class:`fpjax.diffusion.sde.PiecewiseLinearVE`).
"""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

from fpjax.diffusion import sde as sde_lib
from fpjax.solver import quadrature
from fpjax.solver.problem import FPConfig, diffusion_integral

# g and the closed form of int_0^t g^2
CLOSED_FORMS = {
    "t": (lambda t: t, lambda t: t**3 / 3),
    "0.1 25^t": (lambda t: 0.1 * 25.0**t, lambda t: 0.01 * (625.0**t - 1) / np.log(625.0)),
    "0.5 + 0.4 sin 20t": (
        lambda t: 0.5 + 0.4 * jnp.sin(20 * t),
        lambda t: 0.25 * t + 0.4 * (1 - np.cos(20 * t)) / 20 + 0.16 * (t / 2 - np.sin(40 * t) / 80),
    ),
}


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_gauss_legendre_integrates_g_squared_to_rounding(name):
    g, integral = CLOSED_FORMS[name]
    start = np.array([0.0, 0.1, 0.5, 0.9])
    length = np.array([1.0, 0.3, 0.25, 0.1])
    ours = quadrature.integral_of_g_squared(g, start, length, 32, jnp.float64)
    np.testing.assert_allclose(ours, integral(start + length) - integral(start), rtol=1e-14)


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_gauss_legendre_in_float32(name):
    g, integral = CLOSED_FORMS[name]
    t = np.linspace(0.05, 1.0, 7)
    ours = quadrature.integral_of_g_squared(g, 0.0, jnp.asarray(t, jnp.float32), 32, jnp.float32)
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, integral(t), rtol=1e-6)  # float32 rounding (measured: at most 1.7e-7)


@pytest.mark.parametrize("T", [1, 2, 3, 7, 32, 100])
@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_solver_tau_of_a_function_of_t(name, T):
    """``tau_n = 1/2 int_0^(t_n) g^2`` to float64 rounding at any ``T``: one Gauss-Legendre piece per step
    missed it by up to 6e-2 at T = 1 and 4e-4 at T = 2 for the fast g (pieces now at most 1/32 long)."""
    g, integral = CLOSED_FORMS[name]
    times = np.arange(T + 1) / T
    tau = diffusion_integral(FPConfig(T=T, g=g))
    assert tau.dtype == np.float64
    np.testing.assert_allclose(tau, 0.5 * integral(times), rtol=1e-13, atol=1e-300)


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_function_ve_variance(name):
    g, integral = CLOSED_FORMS[name]
    t = np.linspace(0.0, 1.0, 9)
    sde = sde_lib.FunctionVE(g)
    # float32 rounding (measured: at most 1.2e-7)
    np.testing.assert_allclose(sde.variance(jnp.asarray(t, jnp.float32)), integral(t), rtol=1e-6)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_function_ve_variance_in_float64(name):
    g, integral = CLOSED_FORMS[name]
    t = np.linspace(0.0, 1.0, 9)
    np.testing.assert_allclose(sde_lib.FunctionVE(g).variance(jnp.asarray(t)), integral(t), rtol=1e-14)


def _quad_of_linear_g_squared(values, t):
    knots = np.linspace(0.0, 1.0, len(values))
    return scipy.integrate.quad(lambda s: np.interp(s, knots, values) ** 2, 0, t, points=knots, epsabs=1e-15)[0]


VALUES = (0.2, 0.5, 0.3, 0.8, 0.6, 0.4, 0.7)


def test_piecewise_linear_integrals_of_both_users_match_scipy():
    T = len(VALUES) - 1
    expected = np.array([_quad_of_linear_g_squared(VALUES, n / T) for n in range(T + 1)])
    np.testing.assert_allclose(diffusion_integral(FPConfig(T=T, g=VALUES)), 0.5 * expected, rtol=1e-13)
    sde = sde_lib.PiecewiseLinearVE(VALUES)
    variance = sde.variance(jnp.asarray(np.arange(T + 1) / T, jnp.float32))
    np.testing.assert_allclose(variance, expected, rtol=1e-6)  # float32 rounding (measured: 1.6e-7)


@pytest.mark.usefixtures("x64")
def test_piecewise_linear_variance_between_the_steps_in_float64():
    sde = sde_lib.PiecewiseLinearVE(VALUES)
    t = np.array([0.0, 0.03, 1 / 6, 0.4, 0.77, 0.999, 1.0])
    expected = [_quad_of_linear_g_squared(VALUES, s) for s in t]
    np.testing.assert_allclose(sde.variance(jnp.asarray(t)), expected, rtol=1e-13, atol=1e-300)


BAD_G = [
    (float("nan"), r"FPConfig\.g must be a finite number"),
    (-0.5, r"FPConfig\.g must be >= 0"),
    ("0.5", r"FPConfig\.g must be a finite number"),
    ((0.5, float("nan"), 0.5, 0.5), r"FPConfig\.g must be finite and >= 0 at every time.*g\[1\] = nan"),
    ((0.5, 0.5, -1.0, 0.5), r"FPConfig\.g must be finite and >= 0 at every time.*g\[2\] = -1"),
    ((0.5, 0.5), r"FPConfig\.g has 2 values; give one per time t_0\.\.t_T, i\.e\. T\+1 = 4"),
    (np.full((4, 1), 0.5), r"FPConfig\.g must be a number, T\+1 numbers or a function of t"),
]


@pytest.mark.parametrize("g, message", BAD_G, ids=[repr(g)[:20] for g, _ in BAD_G])
def test_one_check_of_g_for_the_config_and_the_sde(g, message):
    """``FPConfig`` and ``from_g`` refuse the same ``g`` with the same one-line message."""
    with pytest.raises(ValueError, match=message) as config_error:
        FPConfig(T=3, g=g)
    with pytest.raises(ValueError, match=message) as sde_error:
        sde_lib.from_g(g, T=3)
    assert str(config_error.value) == str(sde_error.value) and "\n" not in str(sde_error.value)


def test_from_g_without_t_takes_any_number_of_values():
    assert sde_lib.from_g((0.1, 0.4, 0.2)) == sde_lib.PiecewiseLinearVE((0.1, 0.4, 0.2))
    assert sde_lib.from_g(np.float32(0.25)) == sde_lib.ConstantVE(0.25)
    with pytest.raises(ValueError, match=r"FPConfig\.g has 0 values; .*at least one"):
        sde_lib.from_g(())
