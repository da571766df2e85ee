"""Per-step status codes (fpjax.solver.status), solutions that carry their grid, and failures under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fpjax
from fpjax.solver.status import Status, describe


def _field(shape=(12, 12), seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) - 3.0, jnp.float32)


def test_one_outer_iteration_cannot_meet_a_tolerance_of_1e_12():
    # from the predictor the step's solution is not reached in one Picard update: change > 0 >> 1e-12
    config = fpjax.FPConfig(T=4, scheme=fpjax.LogDensity(max_outer=1, outer_tol=1e-12, predictor="previous"))
    solution = fpjax.solve(_field(), config, on_failure="ignore")
    assert (np.asarray(solution.status) == Status.OUTER_ITERATION_CAP).all()
    assert not np.asarray(solution.converged).any() and int(solution.outcome) == Status.OUTER_ITERATION_CAP
    with pytest.raises(fpjax.ConvergenceError, match="OUTER_ITERATION_CAP.*max_outer"):
        fpjax.solve(_field(), config)


def test_a_negative_density_is_named_where_log_p_is_minus_infinity():
    # a drift that dominates diffusion (|f| h >> g^2) drives the central-difference density negative
    n = 16
    x = (jnp.arange(n) + 0.5) / n
    drift = lambda t: (-40.0 * (x[None, :] - 0.5), -40.0 * (x[:, None] - 0.5))  # noqa: E731
    config = fpjax.FPConfig(T=10, g=0.05, drift=drift, boundary="reflect", scheme="density")
    xx, yy = np.meshgrid(np.asarray(x), np.asarray(x))
    m0 = jnp.asarray(-((xx - 0.3) ** 2 + (yy - 0.7) ** 2) / (2 * 0.1**2), jnp.float32)
    solution = fpjax.solve(m0, config, on_failure="ignore")
    minus_inf = np.isneginf(np.asarray(solution.m[1:])).any(axis=(1, 2))
    assert minus_inf.any()  # the premise: p <= 0 somewhere
    np.testing.assert_array_equal(np.asarray(solution.status) == Status.DENSITY_NOT_POSITIVE, minus_inf)
    assert "negative" in describe(Status.DENSITY_NOT_POSITIVE)


def test_converged_solves_report_converged_for_every_scheme():
    for scheme in ("log_density", "density", "spectral"):
        solution = fpjax.solve(_field(), fpjax.FPConfig(T=4, scheme=scheme))
        assert (np.asarray(solution.status) == Status.CONVERGED).all() and int(solution.outcome) == 0


def test_on_failure_raise_raises_inside_jit_and_vmap_reports_per_member():
    config = fpjax.FPConfig(T=4, scheme=fpjax.LogDensity(max_outer=1, outer_tol=1e-12, predictor="previous"))
    jitted = jax.jit(lambda m: fpjax.solve(m, config).m)
    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(jitted(_field()))
    # the zero field is the zero boundary's steady state: that member converges at once
    fields = jnp.stack([_field(), _field() * 0])
    outcome = jax.vmap(lambda m: fpjax.solve(m, config, on_failure="ignore").outcome)(fields)
    np.testing.assert_array_equal(np.asarray(outcome), [Status.OUTER_ITERATION_CAP, Status.CONVERGED])


@pytest.mark.parametrize("boundary", ["zero", "reflect"])
def test_a_solution_scores_on_its_own_boundary(boundary):
    solution = fpjax.solve(_field((6, 7)), fpjax.FPConfig(T=3, boundary=boundary, scheme="spectral"))
    assert solution.boundary == boundary and solution.spacing == (1 / 7, 1 / 6)
    m = np.asarray(solution.m)
    # independent reference: zero padding (m = 0 outside) or the mirrored cell (zero flux), central differences
    padded = np.pad(m, ((0, 0), (1, 1), (1, 1)), mode="constant" if boundary == "zero" else "edge")
    sx = (padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2]) / 2
    sy = (padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1]) / 2
    score = np.asarray(solution.score())
    assert score.shape == m.shape + (2,)
    np.testing.assert_allclose(score[..., 0], sx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(score[..., 1], sy, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(solution.pixel_score()), sx + sy, rtol=1e-5, atol=1e-5)
    # the grid rides through jit as static data
    jitted = jax.jit(lambda m0: fpjax.solve(m0, fpjax.FPConfig(T=3, boundary=boundary, scheme="spectral")))(
        solution.m[0]
    )
    assert jitted.boundary == boundary
