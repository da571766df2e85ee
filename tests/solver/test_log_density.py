import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import assemble_step_matrix, float64_run, picard_spsolve

import fpjax
from fpjax.data import sample_images
from fpjax.solver import log_density as fp
from fpjax.solver.problem import StepCoefficients


def _drift(shape, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    fx, fy = scale * rng.normal(size=(2,) + shape)
    return fx, fy


def _step(fx, fy, g, T, spacing, boundary):
    drift = jnp.stack([jnp.asarray(fx), jnp.asarray(fy)])
    return StepCoefficients(
        jnp.asarray(float(T)), jnp.asarray(0.5 * g**2), drift, fpjax.solver.stencil.divergence(drift, spacing, boundary)
    )


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("boundary", ["zero", "reflect"])
@pytest.mark.parametrize("advection", ["central", "upwind"])
def test_operator_equals_scipy_assembled_matrix(boundary, advection):
    shape, spacing, g, T = (7, 11), (1 / 11, 1 / 7), 0.7, 20
    rng = np.random.default_rng(1)
    m_frozen = rng.normal(size=shape)
    fx, fy = _drift(shape, scale=3.0)
    matvec = fp.picard_operator(
        jnp.asarray(m_frozen), _step(fx, fy, g, T, spacing, boundary), spacing, boundary, advection
    )
    expected = assemble_step_matrix(m_frozen, g, fx, fy, 1 / T, *spacing, boundary, advection).toarray()
    basis = np.eye(m_frozen.size).reshape((-1,) + shape)
    ours = np.stack([np.asarray(matvec(jnp.asarray(e))).ravel() for e in basis], axis=1)
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-9)


def _test_images(n, size=16):
    return sample_images(32)[[0, 5, 8, 12][:n], :size, :size]


@pytest.mark.parametrize("dtype, bound", [(np.float32, 1e-5), (np.float64, 1e-9)])
@pytest.mark.parametrize("boundary", ["zero", "reflect"])
def test_picard_matches_spsolve_scheme(dtype, bound, boundary, request):
    if dtype == np.float64:
        request.getfixturevalue("x64")
    T, outer = 6, 3
    for image in _test_images(3):
        m0 = np.asarray(fpjax.initial_log_density(image.astype(np.float64)))
        h = 1 / m0.shape[0]
        zeros = np.zeros_like(m0)
        expected = picard_spsolve(m0, T, 0.5, zeros, zeros, h, h, boundary, outer)
        config = fpjax.FPConfig(
            T=T,
            boundary=boundary,
            scheme=fpjax.LogDensity(
                outer_tol=0.0, predictor="previous", max_outer=outer, tol=1e-7 if dtype == np.float32 else 1e-13
            ),
        )
        sol = fpjax.solve(m0.astype(dtype), config, on_failure="ignore")
        assert sol.m.dtype == dtype
        assert (np.asarray(sol.outer_iterations) == outer).all()
        error = np.linalg.norm(np.asarray(sol.m, np.float64) - expected) / np.linalg.norm(expected)
        assert error <= bound, error


@pytest.mark.usefixtures("x64")
def test_picard_matches_spsolve_with_drift_and_g_schedule():
    T, outer, shape = 5, 4, (9, 12)
    m0 = np.asarray(fpjax.initial_log_density(sample_images(32)[3, :9, :12].astype(np.float64)))
    fx, fy = _drift(shape, seed=3, scale=0.5)
    g = np.linspace(0.3, 0.6, T + 1)
    config = fpjax.FPConfig(
        T=T,
        g=tuple(g),
        drift=lambda t: (jnp.asarray(fx), jnp.asarray(fy)),
        scheme=fpjax.LogDensity(outer_tol=0.0, predictor="previous", max_outer=outer, tol=1e-13),
    )
    sol = fpjax.solve(m0, config, on_failure="ignore")
    hx, hy = 1 / 12, 1 / 9
    m_prev, traj = m0, [m0]
    for n in range(1, T + 1):  # g varies per step, so run the reference one step at a time
        step = _spsolve_step(m_prev, g[n], fx, fy, hx, hy, T, outer)
        traj.append(step)
        m_prev = step
    np.testing.assert_allclose(np.asarray(sol.m), np.stack(traj), rtol=1e-9, atol=1e-9)


