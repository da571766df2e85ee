"""The linear density schemes ("spectral", "density") against independent references.

References: SciPy's DST/DCT applied by hand, a closed-form decaying sine mode,
a SciPy-assembled backward-Euler matrix with a direct solver, ``scipy.integrate.quad``,
float64 runs and central finite differences.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
from reference import density_spsolve, eigenvalues, float64_run, heat_log_density

import fpjax
from fpjax.data import sample_images
from fpjax.solver import linear as linear_fp
from fpjax.solver.problem import diffusion_integral


def _tight(scheme: str, tol: float):
    """The linear scheme ``scheme`` at a float64 tolerance (the spectral one has none: it solves exactly)."""
    return fpjax.Density(tol=tol) if scheme == "density" else fpjax.Spectral()


def _m0(shape=(12, 10), index=3, dtype=np.float64):
    image = sample_images(32)[index, : shape[0], : shape[1]].astype(np.float64)
    return np.asarray(fpjax.initial_log_density(image)).astype(dtype)


def _relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("boundary", ["zero", "reflect"])
@pytest.mark.parametrize("transform", ["dense", "fft"])
def test_spectral_equals_scipy_transforms(boundary, transform):
    m0 = _m0((12, 10))
    T, g = 10, 0.7
    config = fpjax.FPConfig(T=T, g=g, boundary=boundary, scheme=fpjax.Spectral(transform=transform))
    expected = heat_log_density(m0, 0.5 * g**2 * np.arange(T + 1) / T, config.grid_spacing(m0.shape), boundary)
    solution = fpjax.solve(jnp.asarray(m0), config)
    assert _relative(solution.m, expected) < 1e-12
    assert np.all(np.asarray(solution.converged))
    assert np.all(np.asarray(solution.outer_iterations) == 0)


@pytest.mark.usefixtures("x64")
def test_spectral_g_schedule_integrates_piecewise_linear_g():
    m0 = _m0((9, 13))
    T = 6
    g = np.array([0.2, 0.5, 0.3, 0.8, 0.6, 0.4, 0.7])
    config = fpjax.FPConfig(T=T, g=tuple(g), scheme="spectral", spacing=(0.1, 0.07))
    times = np.arange(T + 1) / T
    half_g2 = lambda t: 0.5 * np.interp(t, times, g) ** 2  # noqa: E731
    taus = [scipy.integrate.quad(half_g2, 0, t, points=times, epsabs=1e-14)[0] for t in times]
    expected = heat_log_density(m0, taus, (0.1, 0.07), "zero")
    assert _relative(fpjax.solve(jnp.asarray(m0), config).m, expected) < 1e-11


def test_diffusion_integral_of_a_function_of_t():
    config = fpjax.FPConfig(T=7, g=lambda t: 0.1 * 25.0**t, scheme="spectral")
    taus = diffusion_integral(config)
    expected = [scipy.integrate.quad(lambda t: 0.5 * (0.1 * 25.0**t) ** 2, 0, n / 7)[0] for n in range(8)]
    np.testing.assert_allclose(taus, expected, rtol=1e-12)


@pytest.mark.usefixtures("x64")
def test_single_sine_mode_decays_exactly():
    height, width, eps, g = 11, 7, 0.3, 0.5
    spacing = (1 / (width + 1), 1 / (height + 1))
    mode_y = np.sin(np.pi * np.arange(1, height + 1) / (height + 1))
    mode_x = np.sin(np.pi * np.arange(1, width + 1) / (width + 1))
    rate = eigenvalues(height, spacing[1], "zero")[0] + eigenvalues(width, spacing[0], "zero")[0]
    p0 = 1 + eps * np.outer(mode_y, mode_x)
    config = fpjax.FPConfig(T=20, g=g, scheme="spectral", spacing=spacing)
    solution = fpjax.solve(jnp.asarray(np.log(p0)), config)
    times = np.arange(21) / 20
    expected = np.log(1 + eps * np.exp(0.5 * g**2 * times * rate)[:, None, None] * np.outer(mode_y, mode_x))
    np.testing.assert_allclose(np.asarray(solution.m), expected, rtol=0, atol=1e-14)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("boundary", ["zero", "reflect"])
def test_density_equals_scipy_backward_euler_with_drift(boundary):
    m0 = _m0((8, 9))
    rng = np.random.default_rng(4)
    fx, fy = 0.5 * rng.normal(size=(2, 8, 9))
    T, g = 6, 0.6
    config = fpjax.FPConfig(
        T=T, g=g, boundary=boundary, drift=lambda t: (jnp.asarray(fx), jnp.asarray(fy)), scheme=fpjax.Density(tol=1e-13)
    )
    hx, hy = config.grid_spacing(m0.shape)
    expected = density_spsolve(m0, T, g, fx, fy, hx, hy, boundary)
    solution = fpjax.solve(jnp.asarray(m0), config)
    assert _relative(solution.m, expected) < 1e-11
    assert np.all(np.asarray(solution.outer_iterations) == 1)
    assert np.all(np.asarray(solution.converged))


@pytest.mark.usefixtures("x64")
def test_density_converges_to_spectral_at_first_order_in_dt():
    """On smooth data compatible with the boundary (p0 = 1 + a sine mode) backward Euler's error is O(dt)."""
    height = width = 15
    grid = np.arange(1, 16) / 16
    p0 = 1 + 0.8 * np.outer(np.sin(np.pi * grid), np.sin(2 * np.pi * grid) + 1.2 * np.sin(np.pi * grid))
    m0 = jnp.asarray(np.log(p0))
    spacing = (1 / 16, 1 / 16)
    errors = []
    for T in (10, 40):
        exact = fpjax.solve(m0, fpjax.FPConfig(T=T, scheme="spectral", spacing=spacing)).m
        approx = fpjax.solve(m0, fpjax.FPConfig(T=T, spacing=spacing, scheme=fpjax.Density(tol=1e-13))).m
        errors.append(_relative(approx, exact))
    assert height == width
    assert 3.3 < errors[0] / errors[1] < 4.5, errors


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("scheme", ["spectral", "density"])
def test_reflect_boundary_conserves_mass(scheme):
    m0 = _m0((10, 12))
    config = fpjax.FPConfig(T=20, scheme=_tight(scheme, 1e-13), boundary="reflect")
    mass = np.exp(np.asarray(fpjax.solve(jnp.asarray(m0), config).m)).sum(axis=(1, 2))
    np.testing.assert_allclose(mass, mass[0], rtol=1e-12)


