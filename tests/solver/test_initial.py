import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import gaussian_kde

import fpjax
from fpjax.solver.initial import intensity_kde


class _DiagonalKDE(gaussian_kde):
    """scipy's weighted gaussian_kde with the covariance restricted to its diagonal
    (DESIGN.md section 3: Scott's factor times the per-axis standard deviation)."""

    def _compute_covariance(self):
        super()._compute_covariance()
        self.covariance = np.diag(np.diag(self.covariance))
        self.cho_cov = np.linalg.cholesky(self.covariance)
        self.log_det = 2 * np.log(np.diag(self.cho_cov)).sum()


def _image(shape=(12, 15, 3), seed=0):
    return np.random.default_rng(seed).uniform(0, 1, size=shape)


@pytest.mark.usefixtures("x64")
def test_position_kde_matches_scipy_weighted_kde():
    image = _image()
    h, w, _ = image.shape
    weights = image.mean(-1) + 0.1
    rows, cols = np.mgrid[0:h, 0:w]
    positions = np.stack([rows.ravel(), cols.ravel()]).astype(float)
    kde = _DiagonalKDE(positions, weights=weights.ravel())
    density = np.maximum(kde(positions).reshape(h, w), 1e-10)
    expected = np.log(density / density.sum())
    np.testing.assert_allclose(np.asarray(fpjax.initial_log_density(image)), expected, rtol=1e-10, atol=1e-10)


def test_position_kde_per_channel_and_dtype():
    image = _image().astype(np.float32)
    shared = fpjax.initial_log_density(image)
    per = fpjax.initial_log_density(image, per_channel=True)
    assert shared.shape == image.shape[:2] and per.shape == (3,) + image.shape[:2]
    assert shared.dtype == jnp.float32
    np.testing.assert_allclose(np.exp(np.asarray(per)).sum(axis=(1, 2)), 1.0, rtol=1e-5)


@pytest.mark.usefixtures("x64")
def test_intensity_kde_matches_direct_kernel_sum():
    rng = np.random.default_rng(5)
    channel = rng.integers(0, 256, size=(10, 11)) / 255.0
    values = channel.ravel()
    h = values.size ** (-0.2) * values.std(ddof=1)
    diff = np.abs(values[:, None] - values[None, :]) / h
    direct = (np.maximum(1 - diff, 0) / h).mean(axis=1).reshape(channel.shape)
    np.testing.assert_allclose(np.asarray(intensity_kde(jnp.asarray(channel))), direct, rtol=1e-10)
    m0 = fpjax.initial_log_density(np.stack([channel] * 2, -1), "intensity_kde")
    np.testing.assert_allclose(np.asarray(m0[1]), np.log(np.maximum(direct, 1e-10)), rtol=1e-10)


@pytest.mark.usefixtures("x64")
def test_intensity_method_closed_form():
    image = _image()
    m0 = np.asarray(fpjax.initial_log_density(image, "intensity"))
    x = np.moveaxis(image, -1, 0) + 0.1
    np.testing.assert_allclose(m0, np.log(x / x.sum(axis=(1, 2), keepdims=True)), rtol=1e-12)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.full((8, 8, 3), np.nan), "NaN at 192"),
        (np.where(np.eye(8)[..., None] > 0, np.inf, 0.5) * np.ones((1, 1, 3)), "inf at 24"),
        (np.full((8, 8, 3), 1.5), "outside \\[0, 1\\]"),
        (np.full((8, 8, 3), 0.3), "constant"),
        (np.zeros((8, 8)), "shape \\(H, W, C\\)"),
        (np.random.default_rng(0).random((2, 8, 3)), "too small"),
        (np.zeros((8, 8, 3), np.uint8), "dtype uint8"),
    ],
)
def test_bad_images_are_named(image, message):
    with pytest.raises(ValueError, match=message):
        fpjax.initial_log_density(image)


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="method must be one of"):
        fpjax.initial_log_density(_image(), "histogram")


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("method", ["position_kde", "intensity"])
def test_jit_vmap_grad(method):
    images = np.stack([_image(seed=s) for s in range(3)])
    f = jax.jit(lambda x: fpjax.initial_log_density(x, method))
    batched = jax.vmap(f)(jnp.asarray(images))
    for image, out in zip(images, batched, strict=False):
        np.testing.assert_allclose(np.asarray(out), np.asarray(fpjax.initial_log_density(image, method)), rtol=1e-12)
    probe = np.random.default_rng(1).normal(size=batched.shape[1:])
    loss = lambda x: jnp.sum(fpjax.initial_log_density(x, method) * probe)  # noqa: E731
    direction = np.random.default_rng(2).normal(size=images[0].shape)
    eps = 1e-6
    fd = (loss(images[0] * 0.9 + eps * direction) - loss(images[0] * 0.9 - eps * direction)) / (2 * eps)
    ad = jnp.vdot(jax.grad(loss)(jnp.asarray(images[0] * 0.9)), direction)
    np.testing.assert_allclose(float(ad), float(fd), rtol=1e-6)
