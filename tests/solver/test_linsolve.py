import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from fpjax.solver import linsolve


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("n", [1, 5, 16, 33])
def test_dst1_matches_scipy(n):
    x = np.random.default_rng(n).normal(size=(3, n))
    np.testing.assert_allclose(
        np.asarray(linsolve.dst1(x, axis=-1)), scipy.fft.dst(x, type=1, axis=-1), rtol=1e-10, atol=1e-10
    )
    np.testing.assert_allclose(
        np.asarray(linsolve.dst1(x.T, axis=0)), scipy.fft.dst(x.T, type=1, axis=0), rtol=1e-10, atol=1e-10
    )


def _helmholtz_matrix(shape, spacing, boundary, c0, c1):
    """``c0 I - c1 lap`` assembled from 1-D second-difference matrices."""

    def second_difference(n, h):
        d = sp.diags([np.ones(n - 1), -2 * np.ones(n), np.ones(n - 1)], [-1, 0, 1]).tolil()
        if boundary == "reflect":
            d[0, 0] = d[n - 1, n - 1] = -1.0
        return d.tocsr() / h**2

    h, w = shape
    hx, hy = spacing
    lap = sp.kron(sp.identity(h), second_difference(w, hx)) + sp.kron(second_difference(h, hy), sp.identity(w))
    return (c0 * sp.identity(h * w) - c1 * lap).tocsc()


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("boundary", ["zero", "reflect"])
@pytest.mark.parametrize("transform", ["dense", "fft"])
def test_helmholtz_inverse_is_exact(boundary, transform):
    shape, spacing, c0, c1 = (7, 10), (0.1, 0.15), 100.0, 0.125
    r = np.random.default_rng(3).normal(size=shape)
    inverse = linsolve.make_helmholtz_inverse(shape, spacing, boundary, transform)
    expected = spla.spsolve(_helmholtz_matrix(shape, spacing, boundary, c0, c1), r.ravel()).reshape(shape)
    np.testing.assert_allclose(np.asarray(inverse(jnp.asarray(r), c0, c1)), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("boundary", ["zero", "reflect"])
def test_helmholtz_inverse_is_symmetric(boundary):
    shape = (6, 8)
    inverse = linsolve.make_helmholtz_inverse(shape, (0.2, 0.3), boundary, "fft")
    basis = np.eye(48).reshape(48, *shape)
    mat = np.stack([np.asarray(inverse(jnp.asarray(e), 10.0, 2.0)).ravel() for e in basis], axis=1)
    np.testing.assert_allclose(mat, mat.T, atol=1e-12)


def _nonsymmetric_system(n=12, seed=4):
    rng = np.random.default_rng(seed)
    a = np.eye(n * n) * 6 + 0.3 * rng.normal(size=(n * n, n * n)) / n
    b = rng.normal(size=(n, n))
    return a, b


@pytest.mark.usefixtures("x64")
def test_counted_bicgstab_follows_jax_bicgstab():
    a, b = _nonsymmetric_system()
    matvec = lambda x: (jnp.asarray(a) @ x.ravel()).reshape(x.shape)  # noqa: E731
    for maxiter in (1, 3, 50):
        ours, count, _ = linsolve.linear_solve(
            matvec, jnp.asarray(b), solver="bicgstab_counted", tol=1e-10, maxiter=maxiter
        )
        theirs, *_ = jax.scipy.sparse.linalg.bicgstab(matvec, jnp.asarray(b), tol=1e-10, maxiter=maxiter)
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-12, atol=1e-12)
        assert int(count) <= maxiter
    np.testing.assert_allclose(np.asarray(ours).ravel(), np.linalg.solve(a, b.ravel()), rtol=1e-8)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("solver", linsolve.SOLVERS)
def test_linear_solve_reports_true_residual(solver):
    a, b = _nonsymmetric_system()
    matvec = lambda x: (jnp.asarray(a) @ x.ravel()).reshape(x.shape)  # noqa: E731
    x, iterations, residual = linsolve.linear_solve(matvec, jnp.asarray(b), solver=solver, tol=1e-9)
    expected = np.linalg.norm(b.ravel() - a @ np.asarray(x).ravel()) / np.linalg.norm(b)
    # GMRES converges to the rounding level (4e-16 here), where two float64 evaluations of the same residual in
    # different orders differ by about 1e-17 (measured: 9e-18 with XLA's backend optimisation off).
    np.testing.assert_allclose(float(residual), expected, rtol=1e-6, atol=1e-16)
    assert expected < 1e-8
    assert (int(iterations) > 0) == (solver == "bicgstab_counted")


def test_linear_solve_rejects_unknown_solver():
    with pytest.raises(ValueError, match="solver must be one of"):
        linsolve.linear_solve(lambda x: x, jnp.ones(3), solver="lu")


def test_relative_norm_and_backward_error_do_not_underflow_in_float32():
    x = jnp.full((16, 16), 1e-25, jnp.float32)  # squares underflow to 0 in float32
    r = 1e-3 * x
    assert float(linsolve.relative_norm(r, x)) == pytest.approx(1e-3, rel=1e-5)
    assert float(linsolve.relative_norm(jnp.zeros_like(x), jnp.zeros_like(x))) == 0.0
    error = linsolve.backward_error(lambda v: 2 * v, x, 2 * x + r, 2.0)
    assert float(error) == pytest.approx(1e-3 / (2 + 2.001), rel=1e-4)  # ||r|| / (||A|| ||x|| + ||b||)
