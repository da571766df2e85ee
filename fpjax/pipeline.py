"""The whole pipeline in one call: pre-compute, embed, train image by image, denoise and generate.

``fpjax run`` is this module on the command line. Every stage is resumable:
the FP solutions stream into a zarr store and training checkpoints with orbax
in the output folder, so running the same command again after an interruption
picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
import typing

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from fpjax import devices, files, memory, provenance
from fpjax.batch.precompute import precompute
from fpjax.batch.store import listed
from fpjax.data.sets import is_image_set
from fpjax.diffusion import sampling
from fpjax.eval import figures, metrics
from fpjax.learn import sources
from fpjax.learn import trainer as training
from fpjax.learn.embedding import embed
from fpjax.learn.models.unet import UNetConfig
from fpjax.solver.problem import FPConfig

TRAIN_OVERRIDES = {
    "replay": (
        0.5,
        "pure image-by-image training (0, the paper's) forgets: on the 16 samples the final network denoised the "
        "earlier images at median SSIM 0.17; with half of each batch from earlier images all 16 still reach the "
        "target in about the same time and the final network denoises them at median 0.87 (README, Replay)",
    ),
    "max_steps": (
        1000,
        "the main job's per-image budget: the 16 samples reach SSIM 0.9 after 25-175 steps, and 1000 stops an "
        "image that never does after a few minutes on 2 CPU cores rather than twice that (README, The main job)",
    ),
}
"""Where the main job departs from :class:`fpjax.learn.trainer.TrainConfig`'s defaults: ``{field: (value, why)}``.

:func:`run` without a ``train_config`` and ``fpjax run`` (whose option defaults show these) both use
:func:`main_job_train_config`; everything else is the library's default.
"""


TrainFrom = typing.Literal["auto", "memory", "store", "on_the_fly"]
TRAIN_FROM = typing.get_args(TrainFrom)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Settings of :func:`run` beyond the FP, U-Net and training configurations.

    Attributes:
      generate: number of images generated from noise at the end.
      per_image_labels: give the U-Net one embedding label per image (the score-embedding
        paper's multi-image device; generation cycles through the labels).
      seed: the run's PRNG seed (weights, batches, noise of the checks, generation).
      repair_store: recompute the images of an existing ``fp_store.zarr`` that fail verification
        (checksums, digests) instead of refusing the store (the default: a damaged store is named,
        never used).
      report_images: the final denoising report (``metrics.json``, ``denoising.png``) on this many images, evenly
        spaced over the set (``None``: every image; the generated images are compared with the same ones).
      mode: ``"image_by_image"`` (the paper's: each image to the target in turn) or ``"mixed"`` (every batch from the
        whole set: a large one; its check denoises ``TrainConfig.check_images`` of them).
      train_from: where training reads its trajectories (:mod:`fpjax.learn.sources`): ``"memory"`` (the store read
        back and embedded whole), ``"store"`` (each step reads its images' rows from ``fp_store.zarr``, ahead of
        the steps), ``"on_the_fly"`` (a linear scheme: no store, each step solves and embeds its images) or
        ``"auto"``: ``"memory"`` while the trajectories take at most :data:`IN_MEMORY_BYTES`, else ``"store"``.
    """

    generate: int = 8
    per_image_labels: bool = True
    seed: int = 0
    repair_store: bool = False
    report_images: int | None = None
    train_from: TrainFrom = "auto"
    mode: typing.Literal["image_by_image", "mixed"] = "image_by_image"

    def __post_init__(self):
        if self.report_images is not None and not (isinstance(self.report_images, int) and self.report_images > 0):
            raise ValueError(f"report_images must be a positive number of images or None, got {self.report_images!r}")
        if self.mode not in ("image_by_image", "mixed"):
            raise ValueError(f"mode must be 'image_by_image' or 'mixed', got {self.mode!r}")
        if self.train_from not in TRAIN_FROM:
            raise ValueError(f"train_from must be one of {', '.join(TRAIN_FROM)}; got {self.train_from!r}")


QUALITY = ("ssim", "psnr", "mse")
REPORT_BATCH = 64
"""Images denoised per compiled call of the final report (all of them at once would hold a sampler's states for the
whole sample)."""
FIGURE_IMAGES = 16
"""Columns of ``denoising.png``: the first of the report's images."""
IN_MEMORY_BYTES = 2 * 10**9
"""``RunConfig(train_from="auto")`` holds the trajectories in memory up to this size (1,600 images of 32x32 RGB at
T = 100), and streams them from the store beyond it."""


