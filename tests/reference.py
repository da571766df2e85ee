"""Independent references for the tests: the papers' step matrix assembled entry by entry with SciPy, and
float64 runs of fpjax for the float32 tests to compare with."""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import scipy.fft
import scipy.sparse as sp
import scipy.sparse.linalg as spla


def _neighbour(i, j, di, dj, shape, boundary):
    """Index of the neighbour, the pixel itself (reflect ghost) or None (zero boundary)."""
    h, w = shape
    ii, jj = i + di, j + dj
    if 0 <= ii < h and 0 <= jj < w:
        return ii, jj
    return (i, j) if boundary == "reflect" else None


def _value(field, idx):
    return 0.0 if idx is None else field[idx]


def assemble_step_matrix(m_frozen, g, fx, fy, dt, hx, hy, boundary, advection="central"):
    """The matrix of eqs. 11-16 (general spacing), pixel (i=row/y, j=col/x) at row i*W + j, in float64."""
    m_frozen, fx, fy = (np.asarray(a, np.float64) for a in (m_frozen, fx, fy))
    shape = m_frozen.shape
    h, w = shape
    c1 = 0.5 * g**2
    rows, cols, vals = [], [], []

    def add(p, q, v):
        if q is not None:
            rows.append(p[0] * w + p[1])
            cols.append(q[0] * w + q[1])
            vals.append(v)

    for i in range(h):
        for j in range(w):
            p = (i, j)
            nb = {
                name: _neighbour(i, j, di, dj, shape, boundary)
                for name, (di, dj) in dict(E=(0, 1), W=(0, -1), N=(1, 0), S=(-1, 0)).items()
            }
            dmx = _value(m_frozen, nb["E"]) - _value(m_frozen, nb["W"])
            dmy = _value(m_frozen, nb["N"]) - _value(m_frozen, nb["S"])
            add(p, p, 1.0 / dt + 2 * c1 / hx**2 + 2 * c1 / hy**2)
            if advection == "central":
                coef = {
                    "E": -c1 / hx**2 + fx[p] / (2 * hx) - g**2 / (8 * hx**2) * dmx,
                    "W": -c1 / hx**2 - fx[p] / (2 * hx) + g**2 / (8 * hx**2) * dmx,
                    "N": -c1 / hy**2 + fy[p] / (2 * hy) - g**2 / (8 * hy**2) * dmy,
                    "S": -c1 / hy**2 - fy[p] / (2 * hy) + g**2 / (8 * hy**2) * dmy,
                }
            else:
                ax = fx[p] - c1 * dmx / (2 * hx)
                ay = fy[p] - c1 * dmy / (2 * hy)
                add(p, p, abs(ax) / hx + abs(ay) / hy)
                coef = {
                    "E": -c1 / hx**2 + min(ax, 0) / hx,
                    "W": -c1 / hx**2 - max(ax, 0) / hx,
                    "N": -c1 / hy**2 + min(ay, 0) / hy,
                    "S": -c1 / hy**2 - max(ay, 0) / hy,
                }
            for name, c in coef.items():
                add(p, nb[name], c)
    return sp.csr_matrix((vals, (rows, cols)), shape=(h * w, h * w))


def divergence_reference(fx, fy, hx, hy, boundary):
    """Eq. 9 with explicit neighbours, in float64."""
    fx, fy = np.asarray(fx, np.float64), np.asarray(fy, np.float64)
    h, w = fx.shape
    out = np.zeros_like(fx)
    for i in range(h):
        for j in range(w):
            e, wst = _neighbour(i, j, 0, 1, fx.shape, boundary), _neighbour(i, j, 0, -1, fx.shape, boundary)
            n, s = _neighbour(i, j, 1, 0, fx.shape, boundary), _neighbour(i, j, -1, 0, fx.shape, boundary)
            out[i, j] = (_value(fx, e) - _value(fx, wst)) / (2 * hx) + (_value(fy, n) - _value(fy, s)) / (2 * hy)
    return out


def picard_spsolve(m0, T, g, fx, fy, hx, hy, boundary, outer, advection="central"):
    """The papers' scheme with a direct solver: ``outer`` Picard iterations per step, float64."""
    dt = 1.0 / T
    m_prev = np.asarray(m0, np.float64)
    div = divergence_reference(fx, fy, hx, hy, boundary)
    traj = [m_prev]
    for _ in range(T):
        b = (m_prev / dt - div).ravel()
        m = m_prev
        for _ in range(outer):
            a = assemble_step_matrix(m, g, fx, fy, dt, hx, hy, boundary, advection)
            m = spla.spsolve(a.tocsc(), b).reshape(m.shape)
        traj.append(m)
        m_prev = m
    return np.stack(traj)


