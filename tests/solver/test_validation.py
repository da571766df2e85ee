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
    (dict(scheme=lambda: fpjax.LogDensity(maxiter=0)), r"LogDensity\.maxiter must be a positive integer \(or None"),
    (dict(scheme=lambda: fpjax.Density(maxiter=-5)), r"Density\.maxiter must be a positive integer"),
    (dict(scheme=lambda: fpjax.LogDensity(max_outer=0)), r"LogDensity\.max_outer must be a positive integer"),
    (dict(scheme=lambda: fpjax.LogDensity(tol=0.0)), r"LogDensity\.tol must lie in \(0, 1\)"),
    (dict(scheme=lambda: fpjax.Density(tol=-1e-6)), r"Density\.tol must lie in \(0, 1\)"),
    (dict(scheme=lambda: fpjax.LogDensity(tol=1.0)), r"LogDensity\.tol must lie in \(0, 1\)"),
    (dict(scheme=lambda: fpjax.LogDensity(tol=NAN)), r"LogDensity\.tol must be a finite number"),
    (dict(scheme=lambda: fpjax.LogDensity(outer_tol=-1e-5)), r"LogDensity\.outer_tol must lie in \[0, 1\)"),
    (dict(scheme=lambda: fpjax.LogDensity(outer_tol=INF)), r"LogDensity\.outer_tol must be a finite number"),
    (dict(drift="upwards"), r"FPConfig\.drift must be None or a function"),
    (dict(scheme="implicit"), r"FPConfig\.scheme must be a scheme object"),
    (dict(scheme=lambda: fpjax.LogDensity(linearization="exact")), r"LogDensity\.linearization must be one of"),
    (dict(scheme=lambda: fpjax.Spectral(transform="wavelet")), r"Spectral\.transform must be one of"),
    (dict(scheme="spectral", drift=lambda t: (0.1, 0.0)), r"FPConfig\(scheme=Spectral\(\)\) solves the zero-drift"),
]


def _id(kwargs: dict, message: str) -> str:
    """A test id the same in every process (pytest-xdist): no function addresses."""
    return ",".join(f"{k}=" + ("<fn>" if callable(v) else repr(v)) for k, v in kwargs.items()) + ":" + message[:24]


@pytest.mark.parametrize("kwargs, message", REJECTED, ids=[_id(k, m) for k, m in REJECTED])
def test_config_rejects(kwargs, message):
    """A scheme's option is refused by the scheme (given as a function: it raises when called)."""
    with pytest.raises(ValueError, match=message) as error:
        FPConfig(**{k: v() if k == "scheme" and callable(v) else v for k, v in kwargs.items()})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("T", [10, np.int64(10), np.int32(10), 10.0, np.float64(10.0), jnp.int32(10)])
def test_integer_like_T_is_accepted_as_int(T):
    config = FPConfig(T=T)
    assert config.T == 10 and type(config.T) is int
    assert hash(config) == hash(FPConfig(T=10)) and config == FPConfig(T=10)


def test_integer_like_counts_and_numpy_numbers_are_normalised():
    config = FPConfig(
        g=np.float32(0.25), scheme=fpjax.LogDensity(max_outer=np.int64(7), maxiter=40.0, tol=np.float64(1e-5))
    )
    values = (config.scheme.max_outer, config.scheme.maxiter, config.g, config.scheme.tol)
    assert values == (7, 40, 0.25, 1e-5)
    assert all(type(v) in (int, float) for v in values)
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