def main_job_train_config() -> training.TrainConfig:
    """``TrainConfig()`` with :data:`TRAIN_OVERRIDES`: the training settings of ``fpjax run``."""
    return training.TrainConfig(**{name: value for name, (value, _) in TRAIN_OVERRIDES.items()})


def run(
    images,
    out,
    *,
    names=None,
    fp_config: FPConfig | None = None,
    unet_config: UNetConfig | None = None,
    train_config: training.TrainConfig | None = None,
    run_config: RunConfig | None = None,
    progress: bool = True,
) -> dict:
    """Pre-compute, embed, train image by image to the target SSIM, denoise and generate; write to ``out``.

    Args:
      images: ``(N, H, W, C)`` in ``[0, 1]``: an array or an image set (:mod:`fpjax.data.sets`), which each
        stage reads as it needs (training from the store or on the fly never holds it whole).
      out: output folder: ``fp_store.zarr``, ``checkpoint/``, ``denoising.png``,
        ``ssim_vs_time.png``, ``metrics.json``, ``training_log.json``.
      names: image names for the store and the report.
      fp_config, unet_config, run_config: default ``FPConfig()``, ``UNetConfig()``, ``RunConfig()``;
        with ``run_config.per_image_labels`` the U-Net gets at least one label per image.
      train_config: default :func:`main_job_train_config`.
      progress: progress bars.
    Returns:
      the ``metrics.json`` content.
    """
    images = images if is_image_set(images) else np.asarray(images, np.float32)
    fp_config = fp_config or FPConfig()
    train_config = train_config or main_job_train_config()
    run_config = run_config or RunConfig()
    unet_config = unet_config or UNetConfig()
    if run_config.per_image_labels and unet_config.num_images < len(images):
        unet_config = dataclasses.replace(unet_config, num_images=len(images))
    names = names if names is not None else getattr(images, "names", None)
    names = list(names) if names is not None else [f"image_{i}" for i in range(len(images))]
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)

    data, precompute_seconds, stats = _data_stage(images, names, fp_config, run_config, out, progress)
    train_key, eval_key, generate_key = jax.random.split(jax.random.key(run_config.seed), 3)
    result = training.train(
        images,
        data,
        fp_config,
        unet_config=unet_config,
        config=train_config,
        key=train_key,
        checkpoint_dir=out / "checkpoint",
        precompute_seconds=precompute_seconds,
        progress=progress,
        mode=run_config.mode,
    )
    shown = training.evenly_spaced(len(images), run_config.report_images)
    clean = jnp.asarray(images[shown])
    spent = precompute_seconds + (result.log[-1]["train_seconds"] if result.log else 0.0)
    left = None if train_config.max_total_seconds is None else train_config.max_total_seconds - spent
    noisy, denoised, final = _denoise_stage(result, clean, shown, eval_key, progress, left)
    shown, clean = shown[: len(denoised)], clean[: len(denoised)]
    generated = _generate_stage(result, images.shape, run_config.generate, generate_key)
    rows = [a[:FIGURE_IMAGES] if a is not None else None for a in (noisy, denoised, clean, generated)]
    settings = {"fp": fp_config, "unet": unet_config, "train": train_config, "run": run_config}
    report = _report(names, stats, precompute_seconds, result, dict(final, index=shown), clean, settings)
    if generated is not None:
        report["generated"] = _generated_report(generated, clean, [names[i] for i in shown])
    if devices.is_writer():  # one output folder, written by process 0 (every process computed the same)
        training.save_log(result, out / "training_log.json")
        _save_figures(out, rows, final, result.log, train_config.target_ssim, precompute_seconds)
        files.write_json(out / "metrics.json", report)
    return report


def _data_stage(images, names, fp_config: FPConfig, run_config: RunConfig, out: pathlib.Path, progress: bool):
    """What training reads (``run_config.train_from``): the embedded trajectories, the store's source, or the
    on-the-fly source; with the pre-computation's seconds and statistics (``None`` on the fly: nothing solved)."""
    train_from = _train_from(run_config.train_from, images.shape, fp_config)
    if train_from == "on_the_fly":
        return sources.OnTheFly(images, fp_config), 0.0, None
    return _precompute_stage(images, names, fp_config, out, progress, repair=run_config.repair_store,
                             stream=train_from == "store")  # fmt: skip


