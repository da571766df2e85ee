"""The whole pipeline in one call: pre-compute, embed, train image by image, denoise and generate.

``fpjax run`` is this module on the command line. Every stage is resumable:
the FP solutions stream into a zarr store and training checkpoints with orbax
in the output folder, so running the same command again after an interruption
picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from fpjax.batch.precompute import precompute
from fpjax.diffusion import sampling
from fpjax.eval import metrics
from fpjax.learn import trainer as training
from fpjax.learn.embedding import embed
from fpjax.learn.models.unet import UNetConfig
from fpjax.solver import log_density as fp


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Settings of :func:`run` beyond the FP, U-Net and training configurations.

    Attributes:
      generate: number of images generated from noise at the end.
      per_image_labels: give the U-Net one embedding label per image (the score-embedding
        paper's multi-image device; generation cycles through the labels).
      seed: the run's PRNG seed (weights, batches, noise of the checks, generation).
    """

    generate: int = 8
    per_image_labels: bool = True
    seed: int = 0


def _jsonable(config) -> dict:
    return {k: (repr(v) if callable(v) else v) for k, v in dataclasses.asdict(config).items()}


def _machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


def _precompute_stage(images, names, fp_config, out: pathlib.Path, progress: bool):
    """Solve (or find in the store) every image's FP equation; the timing survives a resume."""
    timing_path = out / "precompute.json"
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(images), desc="FP solve", unit="image")
    result = precompute(
        images,
        fp_config,
        store=out / "fp_store.zarr",
        ids=names,
        progress=None if bar is None else (lambda done, total: bar.update(done - bar.n)),
    )
    if bar is not None:
        bar.close()
    previous = json.loads(timing_path.read_text())["seconds"] if timing_path.exists() else 0.0
    # A resumed run adds the time of the images it solved now, not the store look-up of finished ones.
    seconds = previous + (result.seconds if result.skipped < len(images) else 0.0)
    timing_path.write_text(json.dumps({"seconds": seconds, "images": len(images)}))
    m = np.asarray(result.m[...])
    return m, seconds, result.stats


def run(
    images,
    out,
    *,
    names=None,
    fp_config: fp.FPConfig | None = None,
    unet_config: UNetConfig | None = None,
    train_config: training.TrainConfig | None = None,
    run_config: RunConfig | None = None,
    progress: bool = True,
) -> dict:
    """Pre-compute, embed, train image by image to the target SSIM, denoise and generate; write to ``out``.

    Args:
      images: ``(N, H, W, C)`` in ``[0, 1]``.
      out: output folder: ``fp_store.zarr``, ``checkpoint/``, ``denoising.png``,
        ``ssim_vs_time.png``, ``metrics.json``, ``training_log.json``.
      names: image names for the store and the report.
    Returns:
      the ``metrics.json`` content.
    """
    images = np.asarray(images, np.float32)
    fp_config = fp_config or fp.FPConfig()
    train_config = train_config or training.TrainConfig()
    run_config = run_config or RunConfig()
    count = len(images)
    if unet_config is None:
        unet_config = UNetConfig()
    if run_config.per_image_labels and unet_config.num_images < count:
        unet_config = dataclasses.replace(unet_config, num_images=count)
    names = list(names) if names is not None else [f"image_{i}" for i in range(count)]
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)

    m, precompute_seconds, stats = _precompute_stage(images, names, fp_config, out, progress)
    start = time.perf_counter()
    trajectories = jax.jit(lambda x, m: embed(x, m, fp_config))(jnp.asarray(images), jnp.asarray(m))
    precompute_seconds += time.perf_counter() - start  # the embedding belongs to the pre-computation
    g_values = fp.diffusion_schedule(fp_config)

    key = jax.random.key(run_config.seed)
    train_key, eval_key, generate_key = jax.random.split(key, 3)
    result = training.train(
        images,
        trajectories,
        g_values,
        unet_config=unet_config,
        config=train_config,
        key=train_key,
        checkpoint_dir=out / "checkpoint",
        precompute_seconds=precompute_seconds,
        progress=progress,
    )
    training.save_log(result, out / "training_log.json")

    labels = jnp.arange(count) if result.uses_labels else jnp.zeros(count, jnp.int32)
    noise_key, sampler_key = jax.random.split(eval_key)
    clean = jnp.asarray(images)
    noisy = sampling.noisy_copy(noise_key, clean, train_config.noise_level)
    denoised, final = training.evaluate(
        result.graphdef, result.state.ema, noisy, clean, labels, g_values, sampler_key, train_config, result.uses_labels
    )
    generate_labels = jnp.arange(run_config.generate) % count if result.uses_labels else None
    generated = (
        jax.jit(
            lambda k: sampling.generate(
                result.score(generate_labels),
                k,
                (run_config.generate,) + images.shape[1:],
                sampling.g_function(fp_config),
                train_config.sampler,
            )
        )(generate_key)
        if run_config.generate
        else None
    )

    from fpjax.eval.figures import plot_denoising, plot_ssim_vs_time

    fig = plot_denoising(noisy, denoised, clean, generated, scores=final["ssim"])
    fig.savefig(out / "denoising.png", dpi=130)
    fig = plot_ssim_vs_time(result.log, train_config.target_ssim, precompute_seconds)
    fig.savefig(out / "ssim_vs_time.png", dpi=130)

    report = _report(
        names,
        stats,
        precompute_seconds,
        result,
        final,
        generated,
        clean,
        fp_config,
        unet_config,
        train_config,
        run_config,
    )
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    return report


def _report(
    names, stats, precompute_seconds, result, final, generated, clean, fp_config, unet_config, train_config, run_config
) -> dict:
    train_seconds = result.log[-1]["train_seconds"] if result.log else 0.0
    per_image = []
    for summary in result.images:
        i = summary["image"]
        per_image.append(
            {
                "name": names[i],
                "steps": summary["steps"],
                "reached_target": summary["reached"],
                "train_seconds": summary["train_seconds"],
                "ssim_at_stop": summary["ssim"],
                "psnr_at_stop": summary["psnr"],
                "mse_at_stop": summary["mse"],
                "final_model_ssim": float(final["ssim"][i]),
                "final_model_psnr": float(final["psnr"][i]),
                "final_model_mse": float(final["mse"][i]),
                "fp_max_residual": float(np.max(stats["residual"][i])),
            }
        )
    report = {
        "machine": _machine(),
        "images": len(names),
        "image_shape": list(clean.shape[1:]),
        "precompute_seconds": precompute_seconds,
        "train_seconds": train_seconds,
        "wall_seconds": precompute_seconds + train_seconds,
        "reached_target": sum(p["reached_target"] for p in per_image),
        "median_ssim_at_stop": float(np.median([p["ssim_at_stop"] for p in per_image])),
        "median_final_model_ssim": float(np.median(final["ssim"])),
        "per_image": per_image,
        "ssim": "Gaussian window 11x11, sigma 1.5, data range 1 (dm_pix.ssim)",
        "settings": {
            "fp": _jsonable(fp_config),
            "unet": _jsonable(unet_config),
            "train": _jsonable(train_config),
            "run": _jsonable(run_config),
        },
    }
    if generated is not None:
        best, index = metrics.nearest_ssim(generated, clean)
        report["generated"] = {
            "count": int(generated.shape[0]),
            "nearest_training_ssim": [float(b) for b in best],
            "nearest_training_image": [names[int(i)] for i in index],
            "mean_nearest_training_ssim": float(jnp.mean(best)),
        }
    return report