@pytest.mark.usefixtures("x64")
def test_density_with_drift_conserves_mass_under_reflect():
    m0 = _m0((10, 12))
    rng = np.random.default_rng(2)
    fx, fy = 0.3 * rng.normal(size=(2, 10, 12))
    config = fpjax.FPConfig(
        T=10, boundary="reflect", drift=lambda t: (fx * (1 + t), fy), scheme=fpjax.Density(tol=1e-13)
    )
    mass = np.exp(np.asarray(fpjax.solve(jnp.asarray(m0), config).m)).sum(axis=(1, 2))
    np.testing.assert_allclose(mass, mass[0], rtol=1e-11)


@pytest.mark.parametrize("boundary", ["zero", "reflect"])
def test_spectral_float32_matches_float64_at_256(boundary):
    def initial():
        image = jax.image.resize(jnp.asarray(sample_images(128)[0], jnp.float64), (256, 256, 3), "linear")
        return fpjax.initial_log_density(jnp.clip(image, 0, 1))

    m0 = float64_run(initial)
    config = fpjax.FPConfig(T=100, scheme="spectral", boundary=boundary)
    reference = float64_run(lambda: fpjax.solve(jnp.asarray(m0), config).m)
    single = fpjax.solve(jnp.asarray(m0, jnp.float32), config)
    assert single.m.dtype == jnp.float32
    assert _relative(single.m, reference) < 1e-6
    assert np.all(np.asarray(single.converged))


