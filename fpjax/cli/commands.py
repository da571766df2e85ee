"""The commands (``fpjax run``, ``fpjax precompute``; ``experiment`` and ``bench`` are their modules') and the
parser that dispatches to them."""

from __future__ import annotations

import argparse
import errno
import functools
import json
import os
import pathlib
import sys

import jax
import numpy as np
from tqdm import tqdm

import fpjax
from fpjax import devices, files, pipeline, provenance
from fpjax.batch.precompute import ON_FAILURE, check_memory, precompute
from fpjax.batch.seeding import SEED_RULES
from fpjax.bench import accuracy as accuracy_bench
from fpjax.bench import projection as projection_bench
from fpjax.bench import scale as scale_bench
from fpjax.bench import solver as solver_bench
from fpjax.cli.errors import USAGE_ERROR
from fpjax.cli.options import (
    ConfigError,
    add_dataclass_options,
    add_options,
    dataclass_from_args,
    function_options,
    kwargs_from_args,
    positive_int,
)
from fpjax.data import image_paths, image_shape
from fpjax.data.sets import FolderSet, Subset, open_dataset
from fpjax.eval.figures import plot_convergence, plot_solutions
from fpjax.experiments import command as experiment_command
from fpjax.learn.models.unet import UNetConfig
from fpjax.learn.trainer import TrainConfig
from fpjax.memory import InsufficientMemoryError
from fpjax.solver.initial import METHODS
from fpjax.solver.problem import FPConfig
from fpjax.solver.projection import MODES
from fpjax.solver.scores import SCORE_COMPONENTS, score

# ----------------------------------------------------------------------------------------------
# fpjax precompute

PRECOMPUTE_OPTIONS = function_options(
    precompute,
    ("projection", "dim", "cycle", "seeds", "batch_size", "density", "on_failure"),
    choices={"projection": MODES, "seeds": SEED_RULES, "density": METHODS, "on_failure": ON_FAILURE},
)
"""The options of :func:`fpjax.precompute`'s keyword arguments (``fpjax precompute``)."""


def output_folder(path) -> pathlib.Path:
    """``path`` as a folder to write into, created if missing.

    Raises:
      FileExistsError: ``path`` is a file; PermissionError: it cannot be written (read-only, no permission).
    """
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(errno.EEXIST, "the output folder is a file", str(path))
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "the output folder is not writable", str(path))
    return path


def _load_images(args, config: FPConfig, in_memory: bool):
    """The image set the options name and its names, opened without reading the images (each stage reads what
    it needs: :mod:`fpjax.data.sets`); a folder's sizes are checked from their headers first (``config``: the
    solve's, ``in_memory``: whether every trajectory is held in memory, no store)."""
    if args.images is not None and args.data is not None:
        raise ConfigError(f"--images {args.images} and --data {args.data} both name the images: give one")
    if args.images is not None:
        if args.size is None:  # before decoding: a large image is refused with the fix (--size), not loaded
            _check_image_sizes(args, config, in_memory)
        images = FolderSet(args.images, args.size)
        if args.n is not None and args.n > len(images):
            raise ValueError(f"{args.images} has {len(images)} images, fewer than --n {args.n}")
        images = images if args.n is None else Subset(images, np.arange(args.n))
    else:
        images = open_dataset(args.data or "samples", args.size, args.n)
    return images, list(images.names)


def _check_image_sizes(args, config: FPConfig, in_memory: bool) -> None:
    """The memory a folder's images would need at their own size (from their headers), checked before decoding."""
    paths = image_paths(args.images)
    shapes = [shape for shape in map(image_shape, paths) if shape is not None]
    if not shapes:
        return
    height, width = max(shapes, key=lambda hw: hw[0] * hw[1])
    count = min(len(paths), args.n or len(paths))
    per_channel = True if getattr(args, "per_channel", False) else None
    try:
        check_memory((count, height, width, 3), config, batch_size=getattr(args, "batch_size", 16),
                     in_memory=in_memory, per_channel=per_channel, dtype=getattr(args, "dtype", "float32"))  # fmt: skip
    except InsufficientMemoryError as error:
        raise InsufficientMemoryError(
            f"{error}; or pass --size 64 (or 128) to resize the images as they are read"
        ) from None