def _train_from(choice: str, shape, fp_config: FPConfig) -> str:
    """``choice``, or for ``"auto"`` the source that fits: in memory up to :data:`IN_MEMORY_BYTES`, else the store."""
    if choice == "on_the_fly" and fp_config.scheme.name not in sources.LINEAR_SCHEMES:
        raise ValueError(
            f"training on the fly solves each batch inside the step: it needs a linear scheme "
            f"({', '.join(sources.LINEAR_SCHEMES)}), not {fp_config.scheme.name!r}; train from the store instead"
        )
    if choice != "auto":
        return choice
    count, height, width, channels = shape
    nbytes = memory.trajectory_bytes(fp_config.T, (height, width), count * channels)
    return "memory" if nbytes <= IN_MEMORY_BYTES else "store"


def _precompute_stage(images, names, fp_config: FPConfig, out: pathlib.Path, progress: bool, repair: bool = False,
                      stream: bool = False):  # fmt: skip
    """Solve (or find in the store) every image's FP equation; embed the images, or (``stream``) leave the store
    to be read batch by batch.

    Returns ``(N, T+1, H, W, C)`` trajectories (or the store's :class:`fpjax.learn.sources.FromStore`), the stage's
    seconds (the embedding included; the solve's time survives a resume in ``precompute.json``) and the solver
    statistics.
    """
    timing_path = out / "precompute.json"
    bar = tqdm(total=len(images), desc="FP solve", unit="image", disable=not progress)
    with bar:
        result = precompute(
            images,
            fp_config,
            store=out / "fp_store.zarr",
            ids=names,
            progress=lambda done, total: bar.update(done - bar.n),
            repair=repair,
        )
    previous = json.loads(timing_path.read_text())["seconds"] if timing_path.exists() else 0.0
    # A resumed run adds the time of the images it solved now, not the store look-up of finished ones.
    seconds = previous + (result.seconds if result.skipped < len(images) else 0.0)
    seconds = devices.agreed(seconds)  # process 0's figure, read before it rewrites the file
    if devices.is_writer():
        files.write_json(timing_path, {"seconds": seconds, "images": len(images)})
    if stream:
        return sources.FromStore(images, result.store, fp_config), seconds, result.stats
    start = time.perf_counter()
    m = finite_solutions(result.m[...], names, out / "fp_store.zarr")  # read back checked: checksums, digests
    every = images[np.arange(len(images))] if is_image_set(images) else images  # a set small enough to hold
    trajectories = jax.jit(lambda x, m: embed(x, m, fp_config))(jnp.asarray(every), jnp.asarray(m))
    trajectories.block_until_ready()
    return trajectories, seconds + time.perf_counter() - start, result.stats


def finite_solutions(m, names, store) -> np.ndarray:
    """``m`` ``(N, T+1, H, W, K)`` if every value is finite; otherwise ValueError naming the images.

    The store's reads already refuse damaged chunks (:class:`fpjax.batch.store.StoreCorruptError`);
    this catches what a solve itself left non-finite, so that no NaN reaches training.
    """
    m = np.asarray(m)
    bad = np.flatnonzero(~np.isfinite(m.reshape(len(m), -1)).all(axis=1))
    if len(bad):
        raise ValueError(
            f"the FP solutions of {len(bad)} image(s) in {store} are not finite: {listed(names[i] for i in bad)}; "
            "the solve diverged (see their residuals): lower g or raise T, with a new output folder"
        )
    return m


def _denoise_stage(result: training.TrainResult, clean, index, key, progress: bool = False, seconds=None):
    """Noisy copies of the ``clean`` images (``index``: theirs in the set) and the final model's denoising of
    them, :data:`REPORT_BATCH` at a time: ``(noisy, denoised, quality)``. With ``seconds`` (what is left of
    ``--max-total-seconds``) no batch starts after they have run out, and the first batch alone is reported."""
    count = clean.shape[0]
    deadline = None if seconds is None else time.perf_counter() + seconds
    labels = jnp.asarray(index, jnp.int32) if result.uses_labels else jnp.zeros(count, jnp.int32)
    noise_key, sampler_key = jax.random.split(key)
    mesh = devices.data_mesh()
    parts = []
    for start in tqdm(range(0, count, REPORT_BATCH), desc="denoising report", unit="batch",
                      disable=not progress or count <= REPORT_BATCH):  # fmt: skip
        if parts and deadline is not None and time.perf_counter() > deadline:
            break
        part = slice(start, start + REPORT_BATCH)
        keys = (noise_key, sampler_key) if start == 0 else jax.random.split(jax.random.fold_in(key, start))
        noisy = sampling.noisy_copy(keys[0], clean[part], result.config.noise_level)
        placed = devices.spread((noisy, clean[part], labels[part]), mesh)  # the batch over the devices
        denoised, quality = training.evaluate(result.graphdef, result.state.ema, *placed, None, keys[1],
                                              result.config, result.uses_labels)  # fmt: skip
        noisy, denoised, quality = devices.to_host((noisy, denoised, quality))
        parts.append((noisy, denoised, quality))
    noisy, denoised = (jnp.concatenate([p[i] for p in parts]) for i in (0, 1))
    quality = {name: jnp.concatenate([p[2][name] for p in parts]) for name in parts[0][2]}
    return noisy, denoised, quality