@pytest.mark.parametrize("boundary", ["zero", "reflect"])
def test_density_float32_matches_float64(boundary):
    m0 = float64_run(lambda: _m0((32, 32)))
    config = fpjax.FPConfig(T=50, scheme="density", boundary=boundary)
    reference = float64_run(lambda: fpjax.solve(jnp.asarray(m0), config).m)
    single = fpjax.solve(jnp.asarray(m0, jnp.float32), config).m
    assert _relative(single, reference) < 1e-6


def test_traced_g_in_float32_keeps_the_float64_boundary_layer():
    """Under jit with g traced, the boundary layer comes from the host in float64, not a float32 transform."""
    m0 = _m0((32, 32), dtype=np.float32)
    config = fpjax.FPConfig(T=10, scheme="spectral")
    traced = jax.jit(lambda g: fpjax.solve(jnp.asarray(m0), config, g=g).m)(jnp.float32(0.5))
    reference = float64_run(lambda: fpjax.solve(jnp.asarray(m0, jnp.float64), config).m)
    assert _relative(traced, reference) < 1e-6


def test_constant_density_equal_to_the_boundary_value_stays():
    config = fpjax.FPConfig(T=5, scheme="spectral")
    # float32: p = 1 is recovered to rounding, m = log p within an ulp or two of 1 (measured: 1.2e-7 = eps)
    np.testing.assert_allclose(
        np.asarray(fpjax.solve(jnp.zeros((6, 7)), config).m), 0.0, atol=4 * np.finfo(np.float32).eps
    )


@pytest.mark.parametrize("scheme", ["spectral", "density"])
def test_large_log_densities_stay_finite(scheme):
    """exp(m0) would overflow float32 for m0 = 100; the solve works with exp(m0 - max m0)."""
    m0 = _m0((8, 8), dtype=np.float32) + np.float32(100.0)
    solution = fpjax.solve(jnp.asarray(m0), fpjax.FPConfig(T=5, scheme=scheme))
    reference = float64_run(lambda: fpjax.solve(jnp.asarray(m0, jnp.float64), fpjax.FPConfig(T=5, scheme=scheme)))
    assert np.all(np.isfinite(np.asarray(solution.m)))
    assert _relative(solution.m, reference.m) < 1e-6


def test_spectral_refuses_a_drift_naming_density():
    with pytest.raises(ValueError, match=r"scheme=Density\(\)"):
        fpjax.FPConfig(scheme="spectral", drift=lambda t: (0.0, 0.0))


def test_projection_is_refused_for_linear_schemes():
    from fpjax.batch.precompute import precompute

    with pytest.raises(ValueError, match="projection='off'"):
        precompute(sample_images(32)[:2], fpjax.FPConfig(T=3, scheme="density"), projection="initial_guess")


@pytest.mark.usefixtures("x64")
def test_spectral_residual_detects_inconsistent_transforms():
    """The probe estimate is rounding-level for the right transforms and large for a wrong eigenvalue."""
    m0 = jnp.asarray(_m0((12, 10)))
    spacing = (0.1, 1 / 12)
    transforms = linear_fp._Transforms(m0.shape, spacing, "zero", "dense", m0.dtype)
    probe = linear_fp._Probe(transforms, spacing, "zero")
    coefficients = transforms.forward(jnp.exp(m0))[None] * 0.5
    w = transforms.inverse(coefficients)
    assert float(probe.backward_error(coefficients, w)[0]) < 1e-14
    wrong = w + 1e-3 * jnp.max(jnp.abs(w)) * jnp.asarray(np.random.default_rng(0).normal(size=w.shape))
    assert float(probe.backward_error(coefficients, wrong)[0]) > 1e-7


# ----------------------------------------------------------------------------
# Transformations