def test_function_digest_identifies_a_function_by_its_values_not_the_object():
    from fpjax.solver.problem import function_digest

    digest = lambda **kw: function_digest(FPConfig(T=5, **kw), (8, 8))  # noqa: E731
    assert digest(g=lambda t: 0.3 + 0.4 * t) == digest(g=lambda t: (4 * t + 3) / 10)  # equal to the last bits
    assert digest(g=lambda t: 0.3 + 0.4 * t) != digest(g=lambda t: 0.3 + 0.4 * t + 1e-6)
    # "the same" is the same at every time the solvers read: t_n and the Gauss-Legendre nodes, not t = 0.55
    assert digest(g=lambda t: 0.3 + 0.4 * t) == digest(g=lambda t: 0.3 + 0.4 * t * (t != 0.55))
    assert digest(g=0.5) == {} and set(digest(drift=lambda t: (t, 0.0))) == {"drift"}
    assert digest(drift=lambda t: (t, 0.0)) != digest(drift=lambda t: (0.0, t))


@pytest.mark.parametrize(
    "drift, words",
    [
        (lambda t: (jnp.zeros((8, 8)), jnp.zeros((8, 8)), 0.0), "it returned 3 values"),
        (lambda t: (jnp.zeros((5, 8)), 0.0), "shapes (5, 8) and ()"),
        (lambda t: jnp.zeros((3, 8, 8)), "an array of shape (3, 8, 8)"),
    ],
)
def test_a_drift_of_the_wrong_shape_is_named(drift, words):
    with pytest.raises(ValueError, match=r"FPConfig\.drift\(t\) must return two fields .*\(H, W\) = \(8, 8\)") as e:
        fpjax.solve(jnp.zeros((8, 8)), FPConfig(T=2, drift=drift))
    assert words in str(e.value)


def test_a_drift_array_of_two_components_is_its_fields():
    """(2, H, W) is read as (f_x, f_y): the same solve as the pair (float64 reference: the pair's solve)."""
    fx = np.random.default_rng(0).normal(size=(8, 8)) * 0.1
    pair = fpjax.solve(jnp.zeros((8, 8)), FPConfig(T=3, drift=lambda t: (fx, -fx), scheme="density"))
    stacked = fpjax.solve(jnp.zeros((8, 8)), FPConfig(T=3, drift=lambda t: jnp.stack([fx, -fx]), scheme="density"))
    np.testing.assert_array_equal(np.asarray(stacked.m), np.asarray(pair.m))


def test_complex_input_is_refused_not_truncated():
    with pytest.raises(ValueError, match="m0 is complex"):
        fpjax.solve(jnp.zeros((8, 8)) + 5j, FPConfig(T=2))
    with pytest.raises(ValueError, match="dtype complex"):
        fpjax.solve_image(np.full((8, 8, 3), 0.5 + 0.1j), FPConfig(T=2))


def test_a_solve_that_cannot_fit_in_memory_is_refused_before_it_starts():
    """T = 10**6 on 128x128 is 131 GB of trajectory (it hung in the allocation): refused in one line."""
    with pytest.raises(MemoryError, match=r"a solve of 1 field 128x128 with T=1000000 needs 131 GB.*smaller T"):
        fpjax.solve(jnp.zeros((128, 128), jnp.float32), FPConfig(T=10**6))
    with pytest.raises(MemoryError, match=r"a solve of 3 fields 128x128 with T=1000000"):
        fpjax.solve_image(np.full((128, 128, 3), 0.5, np.float32), FPConfig(T=10**6))


def test_score_refuses_a_channels_last_trajectory_read_as_fields():
    """precompute's (N, T+1, H, W, K) read as fields would take (W, K) for the grid: refused, naming the fix."""
    m = np.zeros((2, 4, 32, 32, 3), np.float32)
    for function in (fpjax.score, fpjax.pixel_score):
        with pytest.raises(ValueError, match="pass channel_axis=-1"):
            function(m)
    assert fpjax.score(m, channel_axis=-1).shape == (2, 4, 32, 32, 3, 2)
    assert fpjax.score(np.zeros((4, 16, 3)), channel_axis=None).shape == (4, 16, 3, 2)  # a strip, said so
    assert fpjax.score(np.zeros((4, 5, 4))).shape == (4, 5, 4, 2)  # a 5x4 grid is a grid
