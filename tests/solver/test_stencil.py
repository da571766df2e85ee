import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from fpjax.solver import stencil


def _first_difference_matrices(n, boundary):
    """1-D shift matrices (east = +1) with explicit boundary handling."""
    east = sp.diags([np.ones(n - 1)], [1], shape=(n, n)).tolil()
    west = sp.diags([np.ones(n - 1)], [-1], shape=(n, n)).tolil()
    if boundary == "reflect":
        east[n - 1, n - 1] = 1.0
        west[0, 0] = 1.0
    return east.tocsr(), west.tocsr()


def _shift_2d(shape, boundary):
    h, w = shape
    ex, wx = _first_difference_matrices(w, boundary)
    ny, sy = _first_difference_matrices(h, boundary)
    eye_h, eye_w = sp.identity(h), sp.identity(w)
    return {"E": sp.kron(eye_h, ex), "W": sp.kron(eye_h, wx), "N": sp.kron(ny, eye_w), "S": sp.kron(sy, eye_w)}


@pytest.mark.parametrize("boundary", ["zero", "reflect"])
def test_shift_matches_index_arithmetic(boundary):
    u = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)  # a shift copies values: exact
    east = np.asarray(stencil.shift(u, 1, -1, boundary))
    north = np.asarray(stencil.shift(u, 1, -2, boundary))
    np.testing.assert_array_equal(east[:, :-1], u[:, 1:])
    np.testing.assert_array_equal(north[:-1], u[1:])
    edge = 0.0 if boundary == "zero" else 1.0
    np.testing.assert_array_equal(east[:, -1], edge * u[:, -1])
    np.testing.assert_array_equal(np.asarray(stencil.shift(u, -1, -1, boundary))[:, 0], edge * u[:, 0])


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("boundary", ["zero", "reflect"])
def test_operators_match_sparse_matrices(boundary):
    rng = np.random.default_rng(1)
    shape, (hx, hy) = (6, 9), (0.3, 0.7)
    u, vx, vy = rng.normal(size=(3,) + shape)
    s = _shift_2d(shape, boundary)
    dx = (s["E"] - s["W"]) / (2 * hx)
    dy = (s["N"] - s["S"]) / (2 * hy)
    eye = sp.identity(u.size)
    lap = (s["E"] + s["W"] - 2 * eye) / hx**2 + (s["N"] + s["S"] - 2 * eye) / hy**2
    flat = u.ravel()
    grad = np.asarray(stencil.gradient(u, (hx, hy), boundary))
    np.testing.assert_allclose(grad[0].ravel(), dx @ flat, rtol=1e-12)
    np.testing.assert_allclose(grad[1].ravel(), dy @ flat, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(stencil.laplacian(u, (hx, hy), boundary)).ravel(), lap @ flat, rtol=1e-12)
    div = np.asarray(stencil.divergence(np.stack([vx, vy]), (hx, hy), boundary))
    np.testing.assert_allclose(div.ravel(), dx @ vx.ravel() + dy @ vy.ravel(), rtol=1e-12)


@pytest.mark.parametrize("boundary", ["zero", "reflect"])
def test_upwind_advection_is_an_m_matrix_term(boundary):
    """u -> <a, grad u> upwinded has a non-negative diagonal and non-positive off-diagonals."""
    rng = np.random.default_rng(2)
    shape = (5, 6)
    velocity = rng.normal(size=(2,) + shape)
    basis = np.eye(np.prod(shape)).reshape((-1,) + shape)
    columns = np.stack(
        [np.asarray(stencil.advect(e, velocity, (0.5, 0.5), boundary, "upwind")).ravel() for e in basis], axis=1
    )
    off = columns - np.diag(np.diag(columns))
    assert (np.diag(columns) >= 0).all()
    assert (off <= 1e-12).all()


def test_bad_boundary_is_named():
    with pytest.raises(ValueError, match="boundary"):
        stencil.shift(np.zeros((3, 3)), 1, -1, "periodic")


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(3, 9),
    width=st.integers(3, 9),
    hx=st.floats(0.05, 2.0),
    hy=st.floats(0.05, 2.0),
    boundary=st.sampled_from(["zero", "reflect"]),
    seed=st.integers(0, 2**16),
)
def test_laplacian_is_symmetric_negative_semidefinite(height, width, hx, hy, boundary, seed):
    """<u, lap v> = <lap u, v> and <u, lap u> <= 0 for both boundaries, any grid and spacing."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(2, height, width)).astype(np.float32)
    lap = lambda a: np.asarray(stencil.laplacian(a, (hx, hy), boundary), np.float64)  # noqa: E731
    scale = np.abs(u).sum() * np.abs(v).sum() * (1 / hx**2 + 1 / hy**2)
    # float32 rounding of lap (measured over 300 random cases: at most 1.4e-8 scale; 1e-12 was float64's)
    assert abs(np.vdot(u, lap(v)) - np.vdot(lap(u), v)) <= 1e-6 * scale
    assert np.vdot(u, lap(u)) <= 1e-6 * scale


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("boundary", ["zero", "reflect"])
def test_flux_divergence_matches_explicit_faces(boundary):
    rng = np.random.default_rng(7)
    flux = rng.normal(size=(2, 5, 6))
    hx, hy = 0.3, 0.2
    ours = np.asarray(stencil.flux_divergence(jnp.asarray(flux), (hx, hy), boundary))
    expected = np.zeros((5, 6))
    for i in range(5):
        for j in range(6):

            def value(c, ii, jj, i=i, j=j):
                if 0 <= ii < 5 and 0 <= jj < 6:
                    return flux[c, ii, jj]
                return 0.0 if boundary == "zero" else -flux[c, i, j]  # reflect: zero face flux

            expected[i, j] = (value(0, i, j + 1) - value(0, i, j - 1)) / (2 * hx) + (
                value(1, i + 1, j) - value(1, i - 1, j)
            ) / (2 * hy)
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12)
    if boundary == "reflect":
        assert abs(ours.sum()) < 1e-12  # conservative: nothing leaves the grid
