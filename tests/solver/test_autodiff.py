"""Every scheme and linearisation under every transformation, lineax-style: against float64 central
differences, or one mode against the other (``<grad, v> == jvp(v)``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import float64_run

import fpjax
from fpjax.data import sample_images

VARIANTS = {  # name: (the scheme at its default tolerances, the scheme at float64 tolerances)
    "log_density, picard": (
        fpjax.LogDensity(linearization="picard", preconditioner="dst"),
        fpjax.LogDensity(linearization="picard", preconditioner="dst", tol=1e-12, outer_tol=1e-12, max_outer=100),
    ),
    "log_density, newton": (
        fpjax.LogDensity(linearization="newton", preconditioner="dst"),
        fpjax.LogDensity(linearization="newton", preconditioner="dst", tol=1e-12, outer_tol=1e-12, max_outer=100),
    ),
    "density": (fpjax.Density(), fpjax.Density(tol=1e-12)),
    "spectral": (fpjax.Spectral(), fpjax.Spectral()),
}
T, SHAPE, G0 = 4, (8, 7), 0.6


def _config(variant, dtype=np.float64):
    default, tight = VARIANTS[variant]  # float32 cannot reach 1e-12: it keeps the default tolerances
    return fpjax.FPConfig(T=T, scheme=default if dtype == np.float32 else tight)


def _m0(dtype=np.float64, index=3):
    image = sample_images(32)[index, : SHAPE[0], : SHAPE[1]].astype(np.float64)
    return jnp.asarray(fpjax.initial_log_density(image), dtype)


def _weights(dtype=np.float64):
    return jnp.asarray(np.random.default_rng(0).normal(size=(T + 1,) + SHAPE), dtype)


def _loss_of_g(variant, dtype=np.float64):
    m0, w, config = _m0(dtype), _weights(dtype), _config(variant, dtype)
    return lambda g: jnp.sum(w * fpjax.solve(m0, config, g=g).m)


def _loss_of_m0(variant):
    w, config = _weights(), _config(variant)
    return lambda m0: jnp.sum(w * fpjax.solve(m0, config).m)


def _central(f, x, v, h=1e-6):
    return (f(x + h * v) - f(x - h * v)) / (2 * h)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("transformation", ["grad", "jvp", "jacfwd", "jacrev", "jit(grad)"])
def test_first_derivatives_in_g_match_central_differences(variant, transformation):
    loss = _loss_of_g(variant)
    expected = _central(loss, G0, 1.0)
    derivative = {
        "grad": lambda: jax.grad(loss)(G0),
        "jvp": lambda: jax.jvp(loss, (G0,), (1.0,))[1],
        "jacfwd": lambda: jax.jacfwd(loss)(G0),
        "jacrev": lambda: jax.jacrev(loss)(G0),
        "jit(grad)": lambda: jax.jit(jax.grad(loss))(G0),
    }[transformation]()
    np.testing.assert_allclose(derivative, expected, rtol=1e-6)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("variant", VARIANTS)
def test_grad_and_jvp_in_m0_agree_with_each_other_and_differences(variant):
    loss, m0 = _loss_of_m0(variant), _m0()
    v = jnp.asarray(np.random.default_rng(1).normal(size=SHAPE))
    forward = jax.jvp(loss, (m0,), (v,))[1]
    np.testing.assert_allclose(jnp.vdot(jax.grad(loss)(m0), v), forward, rtol=1e-9)
    np.testing.assert_allclose(forward, _central(loss, m0, v), rtol=1e-6)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("variant", VARIANTS)
def test_hessian_in_g_matches_second_differences(variant):
    loss = _loss_of_g(variant)
    second = (loss(G0 + 1e-3) - 2 * loss(G0) + loss(G0 - 1e-3)) / 1e-6
    np.testing.assert_allclose(jax.hessian(loss)(G0), second, rtol=1e-4)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("variant", VARIANTS)
def test_vmap_of_jvp_and_of_grad_equal_loops(variant):
    loss = _loss_of_g(variant)
    tangents = jnp.asarray([1.0, -2.0, 0.5])
    batched = jax.vmap(lambda t: jax.jvp(loss, (G0,), (t,))[1])(tangents)
    np.testing.assert_allclose(batched, tangents * jax.jvp(loss, (G0,), (1.0,))[1], rtol=1e-10)
    gs = jnp.asarray([0.4, 0.7])
    np.testing.assert_allclose(jax.vmap(jax.grad(loss))(gs), [jax.grad(loss)(float(g)) for g in gs], rtol=1e-9)


@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_derivatives_agree_with_float64(variant):
    expected = float64_run(lambda: jax.grad(_loss_of_g(variant))(G0))
    single = _loss_of_g(variant, np.float32)
    np.testing.assert_allclose(jax.grad(single)(jnp.float32(G0)), expected, rtol=2e-3)
    np.testing.assert_allclose(jax.jvp(single, (jnp.float32(G0),), (jnp.float32(1.0),))[1], expected, rtol=2e-3)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("variant", ["density", "spectral"])
def test_grad_of_grad_for_the_linear_schemes(variant):
    loss = _loss_of_g(variant)
    np.testing.assert_allclose(jax.grad(jax.grad(loss))(G0), jax.hessian(loss)(G0), rtol=1e-8)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("variant", ["log_density, picard", "log_density, newton"])
def test_grad_of_grad_of_the_log_density_scheme_fails_clearly(variant):
    """Reverse over reverse reaches the outer iteration's while_loop (see fpjax.solver.log_density); the
    supported second derivatives are forward over reverse (jax.hessian, jacfwd(grad)): here jacfwd(grad) against
    float64 central differences of the gradient, a reference that does not go through JAX's second-order rules."""
    loss = _loss_of_g(variant)
    with pytest.raises(ValueError, match="while_loop"):
        jax.grad(jax.grad(loss))(G0)
    gradient = jax.grad(loss)
    expected = _central(gradient, G0, 1.0, h=1e-4)  # truncation ~h^2, rounding ~1e-12/h: both under 1e-7
    np.testing.assert_allclose(jax.jacfwd(gradient)(G0), expected, rtol=1e-6)