def _loss_weights(T, shape):
    return jnp.asarray(np.random.default_rng(0).normal(size=(T + 1,) + shape))


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("scheme", ["spectral", "density"])
@pytest.mark.parametrize("boundary", ["zero", "reflect"])
def test_derivatives_with_respect_to_g(scheme, boundary):
    m0 = jnp.asarray(_m0((9, 8)))
    config = fpjax.FPConfig(T=6, scheme=_tight(scheme, 1e-12), boundary=boundary)
    weights = _loss_weights(6, m0.shape)
    loss = lambda g: jnp.sum(weights * fpjax.solve(m0, config, g=g).m)  # noqa: E731
    g0, step = 0.6, 1e-5
    central = (loss(g0 + step) - loss(g0 - step)) / (2 * step)
    second = (loss(g0 + 1e-3) - 2 * loss(g0) + loss(g0 - 1e-3)) / 1e-6
    np.testing.assert_allclose(jax.grad(loss)(g0), central, rtol=1e-7)
    np.testing.assert_allclose(jax.jvp(loss, (g0,), (1.0,))[1], central, rtol=1e-7)
    np.testing.assert_allclose(jax.jacfwd(loss)(g0), central, rtol=1e-7)
    np.testing.assert_allclose(jax.hessian(loss)(g0), second, rtol=1e-5)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("scheme", ["spectral", "density"])
def test_derivatives_with_respect_to_m0_and_the_image(scheme):
    image = jnp.asarray(np.clip(sample_images(32)[5, :8, :9].astype(np.float64), 0.05, 0.95))
    config = fpjax.FPConfig(T=5, scheme=_tight(scheme, 1e-12))
    weights = _loss_weights(5, (8, 9))
    loss_m0 = lambda m0: jnp.sum(weights * fpjax.solve(m0, config).m)  # noqa: E731
    loss_image = lambda x: loss_m0(fpjax.initial_log_density(x))  # noqa: E731
    rng = np.random.default_rng(1)
    for loss, x in ((loss_m0, fpjax.initial_log_density(image)), (loss_image, image)):
        v = jnp.asarray(rng.normal(size=x.shape))
        central = (loss(x + 1e-6 * v) - loss(x - 1e-6 * v)) / 2e-6
        np.testing.assert_allclose(jnp.vdot(jax.grad(loss)(x), v), central, rtol=1e-6)
        np.testing.assert_allclose(jax.jvp(loss, (x,), (v,))[1], central, rtol=1e-6)
    m0 = fpjax.initial_log_density(image)
    v = jnp.asarray(rng.normal(size=m0.shape))
    directional = lambda s: loss_m0(m0 + s * v)  # noqa: E731
    second = (directional(1e-3) - 2 * directional(0.0) + directional(-1e-3)) / 1e-6
    hessian = jax.hessian(loss_m0)(m0)
    np.testing.assert_allclose(jnp.einsum("ij,ijkl,kl->", v, hessian, v), second, rtol=1e-4)


@pytest.mark.parametrize("scheme", ["spectral", "density"])
def test_vmap_over_images_and_g_equals_a_loop(scheme):
    m0s = jnp.stack([jnp.asarray(_m0((8, 8), index=i)) for i in (0, 4, 7)])
    gs = jnp.asarray([0.3, 0.5, 0.9])
    config = fpjax.FPConfig(T=5, scheme=_tight(scheme, 1e-12))
    batched = jax.jit(jax.vmap(lambda m0, g: fpjax.solve(m0, config, g=g).m))(m0s, gs)
    looped = np.stack([np.asarray(fpjax.solve(m0, config, g=float(g)).m) for m0, g in zip(m0s, gs, strict=True)])
    # float32: the batched program rounds differently, and with g traced the density scheme's boundary part
    # is computed in float32 instead of float64 (measured: 2.4e-7 at |m| <= 4 for both schemes)
    np.testing.assert_allclose(np.asarray(batched), looped, rtol=0, atol=1e-6)
    grads = jax.vmap(jax.grad(lambda g, m0: jnp.sum(fpjax.solve(m0, config, g=g).m)), in_axes=(0, 0))(gs, m0s)
    assert np.all(np.isfinite(np.asarray(grads)))