def precompute_command(args) -> int:
    """Solve the FP equation for each image with :func:`fpjax.precompute`, into ``--store`` or ``fp_solutions.npz``."""
    _start_processes(args)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    config = dataclass_from_args(FPConfig, args)
    if args.store is None:
        output_folder(args.out)  # before any work: a read-only or misnamed --out fails now, not after the solves
    elif pathlib.Path(args.store).is_file():
        raise FileExistsError(errno.EEXIST, "--store is a file, not a zarr store folder", args.store)
    images, names = _load_images(args, config, in_memory=args.store is None)
    images = Subset(images, dtype=args.dtype)
    target = args.store or pathlib.Path(args.out) / "fp_solutions.npz"
    print(
        f"fpjax precompute: {len(images)} images {images.shape[1]}x{images.shape[2]} -> {target}, {config}", flush=True
    )
    with tqdm(total=len(images), desc="FP solve", unit="image", file=sys.stdout) as bar:
        result = precompute(
            images,
            config,
            store=args.store,
            ids=names,
            per_channel=True if args.per_channel else None,
            progress=lambda done, total: bar.update(done - bar.n),
            on_batch=functools.partial(_print_images, bar, names, []),
            **kwargs_from_args(PRECOMPUTE_OPTIONS, args),
        )
    _print_summary(result, len(images))
    if args.store is None:
        _save_solutions(pathlib.Path(args.out), images, names, result, config, args)
    return 0


IMAGE_LINES = 32
"""``fpjax precompute`` prints a line of statistics for each of the first this many images, then only for images
with unconverged steps (a set of 20,000 would otherwise print 20,000 lines); the summary covers them all."""


def _print_images(bar, names, printed: list, indices, stats, seconds) -> None:
    """One line of solver statistics per image of a finished batch (:func:`fpjax.precompute`'s ``on_batch``), up
    to :data:`IMAGE_LINES` (``printed``: the images printed so far) and for every image that did not converge."""
    for row, index in enumerate(indices):
        outer, linear = stats["outer_iterations"][row], stats["linear_iterations"][row]
        converged = stats["converged"][row]
        if len(printed) >= IMAGE_LINES and converged.all():
            if len(printed) == IMAGE_LINES:  # said once, at the first image left out
                bar.write(f"(after {IMAGE_LINES} images only those with unconverged steps are listed; see the summary)")
                printed.append(None)
            continue
        printed.append(index)
        linear_text = f"{linear.mean() / max(outer.mean(), 1):5.1f}" if linear.min() >= 0 else "  n/a"
        bar.write(
            f"{names[index]:32s} {seconds / len(indices):7.2f} s/image  outer/step {outer.mean():5.2f} "
            f"(max {outer.max():2d})  linear/solve {linear_text}  max residual {stats['residual'][row].max():.2e}  "
            f"converged {int(converged.sum())}/{converged.size}"
        )


def _print_summary(result, count: int) -> None:
    stats = result.stats
    linear = stats["linear_iterations"]
    median = np.median(result.batch_seconds) if result.batch_seconds else float("nan")
    print(
        "| images | skipped (already in store) | wall s | s/batch (median) | outer/step | linear/step "
        "| max residual | converged images | repaired (failed verification) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {count} | {result.skipped} | {result.seconds:.2f} | {median:.3f} | "
        f"{stats['outer_iterations'].mean():.2f} | {linear.mean() if linear.min() >= 0 else float('nan'):.2f} | "
        f"{stats['residual'].max():.2e} | {int(stats['converged'].all(axis=(1, 2)).sum())}/{count} | "
        f"{result.repaired} |"
    )


