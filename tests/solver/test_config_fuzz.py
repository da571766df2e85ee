"""Hypothesis over FPConfig values (issue 16): every accepted configuration gives a finite trajectory or a
clear failure flag, never an exception from deep inside JAX or NumPy; every rejected one a one-line
``ValueError`` that names the field.

Each example compiles its own solve (the configuration is static), so the grid is 8x8, ``T`` small and the
examples few.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fpjax
from fpjax.solver.problem import ConvergenceError, FPConfig, check_solution

SHAPE = (8, 8)
NAN, INF = float("nan"), float("inf")

# (valid values, invalid values) of each field; an invalid draw records the field's name
FIELDS = {
    "T": ([1, 2, 4, np.int64(3), 5.0], [0, -2, 2.5, NAN, "4"]),
    "g": ([0.0, 1e-8, 1e-3, 0.5, 3.0, 10.0, 1e3, 1e6, lambda t: 0.2 + t], [NAN, INF, -0.5]),
    "scheme": (["log_density", "density", "spectral"], ["heat"]),
    "linearization": (["picard", "newton"], ["secant"]),
    "boundary": (["zero", "reflect"], ["periodic"]),
    "preconditioner": (["auto", "none", "dst"], ["jacobi"]),
    "solver": (["bicgstab", "bicgstab_counted", "gmres"], ["cg"]),
    "predictor": (["previous", "extrapolate"], ["linear"]),
    "tol": ([1e-12, 1e-6, 1e-3, 0.5], [0.0, -1e-6, 1.0, NAN]),
    "outer_tol": ([0.0, 1e-8, 1e-5, 0.1], [-1e-5, INF, 2.0]),
    "maxiter": ([None, 1, 3, 200, 50.0], [0, -1, 1.5]),
    "max_outer": ([1, 3, 50], [0, -3]),
    "spacing": ([None, (0.125, 0.125), (1e-3, 2e-3), (1.0, 0.5)], [(0.0, 0.1), (NAN, 0.1), (0.1,)]),
}


SCHEME_CLASSES = {"log_density": fpjax.LogDensity, "density": fpjax.Density, "spectral": fpjax.Spectral}
PROBLEM_FIELDS = ("T", "g", "boundary", "spacing", "scheme")


@st.composite
def configs(draw):
    """``(problem, scheme, invalid)``: FPConfig's keyword arguments but the scheme, a function making the scheme
    (its class with options drawn among its own fields, or an unknown name), and the names of the fields drawn
    invalid, each as ``Owner.field`` (none in about half the examples, one or two in the others)."""
    name = draw(st.sampled_from(FIELDS["scheme"][0] + FIELDS["scheme"][1]))
    cls = SCHEME_CLASSES.get(name)
    own = {f.name for f in dataclasses.fields(cls)} if cls else set()
    allowed = [f for f in FIELDS if (f in PROBLEM_FIELDS and f != "scheme") or f in own]
    broken = draw(st.one_of(st.just([]), st.lists(st.sampled_from(allowed), min_size=1, max_size=2, unique=True)))
    problem, options = {}, {}
    invalid = {("FPConfig." if f in PROBLEM_FIELDS else f"{cls.__name__}.") + f for f in broken}
    if cls is None:
        invalid.add("FPConfig.scheme")
    for field in allowed:
        target = problem if field in PROBLEM_FIELDS else options
        if field in broken:
            target[field] = draw(st.sampled_from(FIELDS[field][1]))
        elif field == "T" or draw(st.booleans()):  # T always: the default T = 100 would make examples slow
            target[field] = draw(st.sampled_from(FIELDS[field][0]))
    if cls is fpjax.LogDensity:
        options["advection"] = draw(st.sampled_from(["central", "upwind"]))
    if draw(st.integers(0, 3)) == 0:
        problem["drift"] = lambda t: (jnp.asarray(0.3), -0.2 * t)
        if cls is fpjax.Spectral:
            invalid.add("FPConfig(scheme=")  # spectral is the zero-drift solve
    return problem, (lambda: cls(**options)) if cls else (lambda: name), invalid


M0 = jnp.asarray(fpjax.initial_log_density(np.random.default_rng(0).uniform(size=SHAPE + (3,))), jnp.float32)


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_every_config_is_refused_clearly_or_solved_with_honest_flags(drawn):
    problem, scheme, invalid = drawn
    try:
        config = FPConfig(**problem, scheme=scheme())
    except ValueError as error:
        message = str(error)
        assert invalid, f"a valid configuration was refused: {message}"
        assert "\n" not in message
        assert any(name in message for name in invalid), message
        return
    assert not invalid, f"accepted with invalid {invalid}: {config}"
    solution = fpjax.solve(M0, config, on_failure="ignore")
    m, converged = np.asarray(solution.m), np.asarray(solution.converged)
    assert m.shape == (config.T + 1,) + SHAPE and converged.shape == (config.T,)
    assert converged.dtype == bool
    # a step flagged converged is finite (and so is everything before it that it was computed from)
    assert np.isfinite(m[1:][converged]).all()
    if converged.all():
        assert np.isfinite(m).all() and np.isfinite(np.asarray(solution.residual)).all()
        check_solution(solution, config, "raise")
    else:
        with pytest.raises(ConvergenceError, match=r"did not converge at step n="):
            check_solution(solution, config, "raise")
