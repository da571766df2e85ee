import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from fpjax.eval import metrics


@pytest.mark.parametrize("channels", [1, 3])
def test_metrics_match_scikit_image(channels):
    rng = np.random.default_rng(0)
    clean = rng.uniform(size=(32, 32, channels)).astype(np.float32)
    noisy = np.clip(clean + 0.1 * rng.normal(size=clean.shape), 0, 1).astype(np.float32)
    reference = structural_similarity(
        clean, noisy, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
    )
    np.testing.assert_allclose(float(metrics.ssim(noisy, clean)), reference, rtol=1e-4)
    np.testing.assert_allclose(
        float(metrics.psnr(noisy, clean)), peak_signal_noise_ratio(clean, noisy, data_range=1.0), rtol=1e-5
    )
    np.testing.assert_allclose(float(metrics.mse(noisy, clean)), mean_squared_error(clean, noisy), rtol=1e-5)


def test_batched_and_checked():
    x = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3))
    assert metrics.ssim(x, x).shape == (3,)
    np.testing.assert_allclose(metrics.ssim(x, x), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        metrics.ssim(x, x[:2])
    with pytest.raises(ValueError, match="11x11"):
        metrics.ssim(x[:, :8, :8], x[:, :8, :8])


def test_nearest_ssim_finds_the_matching_reference():
    refs = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3))
    samples = refs[jnp.array([2, 0])] + 0.01
    best, index = metrics.nearest_ssim(samples, refs)
    np.testing.assert_array_equal(index, [2, 0])
    np.testing.assert_allclose(best, metrics.ssim(samples, refs[jnp.array([2, 0])]), rtol=1e-6)
    assert metrics.ssim(refs[None, :2], refs[None, :2]).shape == (1, 2)
