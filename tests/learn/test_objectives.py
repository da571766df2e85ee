import jax
import jax.numpy as jnp
import numpy as np

from fpjax.learn import objectives as losses


def test_loss_is_zero_for_the_exact_denoiser_and_positive_otherwise():
    lam = 0.1
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
    z = jax.random.normal(jax.random.key(1), x.shape)
    t = jnp.linspace(0.0, 1.0, 4)
    g = jnp.full((4,), 0.5)
    exact = lambda noisy, t: -(noisy - x) / lam**2  # = -z / lam at the perturbed points
    assert float(losses.embedded_denoising_loss(exact, x, t, g, z, lam)) < 1e-20
    zero = lambda noisy, t: jnp.zeros_like(noisy)
    # s = 0 leaves E|z|^2 / (2 g^2) = 1 / (2 * 0.25) = 2 per pixel.
    value = float(losses.embedded_denoising_loss(zero, x, t, g, z, lam))
    np.testing.assert_allclose(value, float(jnp.mean(z**2)) / (2 * 0.25), rtol=1e-6)


def test_loss_weights_by_g_squared():
    x = jnp.zeros((2, 4, 4, 1))
    z = jnp.ones_like(x)
    zero = lambda noisy, t: jnp.zeros_like(noisy)
    value = losses.embedded_denoising_loss(zero, x, jnp.zeros(2), jnp.array([1.0, 2.0]), z)
    np.testing.assert_allclose(float(value), (1 / 2 + 1 / 8) / 2)


def test_time_sampling_covers_every_level():
    T = 10
    uniform = losses.sample_time_indices(jax.random.key(0), 5000, T)
    assert int(uniform.min()) == 0 and int(uniform.max()) == T
    counts = np.bincount(np.asarray(uniform), minlength=T + 1)
    assert counts.min() > 5000 / (T + 1) * 0.8
    stratified = losses.sample_time_indices(jax.random.key(1), T + 1, T, stratified=True)
    np.testing.assert_array_equal(np.sort(np.asarray(stratified)), np.arange(T + 1))
