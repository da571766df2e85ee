import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fpjax.diffusion import exact, pds, sampling
from fpjax.diffusion.sde import VESDE

SHAPE = (4, 4, 2)


def _data(n=64):
    coarse = jax.random.uniform(jax.random.key(0), (n, 2, 2, 2))
    return jax.image.resize(coarse, (n,) + SHAPE, "linear") + 0.05 * jax.random.normal(jax.random.key(1), (n,) + SHAPE)


def _dense(op):
    """The matrix of a linear map on (H, W, C) images, column by column."""
    d = int(np.prod(SHAPE))
    basis = jnp.eye(d, dtype=jnp.float64).reshape((d,) + SHAPE)
    return np.asarray(jax.vmap(op)(basis).reshape(d, d)).T


@pytest.mark.usefixtures("x64")
def test_gram_operator_is_real_symmetric_positive_definite():
    m = pds.from_data(_data(), alpha=2.0)
    out = m.gram(jnp.ones(SHAPE))
    assert not jnp.iscomplexobj(out)
    gram = _dense(m.gram)
    np.testing.assert_allclose(gram, gram.T, atol=1e-10)
    assert np.linalg.eigvalsh(gram).min() > 0
    # M^T is the transpose of M.
    np.testing.assert_allclose(_dense(m.transpose), _dense(m.apply).T, atol=1e-10)


@pytest.mark.usefixtures("x64")
def test_masks_match_their_definitions_and_large_alpha_is_the_identity():
    images = _data()
    power = np.mean(np.abs(np.fft.fft2(np.asarray(images), axes=(1, 2))) ** 2, axis=0)
    np.testing.assert_allclose(pds.frequency_statistics(images), np.log(power + 1), rtol=1e-10)
    np.testing.assert_allclose(pds.pixel_statistics(images), np.log(np.mean(np.asarray(images) ** 2, 0) + 1))
    m = pds.from_data(images, alpha=1e9)
    x = jax.random.normal(jax.random.key(2), SHAPE, jnp.float64)
    np.testing.assert_allclose(m.apply(x), x, rtol=1e-7, atol=1e-7)
    r = pds.normalise(jnp.array([1.0, 2.0, 4.0]), 2.0)
    np.testing.assert_allclose(r, [(0.25 + 1) / 2, (0.5 + 1) / 2, 1.0])
    with pytest.raises(ValueError, match="alpha"):
        pds.normalise(r, 0.5)


@pytest.mark.usefixtures("x64")
def test_solenoidal_terms_are_skew_symmetric_and_the_fourier_forms_vanish():
    s = _dense(lambda x: pds.solenoidal(x, "shift", shift=1))
    np.testing.assert_allclose(s, -s.T, atol=1e-12)
    assert np.abs(s).max() == 1.0
    # Independent reference: the difference of two permutation matrices built with NumPy.
    idx = np.arange(int(np.prod(SHAPE))).reshape(SHAPE)
    up = np.roll(idx, (1, 1), axis=(0, 1)).ravel()
    down = np.roll(idx, (-1, -1), axis=(0, 1)).ravel()
    reference = np.eye(idx.size)[up] - np.eye(idx.size)[down]
    np.testing.assert_allclose(s, reference, atol=1e-12)
    for kind in ("fourier", "dft"):  # the DFT diagonalises shifts and is symmetric: these are zero
        np.testing.assert_allclose(_dense(lambda x, kind=kind: pds.solenoidal(x, kind)), 0.0, atol=1e-12)


def test_radial_mask_and_saving(tmp_path):
    mask = pds.radial_mask((8, 8, 3), radius=1.0, scale=1.6)
    shifted = np.fft.fftshift(np.asarray(mask[..., 0]))
    assert shifted[4, 4] == 1.0 and shifted[0, 0] == pytest.approx(1.6)
    m = pds.from_data(_data(), alpha=3.0)
    m.save(tmp_path / "pds.npz")
    loaded = pds.Preconditioner.load(tmp_path / "pds.npz")
    np.testing.assert_array_equal(loaded.r_f, m.r_f)
    np.testing.assert_array_equal(loaded.r_p, m.r_p)
    m.save(tmp_path / "no_suffix")  # named as np.savez names it
    np.testing.assert_array_equal(pds.Preconditioner.load(tmp_path / "no_suffix.npz").r_f, m.r_f)


