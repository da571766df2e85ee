"""Exact-score models and the closed-form output law of each sampler, against independent references: dense
covariance matrices, float64 finite differences, and Monte Carlo runs of the real sampler code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import float64_run

from fpjax.diffusion import exact, pds, sampling
from fpjax.diffusion.sde import VESDE, VPSDE

SHAPE = (8, 8, 1)
VE = VESDE(0.01, 5.0)


def _images(n=60, shape=SHAPE, seed=0):
    """Smooth random images: a strongly coloured spectrum, like natural images."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (n,) + shape).cumsum(1).cumsum(2)
    return x / x.max()


# float64 (NumPy leaves): the dense references below; the float32 samplers' tests read it in float32
MODEL = float64_run(lambda: exact.fit_gaussian(jnp.asarray(_images(), jnp.float64)))


def _dense(var):
    """The real ``(D, D)`` covariance ``U^* diag(var) U`` built column by column with NumPy's FFT."""
    d = int(np.prod(var.shape))
    basis = np.eye(d).reshape((d,) + var.shape)
    cols = np.real(np.fft.ifft2(np.asarray(var) * np.fft.fft2(basis, axes=(1, 2), norm="ortho"), axes=(1, 2),
                                norm="ortho"))  # fmt: skip
    return cols.reshape(d, d).T