def _generate_stage(result: training.TrainResult, shape, count: int, key):
    """``(count, H, W, C)`` images generated from noise with the trained score (``None`` for ``count = 0``)."""
    if not count:
        return None
    labels = jnp.arange(count) % shape[0] if result.uses_labels else None
    score = result.score(labels)
    mesh = devices.data_mesh()  # the samples split over every device where their count allows
    sharding = devices.batch_sharding(mesh, 4) if count % mesh.devices.size == 0 else None
    sample = jax.jit(
        lambda k: sampling.generate(
            score, (count,) + tuple(shape[1:]), k, result.sde, result.config.sampler, sharding=sharding
        )  # fmt: skip
    )
    return devices.to_host(sample(key))


def _save_figures(out: pathlib.Path, rows, final, log, target_ssim: float, precompute_seconds: float) -> None:
    """``denoising.png`` (``rows``: noisy, denoised, clean, generated or ``None``) and ``ssim_vs_time.png``."""
    noisy, denoised, clean, generated = rows
    scores = final["ssim"][:FIGURE_IMAGES]
    files.save_figure(figures.plot_denoising(noisy, denoised, clean, generated, scores=scores), out / "denoising.png",
                      dpi=130)  # fmt: skip
    files.save_figure(
        figures.plot_ssim_vs_time(log, target_ssim, precompute_seconds), out / "ssim_vs_time.png", dpi=130
    )


def _report(names, stats, precompute_seconds, result, final, clean, settings: dict) -> dict:
    """``metrics.json``: one ``per_image`` row per trained image (image by image), or one row for the whole set
    (mixed: its final-model figures the medians over the report's images)."""
    train_seconds = result.log[-1]["train_seconds"] if result.log else 0.0
    count, reported, median_final = len(names), len(final["index"]), float(np.median(final["ssim"]))
    if settings["run"].mode == "mixed":
        final = dict(final, index=np.zeros(1, int), **{k: np.median(final[k], keepdims=True) for k in QUALITY})
        names = [f"all {len(names)} images (mixed)"]
        stats = None if stats is None else {"residual": np.asarray(stats["residual"]).max(keepdims=True)}
    per_image = [
        {
            "name": names[s["image"]],
            "steps": s["steps"],
            "reached_target": s["reached"],
            "train_seconds": s["train_seconds"],
            "ssim_at_stop": s["ssim"],
            "psnr_at_stop": s["psnr"],
            "mse_at_stop": s["mse"],
            **{f"final_model_{name}": _reported(final, name, s["image"]) for name in QUALITY},
            "fp_max_residual": None if stats is None else float(np.max(stats["residual"][s["image"]])),
        }
        for s in result.images
    ]
    return {
        "machine": provenance.machine(),
        "images": count,
        "image_shape": list(clean.shape[1:]),
        "precompute_seconds": precompute_seconds,
        "train_seconds": train_seconds,
        "wall_seconds": precompute_seconds + train_seconds,
        "reached_target": sum(p["reached_target"] for p in per_image),
        "median_ssim_at_stop": float(np.median([p["ssim_at_stop"] for p in per_image])),
        "median_final_model_ssim": median_final,
        "report_images": reported,  # the final model's figures: of these images only
        "per_image": per_image,
        "ssim": "Gaussian window 11x11, sigma 1.5, data range 1 (dm_pix.ssim)",
        "settings": {name: provenance.jsonable(config) for name, config in settings.items()},
    }


def _reported(final: dict, name: str, image: int):
    """The final model's ``name`` metric of ``image``, or ``None`` where the report's sample left it out."""
    where = np.flatnonzero(np.asarray(final["index"]) == image)
    return float(final[name][where[0]]) if where.size else None


def _generated_report(generated, clean, names) -> dict:
    best, index = metrics.nearest_ssim(generated, clean)
    return {
        "count": int(generated.shape[0]),
        "nearest_training_ssim": [float(b) for b in best],
        "nearest_training_image": [names[int(i)] for i in index],
        "mean_nearest_training_ssim": float(jnp.mean(best)),
    }