@pytest.mark.parametrize(
    "arrays, words",
    [
        (dict(mask=np.ones((8, 8, 3))), "holds arrays ['mask']"),
        (dict(), "holds arrays []"),
        (dict(r_f=np.ones((8, 8, 3)), extra=np.ones(2)), "holds arrays ['extra', 'r_f']"),
        (dict(r_f=np.full((8, 8, 3), np.nan)), "r_f must be finite"),
    ],
)
def test_a_preconditioner_file_with_other_arrays_is_refused_not_read_as_the_identity(tmp_path, arrays, words):
    np.savez(tmp_path / "p.npz", **arrays)
    with pytest.raises(ValueError, match=re.escape(words)):
        pds.Preconditioner.load(tmp_path / "p.npz")


@pytest.mark.run_bound
@pytest.mark.parametrize("omega", [0.0, 5.0])
def test_preconditioned_langevin_keeps_a_gaussian_target(omega):
    """Theorems 2-3: M M^T and a skew-symmetric S leave the stationary distribution unchanged."""
    mean = jnp.linspace(-0.5, 0.5, int(np.prod(SHAPE))).reshape(SHAPE)
    var = jnp.linspace(0.2, 1.0, int(np.prod(SHAPE))).reshape(SHAPE)
    score = lambda x: -(x - jnp.broadcast_to(mean, x.shape)) / jnp.broadcast_to(var, x.shape)  # noqa: E731
    m = pds.from_data(_data(), alpha=2.0)
    chains = jnp.zeros((4000,) + SHAPE)
    # 1500 steps of 0.004: the slowest mode (M M^T = 0.5, variance 1) relaxes in about 500 steps, its variance
    # in 250 (measured: the same errors as with 3000 steps, within the sampling noise of 4000 chains)
    samples = jax.jit(lambda x: pds.langevin(score, x, jax.random.key(3), 0.004, 1500, m, omega))(chains)
    flat = np.asarray(samples).reshape(4000, -1)
    np.testing.assert_allclose(flat.mean(0), np.asarray(mean).ravel(), atol=0.08)
    cov = np.cov(flat.T)
    np.testing.assert_allclose(np.diag(cov), np.asarray(var).ravel(), rtol=0.12)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 0.08


def test_alpha_T_fit_recovers_a_known_line():
    a, b = 30.0, 0.05
    Ts = np.array([50, 100, 200, 400])
    alphas = 1.0 / (a / Ts + b)  # power 1: (1 + 1/alpha) - 1 = a/T + b
    fit = pds.fit_alpha_T(Ts, alphas)
    np.testing.assert_allclose(fit, (a, b), rtol=1e-8)
    np.testing.assert_allclose(pds.predict_alpha(Ts, *fit), alphas, rtol=1e-8)
    squared = 1.0 / (np.sqrt(1 + a / Ts + b) - 1)
    np.testing.assert_allclose(pds.fit_alpha_T(Ts, squared, power=2), (a, b), rtol=1e-8)


def test_released_normalisation_is_not_divided_by_the_maximum():
    images = _data()
    r = pds.frequency_statistics(images)
    released = pds.from_data(images, 3.0, pixel=False, mask="released")
    np.testing.assert_allclose(released.r_f, (np.asarray(r) + 2.0) / 3.0, rtol=1e-6)
    assert released.r_p is None and float(jnp.max(released.r_f)) > 1.0  # shrinks some modes: 1/R < 1
    paper = pds.from_data(images, 3.0, pixel=False)
    assert float(jnp.max(paper.r_f)) == pytest.approx(1.0) and float(jnp.min(1.0 / paper.r_f)) >= 1.0
    with pytest.raises(ValueError):
        pds.from_data(images, 3.0, mask="other")