def _spsolve_step(m_prev, g, fx, fy, hx, hy, T, outer):
    import scipy.sparse.linalg as spla
    from reference import divergence_reference

    b = (m_prev * T - divergence_reference(fx, fy, hx, hy, "zero")).ravel()
    m = m_prev
    for _ in range(outer):
        m = spla.spsolve(assemble_step_matrix(m, g, fx, fy, 1 / T, hx, hy, "zero").tocsc(), b).reshape(m.shape)
    return m


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("boundary", ["zero", "reflect"])
def test_picard_and_newton_agree_at_convergence(boundary):
    m0 = fpjax.initial_log_density(_test_images(1)[0].astype(np.float64))
    tight = dict(outer_tol=1e-11, tol=1e-12, max_outer=100)
    picard = fpjax.solve(m0, fpjax.FPConfig(T=10, boundary=boundary, scheme=fpjax.LogDensity(**tight)))
    newton = fpjax.solve(
        m0, fpjax.FPConfig(T=10, boundary=boundary, scheme=fpjax.LogDensity(linearization="newton", **tight))
    )
    np.testing.assert_allclose(np.asarray(newton.m), np.asarray(picard.m), rtol=1e-9)
    assert np.asarray(newton.outer_iterations).mean() < np.asarray(picard.outer_iterations).mean()
    assert float(jnp.max(newton.residual)) < 1e-9


@pytest.mark.parametrize("predictor", ["previous", "extrapolate"])
def test_predictors_reach_the_same_solution(predictor):
    """Each predictor in float32 at the default tolerances reaches the tightly converged float64 solution."""
    image = _test_images(1)[0]
    tight = float64_run(
        lambda: (
            fpjax.solve(
                fpjax.initial_log_density(image.astype(np.float64)),
                fpjax.FPConfig(
                    T=10, scheme=fpjax.LogDensity(outer_tol=1e-12, tol=1e-13, max_outer=100, predictor="previous")
                ),
            ).m
        )
    )
    sol = fpjax.solve(
        fpjax.initial_log_density(image), fpjax.FPConfig(T=10, scheme=fpjax.LogDensity(predictor=predictor))
    )
    assert sol.m.dtype == jnp.float32
    error = float(np.linalg.norm(np.asarray(sol.m, np.float64) - tight) / np.linalg.norm(tight))
    assert error < 1e-5, error


@pytest.mark.parametrize("linearization", ["picard", "newton"])
@pytest.mark.parametrize("solver", ["bicgstab", "bicgstab_counted", "gmres"])
def test_float32_agrees_with_float64(linearization, solver):
    image = _test_images(1)[0]
    config = fpjax.FPConfig(
        T=10, scheme=fpjax.LogDensity(linearization=linearization, solver=solver, preconditioner="none")
    )
    m64 = float64_run(
        lambda: (
            fpjax.solve(
                fpjax.initial_log_density(image.astype(np.float64)),
                fpjax.FPConfig(T=10, scheme=fpjax.LogDensity(outer_tol=1e-12, tol=1e-13, max_outer=100)),
            ).m
        )
    )
    sol32 = fpjax.solve(fpjax.initial_log_density(image), config)
    assert sol32.m.dtype == jnp.float32 and bool(sol32.converged.all())
    error = float(np.linalg.norm(np.asarray(sol32.m, np.float64) - m64) / np.linalg.norm(m64))
    assert error < 1e-5, error


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("boundary", ["zero", "reflect"])
def test_dst_preconditioner_inverts_operator_without_advection(boundary):
    """With a constant frozen field and no drift the advection term vanishes and
    the preconditioner is the exact inverse of the step matrix."""
    shape, spacing, T, g = (9, 13), (1 / 13, 1 / 9), 50, 0.8
    step = _step(np.zeros(shape), np.zeros(shape), g, T, spacing, boundary)
    matvec = fp.picard_operator(jnp.zeros(shape), step, spacing, boundary)
    inverse = fpjax.solver.linsolve.make_helmholtz_inverse(shape, spacing, boundary)
    r = jnp.asarray(np.random.default_rng(0).normal(size=shape))
    np.testing.assert_allclose(np.asarray(matvec(inverse(r, step.c0, step.c1))), np.asarray(r), rtol=1e-10, atol=1e-10)
    if boundary == "zero":  # and with the papers' sparse matrix directly
        a = assemble_step_matrix(np.zeros(shape), g, np.zeros(shape), np.zeros(shape), 1 / T, *spacing, boundary)
        np.testing.assert_allclose(
            a @ np.asarray(inverse(r, step.c0, step.c1)).ravel(), np.asarray(r).ravel(), rtol=1e-10, atol=1e-10
        )


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("preconditioner", ["none", "dst"])
def test_preconditioner_changes_iterations_not_solution(preconditioner):
    m0 = fpjax.initial_log_density(_test_images(1)[0].astype(np.float64))
    tight = dict(outer_tol=1e-12, tol=1e-13, max_outer=60, solver="bicgstab_counted")
    ref = fpjax.solve(m0, fpjax.FPConfig(T=5, scheme=fpjax.LogDensity(preconditioner="none", **tight)))
    sol = fpjax.solve(m0, fpjax.FPConfig(T=5, scheme=fpjax.LogDensity(preconditioner=preconditioner, **tight)))
    np.testing.assert_allclose(np.asarray(sol.m), np.asarray(ref.m), rtol=1e-11)
    assert (np.asarray(sol.linear_iterations) > 0).all()


