"""A finite, correct solve is never reported unconverged, however small its field becomes (issue 16).

The zero boundary's steady state is ``m = 0``: with a large ``g`` a float32 trajectory decays through
``1e-22`` (where squared norms underflow) down to the subnormal range (which XLA flushes to zero). Every
case is compared with the same solve in float64, an independent reference for float32 rounding: the
float32 trajectory must agree with it to ``AGREEMENT`` times the field's scale ``max |m0|`` (the error
of a float32 solve is absolute, a few eps of the largest values it has carried, not relative to the
decayed values).
"""

import jax.numpy as jnp
import numpy as np
import pytest
from reference import float64_run

import fpjax
from fpjax.solver import linsolve, projection
from fpjax.solver.problem import FPConfig

SHAPE = (12, 12)
T = 100
AGREEMENT = 2e-5  # float32 against float64, relative to max |m0| (measured: at most 4e-6)
SCHEMES = {
    "picard": dict(),
    "newton": dict(scheme=fpjax.LogDensity(linearization="newton")),
    "density": dict(scheme="density"),
    "spectral": dict(scheme="spectral"),
}


def _field(scale=1.0, seed=0):
    return scale * np.random.default_rng(seed).standard_normal(SHAPE)


def _solve(m0, dtype, g, **kwargs):
    """``g`` passed as an override: the log-density scheme then compiles once for every ``g``."""
    return fpjax.solve(jnp.asarray(m0, dtype), FPConfig(**kwargs), g=g, on_failure="raise")


def _check_against_float64(m0, g, **kwargs):
    """Both precisions converge at every step (``on_failure="raise"``), stay finite and agree."""
    single, double = _solve(m0, jnp.float32, g, **kwargs), float64_run(lambda: _solve(m0, jnp.float64, g, **kwargs))
    for solution in (single, double):
        assert np.asarray(solution.converged).all()
        assert np.isfinite(np.asarray(solution.m)).all()
        assert np.isfinite(np.asarray(solution.residual)).all()
    if kwargs.get("scheme", "log_density") == "log_density":
        # the step residual is judged against rounding too: outer_tol's order, not the 1e-3 .. 13 that a
        # float32 field in the subnormal range showed when residuals were relative to its own tiny norm
        assert np.max(np.asarray(single.residual)) <= 1e-3
    error = np.max(np.abs(np.asarray(single.m, np.float64) - np.asarray(double.m)))
    scale = max(np.max(np.abs(m0)), 1.0)
    assert error <= AGREEMENT * scale, error
    return double


@pytest.mark.parametrize("g", [1.0, 3.0, 5.0, 10.0])
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_decaying_field_converges_at_every_step(scheme, g):
    double = _check_against_float64(_field(), g, T=T, **SCHEMES[scheme])
    if g >= 5 and scheme in ("picard", "newton"):
        # the case of the issue: the float32 field passes 1e-22 and reaches the subnormal range
        assert np.abs(np.asarray(double.m[-1])).max() < 1e-30


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_zero_initial_field(scheme):
    """``m0 = 0`` is the steady state: ``m`` stays exactly 0 in the log-density scheme; ``p = 1`` stays 1 to
    rounding in the density schemes (float32), to their float64 boundary solve's tolerance 1e-13 (float64)."""
    for dtype, bound in ((jnp.float32, 1e-6), (jnp.float64, 1e-11)):
        run = lambda: _solve(np.zeros(SHAPE), dtype, 5.0, T=T, **SCHEMES[scheme])  # noqa: B023, E731
        solution = run() if dtype == jnp.float32 else float64_run(run)
        assert np.asarray(solution.converged).all()
        error = np.abs(np.asarray(solution.m)).max()
        assert error == 0 if scheme in ("picard", "newton") else error <= bound, error


@pytest.mark.parametrize("scheme", ["picard", "newton", "density"])
def test_field_of_size_1e30(scheme):
    """A field of size 1e-30 from the start (the log-density equation is then the heat equation for m)."""
    _check_against_float64(_field(1e-30), 3.0, T=T, **SCHEMES[scheme])


@pytest.mark.parametrize("solver", ["bicgstab_counted", "gmres"])
def test_other_krylov_solvers(solver):
    _check_against_float64(_field(), 5.0, T=T, scheme=fpjax.LogDensity(solver=solver))


def test_preconditioned_and_reflecting():
    _check_against_float64(_field(), 5.0, T=T, scheme=fpjax.LogDensity(preconditioner="dst"))
    _check_against_float64(_field(), 5.0, T=T, boundary="reflect", scheme="density")


@pytest.mark.parametrize("mode", ["initial_guess", "galerkin"])
def test_projected_solve_of_a_decaying_field(mode):
    """The cross-matrix projection's bases start from ``b / ||b||``, which underflowed to NaN in float32."""
    config = FPConfig(T=T, g=5.0)
    seed, target = jnp.asarray(_field(seed=1), jnp.float32), _field(seed=2)
    bases = projection.seed_bases(fpjax.solve(seed, config).m, config, dim=6)
    assert all(np.isfinite(np.asarray(b)).all() for b in bases)
    solution = projection.solve_projected(jnp.asarray(target, jnp.float32), bases, config, mode)
    reference = float64_run(lambda: _solve(target, jnp.float64, 5.0, T=T))
    assert np.asarray(solution.converged).all()
    assert np.max(np.abs(np.asarray(solution.m, np.float64) - np.asarray(reference.m))) <= AGREEMENT * 4


@pytest.mark.parametrize("solver", ["bicgstab", "bicgstab_counted", "gmres"])
@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1.0, 1e20])
def test_linear_solve_is_scale_invariant(solver, scale):
    """``A x = s b`` in float32 gives ``s`` times the float64 dense solution of ``A x = b`` for any ``s``."""
    rng = np.random.default_rng(3)
    a = np.eye(64) * 4 + rng.standard_normal((64, 64)) * 0.3
    b = rng.standard_normal(64)
    matvec = lambda x: jnp.asarray(a, jnp.float32) @ x  # noqa: E731
    x, _, residual = linsolve.linear_solve(matvec, jnp.asarray(scale * b, jnp.float32), solver=solver, tol=1e-6)
    expected = np.linalg.solve(a, b)
    np.testing.assert_allclose(np.asarray(x, np.float64) / scale, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    assert float(residual) < 1e-5


@pytest.mark.parametrize("solver", ["bicgstab", "bicgstab_counted", "gmres"])
def test_linear_solve_of_a_zero_right_hand_side(solver):
    """``b = 0`` gives ``x = 0`` at once, from any start (no iterating to ``||r|| <= 0``)."""
    b, x0 = jnp.zeros(8, jnp.float32), jnp.ones(8, jnp.float32)
    x, iterations, residual = linsolve.linear_solve(lambda v: 2 * v, b, x0, solver=solver)
    assert np.all(np.asarray(x) == 0) and float(residual) == 0.0
    assert int(iterations) <= 0


def test_norm_floor():
    """The stated floor: sqrt(n) tiny / eps; below it a field's relative measures count it as zero."""
    x = jnp.zeros((16, 16), jnp.float32)
    finfo = np.finfo(np.float32)
    assert linsolve.norm_floor(x) == pytest.approx(16 * float(finfo.tiny) / float(finfo.eps))
    tiny_field = jnp.full((16, 16), 1e-36, jnp.float32)
    assert float(linsolve.relative_norm(tiny_field, tiny_field)) < 1e-4  # 1e-36 against the 1.6e-30 floor
    assert float(linsolve.relative_norm(1e-3 * jnp.ones(4), jnp.ones(4))) == pytest.approx(1e-3)