def _save_solutions(out: pathlib.Path, images, names, result, config: FPConfig, args) -> None:
    """``fp_solutions.npz`` (``m`` ``(N, T+1, H, W, K)``, ``score`` ``(N, T+1, H, W, K, 2)``: the layouts of
    ``docs/conventions.md``), and two figures."""
    out.mkdir(parents=True, exist_ok=True)
    k = result.stats["converged"].shape[1]
    m = np.asarray(result.m)[..., :k]  # K = 1 where one density serves all channels
    scores = np.asarray(score(m, config.boundary, channel_axis=-1))  # (N, T+1, H, W, K, 2)
    path, figure_paths = out / "fp_solutions.npz", (out / "precompute.png", out / "convergence.png")
    shown = min(len(images), 4)
    title = f"log-density m and pixel score ({args.density})"
    figures = (
        plot_solutions(images[:shown], m[:shown, ..., 0], names[:shown], boundary=config.boundary,
                       component=args.component, title=title),
        plot_convergence(result.stats["outer_iterations"][:, 0], result.stats["residual"][:, 0], names),
    )  # fmt: skip
    # written whole before any is renamed: a failed write (a full disk) leaves an earlier run's files as they were
    with files.atomic(path, *figure_paths) as (npz, *pngs):
        _write_solutions(npz, m, scores, names, result, config, args.density)
        for figure, png in zip(figures, pngs, strict=True):
            figure.savefig(png, dpi=110)
    print(f"wrote {path} (m {m.shape}, score {scores.shape}), {out / 'precompute.png'}, {out / 'convergence.png'}")


def _write_solutions(path: pathlib.Path, m, scores, names, result, config: FPConfig, density: str) -> None:
    np.savez_compressed(
        path,
        m=m,
        score=scores,
        names=np.array(names),
        **result.stats,
        seeds=result.seeds,
        batch_seconds=np.array(result.batch_seconds),
        seconds=result.seconds,
        config=json.dumps(provenance.jsonable(config)),
        density=density,
        channels_shared=m.shape[-1] == 1,
    )


# ----------------------------------------------------------------------------------------------
# fpjax run

RUN_OUTPUTS = ("denoising.png", "ssim_vs_time.png", "metrics.json", "training_log.json", "checkpoint", "fp_store.zarr")


def _figure(value, digits: int) -> str:
    """``value`` to ``digits`` decimals, or ``-`` where there is none (an image outside the report's sample)."""
    return "-" if value is None else f"{value:.{digits}f}"


