import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fpjax
from fpjax.data import sample_images
from fpjax.learn.embedding import embed, embed_field, embedded_batches


def _loop_reference(channel, m, g, T, component="sum", drift_sum=0.0):
    """The transport of DESIGN.md section 4 step by step, with numpy central differences (zero boundary)."""
    dt = 1.0 / T
    x = [np.asarray(channel, np.float64)]
    for n in range(1, T + 1):
        p = np.pad(np.asarray(m[n - 1], np.float64), 1)
        sx = (p[1:-1, 2:] - p[1:-1, :-2]) / 2
        sy = (p[2:, 1:-1] - p[:-2, 1:-1]) / 2
        sigma = {"sum": sx + sy, "x": sx, "y": sy}[component]
        x.append(x[-1] + (drift_sum - 0.5 * g[n - 1] ** 2 * sigma) * dt)
    return np.stack(x)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("component", ["sum", "x"])
def test_embed_field_matches_step_by_step_transport(component):
    image = sample_images(32)[0, :12, :10].astype(np.float64)
    config = fpjax.FPConfig(T=8, g=tuple(np.linspace(0.3, 0.7, 9)))
    m = fpjax.solve(fpjax.initial_log_density(image), config).m
    ours = embed_field(image[..., 1], m, config, component)
    np.testing.assert_allclose(
        np.asarray(ours),
        _loop_reference(image[..., 1], m, np.linspace(0.3, 0.7, 9), 8, component),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.usefixtures("x64")
def test_embed_with_constant_drift():
    image = sample_images(32)[0, :8, :8].astype(np.float64)
    config = fpjax.FPConfig(T=4, drift=lambda t: (0.2, -0.05))
    m = fpjax.solve(fpjax.initial_log_density(image), config).m
    ours = embed_field(image[..., 0], m, config)
    np.testing.assert_allclose(
        np.asarray(ours), _loop_reference(image[..., 0], m, [0.5] * 5, 4, "sum", 0.15), rtol=1e-12
    )


def test_embed_batches_shared_and_per_channel_densities(tmp_path):
    images = sample_images(32)[:3, :16, :16]
    config = fpjax.FPConfig(T=5)
    shared = fpjax.precompute(images, config)
    out = embed(images, shared.m[..., :1], config)
    assert out.shape == (3, 6, 16, 16, 3)
    np.testing.assert_allclose(np.asarray(out[:, 0]), images, rtol=1e-7)
    for i in range(3):
        for c in range(3):
            np.testing.assert_allclose(
                np.asarray(out[i, ..., c]),
                np.asarray(embed_field(images[i, ..., c], shared.m[i, ..., 0], config)),
                rtol=1e-6,
                atol=1e-7,
            )
    stored = fpjax.precompute(images, config, store=tmp_path / "s.zarr")
    np.testing.assert_allclose(np.asarray(embed(images, stored.m, config)), np.asarray(out), rtol=1e-6, atol=1e-7)
    jitted = jax.jit(lambda x, m: embed(x, m, config))(images, shared.m[..., :1])
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(out), rtol=1e-6, atol=1e-7)


@pytest.mark.usefixtures("x64")
def test_embed_gradient_wrt_g_matches_finite_differences():
    image = sample_images(32)[0, :8, :8].astype(np.float64)
    config = fpjax.FPConfig(T=4)
    m = fpjax.solve(fpjax.initial_log_density(image), config).m
    loss = lambda g: jnp.sum(embed_field(image[..., 0], m, config, g=g)[-1] ** 2)  # noqa: E731
    fd = (loss(0.5 + 1e-6) - loss(0.5 - 1e-6)) / 2e-6
    np.testing.assert_allclose(float(jax.grad(loss)(0.5)), float(fd), rtol=1e-6)


def test_shape_errors_are_named():
    config = fpjax.FPConfig(T=4)
    with pytest.raises(ValueError, match="T\\+1 = 5"):
        embed_field(np.zeros((4, 4)), jnp.zeros((3, 4, 4)), config)
    with pytest.raises(ValueError, match=r"expected m of shape \(N, T\+1, H, W, C\) = \(2, 5, 4, 4, 3\).*got shape "
                       r"\(2, 5, 4, 4, 2\)"):  # fmt: skip
        embed(np.zeros((2, 4, 4, 3)), np.zeros((2, 5, 4, 4, 2)), config)


@pytest.mark.parametrize(
    "shape",
    [
        (2, 3, 5, 4, 6),  # channel-first (N, C, T+1, H, W): solve_images' old layout
        (2, 4, 4, 6, 3),  # no time axis where T+1 = 5 belongs
        (2, 6, 4, 6, 3),  # another T
        (5, 4, 6, 3),  # one image's trajectory, no batch axis
        (3, 5, 4, 6, 3),  # another N
        (2, 5, 6, 4, 3),  # H and W swapped
    ],
)
def test_a_trajectory_in_another_layout_is_refused_naming_the_expected_one(shape):
    config, images = fpjax.FPConfig(T=4), np.zeros((2, 4, 6, 3))
    expected = r"expected m of shape \(N, T\+1, H, W, C\) = \(2, 5, 4, 6, 3\)"
    with pytest.raises(ValueError, match=expected + r".*" + r"got shape " + re.escape(str(shape))):
        embed(images, np.zeros(shape), config)
    with pytest.raises(ValueError, match=expected):  # under jit too: the shapes are static
        jax.jit(lambda x, m: embed(x, m, config))(images, np.zeros(shape))
    with pytest.raises(ValueError, match=r"expected images of shape \(N, H, W, C\), got shape \(4, 6, 3\)"):
        embed(images[0], np.zeros((2, 5, 4, 6, 3)), config)


