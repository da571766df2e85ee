"""Validation at the boundary (issue 16): FPConfig's values and the images that enter the solver.

Every rejection is a one-line ``ValueError`` that names the field (or the image) and what to do.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fpjax
from fpjax.batch import precompute as batch_precompute
from fpjax.solver.initial import check_image, check_images
from fpjax.solver.problem import FPConfig

NAN, INF = float("nan"), float("inf")

REJECTED = [
    (dict(T=0), r"FPConfig\.T must be a positive integer"),
    (dict(T=-3), r"FPConfig\.T must be a positive integer"),
    (dict(T=10.5), r"FPConfig\.T must be a positive integer"),
    (dict(T="10"), r"FPConfig\.T must be a positive integer"),
    (dict(T=True), r"FPConfig\.T must be a positive integer"),
    (dict(T=INF), r"FPConfig\.T must be a positive integer"),
    (dict(g=NAN), r"FPConfig\.g must be a finite number .*e\.g\. g=0\.5"),
    (dict(g=INF), r"FPConfig\.g must be a finite number"),
    (dict(g=-0.5), r"FPConfig\.g must be >= 0"),
    (dict(g="0.5"), r"FPConfig\.g must be a finite number"),
    (dict(T=3, g=(0.5, NAN, 0.5, 0.5)), r"FPConfig\.g must be finite and >= 0 at every time.*g\[1\] = nan"),
    (dict(T=3, g=(0.5, 0.5, -1.0, 0.5)), r"FPConfig\.g must be finite and >= 0 at every time.*g\[2\] = -1"),
    (dict(T=3, g=(0.5, 0.5)), r"FPConfig\.g has 2 values; give one per time"),
    (dict(spacing=(0.0, 0.1)), r"FPConfig\.spacing must be two finite positive numbers"),
    (dict(spacing=(-0.1, 0.1)), r"FPConfig\.spacing must be two finite positive numbers"),
    (dict(spacing=(NAN, 0.1)), r"FPConfig\.spacing must be a finite number"),
    (dict(spacing=(0.1,)), r"FPConfig\.spacing must be two finite positive numbers"),
    (dict(spacing=0.1), r"FPConfig\.spacing must be two finite positive numbers"),
    (dict(maxiter=0), r"FPConfig\.maxiter must be a positive integer \(or None"),
    (dict(maxiter=-5), r"FPConfig\.maxiter must be a positive integer"),
    (dict(max_outer=0), r"FPConfig\.max_outer must be a positive integer"),
    (dict(tol=0.0), r"FPConfig\.tol must lie in \(0, 1\)"),
    (dict(tol=-1e-6), r"FPConfig\.tol must lie in \(0, 1\)"),
    (dict(tol=1.0), r"FPConfig\.tol must lie in \(0, 1\)"),
    (dict(tol=NAN), r"FPConfig\.tol must be a finite number"),
    (dict(outer_tol=-1e-5), r"FPConfig\.outer_tol must lie in \[0, 1\)"),
    (dict(outer_tol=INF), r"FPConfig\.outer_tol must be a finite number"),
    (dict(drift="upwards"), r"FPConfig\.drift must be None or a function"),
    (dict(scheme="implicit"), r"FPConfig\.scheme must be one of"),
]


@pytest.mark.parametrize("kwargs, message", REJECTED, ids=[str(k) for k, _ in REJECTED])
def test_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        FPConfig(**kwargs)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("T", [10, np.int64(10), np.int32(10), 10.0, np.float64(10.0), jnp.int32(10)])
def test_integer_like_T_is_accepted_as_int(T):
    config = FPConfig(T=T)
    assert config.T == 10 and type(config.T) is int
    assert hash(config) == hash(FPConfig(T=10)) and config == FPConfig(T=10)


def test_integer_like_counts_and_numpy_numbers_are_normalised():
    config = FPConfig(max_outer=np.int64(7), maxiter=40.0, g=np.float32(0.25), tol=np.float64(1e-5))
    assert (config.max_outer, config.maxiter, config.g, config.tol) == (7, 40, 0.25, 1e-5)
    assert all(type(v) in (int, float) for v in (config.max_outer, config.maxiter, config.g, config.tol))
    assert FPConfig(spacing=np.array([0.1, 0.2])).spacing == (0.1, 0.2)
    hash(FPConfig(T=4, g=np.linspace(0.1, 0.5, 5)))  # a schedule becomes a tuple: still hashable


def test_zero_diffusion_leaves_the_field_unchanged():
    """``g = 0`` is accepted and means no diffusion: with zero drift every step is ``m^n = m^(n-1)``."""
    m0 = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    # float32: the density schemes still take p = exp(m) through a solve or the transforms and back, the
    # log-density scheme through a linear solve (measured at |m0| <= 2.3: 1.2e-7 log_density, 2.4e-7
    # density, 1.9e-6 spectral; 1e-12 was float64's)
    for scheme, atol in (("log_density", 1e-6), ("density", 1e-6), ("spectral", 1e-5)):
        solution = fpjax.solve(m0, FPConfig(T=5, g=0.0, scheme=scheme))
        np.testing.assert_allclose(np.asarray(solution.m), np.broadcast_to(m0, (6, 8, 8)), rtol=0, atol=atol)


def _image(shape=(8, 8, 3), seed=0):
    return np.random.default_rng(seed).uniform(size=shape)


def test_float16_images_are_promoted_to_float32():
    image = _image().astype(np.float16)
    assert check_image(image).dtype == np.float32
    assert fpjax.initial_log_density(image).dtype == jnp.float32
    assert check_images(image[None]).dtype == np.float32
    assert check_image(jnp.asarray(image, jnp.bfloat16)).dtype == jnp.float32
    promoted = fpjax.solve_image(image, FPConfig(T=3))
    reference = fpjax.solve_image(image.astype(np.float32), FPConfig(T=3))
    assert promoted.m.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(promoted.m), np.asarray(reference.m))


def test_float16_field_is_promoted_to_float32():
    m0 = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float16)
    assert fpjax.solve(m0, FPConfig(T=3)).m.dtype == jnp.float32


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_channel_first_image_is_refused_with_the_transpose(channels):
    image = _image((channels, 16, 16))
    for call in (check_image, fpjax.initial_log_density, lambda x: fpjax.solve_image(x, FPConfig(T=2))):
        with pytest.raises(ValueError, match=r"looks channel-first \(C, H, W\).*np\.moveaxis\(x, 0, -1\)"):
            call(image)
    np.testing.assert_array_equal(check_image(np.moveaxis(image, 0, -1)), np.moveaxis(image, 0, -1))


def test_channel_first_batch_is_refused_with_the_transpose():
    images = _image((2, 3, 16, 16))
    for call in (check_images, lambda x: fpjax.solve_images(x, FPConfig(T=2))):
        with pytest.raises(
            ValueError, match=r"images of shape \(2, 3, 16, 16\) looks channel-first.*moveaxis\(x, 1, -1\)"
        ):
            call(images)


def test_channel_last_images_with_few_rows_are_not_taken_for_channel_first():
    check_image(_image((3, 16, 1)))  # 3 rows, one channel: the trailing axes are not both larger
    check_image(_image((5, 16, 16)))  # 5 is not a channel count


@pytest.mark.parametrize(
    "shape, message",
    [
        ((8, 8, 0), r"image has no channels \(shape \(8, 8, 0\)\)"),
        ((0, 8, 3), r"image is empty \(shape \(0, 8, 3\)\)"),
        ((8, 2, 3), r"image grid 8x2 is too small"),
        ((8, 8), r"image must have shape \(H, W, C\).*x\[\.\.\., None\]"),
    ],
)
def test_empty_and_channel_less_images_are_refused(shape, message):
    with pytest.raises(ValueError, match=message):
        check_image(np.zeros(shape))


def test_empty_batch_and_wrong_rank_are_refused():
    with pytest.raises(ValueError, match=r"images is an empty batch \(shape \(0, 8, 8, 3\)\); pass at least one"):
        check_images(np.zeros((0, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"images must be a batch of shape \(N, H, W, C\)"):
        check_images(_image())
    with pytest.raises(ValueError, match=r"images has no channels \(shape \(1, 8, 8, 0\)\)"):
        check_images(np.zeros((1, 8, 8, 0)))


def test_non_finite_pixels_are_counted():
    image = _image()
    image[0, 0, 0], image[1, 2, 1], image[3, 3, 2] = np.nan, np.nan, np.inf
    with pytest.raises(ValueError, match=r"image has NaN at 2 and inf at 1 pixels"):
        check_image(image)
    with pytest.raises(ValueError, match=r"image 1: image has NaN at 2 and inf at 1 pixels"):
        check_images(np.stack([_image(), image]))


def test_integer_images_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"got dtype uint8; divide uint8 data by 255"):
        check_image((_image() * 255).astype(np.uint8))


def test_non_finite_field_is_refused():
    m0 = np.zeros((8, 8))
    m0[2, 2] = -np.inf
    with pytest.raises(ValueError, match=r"m0 has 1 non-finite values; a log-density must be finite"):
        fpjax.solve(m0, FPConfig(T=2))


def test_every_image_entry_point_uses_the_same_check():
    """solve_image, solve_images, initial_log_density and precompute refuse the same image alike."""
    images = _image((1, 3, 16, 16))
    for call in (
        check_images,
        lambda x: fpjax.solve_images(x, FPConfig(T=2)),
        lambda x: batch_precompute.precompute(x, FPConfig(T=2)),
    ):
        with pytest.raises(ValueError, match=r"images of shape \(1, 3, 16, 16\) looks channel-first"):
            call(images)
    bad = np.stack([_image(seed=1), np.full((8, 8, 3), 0.5)])
    for call in (check_images, lambda x: batch_precompute.precompute(x, FPConfig(T=2))):
        with pytest.raises(ValueError, match=r"image 1: image is constant"):
            call(bad)


def test_shape_checks_under_jit():
    """Under jit only the shape can be checked; a channel-first image is still refused."""
    with pytest.raises(ValueError, match="looks channel-first"):
        jax.jit(fpjax.initial_log_density)(jnp.asarray(_image((3, 16, 16))))
    assert jax.jit(fpjax.initial_log_density)(jnp.asarray(_image(), jnp.float16)).dtype == jnp.float32
