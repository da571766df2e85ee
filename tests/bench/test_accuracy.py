"""``fpjax bench accuracy``: the continuum problem, the reference and the reported orders."""

import json

import numpy as np
import pytest
import scipy.fft
import scipy.integrate

from fpjax.bench import accuracy
from fpjax.cli import main


def test_initial_density_has_unit_integral_over_the_square():
    mass, _ = scipy.integrate.dblquad(lambda y, x: accuracy.initial_density(x, y), 0, 1, 0, 1, epsabs=1e-12)
    assert mass == pytest.approx(1.0, abs=1e-9)


def test_restriction_is_injection_onto_the_same_points():
    fine = np.arange(1, 64) / 64  # 63 points, h = 1/64
    coarse = accuracy.restrict(np.broadcast_to(fine, (63, 63)), 15)
    np.testing.assert_array_equal(coarse[0], accuracy.grid_points(15))
    with pytest.raises(ValueError, match="2\\^k - 1"):
        accuracy.check_grids([16], 63)


@pytest.mark.usefixtures("x64")
def test_reference_is_the_heat_equation_solved_with_scipy_dst():
    """p = exp(m) solves p_t = 1/2 g^2 lap_h p with p = 1 outside: p(t) = 1 + exp(tau lap_h)(p0 - 1)."""
    n, times = 15, [0.1, 1.0]
    h = 1 / (n + 1)
    k = np.arange(1, n + 1)
    lam = -(4 / h**2) * np.sin(np.pi * k / (2 * (n + 1))) ** 2
    q0 = scipy.fft.dstn(np.exp(accuracy.initial_log_density(n)) - 1, type=1, norm="ortho")
    expected = []
    for t in times:
        decay = np.exp(0.5 * accuracy.G**2 * t * (lam[:, None] + lam[None, :]))
        expected.append(np.log(1 + scipy.fft.idstn(decay * q0, type=1, norm="ortho")))
    np.testing.assert_allclose(accuracy.reference_solution(n, times), np.stack(expected), rtol=1e-10, atol=1e-12)


def test_quick_benchmark_reports_the_known_orders(tmp_path, capsys):
    out, figure = tmp_path / "accuracy.json", tmp_path / "accuracy.png"
    argv = ["bench", "accuracy", "--quick", "--repeats", "1", "--out", str(out), "--figure", str(figure)]
    assert main(argv) == 0
    assert "| spectral | 31 |" in capsys.readouterr().out
    result = json.loads(out.read_text())
    rows = result["rows"]
    # grids 15 and 31; log_density and density at T = 25 and 100, spectral once per grid
    assert sorted((r["scheme"], r["grid"], r["T"]) for r in rows) == sorted(
        [(s, n, T) for s in ("log_density", "density") for n in (15, 31) for T in (25, 100)]
        + [("spectral", n, 100) for n in (15, 31)]
    )
    assert all(r["converged"] and r["seconds"] > 0 for r in rows)
    # t = 0.1 and 0.5 are no time levels of T = 25 (dt = 0.04): no error is reported there
    assert all(r["errors"][:2] == [None, None] for r in rows if r["T"] == 25)
    # exact in time, five-point Laplacian: second order in h
    (spectral,) = [o for o in result["orders_h"] if o["scheme"] == "spectral"]
    assert all(1.5 < p < 2.5 for p in spectral["orders"])
    # backward Euler on the linear equation: first order in dt (the space error is far below the time error)
    (density,) = [o for o in result["orders_dt"] if o["scheme"] == "density"]
    assert 0.7 < density["orders"][-1] < 1.3
    errors = {(r["scheme"], r["T"]): r["errors"][-1] for r in rows if r["grid"] == 31}
    assert errors["density", 100] < errors["density", 25] and errors["log_density", 100] < errors["log_density", 25]
    assert figure.stat().st_size > 10_000
