"""``fpjax bench accuracy``: how far each scheme's solution is from the solution of the PDE.

The continuum test problem (float64, zero drift, ``g = 0.5``, zero boundary)::

    m_t = 1/2 g^2 (lap m + |grad m|^2)  on the unit square,  m = 0 outside,
    m(0) = log p0 + c

with ``p0`` a sum of Gaussian bumps of unit integral over the square and the
constant ``c = -log(32 * 32)`` that the papers' unit-mass normalisation gives
on a 32x32 grid. ``c`` is held fixed on every grid, so that every grid
discretises one PDE (normalising per grid would change the PDE with ``h``).

Grids nest: ``n = 2^k - 1`` points per side, ``h = 1/(n+1)``, points
``x_j = j h`` (``j = 1..n``), the boundary at ``x = 0`` and ``x = 1``. The
reference is the ``"spectral"`` solution (exact in time) on a fine grid,
restricted to each coarse grid by injection (fine index ``2^(K-k) j``), at
fixed times (default ``t = 0.1, 0.5, 1``). Its own error is the spectral
scheme's ``O(h^2)`` at the fine spacing: 1.6 % of the error it is compared
with at 255 against the default 2047 reference.

For every scheme and grid (``"log_density"`` and ``"density"`` for every
``T``; ``"spectral"``, exact in time, once per grid): the relative L2 error
of ``m`` at each time against the reference (none where ``t`` is not a time
level ``n/T``: no interpolated numbers), the observed order in ``h`` (successive
grids, largest ``T``) and in ``dt`` (successive ``T``, finest grid), and
seconds per image for the whole ``(T+1, H, W)`` trajectory (jitted, compiled
ahead of time; median of the runs after the first).
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import fpjax
from fpjax import files
from fpjax.provenance import machine
from fpjax.solver.linear import spectral_solve

SCHEMES = ("log_density", "density", "spectral")
G = 0.5  # the papers' constant diffusion coefficient
LOG_MASS = -math.log(32 * 32)  # c in m0 = log p0 + c: the papers' unit-mass normalisation on a 32x32 grid
# (x centre, y centre, standard deviation, weight) of each bump of p0; weights sum to 1
BUMPS = ((0.35, 0.40, 0.12, 0.6), (0.65, 0.60, 0.10, 0.4))
DEFAULTS = dict(grids=[31, 63, 127, 255], reference=2047, T=[25, 100, 400, 1600], repeats=3)
QUICK = dict(grids=[15, 31], reference=127, T=[25, 100], repeats=2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grids", type=int, nargs="+", help="points per side, 2^k - 1 (default 31 63 127 255)")
    parser.add_argument("--reference", type=int, help="points per side of the spectral reference (default 2047)")
    parser.add_argument(
        "--T", type=int, nargs="+", help="time steps of log_density and density (default 25 100 400 1600)"
    )
    parser.add_argument(
        "--times", type=float, nargs="+", default=[0.1, 0.5, 1.0], help="times the error is measured at"
    )
    parser.add_argument("--schemes", nargs="+", choices=SCHEMES, default=list(SCHEMES), help="schemes measured")
    parser.add_argument("--spectral-T", type=int, default=100, help="time levels of the spectral run (exact in time)")
    parser.add_argument("--repeats", type=int, help="timed runs per configuration after the first (default 3)")
    parser.add_argument("--budget", type=float, default=60.0, help="stop repeating a configuration after this many s")
    parser.add_argument("--quick", action="store_true", help="grids 15 31, reference 127, T 25 100 (a CLI test)")
    parser.add_argument("--out", default="bench_accuracy.json", help="JSON file written")
    parser.add_argument("--figure", help="PNG: error versus T (finest grid) and versus h (each T)")


# ----------------------------------------------------------------------------
# The continuum problem


def _unit_interval_mass(centre: float, sigma: float) -> float:
    """``int_0^1`` of the unit-mass 1-D Gaussian density ``N(centre, sigma^2)``."""
    s = math.sqrt(2.0) * sigma
    return 0.5 * (math.erf((1.0 - centre) / s) + math.erf(centre / s))


def initial_density(x, y) -> np.ndarray:
    """``p0(x, y)``: arrays of one shape -> that shape, float64; unit integral over the unit square."""
    p = np.zeros(np.broadcast(x, y).shape)
    for cx, cy, sigma, weight in BUMPS:
        # each bump is normalised on the square itself (not on the plane), so the sum has unit integral
        mass = _unit_interval_mass(cx, sigma) * _unit_interval_mass(cy, sigma)
        p += weight * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2 * mass)
    return p


def grid_points(n: int) -> np.ndarray:
    """``(n,)`` interior points ``x_j = j h``, ``h = 1/(n+1)``, ``j = 1..n`` (the boundary is at 0 and 1)."""
    return np.arange(1, n + 1) / (n + 1)


def initial_log_density(n: int) -> np.ndarray:
    """``m0 = log p0 + c`` on the ``n x n`` grid: ``(n, n)`` float64, axis -1 is ``x``."""
    x = grid_points(n)
    return np.log(initial_density(x[None, :], x[:, None])) + LOG_MASS


def check_grids(grids, reference: int) -> None:
    """Raise ``ValueError`` unless every grid is ``2^k - 1`` points a side and coarser than the reference."""
    for n in [*grids, reference]:
        if n < 3 or (n + 1) & n:
            raise ValueError(f"grid {n}: use n = 2^k - 1 points per side (15, 31, 63, ...) so that the grids nest")
    if max(grids) >= reference:
        raise ValueError(f"the reference grid ({reference}) must be finer than every grid (largest {max(grids)})")


def restrict(fine: np.ndarray, n: int) -> np.ndarray:
    """Injection ``(..., N, N) -> (..., n, n)``: coarse point ``j`` is fine point ``r j``, ``r = (N+1)/(n+1)``."""
    r = (fine.shape[-1] + 1) // (n + 1)
    return fine[..., r - 1 :: r, r - 1 :: r]  # 0-based index r j - 1 for j = 1..n


def reference_solution(n: int, times) -> np.ndarray:
    """The ``"spectral"`` solution on the ``n x n`` grid at ``times``: ``(len(times), n, n)`` float64.

    Exact in time: ``tau = 1/2 g^2 t`` is passed directly, so only the
    requested times are formed (a whole trajectory at 2047 would not fit).
    """
    tau = np.concatenate([[0.0], 0.5 * G**2 * np.asarray(times, np.float64)])
    h = 1.0 / (n + 1)
    m, _ = spectral_solve(jnp.asarray(initial_log_density(n)), tau, (h, h), "zero")
    return np.asarray(m[1:])


# ----------------------------------------------------------------------------
# Measuring one configuration


def time_levels(times, T: int) -> list:
    """Index ``n`` with ``t = n/T`` for each time, or ``None`` where ``t`` falls between levels."""
    levels = []
    for t in times:
        level = round(t * T)
        levels.append(level if abs(t * T - level) < 1e-9 * max(T, 1) else None)
    return levels


def relative_errors(m: np.ndarray, levels, reference: np.ndarray) -> list:
    """``||m[level] - ref|| / ||ref||`` per time (``None`` where the level is ``None``); ``m``: ``(T+1, n, n)``."""
    return [
        None if level is None else float(np.linalg.norm(m[level] - ref) / np.linalg.norm(ref))
        for level, ref in zip(levels, reference, strict=True)
    ]


def timed_solve(m0, config, repeats: int, budget: float):
    """Solve with ``config`` under ``jit``, compiled ahead of time.

    Runs once, then up to ``repeats`` more times while the runs so far took
    less than ``budget`` seconds (a 255x255, T = 1600 log-density solve takes
    minutes). Returns ``(solution, run seconds (list), compile seconds)``;
    the compile includes what a scheme computes once per grid and
    configuration (the ``"density"`` scheme's float64 boundary part).
    """
    start = time.perf_counter()
    compiled = jax.jit(lambda m: fpjax.solve(m, config)).lower(m0).compile()
    compile_seconds = time.perf_counter() - start
    runs = []
    while len(runs) < 1 + repeats and (len(runs) < 1 or sum(runs) < budget):
        start = time.perf_counter()
        solution = jax.block_until_ready(compiled(m0))
        runs.append(time.perf_counter() - start)
    return solution, runs, compile_seconds


def measure(scheme: str, n: int, T: int, times, reference: np.ndarray, repeats: int, budget: float) -> dict:
    """One row: ``scheme`` on the ``n x n`` grid with ``T`` steps against ``reference``, ``(len(times), n, n)``."""
    h = 1.0 / (n + 1)
    config = fpjax.FPConfig(T=T, g=G, spacing=(h, h), scheme=scheme)
    solution, runs, compile_seconds = timed_solve(jnp.asarray(initial_log_density(n)), config, repeats, budget)
    m = np.asarray(solution.m)
    return dict(
        scheme=scheme,
        grid=n,
        h=h,
        T=T,
        errors=relative_errors(m, time_levels(times, T), reference),
        # the first run is the warm-up; it is the timing only when the budget allowed no other
        seconds=float(np.median(runs[1:] if len(runs) > 1 else runs)),
        runs=runs,
        compile_seconds=compile_seconds,
        outer_per_step=float(np.mean(solution.outer_iterations)),
        converged=bool(np.all(solution.converged)),
        max_residual=float(np.max(solution.residual)),
    )


# ----------------------------------------------------------------------------
# Observed orders


def _order(error_a, error_b, ratio: float):
    """``log(e_a / e_b) / log(ratio)`` (``ratio`` > 1: how much finer ``b`` is), ``None`` without both errors."""
    if error_a is None or error_b is None or error_a <= 0 or error_b <= 0:
        return None
    return math.log(error_a / error_b) / math.log(ratio)


def orders_in_h(rows) -> list:
    """Per scheme, at its largest ``T``: the order between successive grids, per time."""
    out = []
    for scheme in dict.fromkeys(r["scheme"] for r in rows):
        T = max(r["T"] for r in rows if r["scheme"] == scheme)
        chain = sorted((r for r in rows if r["scheme"] == scheme and r["T"] == T), key=lambda r: r["grid"])
        for a, b in zip(chain, chain[1:], strict=False):
            orders = [_order(x, y, a["h"] / b["h"]) for x, y in zip(a["errors"], b["errors"], strict=True)]
            out.append(dict(scheme=scheme, T=T, coarse=a["grid"], fine=b["grid"], orders=orders))
    return out


def orders_in_dt(rows) -> list:
    """Per time-stepping scheme, on the finest grid: the order between successive ``T``, per time."""
    out = []
    for scheme in dict.fromkeys(r["scheme"] for r in rows if r["scheme"] != "spectral"):
        grid = max(r["grid"] for r in rows if r["scheme"] == scheme)
        chain = sorted((r for r in rows if r["scheme"] == scheme and r["grid"] == grid), key=lambda r: r["T"])
        for a, b in zip(chain, chain[1:], strict=False):
            orders = [_order(x, y, b["T"] / a["T"]) for x, y in zip(a["errors"], b["errors"], strict=True)]
            out.append(dict(scheme=scheme, grid=grid, coarse=a["T"], fine=b["T"], orders=orders))
    return out


# ----------------------------------------------------------------------------
# Reporting


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    """The error table and the two order tables of a result, as markdown."""
    times = " / ".join(f"{t:g}" for t in result["times"])
    lines = [
        f"| scheme | grid | T | rel. L2 error of m at t = {times} | s / image | converged |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        errors = " / ".join(_fmt(e, ".2e") for e in r["errors"])
        T = f"{r['T']} (exact in time)" if r["scheme"] == "spectral" else r["T"]
        lines.append(f"| {r['scheme']} | {r['grid']} | {T} | {errors} | {r['seconds']:.3g} | {r['converged']} |")
    lines += ["", f"Observed order in h (successive grids, largest T), at t = {times}:", ""]
    lines += ["| scheme | T | grids | order |", "|---|---|---|---|"]
    for o in result["orders_h"]:
        orders = " / ".join(_fmt(p, ".2f") for p in o["orders"])
        lines.append(f"| {o['scheme']} | {o['T']} | {o['coarse']} -> {o['fine']} | {orders} |")
    lines += ["", f"Observed order in dt (successive T, finest grid), at t = {times}:", ""]
    lines += ["| scheme | grid | T | order |", "|---|---|---|---|"]
    for o in result["orders_dt"]:
        orders = " / ".join(_fmt(p, ".2f") for p in o["orders"])
        lines.append(f"| {o['scheme']} | {o['grid']} | {o['coarse']} -> {o['fine']} | {orders} |")
    return "\n".join(lines)


def _print_row(r: dict, header: bool) -> None:
    if header:
        print(f"{'scheme':12s} {'grid':>5} {'T':>5} {'errors at the times':>32} {'s/image':>9} {'compile s':>9} conv")
    errors = " ".join(f"{_fmt(e, '.2e'):>10}" for e in r["errors"])
    print(
        f"{r['scheme']:12s} {r['grid']:>5} {r['T']:>5} {errors:>32} {r['seconds']:>9.3g} "
        f"{r['compile_seconds']:>9.3g} {r['converged']}",
        flush=True,
    )


_COLOURS = {"log_density": "tab:red", "density": "tab:blue", "spectral": "tab:green"}
_STYLES = (("-", "o"), ("--", "^"), (":", "s"))  # (line, marker) by time, counted from the last time


def _time_styles(times) -> dict:
    """``(line, marker)`` per time index: the last (``t = 1`` by default) solid with dots."""
    return {i: _STYLES[(len(times) - 1 - i) % len(_STYLES)] for i in range(len(times))}


def _slope_guide(ax, xs, anchor: tuple, order: float, label: str) -> None:
    """A grey line of slope ``order`` on log-log axes, half a point below ``anchor = (x, y)``, over ``xs``."""
    x0, y0 = anchor
    xs = np.array([min(xs), max(xs)], dtype=float)
    ax.plot(xs, 0.5 * y0 * (xs / x0) ** order, color="0.6", lw=0.8, label=label)  # beside the data, not on it


def _plot_versus_T(ax, rows, times) -> None:
    """Error versus ``T`` on the finest grid: one line per scheme and time (spectral: flat, exact in time)."""
    styles = _time_styles(times)
    finest = max(r["grid"] for r in rows)
    all_T = sorted({r["T"] for r in rows if r["scheme"] != "spectral"})
    for scheme in dict.fromkeys(r["scheme"] for r in rows):
        chain = sorted((r for r in rows if r["scheme"] == scheme and r["grid"] == finest), key=lambda r: r["T"])
        for i, t in enumerate(times):
            if scheme == "spectral":
                points = [(T, chain[0]["errors"][i]) for T in all_T or [chain[0]["T"]]]
            else:
                points = [(r["T"], r["errors"][i]) for r in chain if r["errors"][i] is not None]
            if points:
                line, marker = styles[i]
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, line, marker=marker, ms=4, color=_COLOURS[scheme], label=f"{scheme}, t = {t:g}")
    last = len(times) - 1
    density = [r for r in rows if r["scheme"] == "density" and r["grid"] == finest and r["errors"][last] is not None]
    if len(all_T) > 1 and density:
        anchor = max(density, key=lambda r: r["T"])
        _slope_guide(ax, all_T, (anchor["T"], anchor["errors"][last]), -1.0, "slope -1 (first order in dt)")
    ax.set(xscale="log", yscale="log", xlabel="T (dt = 1/T)", ylabel="rel. L2 error of m")
    ax.set_title(f"error versus T, grid {finest}x{finest}")
    ax.legend(fontsize=7, handlelength=3, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside: no data hidden


def _plot_versus_h(ax, rows, times) -> None:
    """Error at the last time versus ``h``: one line per scheme and ``T`` (darker for larger ``T``)."""
    last = len(times) - 1
    for scheme in dict.fromkeys(r["scheme"] for r in rows):
        scheme_T = sorted({r["T"] for r in rows if r["scheme"] == scheme})
        for k, T in enumerate(scheme_T):
            chain = sorted((r for r in rows if r["scheme"] == scheme and r["T"] == T), key=lambda r: r["grid"])
            points = [(r["h"], r["errors"][last]) for r in chain if r["errors"][last] is not None]
            if points:
                alpha = 0.35 + 0.65 * (k + 1) / len(scheme_T)
                label = scheme if scheme == "spectral" else f"{scheme}, T = {T}"
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, "-", marker="o", ms=3, color=_COLOURS[scheme], alpha=alpha, label=label)
    spectral = sorted((r for r in rows if r["scheme"] == "spectral"), key=lambda r: r["h"])
    if len(spectral) > 1 and spectral[0]["errors"][last] is not None:
        hs = [r["h"] for r in spectral]
        _slope_guide(ax, hs, (hs[0], spectral[0]["errors"][last]), 2.0, "slope 2 (second order in h)")
    ax.set(xscale="log", yscale="log", xlabel="h", ylabel="rel. L2 error of m")
    ax.set_title(f"error versus h at t = {times[last]:g}")
    ax.legend(fontsize=7, handlelength=3, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside: no data hidden


def write_figure(result: dict, path: str) -> None:
    """Two log-log panels: error versus ``T`` on the finest grid, error versus ``h`` at each ``T``."""

    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5))
    _plot_versus_T(left, result["rows"], result["times"])
    _plot_versus_h(right, result["rows"], result["times"])
    n = result["reference"]
    fig.suptitle(f"zero drift, g = {G}, zero boundary, float64; reference: spectral (exact in time) on {n}x{n}")
    fig.tight_layout()
    files.save_figure(fig, path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------
# Entry point


def _settings(args) -> dict:
    """Grids, reference, T list and repeats: explicit options, else ``--quick``'s, else the defaults."""
    base = QUICK if args.quick else DEFAULTS
    return {key: getattr(args, key) if getattr(args, key) is not None else value for key, value in base.items()}


def _command(args, settings) -> str:
    parts = ["fpjax bench accuracy"]
    parts += [f"--grids {' '.join(map(str, settings['grids']))}", f"--reference {settings['reference']}"]
    parts += [f"--T {' '.join(map(str, settings['T']))}", f"--times {' '.join(f'{t:g}' for t in args.times)}"]
    parts += [f"--schemes {' '.join(args.schemes)}", f"--spectral-T {args.spectral_T}"]
    parts += [f"--repeats {settings['repeats']}", f"--budget {args.budget:g}"]
    return " ".join(parts)


def run(args) -> int:

    jax.config.update("jax_enable_x64", True)  # the problem is float64: the errors measured reach 1e-6

    settings = _settings(args)
    grids, n_ref = sorted(settings["grids"]), settings["reference"]
    check_grids(grids, n_ref)
    start = time.perf_counter()
    reference = reference_solution(n_ref, args.times)
    print(f"reference: spectral on {n_ref}x{n_ref} at t = {args.times} ({time.perf_counter() - start:.1f} s)")
    rows = []
    for n in grids:
        coarse_reference = restrict(reference, n)
        for scheme in args.schemes:
            for T in [args.spectral_T] if scheme == "spectral" else settings["T"]:
                rows.append(measure(scheme, n, T, args.times, coarse_reference, settings["repeats"], args.budget))
                _print_row(rows[-1], header=len(rows) == 1)
    result = dict(
        command=_command(args, settings),
        problem=dict(
            equation="m_t = 1/2 g^2 (lap m + |grad m|^2) on the unit square, m = 0 outside",
            g=G,
            boundary="zero",
            m0="log p0 + c, p0 = sum of Gaussian bumps with unit integral over the square",
            bumps=[dict(x=b[0], y=b[1], sigma=b[2], weight=b[3]) for b in BUMPS],
            c=LOG_MASS,
            dtype="float64",
        ),
        times=list(args.times),
        reference=n_ref,
        grids=grids,
        machine=machine(),
        rows=rows,
        orders_h=orders_in_h(rows),
        orders_dt=orders_in_dt(rows),
    )
    print(markdown(result))
    files.write_json(args.out, result, indent=2)
    print(f"wrote {args.out}")
    if args.figure:
        write_figure(result, args.figure)
        print(f"wrote {args.figure}")
    return 0
