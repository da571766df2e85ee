"""``fpjax bench projection``: the cross-matrix paper's Table 4, side by side on this machine.

For N images per size (CIFAR-10 trucks from ``../shared/data/cifar10_subset.npz``
when present, resized for 64/128; else the sample images, repeated), T = 100:
SciPy ``spsolve`` of the papers' scheme (timed on a subset, scaled to N),
fpjax one image at a time, fpjax batched, and the cross-matrix projection
(``initial_guess`` and ``approximate``). Columns: total seconds for N images,
mean relative L2 error against ``spsolve`` (on the subset), time reduction,
mean outer and linear iterations per step.
"""

from __future__ import annotations

import time

import numpy as np

import fpjax
from fpjax import files
from fpjax.batch.precompute import precompute
from fpjax.bench.baseline import solve_spsolve
from fpjax.data import benchmark_images
from fpjax.provenance import machine

SUBSET = {32: 4, 64: 2, 128: 1}
PAPER = {32: (51.7, 43.5), 64: (244.7, 171.9), 128: (1222.6, 688.7)}  # spsolve / projection, seconds, their CPU


def add_arguments(parser):
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128], help="image sizes")
    parser.add_argument("--n", type=int, default=100, help="images per size (the paper's Table 4: 100)")
    parser.add_argument("--T", type=int, default=100, help="time steps")
    parser.add_argument("--batch", type=int, default=16, help="images per vmapped batch")
    parser.add_argument(
        "--cifar", help="CIFAR-10 npz/pickle folder (trucks); default: the shared subset under $FPJAX_DATA_ROOT"
    )
    parser.add_argument("--out", default="bench_projection.json", help="JSON file written")


def _runs(T: int, batch: int):
    """``(label, precompute keyword arguments, config)`` of every fpjax mode measured."""
    base = fpjax.FPConfig(T=T, scheme=fpjax.LogDensity(solver="bicgstab_counted"))
    # the spectral scheme solves the same PDE exactly in time: its "error" is the papers' scheme's own
    # time-discretisation error at T, not an inaccuracy of it (``fpjax bench accuracy``)
    spectral = fpjax.FPConfig(T=T, scheme="spectral")
    return [
        ("fpjax, one image at a time", dict(projection="off", batch_size=1), base),
        (f"fpjax, batch {batch}", dict(projection="off", batch_size=batch), base),
        (f"projection initial_guess, batch {batch}", dict(projection="initial_guess", batch_size=batch), base),
        (f"projection approximate, batch {batch}", dict(projection="approximate", batch_size=batch), base),
        (f"spectral scheme (exact in time), batch {batch}", dict(batch_size=batch), spectral),
    ]


def _spsolve_row(size, images, T, n):
    """The papers' scheme timed on a subset (images 1..k: targets, not the first seed) and scaled to ``n``."""
    k = SUBSET.get(size, 1)
    m0s = [np.asarray(fpjax.initial_log_density(im.astype(np.float64))) for im in images[1 : k + 1]]
    start = time.perf_counter()
    references = [solve_spsolve(m0, T)[0] for m0 in m0s]
    seconds = (time.perf_counter() - start) / k * n
    row = dict(size=size, method=f"scipy spsolve (timed on {k}, scaled to {n})", seconds=seconds, rel_error=0.0,
               reduction=0.0, outer=None, linear=None)  # fmt: skip
    return row, references


def _mode_row(size, label, kwargs, config, images, references, sp_total):
    precompute(images[: max(kwargs["batch_size"], 2)], config, on_failure="ignore", **kwargs)  # compile
    result = precompute(images, config, on_failure="ignore", **kwargs)
    errors = [
        float(np.linalg.norm(result.m[i + 1, ..., 0] - ref) / np.linalg.norm(ref)) for i, ref in enumerate(references)
    ]
    return dict(size=size, method=label, seconds=result.seconds, rel_error=float(np.mean(errors)),
                reduction=1 - result.seconds / sp_total, outer=float(result.stats["outer_iterations"].mean()),
                linear=float(result.stats["linear_iterations"].mean()),
                converged=bool(result.stats["converged"].all()))  # fmt: skip


def _print_size(size, rows):
    for r in rows:
        print(
            f"{size:>4} {r['method']:48s} {r['seconds']:9.2f} s  err {r['rel_error']:.1e}  "
            f"reduction {100 * r['reduction']:5.1f}%  outer {r['outer'] or 0:5.2f}  "
            f"linear/step {r['linear'] or 0:6.2f}",
            flush=True,
        )
    if size in PAPER:
        print(f"{size:>4} paper (their CPU): spsolve {PAPER[size][0]} s, projection {PAPER[size][1]} s", flush=True)


def run(args) -> int:
    records = []
    for size in args.sizes:
        images, source = benchmark_images(size, args.n, cifar=args.cifar)
        sp_row, references = _spsolve_row(size, images, args.T, args.n)
        rows = [sp_row] + [
            _mode_row(size, label, kwargs, config, images, references, sp_row["seconds"])
            for label, kwargs, config in _runs(args.T, args.batch)
        ]
        _print_size(size, rows)
        records.extend(rows)
    result = dict(n=args.n, T=args.T, data=source, machine=machine(), rows=records, paper=PAPER,
                  command=f"fpjax bench projection --sizes {' '.join(map(str, args.sizes))} --n {args.n}")  # fmt: skip
    files.write_json(args.out, result, indent=2)
    print(markdown(records))
    print(f"wrote {args.out}")
    return 0


def markdown(records) -> str:
    lines = [
        "| size | method | total s | mean rel. L2 error vs spsolve | time reduction | outer/step | linear/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        outer = "-" if r["outer"] is None else f"{r['outer']:.2f}"
        linear = "-" if r["linear"] is None else f"{r['linear']:.2f}"
        lines.append(
            f"| {r['size']} | {r['method']} | {r['seconds']:.2f} | {r['rel_error']:.1e} | "
            f"{100 * r['reduction']:.1f}% | {outer} | {linear} |"
        )
    return "\n".join(lines)