def run_command(args) -> int:
    """The main job (:func:`fpjax.pipeline.run`): pre-compute, embed, train to the target SSIM, denoise, generate."""
    configs = {cls: dataclass_from_args(cls, args) for cls in (FPConfig, UNetConfig, TrainConfig, pipeline.RunConfig)}
    _start_processes(args)
    out = output_folder(args.out)
    in_memory = configs[pipeline.RunConfig].train_from == "memory"  # embed then holds every trajectory
    images, names = _load_images(args, configs[FPConfig], in_memory=in_memory)
    print(
        f"fpjax run: {len(images)} images {images.shape[1]}x{images.shape[2]}, target SSIM {args.target_ssim}, "
        f"outputs in {out}/ (run again to resume)",
        flush=True,
    )
    report = pipeline.run(
        images,
        out,
        names=names,
        fp_config=configs[FPConfig],
        unet_config=configs[UNetConfig],
        train_config=configs[TrainConfig],
        run_config=configs[pipeline.RunConfig],
    )
    print("| image | steps | reached | train s | SSIM at stop | SSIM, final model | PSNR, final model |")
    print("|---|---|---|---|---|---|---|")
    for p in report["per_image"]:
        print(
            f"| {p['name']} | {p['steps']} | {'yes' if p['reached_target'] else 'no'} | {p['train_seconds']:.1f} | "
            f"{p['ssim_at_stop']:.3f} | {_figure(p['final_model_ssim'], 3)} | {_figure(p['final_model_psnr'], 2)} |"
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
    for name in RUN_OUTPUTS:
        print(f"  {out / name}")
    return 0


# ----------------------------------------------------------------------------------------------
# The parser


def _add_input_options(parser, size_help: str, size_default=None) -> None:
    parser.add_argument(
        "--data",
        help="samples (default) | cifar10:PATH[:CLASS] | folder:PATH (CelebA layout) | synthetic:N (N images "
        "grown from the CIFAR-10 subset, fpjax.data.sets.SyntheticSet); or --images",
    )
    parser.add_argument("--images", help="folder of PNG/JPEG images of one shape (alternative to --data)")
    parser.add_argument("--size", type=positive_int, default=size_default, help=size_help)
    parser.add_argument("--n", type=positive_int, help="use only the first N images (N > 0)")
    parser.add_argument("--out", default="fpjax_out", help="output folder (created if missing)")


def _add_process_options(parser) -> None:
    """A multi-process run (:func:`fpjax.devices.initialize`): one command per host, the same but for its id."""
    parser.add_argument("--coordinator", help="HOST:PORT of process 0, for a multi-process run (jax.distributed); "
                        "or FPJAX_COORDINATOR")  # fmt: skip
    parser.add_argument("--num-processes", type=positive_int, help="processes of a multi-process run; or "
                        "FPJAX_NUM_PROCESSES")  # fmt: skip
    parser.add_argument("--process-id", type=int, help="this process's id, 0..N-1 (0 writes the outputs); or "
                        "FPJAX_PROCESS_ID")  # fmt: skip


def _start_processes(args) -> None:
    """Join the multi-process run the options (or the environment) name; nothing for a lone process.

    Raises:
      ConfigError: a coordinator without the process count and id, or an id out of range.
    """
    try:
        devices.initialize(args.coordinator, args.num_processes, args.process_id)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _add_run_parser(sub) -> None:
    job = sub.add_parser("run", help="the main job: pre-compute, embed, train to the target SSIM, denoise, generate")
    _add_input_options(job, "image size (sample images: 32, 64 or 128)", 32)
    add_dataclass_options(job, FPConfig)
    add_dataclass_options(job, TrainConfig, overrides=pipeline.TRAIN_OVERRIDES)
    add_dataclass_options(job, UNetConfig)
    add_dataclass_options(job, pipeline.RunConfig)
    _add_process_options(job)
    job.set_defaults(func=run_command)


def _add_precompute_parser(sub) -> None:
    pre = sub.add_parser("precompute", help="solve the log-density FP equation for images")
    size_help = "image size (sample images: 32 (default), 64 or 128; a folder's images are resized to size x size "
    _add_input_options(pre, size_help + "when given, else kept as they are)")
    pre.add_argument("--store", help="zarr store to stream to (resumable); without it: fp_solutions.npz + figures")
    pre.add_argument("--per-channel", action="store_true", help="one density per channel")
    pre.add_argument("--component", choices=SCORE_COMPONENTS, default="sum", help="pixel score shown")
    pre.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="precision of the solves")
    add_options(pre, PRECOMPUTE_OPTIONS, "fpjax.precompute")
    add_dataclass_options(pre, FPConfig)
    _add_process_options(pre)
    pre.set_defaults(func=precompute_command)


def _add_bench_parsers(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks (measurements, not tests)")
    commands = bench.add_subparsers(dest="bench", required=True)
    for name, module, text in (
        ("solver", solver_bench, "fpjax against SciPy spsolve on the same discretisation"),
        ("projection", projection_bench, "the cross-matrix paper's Table 4: projection vs spsolve"),
        ("accuracy", accuracy_bench, "every scheme's error against the PDE's solution, orders in h, dt"),
        ("scale", scale_bench, "training memory and speed against the data set's size; store throughput"),
    ):
        parser = commands.add_parser(name, help=text)
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are two lines (the error, where to read the options) and which
    takes ``--debug`` at every level: ``fpjax --debug precompute ...`` or ``fpjax precompute ... --debug``."""

    def __init__(self, *args, top: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--debug",
            action="store_true",
            default=False if top else argparse.SUPPRESS,  # a subcommand's leaves the top level's value
            help="on an error, show the traceback instead of one line",
        )

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n  `{self.prog} --help` lists the options\n")


def build_parser() -> argparse.ArgumentParser:
    description = sys.modules[__package__].__doc__  # the package's docstring: the commands at a glance
    parser = CommandParser(
        prog="fpjax", description=description, formatter_class=argparse.RawTextHelpFormatter, top=True
    )
    parser.add_argument("--version", action="version", version=f"fpjax {fpjax.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    _add_precompute_parser(sub)
    experiment = sub.add_parser("experiment", help="the papers' experiments beside a DDPM baseline")
    experiment_command.add_arguments(experiment)
    experiment.set_defaults(func=experiment_command.run)
    _add_bench_parsers(sub)
    return parser
