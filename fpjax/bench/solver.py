"""``fpjax bench solver``: fpjax against SciPy ``spsolve`` on the same discretisation.

For each image size: the papers' baseline (SciPy-assembled step matrix, a
direct ``spsolve`` per Picard iteration, float64) on a few images, and fpjax
in float32 with each preconditioner and linearization, jitted, one image at a
time and as a vmapped batch. The baseline runs twice: the papers' scheme
(each step starts from ``m^(n-1)``) and with fpjax's extrapolated start, so
the algorithmic gain and the implementation gain can be told apart. Reported: seconds per image (median), outer
iterations per step, linear iterations per solve, relative L2 error of the
whole trajectory against a float64 fpjax reference (Newton, tight
tolerances) and the speed-up over ``spsolve`` (ratio of medians; fpjax's
median is over images x repeats, the baseline's over images, one run each).
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

import fpjax
from fpjax import files
from fpjax.bench.baseline import solve_spsolve
from fpjax.data import benchmark_images
from fpjax.provenance import machine

_COUNTED = "bicgstab_counted"  # jax.scipy's BiCGSTAB recurrence, with iteration counts
VARIANTS = {
    # name: the scheme; all float32
    "picard+none, papers' start": fpjax.LogDensity(preconditioner="none", predictor="previous", solver=_COUNTED),
    "picard+dst, papers' start": fpjax.LogDensity(preconditioner="dst", predictor="previous", solver=_COUNTED),
    "picard+none": fpjax.LogDensity(preconditioner="none", solver=_COUNTED),
    "picard+dst": fpjax.LogDensity(preconditioner="dst", solver=_COUNTED),
    "newton+dst": fpjax.LogDensity(linearization="newton", preconditioner="dst", solver=_COUNTED),
    "default (jax bicgstab, auto, extrapolate)": fpjax.LogDensity(),
    # the linear schemes (beyond the papers): errors are against their own float64 solve, not the
    # log-density reference, because they discretise the PDE differently (``fpjax bench accuracy``)
    "density+none": fpjax.Density(preconditioner="none", solver=_COUNTED),
    "density+dst": fpjax.Density(preconditioner="dst", solver=_COUNTED),
    "density (jax bicgstab, auto)": fpjax.Density(),
    "spectral": fpjax.Spectral(),
}
BATCHED = ("default (jax bicgstab, auto, extrapolate)", "density (jax bicgstab, auto)", "spectral")
BASELINES = {"scipy spsolve, papers' scheme": "previous", "scipy spsolve, extrapolated start": "extrapolate"}
DEFAULT_SPSOLVE_IMAGES = {32: 4, 64: 2, 128: 1, 256: 0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256], help="image sizes")
    parser.add_argument("--T", type=int, default=100, help="time steps")
    parser.add_argument("--images", type=int, default=4, help="images timed per fpjax variant")
    parser.add_argument(
        "--spsolve-images",
        type=int,
        nargs="*",
        help="images for the spsolve baseline per size (default 4, 2, 1, 0 for 32..256)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per image for fpjax (median of all)")
    parser.add_argument("--batch", type=int, default=8, help="vmapped batch size for the batched line (0: skip)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="subset of: " + ", ".join(VARIANTS))
    parser.add_argument(
        "--no-autodiff", dest="autodiff", action="store_false", help="skip the forward / grad / jvp timings"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few minutes: sizes 32 and 64, 2 images, 2 repeats, spsolve on 1 image per size, batch of 4",
    )
    parser.add_argument("--out", default="bench_solver.json", help="JSON file written")


QUICK = dict(sizes=[32, 64], images=2, repeats=2, spsolve_images=[1, 1], batch=4)


def _rel_error(m, reference):
    m, reference = np.asarray(m, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(m - reference) / np.linalg.norm(reference))


def _run(fn, *args):
    return jax.block_until_ready(fn(*args))


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def _row(size, method, images, seconds, baseline_seconds=None, **fields):
    """One result row; missing statistics are ``None``, the speed-up is against the papers' ``spsolve``."""
    row = dict(size=size, method=method, images=images, seconds=seconds, outer_per_step=None,
               linear_per_solve=None, rel_error=None)  # fmt: skip
    row.update(fields)
    row["speedup"] = baseline_seconds / seconds if baseline_seconds else None
    return row