def test_vmap_equals_loop_and_jit():
    images = _test_images(3)
    m0s = jnp.stack([fpjax.initial_log_density(im) for im in images])
    config = fpjax.FPConfig(T=8)
    batched = jax.jit(jax.vmap(lambda m: fpjax.solve(m, config)))(m0s)
    for i, m0 in enumerate(m0s):
        single = fpjax.solve(m0, config)
        np.testing.assert_allclose(np.asarray(batched.m[i]), np.asarray(single.m), rtol=2e-6, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(batched.converged[i]), np.asarray(single.converged))
    via_images = fpjax.solve_images(images, config)  # channels last, the statistics (N, C, T)
    assert via_images.m.shape == (3, 9, 16, 16, 3) and via_images.residual.shape == (3, 3, 8)
    np.testing.assert_allclose(np.asarray(via_images.m[..., 1]), np.asarray(batched.m), rtol=2e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(via_images.converged[:, 1]), np.asarray(batched.converged))


def test_solve_image_per_channel():
    image = _test_images(1)[0]
    sol = fpjax.solve_image(image, fpjax.FPConfig(T=4), density="intensity", per_channel=True)
    assert sol.m.shape == (5, 16, 16, 3) and sol.converged.shape == (3, 4)
    m0 = fpjax.initial_log_density(image, "intensity")
    for c in range(3):
        np.testing.assert_allclose(
            np.asarray(sol.m[..., c]), np.asarray(fpjax.solve(m0[c], fpjax.FPConfig(T=4)).m), rtol=1e-6
        )


def _loss_weights(shape):
    return jnp.asarray(np.random.default_rng(7).normal(size=shape))