@pytest.mark.usefixtures("x64")  # compared with a NumPy float64 reference at float64 tolerances
def test_embed_takes_an_image_solution_and_checks_it():
    images = sample_images(32)[:2, :8, :7].astype(np.float64)
    config = fpjax.FPConfig(T=4, scheme="spectral")
    solution = fpjax.solve_images(images, config, density="intensity", per_channel=True)
    ours = np.asarray(embed(images, solution, config))
    assert ours.shape == (2, 5, 8, 7, 3)
    for i, image in enumerate(images):  # independent reference: each channel's own solve, transported step by step
        fields = fpjax.initial_log_density(image, "intensity", per_channel=True)
        for c in range(3):
            m = np.asarray(fpjax.solve(fields[c], config).m)
            np.testing.assert_allclose(ours[i, ..., c], _loop_reference(image[..., c], m, [0.5] * 5, 4), rtol=1e-9,
                                       atol=1e-12)  # fmt: skip
    with pytest.raises(ValueError, match=r"solved with boundary='zero', config.boundary is 'reflect'"):
        embed(images, solution, fpjax.FPConfig(T=4, scheme="spectral", boundary="reflect"))
    field = fpjax.solve(fpjax.initial_log_density(images[0]), config)
    with pytest.raises(ValueError, match=r"expected an image solution .*got a field solution with m of shape \(5, 8"):
        embed(images[:1], field, config)
    one = fpjax.solve_image(images[0], config)  # one image's solution: (T+1, H, W, C), no batch axis
    with pytest.raises(ValueError, match=r"expected m of shape \(N, T\+1, H, W, C\) = \(1, 5, 8, 7, 3\).*got shape "
                       r"\(5, 8, 7, 3\)"):  # fmt: skip
        embed(images[:1], one, config)


def test_zero_score_embedding_is_the_identity():
    config = fpjax.FPConfig(T=5)
    images = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
    trajectory = fpjax.embed(images, jnp.zeros((2, 6, 8, 8, 1)), config)
    np.testing.assert_array_equal(trajectory, jnp.broadcast_to(images[:, None], trajectory.shape))


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("scheme", ["log_density", "spectral"])
def test_embedding_of_a_solution_is_differentiable_with_respect_to_the_image(scheme):
    """image -> m0 -> FP solve -> score embedding: jvp and grad agree with each other and with central
    differences (float64)."""
    image = jnp.asarray(np.clip(sample_images(32)[2, :10, :9].astype(np.float64), 0.05, 0.95))
    tight = fpjax.LogDensity(tol=1e-12, outer_tol=1e-12) if scheme == "log_density" else fpjax.Spectral()
    config = fpjax.FPConfig(T=4, scheme=tight)
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5, 10, 9, 3)))

    def loss(x):
        m = fpjax.solve(fpjax.initial_log_density(x), config).m  # (T+1, H, W)
        return jnp.sum(weights * embed(x[None], m[None, ..., None], config))

    v = jnp.asarray(np.random.default_rng(1).normal(size=image.shape))
    central = (loss(image + 1e-6 * v) - loss(image - 1e-6 * v)) / 2e-6
    forward = jax.jvp(loss, (image,), (v,))[1]
    np.testing.assert_allclose(forward, central, rtol=1e-6)
    np.testing.assert_allclose(jnp.vdot(jax.grad(loss)(image), v), forward, rtol=1e-9)


def test_embed_checks_its_images_and_refuses_a_non_finite_m_naming_the_image():
    """A NaN in m gave 68% NaN output; images * 255 were accepted (precompute refuses both)."""
    images = np.asarray(sample_images(32)[:3, :8, :8])
    config = fpjax.FPConfig(T=2)
    m = np.zeros((3, 3, 8, 8, 1), np.float32)
    bad = m.copy()
    bad[1, 2, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match=r"m is not finite for 1 of 3 images \(the first: image 1\)"):
        fpjax.embed(images, bad, config)
    with pytest.raises(ValueError, match=r"image 0: .*outside \[0, 1\]"):
        fpjax.embed(images * 255, m, config)


def test_embedded_batches_stream_a_store_and_equal_the_step_by_step_transport(tmp_path):
    """Three images embedded two at a time from a store, each equal to the transport computed step by step."""
    images = sample_images(32)[:3, :8, :8]
    config = fpjax.FPConfig(T=4, scheme="spectral")
    store = fpjax.precompute(images, config, store=tmp_path / "fp.zarr").store
    batches = list(embedded_batches(images, store.m, config, batch_size=2))
    assert [list(rows) for rows, _ in batches] == [[0, 1], [2]]
    m = np.asarray(store.m[...])
    g = np.full(config.T + 1, 0.5)
    for rows, trajectories in batches:
        for j, i in enumerate(rows):
            expected = _loop_reference(images[i, ..., 0], m[i, ..., 0], g, config.T)
            np.testing.assert_allclose(trajectories[j, ..., 0], expected, rtol=1e-5, atol=1e-5)
