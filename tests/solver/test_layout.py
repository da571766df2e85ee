"""One layout for trajectories of images (docs/conventions.md): channels last, after time; statistics (C, T).

Each check compares with an independent reference: the single-field solve of each channel's initial
log-density, and NumPy central differences for the scores."""

import jax
import numpy as np
import pytest

import fpjax
from fpjax.data import sample_images


def _images(n=2, shape=(12, 10)):
    return sample_images(32)[:n, : shape[0], : shape[1]]


def _numpy_score(field, boundary):
    """``(..., H, W) -> (..., H, W, 2)``: central differences in pixel units, zero padding or the mirrored cell."""
    pad = [(0, 0)] * (field.ndim - 2) + [(1, 1), (1, 1)]
    p = np.pad(np.asarray(field, np.float64), pad, mode="constant" if boundary == "zero" else "edge")
    sx = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) / 2
    sy = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) / 2
    return np.stack([sx, sy], axis=-1)


@pytest.mark.parametrize("scheme", ["log_density", "spectral"])
@pytest.mark.parametrize("density, per_channel", [("position_kde", None), ("intensity", True)])
def test_solve_image_is_channels_last_and_equals_solve_of_each_channel(scheme, density, per_channel):
    image = _images(1)[0]
    config = fpjax.FPConfig(T=4, scheme=scheme)
    sol = fpjax.solve_image(image, config, density=density, per_channel=per_channel)
    assert sol.m.shape == (5, 12, 10, 3) and sol.channel_axis == -1
    for name in ("outer_iterations", "linear_iterations", "residual", "status"):
        assert getattr(sol, name).shape == (3, 4), name
    m0 = fpjax.initial_log_density(image, density, per_channel=per_channel)
    fields = [m0] * 3 if m0.ndim == 2 else list(m0)  # a shared density serves every channel
    for c, field in enumerate(fields):
        reference = fpjax.solve(field, config)
        assert reference.m.shape == (5, 12, 10) and reference.channel_axis is None
        np.testing.assert_allclose(np.asarray(sol.m[..., c]), np.asarray(reference.m), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(sol.outer_iterations[c]), np.asarray(reference.outer_iterations))
        np.testing.assert_array_equal(np.asarray(sol.status[c]), np.asarray(reference.status))
        # (the residuals are rounding-level measures: a vmapped solve's differ from a lone one's in their digits)


def test_solve_images_is_n_t_h_w_c_with_n_c_t_statistics():
    images = _images(3)
    config = fpjax.FPConfig(T=3)
    sol = fpjax.solve_images(images, config, density="intensity", per_channel=True)
    assert sol.m.shape == (3, 4, 12, 10, 3) and sol.converged.shape == (3, 3, 3) and sol.outcome.shape == (3, 3)
    for i, image in enumerate(images):
        for c, field in enumerate(fpjax.initial_log_density(image, "intensity", per_channel=True)):
            reference = fpjax.solve(field, config).m
            np.testing.assert_allclose(np.asarray(sol.m[i, ..., c]), np.asarray(reference), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("boundary", ["zero", "reflect"])
def test_an_image_solution_scores_each_channel_with_the_component_last(boundary):
    config = fpjax.FPConfig(T=3, boundary=boundary, scheme="spectral")
    sol = fpjax.solve_images(_images(2), config, density="intensity", per_channel=True)
    m = np.asarray(sol.m)  # (N, T+1, H, W, C)
    score, sigma = np.asarray(sol.score()), np.asarray(sol.pixel_score())
    assert score.shape == m.shape + (2,) and sigma.shape == m.shape
    # fpjax.score of each channel's field, its channel moved last: the same numbers, bit for bit
    per_field = np.stack([np.asarray(fpjax.score(m[..., c], boundary)) for c in range(3)], axis=-2)
    np.testing.assert_array_equal(score, per_field)
    per_field = np.stack([np.asarray(fpjax.pixel_score(m[..., c], "sum", boundary)) for c in range(3)], axis=-1)
    np.testing.assert_array_equal(sigma, per_field)
    # and NumPy's central differences of each channel (x first, pixel units)
    reference = np.stack([_numpy_score(m[..., c], boundary) for c in range(3)], axis=-2)
    np.testing.assert_allclose(score, reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sigma, reference[..., 0] + reference[..., 1], rtol=1e-5, atol=1e-5)
    y_only = np.asarray(fpjax.pixel_score(m, "y", boundary, channel_axis=-1))
    np.testing.assert_allclose(y_only, reference[..., 1], rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("x64")  # compared with a NumPy float64 reference at float64 tolerances
def test_score_of_channel_last_arrays():
    m = np.random.default_rng(0).normal(size=(2, 3, 6, 5, 4))  # (N, T+1, H, W, C)
    s = np.asarray(fpjax.score(m, channel_axis=-1))
    assert s.shape == (2, 3, 6, 5, 4, 2)
    np.testing.assert_allclose(s, np.moveaxis(_numpy_score(np.moveaxis(m, -1, -3), "zero"), -4, -2), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(fpjax.pixel_score(m, "x", channel_axis=-1)), s[..., 0], rtol=1e-12)


def test_channel_axis_other_than_none_or_last_is_refused():
    m = np.zeros((3, 6, 5, 2))
    for axis in (0, 1, -2, 3):
        with pytest.raises(ValueError, match=r"channel_axis must be None .* or -1 \(channels last"):
            fpjax.score(m, channel_axis=axis)
        with pytest.raises(ValueError, match=r"channel_axis must be None"):
            fpjax.pixel_score(m, channel_axis=axis)
    with pytest.raises(ValueError, match=r"expected m of shape \(\.\.\., H, W, C\), got shape \(6, 5\)"):
        fpjax.score(np.zeros((6, 5)), channel_axis=-1)


def test_the_layout_rides_through_jit_and_vmap():
    image = _images(1)[0]
    config = fpjax.FPConfig(T=2, scheme="spectral")
    jitted = jax.jit(lambda x: fpjax.solve_image(x, config))(image)
    assert jitted.channel_axis == -1 and jitted.m.shape == (3, 12, 10, 3)
    eager = fpjax.solve_image(image, config).m  # jit fuses the initial density with the solve: rounding differs
    np.testing.assert_allclose(np.asarray(jitted.m), np.asarray(eager), rtol=1e-6, atol=1e-6)
    assert jitted.score().shape == (3, 12, 10, 3, 2)
    fields = jax.vmap(lambda m0: fpjax.solve(m0, config))(np.zeros((2, 12, 10)))
    assert fields.channel_axis is None and fields.score().shape == (2, 3, 12, 10, 2)