def _baseline_rows(size, m0_64, references, k, T):
    """The papers' ``spsolve`` scheme on ``k`` images, with the papers' start and the extrapolated one."""
    rows, baseline_seconds = [], None
    for label, predictor in BASELINES.items() if k else ():
        times, errors, outers = [], [], []
        for i in range(k):
            (m, outer), seconds = _timed(functools.partial(solve_spsolve, predictor=predictor), m0_64[i], T)
            times.append(seconds)
            outers.append(outer.mean())
            if i < len(references):
                errors.append(_rel_error(m, references[i]))
        seconds = float(np.median(times))
        baseline_seconds = baseline_seconds or seconds  # speed-ups are against the papers' scheme
        error = float(np.max(errors)) if errors else None
        rows.append(_row(size, label + " (float64)", k, seconds, baseline_seconds,
                         outer_per_step=float(np.mean(outers)), rel_error=error))  # fmt: skip
    return rows, baseline_seconds


def _variant_row(size, name, config, m0_64, references, repeats, baseline_seconds):
    """One fpjax configuration, jitted, one image at a time: median seconds over images x repeats."""
    solve = jax.jit(lambda m0: fpjax.solve(m0, config))
    m0s = [jnp.asarray(m0, jnp.float32) for m0 in m0_64]
    jax.block_until_ready(solve(m0s[0]))  # compile
    own = config.scheme.name != "log_density"
    if own:  # the linear schemes discretise differently: compare them with their own float64 solve
        references = [np.asarray(fpjax.solve(m0, config).m) for m0 in m0_64]
    times, errors, outer, linear, residual, converged = [], [], [], [], [], True
    for m0, reference in zip(m0s, references, strict=True):
        for _ in range(repeats):
            sol, seconds = _timed(_run, solve, m0)
            times.append(seconds)
        errors.append(_rel_error(sol.m, reference))
        outer.append(float(np.mean(sol.outer_iterations)))
        iters = np.asarray(sol.linear_iterations)
        linear.append(float(iters.sum() / max(int(np.sum(sol.outer_iterations)), 1)) if iters.min() >= 0 else None)
        residual.append(float(np.max(sol.residual)))
        converged &= bool(np.all(sol.converged))
    return _row(
        size, f"fpjax {name}", len(m0s), float(np.median(times)), baseline_seconds,
        outer_per_step=float(np.mean(outer)), linear_per_solve=None if None in linear else float(np.mean(linear)),
        rel_error=float(np.max(errors)), max_residual=float(np.max(residual)), converged=converged,
        error_reference="own scheme, float64" if own else "log_density Newton, float64",
    )  # fmt: skip


def _batched_row(size, name, config, m0_64, batch, baseline_seconds):
    """The same configuration as one jitted ``vmap`` over ``batch`` images: seconds per image."""
    stacked = jnp.asarray(np.stack(m0_64[:batch]), jnp.float32)
    batched = jax.jit(jax.vmap(lambda m0: fpjax.solve(m0, config)))
    jax.block_until_ready(batched(stacked))
    seconds = float(np.median([_timed(_run, batched, stacked)[1] for _ in range(3)])) / batch
    return _row(size, f"fpjax {name}, vmap batch of {batch}", batch, seconds, baseline_seconds)


AUTODIFF = ("default (jax bicgstab, auto, extrapolate)", "density (jax bicgstab, auto)", "spectral")


def _autodiff_rows(size, name, config, m0, repeats):
    """Seconds per image of the forward solve, ``grad`` and ``jvp`` of ``sum(m)`` with respect to ``g``."""
    m0 = jnp.asarray(m0, jnp.float32)
    loss = lambda g: jnp.sum(fpjax.solve(m0, config, g=g).m)  # noqa: E731
    modes = {
        "forward": jax.jit(lambda g: fpjax.solve(m0, config, g=g).m),
        "grad": jax.jit(jax.grad(loss)),
        "jvp": jax.jit(lambda g: jax.jvp(loss, (g,), (jnp.ones_like(g),))[1]),
    }
    rows = []
    g = jnp.float32(0.5)
    for mode, fn in modes.items():
        jax.block_until_ready(fn(g))
        seconds = float(np.median([_timed(_run, fn, g)[1] for _ in range(max(repeats, 3))]))
        rows.append(_row(size, f"fpjax {name}: {mode} (g traced)", 1, seconds))
    return rows