@pytest.mark.usefixtures("x64")
def test_gaussian_score_is_the_dense_gaussians_score():
    for sde, t in ((VE, 0.3), (VPSDE(), 0.6)):
        a, v = float(sde.mean_scale(t)), float(sde.variance(t))
        cov = a**2 * _dense(MODEL.spectrum) + v * np.eye(64)
        x = jax.random.normal(jax.random.key(0), (3,) + SHAPE, jnp.float64)
        expected = -np.linalg.solve(cov, (np.asarray(x) - a * np.asarray(MODEL.mean)).reshape(3, -1).T).T
        got = MODEL.score(sde)(x, jnp.full((3,), t))
        np.testing.assert_allclose(np.asarray(got).reshape(3, -1), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.usefixtures("x64")
def test_kl_is_the_dense_gaussian_kl_hermitian_pairs_and_real_modes_included():
    other = exact.propagate(MODEL, VE, sampling.SamplerConfig(steps=7, clip=False), exact.prior_moments(MODEL, VE))
    mean_p = np.real(np.fft.ifft2(np.asarray(other.mean), axes=(0, 1), norm="ortho")).reshape(-1)
    cov_p, cov_q = _dense(other.var), _dense(MODEL.spectrum)
    delta = mean_p - np.asarray(MODEL.mean).reshape(-1)
    solve = np.linalg.solve(cov_q, np.concatenate([cov_p, delta[:, None]], axis=1))
    dense = 0.5 * (np.trace(solve[:, :-1]) + delta @ solve[:, -1] - 64
                   + np.linalg.slogdet(cov_q)[1] - np.linalg.slogdet(cov_p)[1])  # fmt: skip
    np.testing.assert_allclose(float(exact.kl(other, MODEL.moments())), dense, rtol=1e-8)


def test_samples_of_the_gaussian_have_its_moments():
    x = MODEL.sample(jax.random.key(3), 20000)
    _assert_monte_carlo(exact.moments_of_samples(x), MODEL.moments(), 20000)


def _assert_monte_carlo(mc, closed, n, var_slack=0.0):
    """Monte Carlo moments of ``n`` samples against the closed form. A mode's variance estimate has relative
    standard error ``sqrt(2/n)`` at most (real modes; ``sqrt(1/n)`` for Hermitian pairs), its mean error
    ``sqrt(var/n)``: the mean squared standardised errors must stay below 2 (expectation <= 1) and every
    variance within 6 standard errors (plus ``var_slack``, relative, for the correctors' step-size limit)."""
    z_var = (np.asarray(mc.var) / np.asarray(closed.var) - 1.0) / np.sqrt(2.0 / n)
    z_mean = np.abs(np.asarray(mc.mean) - np.asarray(closed.mean)) / np.sqrt(np.asarray(closed.var) / n)
    assert np.mean(z_mean**2) < 2.0
    if var_slack == 0.0:
        assert np.mean(z_var**2) < 2.0
    assert np.max(np.abs(z_var)) * np.sqrt(2.0 / n) < 6.0 * np.sqrt(2.0 / n) + var_slack


def _run(config, sde, x, key, m):
    score = MODEL.score(sde)
    if isinstance(config, sampling.SamplerConfig):
        return sampling.reverse_sample(score, x, key, sde, config, preconditioner=m)
    if isinstance(config, sampling.ReverseDiffusionConfig):
        return sampling.reverse_diffusion_sample(score, x, key, sde, config, preconditioner=m)
    if isinstance(config, sampling.HeunConfig):
        return sampling.heun_sample(score, x, key, sde, config)
    return sampling.ddim_sample(score, x, key, sde, config)


PRE = float64_run(lambda: pds.from_data(jnp.asarray(_images(), jnp.float64), 3.0, pixel=False))
CASES = [
    ("em", VE, sampling.SamplerConfig(steps=25, clip=False), None, 0.0),
    ("em paper pds", VE, sampling.SamplerConfig(steps=25, clip=False, pds_form="paper"), PRE, 0.0),
    ("em default pds", VE, sampling.SamplerConfig(steps=25, clip=False), PRE, 0.0),
    ("em marginal pds", VE, sampling.SamplerConfig(steps=25, clip=False, pds_form="marginal"), PRE, 0.0),
    ("em vp", VPSDE(), sampling.SamplerConfig(steps=25, clip=False, tweedie=1e-3), None, 0.0),
    ("released pds", VE, sampling.ReverseDiffusionConfig(steps=20, pds_form="paper"), PRE, 0.0),
    ("released vp marginal", VPSDE(), sampling.ReverseDiffusionConfig(steps=20, pds_form="marginal"), PRE, 0.0),
    ("heun vp", VPSDE(), sampling.HeunConfig(steps=8), None, 0.0),
    ("ddim", VE, sampling.DDIMConfig(steps=15), None, 0.0),
    # fpjax's corrector takes a step per sample from |z| and |M^T s| of that sample; the closed form uses their
    # large-dimension limit, off by O(1/sqrt(64)) here: variances allowed 8% beyond the sampling error.
    ("pc pds", VE, sampling.SamplerConfig(steps=20, clip=False, corrector_steps=1, pds_form="paper"), PRE, 0.08),
]


@pytest.mark.parametrize("name, sde, config, m, slack", CASES, ids=[c[0] for c in CASES])
def test_closed_form_is_the_law_of_the_real_sampler(name, sde, config, m, slack):
    """The samplers run in float32, as users run them; the closed form is computed in float64."""
    n = 2048
    key = jax.random.key(7)
    x = sampling.prior_sample(key, (n,) + SHAPE, sde, 1.0, 0.5, preconditioner=m)
    assert x.dtype == jnp.float32
    mc = exact.moments_of_samples(_run(config, sde, x, jax.random.fold_in(key, 1), m))
    closed = float64_run(lambda: exact.propagate(MODEL, sde, config, exact.prior_moments(MODEL, sde, 1.0, 0.5, m), m))
    _assert_monte_carlo(mc, closed, n, slack)
    data = MODEL.moments()
    assert abs(float(exact.kl(mc, data)) - float(exact.kl(closed, data))) < 1.0 + 0.05 * float(exact.kl(closed, data))


@pytest.mark.usefixtures("x64")
def test_a_traced_step_count_is_the_shorter_sampler():
    start = exact.prior_moments(MODEL, VE, 1.0, 0.5, PRE)
    for make in (lambda k: sampling.SamplerConfig(steps=k, clip=False, corrector_steps=1),
                 lambda k: sampling.ReverseDiffusionConfig(steps=k), lambda k: sampling.HeunConfig(steps=k),
                 lambda k: sampling.DDIMConfig(steps=k)):  # fmt: skip
        m = PRE if not isinstance(make(1), sampling.HeunConfig | sampling.DDIMConfig) else None
        start = exact.prior_moments(MODEL, VE, 1.0, 0.5, m)
        padded = jax.jit(lambda n, m, make=make, start=start: exact.propagate(MODEL, VE, make(12), start, m, n))
        for n in (1, 5):
            short = exact.propagate(MODEL, VE, make(n), start, m)
            got = padded(n, m)
            np.testing.assert_allclose(got.var, short.var, rtol=1e-10)
            np.testing.assert_allclose(got.mean, short.mean, rtol=1e-10, atol=1e-12)


@pytest.mark.run_bound
def test_reverse_diffusion_sampler_recovers_a_gaussian():
    """Started from the exact marginal at t = 1, 400 steps of the released sampler (no preconditioner) give the
    data's per-mode mean (within its Monte Carlo error) and variance (within 8%: the predictor is first order,
    ~6/K relative here, plus a Monte Carlo error of 2.2% per real mode). A Gaussian with every ``S_k >= 0.01``,
    so the last steps are resolved."""
    n = 4096
    key = jax.random.key(11)
    model = exact.StationaryGaussian(MODEL.mean, MODEL.spectrum + 0.01)
    x = VE.variance(1.0) ** 0.5 * jax.random.normal(key, (n,) + SHAPE) + model.sample(jax.random.fold_in(key, 2), n)
    config = sampling.ReverseDiffusionConfig(steps=400)
    out = exact.moments_of_samples(
        sampling.reverse_diffusion_sample(model.score(VE), x, jax.random.fold_in(key, 3), VE, config)
    )
    data = model.moments()
    z_mean = np.abs(np.asarray(out.mean - data.mean)) / np.sqrt(np.asarray(data.var) / n)
    assert np.mean(z_mean**2) < 2.0
    np.testing.assert_allclose(out.var, data.var, rtol=0.08)


@pytest.mark.usefixtures("x64")
def test_mixture_score_is_the_gradient_of_its_log_density():
    points = jax.random.uniform(jax.random.key(0), (5, 3, 3, 2), jnp.float64)
    mixture = exact.EmpiricalMixture(points)
    x = jax.random.uniform(jax.random.key(1), (4, 3, 3, 2), jnp.float64)
    h = 1e-6
    basis = jnp.eye(18, dtype=jnp.float64).reshape(18, 1, 3, 3, 2)
    for sde, t in ((VE, 0.35), (VPSDE(), 0.2)):
        tb = jnp.full((4,), t)
        score = np.asarray(mixture.score(sde)(x, tb)).reshape(4, -1)
        central = jax.jit(
            jax.vmap(
                lambda e, sde=sde, tb=tb: (
                    (mixture.log_prob(x + h * e, tb, sde) - mixture.log_prob(x - h * e, tb, sde)) / (2 * h)
                )
            )
        )
        np.testing.assert_allclose(score, np.asarray(central(basis)).T, rtol=1e-6, atol=1e-6)  # fmt: skip


def test_mixture_score_in_float32_near_t0_matches_float64():
    """At noise 0.01 the softmax is one-hot and the score is (a x_i - x) / v with v = 1e-4: float32 keeps it."""

    def data():
        points = jax.random.uniform(jax.random.key(0), (50, 8, 8, 3), jnp.float64)
        return points, points[:4] + 0.01 * jax.random.normal(jax.random.key(1), (4, 8, 8, 3), jnp.float64)

    points, x = float64_run(data)
    t = np.full((4,), 0.19)  # VE(0.01, 50) sigma(0.19) ~ 0.05
    sde = VESDE(0.01, 50.0)
    s64 = float64_run(lambda: exact.EmpiricalMixture(jnp.asarray(points)).score(sde)(jnp.asarray(x), jnp.asarray(t)))
    s32 = exact.EmpiricalMixture(jnp.asarray(points, jnp.float32)).score(sde)(
        jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32)
    )
    assert s32.dtype == jnp.float32
    np.testing.assert_allclose(s32, s64, rtol=1e-3, atol=1e-3 * float(np.max(np.abs(s64))))
    index, rms = exact.EmpiricalMixture(jnp.asarray(points, jnp.float32)).nearest(jnp.asarray(x, jnp.float32))
    np.testing.assert_array_equal(index, np.arange(4))
    expected = np.sqrt(np.mean((x - points[:4]) ** 2, axis=(1, 2, 3)))
    np.testing.assert_allclose(rms, expected, rtol=2e-6)  # float32 rounding (measured: 2.4e-7)
