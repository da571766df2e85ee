import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fpjax.diffusion import mixtures
from fpjax.diffusion import sde as sde_lib


def test_log_prob_integrates_to_one_and_samples_have_the_stated_moments():
    mixture = mixtures.ring(modes=8, radius=1.0, std=0.1)
    sde = sde_lib.VESDE(0.01, 5.0)
    grid = np.linspace(-3, 3, 301)
    xx, yy = np.meshgrid(grid, grid)
    points = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], 1))
    for t in (None, 0.3):
        density = jnp.exp(mixture.log_prob(points, None if t is None else jnp.full(points.shape[0], t), sde))
        np.testing.assert_allclose(float(density.sum()) * (grid[1] - grid[0]) ** 2, 1.0, rtol=2e-3)
    x = mixture.sample(jax.random.key(0), 20000)
    np.testing.assert_allclose(x.mean(0), 0.0, atol=0.02)
    # Covariance of the ring: (r^2 / 2 + std^2) I.
    np.testing.assert_allclose(np.cov(np.asarray(x).T), (0.5 + 0.01) * np.eye(2), atol=0.02)


@pytest.mark.usefixtures("x64")
def test_score_is_the_gradient_of_the_log_density_by_finite_differences():
    mixture = mixtures.two_modes()
    sde = sde_lib.VPSDE()
    x = jnp.array([[0.3, -0.2], [4.0, 5.5]])
    t = jnp.array([0.2, 0.7])
    h = 1e-6
    fd = jnp.stack([(mixture.log_prob(x + h * e[None], t, sde) - mixture.log_prob(x - h * e[None], t, sde)) / (2 * h)
                    for e in jnp.eye(2)], axis=1)  # fmt: skip
    np.testing.assert_allclose(mixture.score(sde)(x, t), fd, rtol=1e-6, atol=1e-8)
