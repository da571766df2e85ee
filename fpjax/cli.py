"""The ``fpjax`` command line: a thin layer over the library.

fpjax run [--data samples] [--size 32] [--target-ssim 0.9] ... --out DIR
fpjax experiment exp1|exp2|exp3|all [--quick] --out DIR
fpjax precompute [--images DIR] [--size 32] [--T 100] ... --out DIR
fpjax bench solver [--sizes 32 64 128 256] ... --out FILE.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import numpy as np


def _add_fp_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--T", type=int, default=100, help="time steps (dt = 1/T)")
    parser.add_argument("--g", type=float, default=0.5, help="diffusion coefficient (constant)")
    parser.add_argument("--boundary", choices=["zero", "reflect"], default="zero")
    parser.add_argument(
        "--scheme",
        choices=["log_density", "density", "spectral"],
        default="log_density",
        help="log_density: the papers' backward Euler on m with Picard/Newton; density: backward Euler on p = exp(m), "
        "one linear solve per step; spectral: exact in time (zero drift), no iteration",
    )
    parser.add_argument("--linearization", choices=["picard", "newton"], default="picard")
    parser.add_argument("--advection", choices=["central", "upwind"], default="central")
    parser.add_argument(
        "--solver",
        choices=["bicgstab", "bicgstab_counted", "gmres"],
        default="bicgstab_counted",
        help="linear solver (bicgstab_counted = jax.scipy's recurrence, with iteration counts)",
    )
    parser.add_argument("--preconditioner", choices=["auto", "dst", "none"], default="auto")
    parser.add_argument("--outer-tol", type=float, default=1e-5)
    parser.add_argument("--max-outer", type=int, default=50)
    parser.add_argument("--tol", type=float, default=1e-6)


def _config_from(args):
    from fpjax import FPConfig

    return FPConfig(
        T=args.T,
        g=args.g,
        boundary=args.boundary,
        scheme=args.scheme,
        linearization=args.linearization,
        advection=args.advection,
        solver=args.solver,
        preconditioner=args.preconditioner,
        outer_tol=args.outer_tol,
        max_outer=args.max_outer,
        tol=args.tol,
    )


def _load_images(args):
    from fpjax.data import load_dataset, load_image_folder

    if args.images is not None:
        images, names = load_image_folder(args.images, args.size)
        return images[: args.n], names[: args.n]
    return load_dataset(args.data, args.size, args.n)


def precompute_to_store(args) -> int:
    """Batched (and optionally projected) pre-computation streamed to a resumable zarr store."""
    from tqdm import tqdm

    from fpjax.batch.precompute import precompute as run

    config = _config_from(args)
    images, names = _load_images(args)
    print(
        f"fpjax precompute: {len(images)} images {images.shape[1]}x{images.shape[2]} -> {args.store}, "
        f"projection={args.projection}, batch {args.batch_size}",
        flush=True,
    )
    bar = tqdm(total=len(images), desc="FP solve", unit="image", file=sys.stdout)

    def progress(done, total):
        bar.update(done - bar.n)

    result = run(
        images.astype(args.dtype),
        config,
        projection=args.projection,
        dim=args.dim,
        cycle=args.cycle,
        batch_size=args.batch_size,
        store=args.store,
        ids=names,
        density=args.density,
        per_channel=True if args.per_channel else None,
        progress=progress,
        on_failure=args.on_failure,
        seeds=args.seeds,
    )
    bar.update(len(images) - bar.n)
    bar.close()
    stats = result.stats
    lin = stats["linear_iterations"]
    print(
        "| images | skipped (already in store) | wall s | s/batch (median) | outer/step | linear/step "
        "| max residual | converged images |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {len(images)} | {result.skipped} | {result.seconds:.2f} | "
        f"{np.median(result.batch_seconds) if result.batch_seconds else float('nan'):.3f} | "
        f"{stats['outer_iterations'].mean():.2f} | {lin.mean() if lin.min() >= 0 else float('nan'):.2f} | "
        f"{stats['residual'].max():.2e} | {int(stats['converged'].all(axis=(1, 2)).sum())}/{len(images)} |"
    )
    return 0


def precompute(args) -> int:
    """Solve the FP equation for each image; write ``fp_solutions.npz`` and ``precompute.png``."""
    import jax
    from tqdm import tqdm

    import fpjax
    from fpjax.eval.figures import plot_convergence, plot_solutions

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    if args.store is not None:
        return precompute_to_store(args)
    config = _config_from(args)
    images, names = _load_images(args)
    images = images.astype(args.dtype)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shared = args.density == "position_kde" and not args.per_channel
    per_channel = None if not args.per_channel else True
    print(f"fpjax precompute: {len(images)} images {images.shape[1]}x{images.shape[2]}, {config}", flush=True)

    results = {k: [] for k in ("m", "outer_iterations", "linear_iterations", "residual", "converged", "seconds")}
    bar = tqdm(list(zip(names, images, strict=True)), desc="FP solve", unit="image", file=sys.stdout)
    try:
        for name, image in bar:
            start = time.perf_counter()
            sol = fpjax.solve_image(
                image, config, density=args.density, per_channel=per_channel, on_failure=args.on_failure
            )
            seconds = time.perf_counter() - start
            keep = slice(0, 1) if shared else slice(None)  # a shared density is solved once, not per channel
            sol = jax.tree_util.tree_map(lambda a, keep=keep: np.asarray(a)[keep], sol)
            for key in ("m", "outer_iterations", "linear_iterations", "residual", "converged"):
                results[key].append(getattr(sol, key))
            results["seconds"].append(seconds)
            lin = sol.linear_iterations
            lin_text = f"{lin.mean() / max(sol.outer_iterations.mean(), 1):5.1f}" if lin.min() >= 0 else "  n/a"
            bar.write(
                f"{name:32s} {seconds:7.2f} s  outer/step {sol.outer_iterations.mean():5.2f} "
                f"(max {sol.outer_iterations.max():2d})  linear/solve {lin_text}  "
                f"max residual {sol.residual.max():.2e}  converged {int(sol.converged.sum())}/{sol.converged.size}"
            )
    except KeyboardInterrupt:
        print(f"interrupted: saving the {len(results['m'])} images finished so far", flush=True)
    done = len(results["m"])
    if done == 0:
        return 1
    m = np.stack(results["m"])  # (N, K, T+1, H, W), K = 1 for a shared density
    scores = np.asarray(fpjax.score(m, config.boundary))  # (N, K, T+1, 2, H, W)
    path = out / "fp_solutions.npz"
    np.savez_compressed(
        path,
        m=m,
        score=scores,
        names=np.array(names[:done]),
        **{k: np.stack(results[k]) for k in ("outer_iterations", "linear_iterations", "residual", "converged")},
        seconds=np.array(results["seconds"]),
        config=json.dumps({k: v for k, v in dataclasses.asdict(config).items() if k != "drift"}, default=str),
        density=args.density,
        channels_shared=shared,
    )
    shown = min(done, 4)
    fig = plot_solutions(
        images[:shown],
        m[:shown, 0],
        names[:shown],
        boundary=config.boundary,
        component=args.component,
        title=f"log-density m and pixel score ({args.density})",
    )
    fig.savefig(out / "precompute.png", dpi=110)
    fig = plot_convergence(
        np.stack(results["outer_iterations"])[:, 0], np.stack(results["residual"])[:, 0], names[:done]
    )
    fig.savefig(out / "convergence.png", dpi=110)
    seconds = np.array(results["seconds"])
    print(f"wrote {path} (m {m.shape}, score {scores.shape}), {out / 'precompute.png'}, {out / 'convergence.png'}")
    print(
        f"seconds per image: median {np.median(seconds[1:] if done > 1 else seconds):.3f} "
        f"(first image, with compilation: {seconds[0]:.2f})"
    )
    return 0


def run_pipeline(args) -> int:
    """The main job: pre-compute, embed, train image by image to the target SSIM, denoise, generate."""
    from fpjax import pipeline
    from fpjax.diffusion import sampling
    from fpjax.learn import trainer as training
    from fpjax.learn.models import UNetConfig

    images, names = _load_images(args)
    out = pathlib.Path(args.out)
    print(
        f"fpjax run: {len(images)} images {images.shape[1]}x{images.shape[2]}, target SSIM {args.target_ssim}, "
        f"outputs in {out}/ (run again to resume)",
        flush=True,
    )
    train_config = training.TrainConfig(
        learning_rate=args.lr,
        batch_size=args.batch_size,
        steps_per_call=args.steps_per_call,
        target_ssim=args.target_ssim,
        max_steps=args.max_steps,
        max_seconds=args.max_seconds,
        noise_level=args.noise_level,
        replay=args.replay,
        sampler=sampling.SamplerConfig(steps=args.sampler_steps, method=args.sampler),
    )
    unet_config = UNetConfig(channels=args.channels)
    run_config = pipeline.RunConfig(generate=args.generate, seed=args.seed)
    report = pipeline.run(
        images,
        out,
        names=names,
        fp_config=_config_from(args),
        unet_config=unet_config,
        train_config=train_config,
        run_config=run_config,
    )
    print("| image | steps | reached | train s | SSIM at stop | SSIM, final model | PSNR, final model |")
    print("|---|---|---|---|---|---|---|")
    for p in report["per_image"]:
        print(
            f"| {p['name']} | {p['steps']} | {'yes' if p['reached_target'] else 'no'} | {p['train_seconds']:.1f} | "
            f"{p['ssim_at_stop']:.3f} | {p['final_model_ssim']:.3f} | {p['final_model_psnr']:.2f} |"
        )
    print(
        f"pre-computation {report['precompute_seconds']:.1f} s + training {report['train_seconds']:.1f} s; "
        f"{report['reached_target']}/{report['images']} images reached SSIM {args.target_ssim}"
    )
    if "generated" in report:
        print(
            f"generated {report['generated']['count']}: mean SSIM to the nearest training image "
            f"{report['generated']['mean_nearest_training_ssim']:.3f}"
        )
    for name in (
        "denoising.png",
        "ssim_vs_time.png",
        "metrics.json",
        "training_log.json",
        "checkpoint",
        "fp_store.zarr",
    ):
        print(f"  {out / name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fpjax", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    job = sub.add_parser("run", help="the main job: pre-compute, embed, train to the target SSIM, denoise, generate")
    job.add_argument("--data", default="samples", help="samples | cifar10:PATH[:CLASS] | folder:PATH (CelebA layout)")
    job.add_argument("--images", help="folder of PNG/JPEG images of one shape (alternative to --data)")
    job.add_argument("--size", type=int, default=32, help="image size (sample images: 32, 64 or 128)")
    job.add_argument("--n", type=int, help="use only the first N images")
    job.add_argument("--target-ssim", type=float, default=0.9, help="early-stopping target of the denoising SSIM")
    job.add_argument("--max-steps", type=int, default=1000, help="training step budget per image")
    job.add_argument("--max-seconds", type=float, help="training time budget per image")
    job.add_argument("--batch-size", type=int, default=8)
    job.add_argument("--steps-per-call", type=int, default=25, help="training steps between SSIM checks")
    job.add_argument("--lr", type=float, default=1e-3)
    job.add_argument(
        "--replay",
        type=float,
        default=0.5,
        help="fraction of each batch from images trained earlier (0: the paper's pure image-by-image training)",
    )
    job.add_argument("--channels", type=int, default=32, help="U-Net width")
    job.add_argument("--noise-level", type=float, default=0.5, help="noise of the denoising check")
    job.add_argument("--sampler", choices=["sde", "ode"], default="ode", help="sampler of the check and generation")
    job.add_argument("--sampler-steps", type=int, default=50)
    job.add_argument("--generate", type=int, default=8, help="images to generate from noise")
    job.add_argument("--seed", type=int, default=0)
    job.add_argument("--out", default="fpjax_out")
    _add_fp_arguments(job)
    job.set_defaults(func=run_pipeline)

    pre = sub.add_parser("precompute", help="solve the log-density FP equation for images")
    pre.add_argument("--data", default="samples", help="samples | cifar10:PATH[:CLASS] | folder:PATH (CelebA layout)")
    pre.add_argument("--images", help="folder of PNG/JPEG images of one shape (alternative to --data)")
    pre.add_argument("--store", help="zarr store to stream to (batched, resumable); without it: npz + figures")
    pre.add_argument("--projection", choices=["off", "initial_guess", "approximate", "galerkin"], default="off")
    pre.add_argument("--cycle", type=int, default=50, help="images per seed (projection)")
    pre.add_argument("--dim", type=int, default=20, help="Krylov basis size (projection)")
    pre.add_argument("--seeds", choices=["cycle", "cluster"], default="cycle", help="how seeds are chosen")
    pre.add_argument("--batch-size", type=int, default=16)
    pre.add_argument(
        "--size",
        type=int,
        help="image size (sample images: 32 (default), 64 or 128; a folder's "
        "images are resized to size x size when given, else kept as they are)",
    )
    pre.add_argument("--n", type=int, help="use only the first N images")
    pre.add_argument("--density", choices=["position_kde", "intensity_kde", "intensity"], default="position_kde")
    pre.add_argument("--per-channel", action="store_true", help="one density per channel")
    pre.add_argument("--component", choices=["sum", "x", "y"], default="sum", help="pixel score shown")
    pre.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    pre.add_argument("--on-failure", choices=["raise", "warn"], default="warn")
    pre.add_argument("--out", default="fpjax_out")
    _add_fp_arguments(pre)
    pre.set_defaults(func=precompute)

    experiment = sub.add_parser("experiment", help="the papers' experiments beside a DDPM baseline")
    from fpjax.experiments import command as experiments

    experiments.add_arguments(experiment)
    experiment.set_defaults(func=experiments.run)

    bench = sub.add_parser("bench", help="benchmarks (measurements, not tests)")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    solver = bench_sub.add_parser("solver", help="fpjax against SciPy spsolve on the same discretisation")
    from fpjax.bench.solver import add_arguments, run

    add_arguments(solver)
    solver.set_defaults(func=run)
    projection = bench_sub.add_parser("projection", help="the cross-matrix paper's Table 4: projection vs spsolve")
    from fpjax.bench import projection as projection_bench

    projection_bench.add_arguments(projection)
    projection.set_defaults(func=projection_bench.run)
    accuracy = bench_sub.add_parser("accuracy", help="every scheme's error against the PDE's solution, orders in h, dt")
    from fpjax.bench import accuracy as accuracy_bench

    accuracy_bench.add_arguments(accuracy)
    accuracy.set_defaults(func=accuracy_bench.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