@pytest.mark.usefixtures("x64")
def test_paper_form_converges_to_its_biased_floor_and_the_marginal_form_to_the_data():
    """On a Gaussian with exact scores, the output law in closed form (checked against the real sampler by
    tests/diffusion/test_exact.py): the paper's form tends to each mode's variance ``S q / (2q - 1)``, the
    marginal-preserving form to the data (KL falling like 1/K)."""
    images = _data(200)
    model = exact.fit_gaussian(images.astype(jnp.float64))
    m = pds.from_data(images, 2.0, pixel=False)
    sde = VESDE(0.01, 5.0)
    start = exact.prior_moments(model, sde, 1.0, 0.5, m)
    data = model.moments()

    def law(form, steps):
        return exact.propagate(model, sde, sampling.SamplerConfig(steps=steps, clip=False, pds_form=form), start, m)

    floor = exact.floor_variance(model.spectrum, exact.frequency_gain(m, SHAPE, jnp.float64))
    assert float(jnp.min(floor / model.spectrum)) < 0.8  # a real bias: some modes lose over 20% of their variance
    np.testing.assert_allclose(law("paper", 3000).var, floor, rtol=0.01)
    assert float(exact.kl(law("paper", 3000), data)) == pytest.approx(float(exact.floor_kl(model, m)), rel=0.02)
    kls = [float(exact.kl(law("marginal", k), data)) for k in (300, 1200)]
    assert kls[1] < 0.35 * kls[0] and kls[1] < 0.01


@pytest.mark.run_bound
def test_the_default_pds_form_is_the_unbiased_one():
    """The real sampler code with the default ``SamplerConfig`` and a preconditioner, started from the exact
    marginal at t = 1 with the exact score, against two facts independent of the sampler: the data Gaussian's
    spectrum ``S`` (the law the unbiased form must reach) and the paper form's closed-form floor ``S q / (2q - 1)``
    (``q = 1 / R_f^2``, written out here from the mask), which the paper form must sit on, far from ``S``.
    Monte Carlo over 4096 samples: a mode's variance has relative standard error <= sqrt(2 / 4096) = 2.2%."""
    assert sampling.SamplerConfig().effective_pds_form == "marginal"
    assert sampling.SamplerConfig(method="ode").effective_pds_form == "paper"
    with pytest.raises(ValueError, match="pds_form"):
        sampling.SamplerConfig(method="ode", pds_form="marginal")
    assert sampling.ReverseDiffusionConfig().pds_form == "marginal"

    images = _data(200)
    model = exact.fit_gaussian(images)
    m = pds.from_data(images, 2.0, pixel=False)
    sde = VESDE(0.01, 5.0)
    dtype, n, key = model.spectrum.dtype, 4096, jax.random.key(5)
    noise = jax.random.normal(jax.random.fold_in(key, 1), (n,) + SHAPE, dtype)
    x = model.sample(key, n, dtype) + jnp.sqrt(sde.variance(1.0)).astype(dtype) * noise
    spectrum = np.asarray(model.spectrum, np.float64)
    q = 1.0 / np.asarray(m.r_f, np.float64) ** 2
    floor = spectrum * q / (2.0 * q - 1.0)
    assert (floor / spectrum).min() < 0.7  # the bias is large enough to see: some modes lose over 30%

    def variances(config):
        run = jax.jit(lambda x, k: sampling.reverse_sample(model.score(sde), x, k, sde, config, preconditioner=m))
        return np.asarray(exact.moments_of_samples(run(x, jax.random.fold_in(key, 2))).var, np.float64)

    default = variances(sampling.SamplerConfig(steps=400, clip=False))
    paper = variances(sampling.SamplerConfig(steps=400, clip=False, pds_form="paper"))
    tolerance = 5 * np.sqrt(2.0 / n) + 0.02  # Monte Carlo (max over 32 modes) plus Euler-Maruyama's O(1/K)
    assert np.max(np.abs(default / spectrum - 1.0)) < tolerance
    assert np.max(np.abs(paper / floor - 1.0)) < tolerance
    assert np.max(np.abs(paper / spectrum - 1.0)) > 0.3