def density_step_matrix(fx, fy, g, dt, hx, hy, boundary):
    """Backward Euler on ``p``: ``(A, r)`` with ``A p^n = p^(n-1)/dt + r``, entry by entry.

    ``A p = p/dt - 1/2 g^2 lap_h p + div_h(f p)`` (central differences of the flux ``f p``). Outside the
    grid, ``"zero"``: ``p = 1`` and ``f = 0`` (the ghost of ``p`` enters ``r``, the flux is 0);
    ``"reflect"``: ``p`` equals its edge value and the flux is minus the edge flux (zero face flux).
    """
    shape = fx.shape
    h, w = shape
    c1 = 0.5 * g**2
    a = sp.lil_matrix((h * w, h * w))
    r = np.zeros(h * w)
    for i in range(h):
        for j in range(w):
            row = i * w + j
            a[row, row] += 1.0 / dt
            for di, dj, hh, f, sign in ((0, 1, hx, fx, 1), (0, -1, hx, fx, -1), (1, 0, hy, fy, 1), (-1, 0, hy, fy, -1)):
                ii, jj = i + di, j + dj
                if 0 <= ii < h and 0 <= jj < w:
                    col = ii * w + jj
                    a[row, col] += -c1 / hh**2 + sign * f[ii, jj] / (2 * hh)
                    a[row, row] += c1 / hh**2
                elif boundary == "zero":
                    r[row] += c1 / hh**2  # ghost p = 1 in the Laplacian; the ghost flux f p is 0
                    a[row, row] += c1 / hh**2
                else:  # reflect: ghost p = p (the Laplacian's term vanishes), ghost flux = -f p here
                    a[row, row] += sign * (-f[i, j]) / (2 * hh)
    return a.tocsr(), r


def density_spsolve(m0, T, g, fx, fy, hx, hy, boundary):
    """``log p`` of backward Euler on ``p = exp(m)`` with a direct solver, float64, ``(T+1, H, W)``."""
    dt = 1.0 / T
    a, r = density_step_matrix(fx, fy, g, dt, hx, hy, boundary)
    p = np.exp(np.asarray(m0, np.float64)).ravel()
    traj = [np.log(p)]
    solve = spla.factorized(a.tocsc())
    for _ in range(T):
        p = solve(p / dt + r)
        traj.append(np.log(p))
    return np.stack(traj).reshape((T + 1,) + np.shape(m0))


def eigenvalues(n, h, boundary):
    """The 1-D three-point Laplacian's eigenvalues, slowest first: sine modes (zero) or cosine modes (reflect)."""
    if boundary == "zero":
        return -(4 / h**2) * np.sin(np.pi * np.arange(1, n + 1) / (2 * (n + 1))) ** 2
    return -(4 / h**2) * np.sin(np.pi * np.arange(n) / (2 * n)) ** 2


def heat_log_density(m0, taus, spacing, boundary):
    """``log p`` at each ``tau``: ``p - 1`` (zero) or ``p`` (reflect) through scipy's DST-I / DCT-II, in float64
    whatever ``m0``'s dtype (scipy.fft keeps float32: a float32 ``m0`` gave a reference off by 1.7e-5)."""
    m0 = np.asarray(m0, np.float64)
    (height, width), (hx, hy) = m0.shape, spacing
    lam = eigenvalues(height, hy, boundary)[:, None] + eigenvalues(width, hx, boundary)[None, :]
    if boundary == "zero":
        forward = lambda x: scipy.fft.dstn(x, type=1, norm="ortho")  # noqa: E731
        inverse = lambda x: scipy.fft.idstn(x, type=1, norm="ortho")  # noqa: E731
        offset = 1.0
    else:
        forward = lambda x: scipy.fft.dctn(x, type=2, norm="ortho")  # noqa: E731
        inverse = lambda x: scipy.fft.idctn(x, type=2, norm="ortho")  # noqa: E731
        offset = 0.0
    spectrum = forward(np.exp(m0) - offset)
    return np.stack([np.log(inverse(spectrum * np.exp(tau * lam)) + offset) for tau in taus])


@contextlib.contextmanager
def float64_enabled():
    """Float64 enabled while the block runs (the ``x64`` fixture of tests/conftest.py is this for a whole test).

    It sets the global ``jax_enable_x64`` and restores it, rather than using ``jax.enable_x64``: that context
    is thread-local, and JAX checks the values of a ``pure_callback`` (fpjax's float64 boundary layer under
    a traced ``g``) on XLA's own thread, where the context is not set, so float64 results intermittently
    failed as "Incorrect output dtype ... Expected: float64, Actual: float32" (measured: 4 of 9 runs of
    ``grad`` and ``vmap(grad)`` of a ``"spectral"`` solve with respect to ``g``; 0 of 5 with the global setting).
    """
    previous = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def float64_run(function):
    """``function()`` run with float64 enabled (:func:`float64_enabled`), its JAX arrays returned as NumPy arrays.

    For a test that runs fpjax as users do (float32, x64 off) and compares with a float64 run: only the
    reference is computed in float64. Inputs must be made float64 inside ``function`` (outside it JAX
    truncates them to float32).
    """
    with float64_enabled():
        result = function()
        return jax.tree_util.tree_map(lambda x: np.asarray(x) if isinstance(x, jax.Array) else x, result)