def _central_fd(f, x, direction, eps):
    return (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("linearization", ["picard", "newton"])
def test_grad_wrt_image_matches_finite_differences(linearization):
    image = np.clip(_test_images(1)[0][:8, :10].astype(np.float64), 0.05, 0.95)
    config = fpjax.FPConfig(
        T=4, scheme=fpjax.LogDensity(linearization=linearization, outer_tol=1e-13, tol=1e-13, max_outer=200)
    )
    weights = _loss_weights((8, 10))

    def loss(x):
        return jnp.sum(fpjax.solve(fpjax.initial_log_density(x), config).m[-1] * weights)

    direction = np.random.default_rng(8).normal(size=image.shape)
    ad = float(jnp.vdot(jax.grad(loss)(jnp.asarray(image)), direction))
    fd = float(_central_fd(loss, image, direction, 1e-5))
    np.testing.assert_allclose(ad, fd, rtol=1e-6)
    ad_jit = float(jnp.vdot(jax.jit(jax.grad(loss))(jnp.asarray(image)), direction))
    np.testing.assert_allclose(ad_jit, ad, rtol=1e-10)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("advection, preconditioner", [("central", "none"), ("upwind", "none"), ("central", "dst")])
def test_grad_wrt_g_matches_finite_differences(advection, preconditioner):
    m0 = fpjax.initial_log_density(_test_images(1)[0][:9, :7].astype(np.float64))
    config = fpjax.FPConfig(
        T=5,
        scheme=fpjax.LogDensity(
            advection=advection, preconditioner=preconditioner, outer_tol=1e-13, tol=1e-13, max_outer=200
        ),
    )
    weights = _loss_weights((9, 7))
    loss = lambda g: jnp.sum(fpjax.solve(m0, config, g=g).m * weights[None])  # noqa: E731
    np.testing.assert_allclose(float(jax.grad(loss)(0.5)), float(_central_fd(loss, 0.5, 1.0, 1e-6)), rtol=1e-6)
    schedule = jnp.linspace(0.4, 0.6, 6)
    direction = jnp.asarray(np.random.default_rng(9).normal(size=6))
    ad = float(jnp.vdot(jax.grad(loss)(schedule), direction))
    np.testing.assert_allclose(ad, float(_central_fd(loss, schedule, direction, 1e-6)), rtol=1e-6)


@pytest.mark.usefixtures("x64")
def test_per_example_gradients_under_vmap():
    images = np.clip(_test_images(2)[:, :8, :8].astype(np.float64), 0.05, 0.95)
    config = fpjax.FPConfig(T=3, scheme=fpjax.LogDensity(outer_tol=1e-13, tol=1e-13, max_outer=200))
    weights = _loss_weights((8, 8))
    loss = lambda x: jnp.sum(fpjax.solve(fpjax.initial_log_density(x), config).m[-1] * weights)  # noqa: E731
    batched = jax.vmap(jax.grad(loss))(jnp.asarray(images))
    for image, grad in zip(images, batched, strict=False):
        np.testing.assert_allclose(
            np.asarray(grad), np.asarray(jax.grad(loss)(jnp.asarray(image))), rtol=1e-9, atol=1e-12
        )


def test_score_and_pixel_score():
    m = np.random.default_rng(3).normal(size=(2, 5, 6)).astype(np.float32)  # the reference below: float32 too
    s = np.asarray(fpjax.score(m))
    padded = np.pad(m, ((0, 0), (1, 1), (1, 1)))
    assert s.shape == m.shape + (2,)  # the component last
    np.testing.assert_allclose(s[..., 0], (padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2]) / 2)
    np.testing.assert_allclose(s[..., 1], (padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1]) / 2)
    np.testing.assert_allclose(np.asarray(fpjax.pixel_score(m)), s[..., 0] + s[..., 1])
    np.testing.assert_allclose(np.asarray(fpjax.pixel_score(m, "x")), s[..., 0])
    with pytest.raises(ValueError, match="component"):
        fpjax.pixel_score(m, "z")


def _failing_setup():
    m0 = fpjax.initial_log_density(_test_images(1)[0])
    return m0, fpjax.FPConfig(T=4, scheme=fpjax.LogDensity(max_outer=1, outer_tol=1e-12))


def test_non_convergence_raises_naming_the_step():
    m0, config = _failing_setup()
    with pytest.raises(fpjax.ConvergenceError, match="step n=1 \\(t=0.25\\)"):
        fpjax.solve(m0, config)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        sol = fpjax.solve(m0, config, on_failure="warn")
    assert not bool(sol.converged.any())
    flags = jax.jit(lambda m: fpjax.solve(m, config).converged)(m0)  # traced: flags, no exception
    assert not bool(flags.any())


def test_nan_solve_shows_in_converged():
    m0, _ = _failing_setup()
    config = fpjax.FPConfig(T=3)
    g = jnp.array([0.5, 0.5, jnp.nan, 0.5])
    sol = fpjax.solve(m0, config, g=g, on_failure="ignore")
    assert not bool(sol.converged[1]) and bool(sol.converged[0])
    with pytest.raises(fpjax.ConvergenceError, match="step n=2"):
        fpjax.solve(m0, config, g=g)