def _size_rows(size, args, n_spsolve):
    """Every row of one image size."""
    images = benchmark_images(size, max(args.images, args.batch, n_spsolve), source="samples")[0]
    m0_64 = [np.asarray(fpjax.initial_log_density(im.astype(np.float64))) for im in images]
    ref_config = fpjax.FPConfig(
        T=args.T, scheme=fpjax.LogDensity(linearization="newton", outer_tol=1e-11, tol=1e-12, max_outer=100)
    )
    references = [np.asarray(fpjax.solve(m0, ref_config, on_failure="warn").m) for m0 in m0_64[: args.images]]
    rows, baseline_seconds = _baseline_rows(size, m0_64, references, n_spsolve, args.T)
    for name in args.variants:
        config = fpjax.FPConfig(T=args.T, scheme=VARIANTS[name])
        rows.append(_variant_row(size, name, config, m0_64[: args.images], references, args.repeats, baseline_seconds))
        if name in BATCHED and args.batch:
            rows.append(_batched_row(size, name, config, m0_64, args.batch, baseline_seconds))
        if name in AUTODIFF and args.autodiff:
            rows.extend(_autodiff_rows(size, name, config, m0_64[0], args.repeats))
    if args.batch:
        rows.extend(_memory_floor(size, args.T, args.batch))
    return rows


def run(args) -> int:
    if args.quick:
        args = argparse.Namespace(**{**vars(args), **QUICK})
    jax.config.update("jax_enable_x64", True)  # for the float64 reference; fpjax runs follow their inputs' dtype
    n_spsolve = dict(DEFAULT_SPSOLVE_IMAGES)
    if args.spsolve_images:
        n_spsolve.update(dict(zip(args.sizes, args.spsolve_images, strict=False)))
    records = []
    for size in args.sizes:
        for row in _size_rows(size, args, n_spsolve.get(size, 0)):
            records.append(row)
            _print_row(row, header=len(records) == 1)
    options = " ".join(f"--{k} {v}" for k, v in vars(args).items() if k in ("sizes", "T", "images", "repeats", "batch"))
    result = dict(command=f"fpjax bench solver {options}", machine=machine(), T=args.T, rows=records)
    _print_growth(records)
    files.write_json(args.out, result, indent=2)
    print(f"wrote {args.out}")
    return 0


def _memory_floor(size, T, batch):
    """Rows timing ``log(exp(x) + 1)`` over a ``(T+1, size, size)`` float32 array, alone and as a batch:
    the cost of merely reading and writing a trajectory, the floor for the spectral scheme."""
    floor = jax.jit(lambda x: jnp.log(jnp.exp(x) + 1))
    rows = []
    for n in (1, batch):
        x = jnp.zeros((n, T + 1, size, size), jnp.float32)
        jax.block_until_ready(floor(x))
        seconds = float(np.median([_timed(_run, floor, x)[1] for _ in range(5)])) / n
        label = "memory floor: log(exp(x) + 1) of a trajectory" + (f", batch of {n}" if n > 1 else "")
        rows.append(_row(size, label, n, seconds))
    return rows


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _print_row(r, header=False):
    if header:
        print(
            f"{'size':>5} {'method':44s} {'imgs':>4} {'s/image':>9} {'speedup':>8} {'outer/step':>10} "
            f"{'lin/solve':>9} {'rel L2 err':>10} {'converged':>9}"
        )
    print(
        f"{r['size']:>5} {r['method']:44s} {r['images']:>4} {r['seconds']:>9.4f} {_fmt(r['speedup'], '>8.1f')} "
        f"{_fmt(r['outer_per_step'], '>10.2f')} {_fmt(r['linear_per_solve'], '>9.2f')} "
        f"{_fmt(r['rel_error'], '>10.1e')} {_fmt(None if r.get('converged') is None else str(r['converged']), '>9')}",
        flush=True,
    )


def _print_growth(records):
    dst = {r["size"]: r["linear_per_solve"] for r in records if r["method"] == "fpjax picard+dst"}
    if len(dst) > 1:
        lo, hi = min(dst), max(dst)
        print(
            f"dst linear iterations per solve: {dst[lo]:.2f} at {lo} -> {dst[hi]:.2f} at {hi} "
            f"(x{dst[hi] / dst[lo]:.2f})"
        )
