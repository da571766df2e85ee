import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fpjax
from fpjax.data import sample_images
from fpjax.solver import projection
from fpjax.solver.problem import FPConfig


def _dense_system(n=6, seed=0):
    rng = np.random.default_rng(seed)
    a = np.eye(n * n) * 4 + rng.normal(size=(n * n, n * n)) / n
    return a, rng.normal(size=(n, n))


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("dim", [3, 10])
def test_arnoldi_orthonormal_and_hessenberg(dim):
    a, r0 = _dense_system()
    matvec = lambda x: (jnp.asarray(a) @ x.ravel()).reshape(x.shape)  # noqa: E731
    basis, hessenberg = projection.arnoldi(matvec, jnp.asarray(r0), dim)
    v = np.asarray(basis).reshape(dim, -1)
    np.testing.assert_allclose(v @ v.T, np.eye(dim), atol=1e-12)
    np.testing.assert_allclose(np.asarray(hessenberg), v @ a @ v.T, atol=1e-10)
    assert np.allclose(np.tril(np.asarray(hessenberg), -2), 0)
    # the span is the Krylov space: r0, A r0, ... lie in it
    krylov_vectors = [r0.ravel()]
    for _ in range(dim - 1):
        krylov_vectors.append(a @ krylov_vectors[-1])
    k = np.stack(krylov_vectors, axis=1)
    np.testing.assert_allclose(v.T @ (v @ k), k, rtol=1e-8, atol=1e-8 * np.abs(k).max())


@pytest.mark.usefixtures("x64")
def test_projection_is_exact_on_the_full_space():
    a, b = _dense_system(n=4)
    matvec = lambda x: (jnp.asarray(a) @ x.ravel()).reshape(x.shape)  # noqa: E731
    basis, hessenberg = projection.arnoldi(matvec, jnp.asarray(b), 16)
    x = projection.project(basis, hessenberg, jnp.asarray(b))
    np.testing.assert_allclose(np.asarray(x).ravel(), np.linalg.solve(a, b.ravel()), rtol=1e-8)
    xg = projection.galerkin_project(basis, matvec, jnp.asarray(b))
    np.testing.assert_allclose(np.asarray(xg).ravel(), np.linalg.solve(a, b.ravel()), rtol=1e-8)


def test_arnoldi_breakdown_leaves_zero_rows():
    a = np.diag([1.0, 2.0, 3.0, 4.0] + [5.0] * 12)
    r0 = np.zeros((4, 4))
    r0[0, :2] = 1.0  # lies in a 2-dimensional invariant subspace
    matvec = lambda x: (jnp.asarray(a) @ x.ravel()).reshape(x.shape)  # noqa: E731
    basis, hessenberg = projection.arnoldi(matvec, jnp.asarray(r0), 5)
    assert np.isfinite(np.asarray(basis)).all() and np.isfinite(np.asarray(hessenberg)).all()
    norms = np.linalg.norm(np.asarray(basis).reshape(5, -1), axis=1)
    np.testing.assert_allclose(norms, [1, 1, 0, 0, 0], atol=1e-12)


def _fields(n=3):
    return [fpjax.initial_log_density(im.astype(np.float64)) for im in sample_images(32)[:n, :16, :16]]


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("mode", ["initial_guess", "galerkin"])
def test_exact_modes_match_the_plain_solve(mode):
    seed, *targets = _fields()
    config = fpjax.FPConfig(T=10, scheme=fpjax.LogDensity(outer_tol=1e-10, tol=1e-12, max_outer=100))
    bases = projection.seed_bases(fpjax.solve(seed, config).m, config, dim=8)
    assert bases[0].shape == (10, 8, 16, 16) and bases[1].shape == (10, 8, 8)
    for target in targets:
        projected = projection.solve_projected(target, bases, config, mode)
        plain = fpjax.solve(target, config)
        assert bool(projected.converged.all())
        np.testing.assert_allclose(np.asarray(projected.m), np.asarray(plain.m), rtol=1e-8)


def test_approximate_mode_reports_its_error():
    seed, target = _fields(2)
    config = fpjax.FPConfig(T=10)
    bases = projection.seed_bases(fpjax.solve(seed, config).m, config, dim=20)
    approx = projection.solve_projected(target, bases, config, "approximate")
    exact = fpjax.solve(target, config)
    error = float(jnp.linalg.norm(approx.m - exact.m) / jnp.linalg.norm(exact.m))
    assert 0 < error < 0.5
    assert (np.asarray(approx.outer_iterations) == 0).all()
    assert float(approx.residual.max()) > float(exact.residual.max())  # the residual tells the truth


def test_seed_projection_of_the_seed_itself_is_close():
    seed = _fields(1)[0]
    config = fpjax.FPConfig(
        T=5, scheme=fpjax.LogDensity(outer_tol=1e-6, tol=1e-7)
    )  # float32 reaches these (measured error: 1.3e-7)
    sol = fpjax.solve(seed, config)
    bases = projection.seed_bases(sol.m, config, dim=30)
    approx = projection.solve_projected(seed, bases, config, "approximate")
    error = float(jnp.linalg.norm(approx.m - sol.m) / jnp.linalg.norm(sol.m))
    assert error < 1e-3, error


def test_vmap_over_targets_and_no_gradient_through_bases():
    seed, *targets = _fields()
    config = fpjax.FPConfig(T=4)
    bases = projection.seed_bases(fpjax.solve(seed, config).m, config, dim=6)
    batched = jax.vmap(lambda m0: projection.solve_projected(m0, bases, config))(jnp.stack(targets))
    for i, target in enumerate(targets):
        np.testing.assert_allclose(
            np.asarray(batched.m[i]),
            np.asarray(projection.solve_projected(target, bases, config).m),
            rtol=2e-6,  # float32: the batched program rounds differently (measured: 4.8e-7)
        )
    grad = jax.grad(lambda m: projection.seed_bases(m, config, dim=6)[0].sum())(fpjax.solve(seed, config).m)
    assert not np.asarray(grad).any()


def test_unknown_mode_is_named():
    with pytest.raises(ValueError, match="projection mode"):
        projection.solve_projected(jnp.zeros((4, 4)), None, FPConfig(T=2), "magic")


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("mode", ["initial_guess", "approximate"])
def test_projected_solves_are_differentiable_in_both_modes(mode):
    """jvp and grad of a projected solve agree with each other and with float64 central differences (the
    approximate mode's derivative is that of its projection map, not zero)."""
    images = sample_images(32)[:2, :10, :10].astype(np.float64)
    config = fpjax.FPConfig(T=4, scheme=fpjax.LogDensity(tol=1e-12, outer_tol=1e-12))
    m_seed = fpjax.solve(fpjax.initial_log_density(images[0]), config).m
    bases = projection.seed_bases(m_seed, config, 4)
    m0 = fpjax.initial_log_density(images[1])
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(5, 10, 10)))
    loss = lambda m: jnp.sum(weights * projection.solve_projected(m, bases, config, mode).m)  # noqa: E731
    v = jnp.asarray(np.random.default_rng(1).normal(size=m0.shape))
    central = (loss(m0 + 1e-6 * v) - loss(m0 - 1e-6 * v)) / 2e-6
    forward = jax.jvp(loss, (m0,), (v,))[1]
    np.testing.assert_allclose(forward, central, rtol=1e-6)
    np.testing.assert_allclose(jnp.vdot(jax.grad(loss)(m0), v), forward, rtol=1e-9)
    assert abs(float(forward)) > 1e-3