def test_converged_solve_emits_no_warning():
    m0, _ = _failing_setup()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fpjax.solve(m0, fpjax.FPConfig(T=3), on_failure="warn")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: fpjax.FPConfig(boundary="periodic"), "FPConfig.boundary"),
        (lambda: fpjax.LogDensity(linearization="anderson"), "LogDensity.linearization"),
        (lambda: fpjax.LogDensity(advection="weno"), "LogDensity.advection"),
        (lambda: fpjax.Density(solver="lu"), "Density.solver"),
        (lambda: fpjax.LogDensity(preconditioner="ilu"), "LogDensity.preconditioner"),
        (lambda: fpjax.FPConfig(T=0), "T must be"),
        (lambda: fpjax.FPConfig(T=3, g=(0.5, 0.5)), "T\\+1 = 4"),
    ],
    ids=["boundary", "linearization", "advection", "solver", "preconditioner", "T", "g"],
)
def test_config_errors_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "scheme, option, value",
    [
        (fpjax.Density, "linearization", "newton"),
        (fpjax.Density, "advection", "upwind"),
        (fpjax.Density, "outer_tol", 1e-3),
        (fpjax.Spectral, "tol", 1e-3),
        (fpjax.Spectral, "preconditioner", "dst"),
        (fpjax.Spectral, "max_outer", 5),
    ],
)
def test_an_option_a_scheme_does_not_use_cannot_be_set(scheme, option, value):
    """Each scheme holds only its own options: FPConfig(scheme="spectral", linearization="newton") meant nothing
    and was accepted; now the scheme object refuses the option."""
    with pytest.raises(TypeError, match=option):
        scheme(**{option: value})
    with pytest.raises(TypeError, match=option):
        fpjax.FPConfig(**{option: value})  # and the problem holds no method options at all


def test_config_is_hashable_static_argument():
    config = fpjax.FPConfig(g=np.full(101, 0.5))
    assert hash(config) == hash(fpjax.FPConfig(g=tuple([0.5] * 101)))
    with pytest.raises(ValueError, match="one \\(H, W\\) field"):
        fpjax.solve(jnp.zeros((2, 4, 4)), config)


def test_upwind_keeps_the_m_matrix_where_central_advection_dominates():
    """A steep field on a coarse grid: central differencing loses the M-matrix property (positive
    off-diagonal entries in the papers' step matrix, assembled by SciPy); upwinding keeps it, so the
    discrete maximum principle bounds every step by the previous one.

    (Central does not blow up here: float64 BiCGSTAB broke down on its first steps, which this test used to
    assert, but GMRES in float64 and BiCGSTAB in float32 converge to a bounded solution.)"""
    yy, xx = np.mgrid[0:12, 0:12]
    m0 = -((xx - 3.0) ** 2 + (yy - 8.0) ** 2) / 2.0  # log of a narrow Gaussian, in pixel units
    zeros, h = np.zeros_like(m0), 1 / 12
    for advection, positive in (("central", True), ("upwind", False)):
        a = assemble_step_matrix(m0, 2.0, zeros, zeros, 1 / 10, h, h, "zero", advection).toarray()
        assert (a - np.diag(np.diag(a)) > 0).any() == positive, advection
    sol = fpjax.solve(
        jnp.asarray(m0, jnp.float32),
        fpjax.FPConfig(T=10, g=2.0, scheme=fpjax.LogDensity(advection="upwind", max_outer=200)),
    )
    assert bool(sol.converged.all())
    sup = np.abs(np.asarray(sol.m)).max(axis=(1, 2))
    assert (sup[1:] <= sup[:-1] * (1 + 1e-6)).all()  # float32: to rounding (1e-9 was float64's)


def test_auto_preconditioner_choice():
    from fpjax.solver.linsolve import resolve_preconditioner

    assert resolve_preconditioner("dst", (8, 8)) == "dst" and resolve_preconditioner("none", (512, 512)) == "none"
    small, large = resolve_preconditioner("auto", (32, 32)), resolve_preconditioner("auto", (128, 128))
    assert large == "dst"
    assert small == ("none" if jax.default_backend() == "cpu" else "dst")


def test_step_residuals_sit_at_the_solver_tolerance_and_catch_a_wrong_step():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 1.0, (12, 12))
    config = fpjax.FPConfig(T=10, scheme=fpjax.LogDensity(outer_tol=1e-6))
    solution = fpjax.solve(jnp.log(image / image.sum()), config)
    r = np.asarray(fp.step_residuals(solution.m, config))
    assert r.shape == (10,) and np.all(r < 1e-4)
    wrong = solution.m.at[5].add(0.01)  # not the solution: the check can fail
    assert np.asarray(fp.step_residuals(wrong, config))[4] > 100 * r.max()
    exact = fpjax.solve(jnp.log(image / image.sum()), fpjax.FPConfig(T=10, scheme="spectral")).m
    assert np.asarray(fp.step_residuals(exact, config)).max() > 100 * r.max()  # another discretisation
