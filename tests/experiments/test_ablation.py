import jax.numpy as jnp
import numpy as np
import pytest

import fpjax
from fpjax.experiments import ablation
from fpjax.learn.embedding import embed
from fpjax.solver.problem import FPConfig


def _images(vary_y=True, dtype=np.float64):
    rng = np.random.default_rng(0)
    row = rng.uniform(0.2, 0.9, (1, 12, 1, 3))
    column = rng.uniform(0.2, 0.9, (1, 1, 12, 3))
    return (row * column if vary_y else np.broadcast_to(column, (1, 12, 12, 3))).astype(dtype)


def test_zero_score_trajectory_is_the_image_at_every_step():
    images = _images(dtype=np.float32)  # float32 images, as users have: the trajectory repeats them exactly
    x = ablation.zero_score_trajectories(images, 7)
    assert x.shape == (1, 8, 12, 12, 3)
    for n in range(8):
        np.testing.assert_array_equal(x[:, n], images)


@pytest.mark.usefixtures("x64")
def test_scaled_score_differs_from_the_default_by_the_stated_factor():
    # An image constant along y (columns vary only with x) with zero-flux boundaries has no y-score: the
    # default (s_x + s_y) and the x-only score agree, and the scaled variant moves each pixel 1/h_x as far.
    images = _images(vary_y=False)
    config = FPConfig(T=10, boundary="reflect")
    profile = np.log(images[0, 0, :, 0] + 0.1)
    m0 = jnp.asarray(np.broadcast_to(profile - np.log(12 * np.exp(profile).sum()), (12, 12)))
    m = fpjax.solve(m0, config).m[None, ..., None]  # (1, T+1, H, W, 1), constant along y at every step
    default = embed(images, m, config)
    scaled = ablation.scaled_score_trajectories(images, m, config)
    h_x = config.grid_spacing((12, 12))[0]
    assert h_x == pytest.approx(1 / 12)
    moved = default - images[:, None]
    assert float(jnp.max(jnp.abs(moved))) > 1e-6  # the embedding does move pixels
    np.testing.assert_allclose(scaled - images[:, None], moved / h_x, rtol=1e-10, atol=1e-14)


def test_scaled_score_refuses_a_drift():
    config = FPConfig(T=2, drift=lambda t: (1.0, 0.0))
    with pytest.raises(ValueError, match="zero drift"):
        ablation.scaled_score_trajectories(_images(), jnp.zeros((1, 3, 12, 12, 1)), config)


def test_summary_counts_reached_runs_and_takes_medians():
    rows = [dict(variant="fpjax", final_ssim=s, final_psnr=20.0, final_mse=0.01, **{"seconds_0.9": t})
            for s, t in ((0.95, 10.0), (0.91, 30.0), (0.85, None))]  # fmt: skip
    summary = ablation.summarise(rows, ablation.AblationSettings(targets=(0.9,)))["fpjax"]
    assert summary["reached_0.9"] == 2 and summary["runs"] == 3
    assert summary["seconds_0.9"] == dict(median=20.0, min=10.0, max=30.0, n=2)
    assert summary["final_ssim"]["median"] == pytest.approx(0.91)
