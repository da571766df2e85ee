"""``fpjax experiment ablation``: does the pre-computed score matter? (issue 8)

The exp1 protocol (one image at a time, train until the denoising SSIM reaches a target, time to 0.95 and
0.99) for five variants on the same U-Net, optimizer, batch and SSIM check:

1. ``fpjax``: the papers' method (pre-computed score, score embedding, eq. 29);
2. ``zero score``: the same training on the image itself at every ``t`` (no embedding);
3. ``scaled score``: the embedding with the authors' script's score, the x-component only divided by the
   grid spacing (32x at 32x32 with the default spacing ``1/W``; the script's ``1/(W-1)`` gives 31x);
4. ``DDPM tuned``: Ho et al.'s DDPM trained only on the levels the denoising check visits (up to the noise
   level of the check), at twice the learning rate;
5. ``DDPM fixed sigma``: DDPM at the single level matching the check's noise, denoising in one step.

Reported: time to each target (pre-computation included for the variants that pre-compute), final SSIM /
PSNR / MSE, medians and ranges over images and seeds, and SSIM against wall time for all runs.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from fpjax import files
from fpjax.experiments.common import Settings, embedded, first_reach, load_images
from fpjax.learn import ddpm as dd
from fpjax.learn import trainer as training
from fpjax.learn.embedding import embed
from fpjax.learn.models.unet import UNetConfig
from fpjax.provenance import machine
from fpjax.solver.problem import FPConfig

VARIANTS = ("fpjax", "zero score", "scaled score", "DDPM tuned", "DDPM fixed sigma")


@dataclasses.dataclass(frozen=True)
class AblationSettings:
    images: int = 3
    seeds: tuple = (0, 1)
    targets: tuple = (0.95, 0.99)
    max_seconds: float = 90.0
    size: int = 32
    channels: int = 32
    batch_size: int = 8
    learning_rate: float = 1e-3
    ddpm_tuned_learning_rate: float = 2e-3
    noise_level: float = 0.5


QUICK_ABLATION = AblationSettings(images=1, seeds=(0,), targets=(0.6, 0.7), max_seconds=8.0, channels=8)


def zero_score_trajectories(images, T: int):
    """``(N, T+1, H, W, C)``: the image at every step (the score set to zero: nothing is transported)."""
    images = jnp.asarray(images)
    return jnp.broadcast_to(images[:, None], (images.shape[0], T + 1) + images.shape[1:])


def scaled_score_trajectories(images, m, config: FPConfig):
    """The embedding with the authors' script's score: the x-component only, divided by the grid spacing
    ``h_x`` (pixel-unit differences become per-unit-length derivatives). Zero drift only."""
    if config.drift is not None:
        raise ValueError("the scaled-score variant is defined for zero drift")
    images = jnp.asarray(images)
    h_x = config.grid_spacing(images.shape[1:3])[0]
    x_only = embed(images, m, config, component="x")
    return images[:, None] + (x_only - images[:, None]) / h_x


def variant_trajectories(variant: str, images, config: FPConfig):
    """``(trajectories, seconds)`` the variant trains on and the wall time spent making them."""
    if variant == "zero score":
        return zero_score_trajectories(images, config.T), 0.0
    if variant.startswith("DDPM"):
        return jnp.asarray(images)[:, None], 0.0
    return embedded(images, config, scaled_score_trajectories if variant == "scaled score" else embed)


def variant_config(variant: str, settings: AblationSettings, **changes) -> training.TrainConfig:
    if variant == "DDPM tuned":
        objective, lr = dd.DDPM(max_train_noise=settings.noise_level), settings.ddpm_tuned_learning_rate
    elif variant == "DDPM fixed sigma":
        objective, lr = dd.DDPM(fixed_noise=settings.noise_level), settings.learning_rate
    else:
        objective, lr = training.EmbeddedDenoising(), settings.learning_rate
    return training.TrainConfig(learning_rate=lr, batch_size=settings.batch_size, objective=objective,
                                noise_level=settings.noise_level, checkpoint_every=10**9, **changes)  # fmt: skip


def _fit(variant, images, settings, fp_config, unet, seed, **changes):
    trajectories, pre = variant_trajectories(variant, images, fp_config)
    config = variant_config(variant, settings, **changes)
    sde = None if variant.startswith("DDPM") else fp_config  # DDPM brings its own VP SDE
    result = training.train(images, trajectories, sde, unet_config=unet, config=config,
                            key=jax.random.key(seed), precompute_seconds=pre, progress=False)  # fmt: skip
    return result.log, pre


def run_experiment(
    out: pathlib.Path, settings: AblationSettings, cifar: str | None = None, progress: bool = True
) -> dict:

    load = Settings(cifar=cifar) if cifar else Settings()
    images, source = load_images(load, settings.size, settings.images)
    fp_config = FPConfig()
    unet = UNetConfig(channels=settings.channels)
    for variant in VARIANTS:  # warm-up: compile every variant's programs, so no run's time includes it
        _fit(variant, images[:1], settings, fp_config, unet, 0, target_ssim=None, max_steps=1, steps_per_call=1)
    rows, curves = [], {}
    for i, image in enumerate(images):
        for seed in settings.seeds:
            for variant in VARIANTS:
                budget = dict(target_ssim=max(settings.targets), max_steps=10**9, max_seconds=settings.max_seconds)
                log, pre = _fit(variant, image[None], settings, fp_config, unet, seed, **budget)
                curves[f"{i}/{seed}/{variant}"] = [(r["wall_seconds"], r["ssim"]) for r in log]
                last = log[-1]
                row = dict(image=i, seed=seed, variant=variant, precompute_seconds=pre, steps=last["global_step"],
                           final_ssim=last["ssim"], final_psnr=last["psnr"], final_mse=last["mse"],
                           final_seconds=last["wall_seconds"])  # fmt: skip
                for target in settings.targets:
                    hit = first_reach(log, target)
                    row[f"seconds_{target}"] = hit["wall_seconds"] if hit else None
                rows.append(row)
                if progress:
                    print(f"ablation image {i} seed {seed} {variant:16s}: SSIM {last['ssim']:.3f} after "
                          f"{last['wall_seconds']:.1f} s ({last['global_step']} steps)", flush=True)  # fmt: skip
    result = dict(experiment="ablation", source=source, machine=machine(), settings=dataclasses.asdict(settings),
                  rows=rows, summary=summarise(rows, settings))  # fmt: skip
    _plot(curves, settings, out / "ablation_ssim_vs_time.png")
    files.write_json(out / "ablation.json", result)
    files.write_text(out / "report.md", markdown(result))
    return result


def _spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return dict(median=float(np.median(values)), min=float(np.min(values)), max=float(np.max(values)), n=len(values))


def summarise(rows, settings: AblationSettings) -> dict:
    """Per variant: time to each target (median/min/max over the runs that reached it, and how many did), final
    SSIM / PSNR / MSE (median/min/max over all runs)."""
    summary = {}
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue
        entry = {f"final_{k}": _spread([r[f"final_{k}"] for r in mine]) for k in ("ssim", "psnr", "mse")}
        for target in settings.targets:
            entry[f"seconds_{target}"] = _spread([r[f"seconds_{target}"] for r in mine])
            entry[f"reached_{target}"] = sum(r[f"seconds_{target}"] is not None for r in mine)
        entry["runs"] = len(mine)
        summary[variant] = entry
    return summary


def _fmt(spread, digits=1):
    if spread is None:
        return "not reached"
    return f"{spread['median']:.{digits}f} ({spread['min']:.{digits}f}-{spread['max']:.{digits}f})"


def markdown(result) -> str:
    s = result["settings"]
    targets = s["targets"]
    machine = result["machine"]
    lines = [
        "# Ablation: where does the speedup come from?\n",
        f"Data: {result['source']}, {s['size']}x{s['size']}, {s['images']} images x seeds {s['seeds']}; budget "
        f"{s['max_seconds']:g} s per run; U-Net channels {s['channels']}, batch {s['batch_size']}. Machine: "
        f"{machine['cpu_count']} CPU cores, JAX {machine['jax']} on {machine['backend']}. "
        "Compilation excluded (warm-up runs). Times include the pre-computation where a variant has one. Medians "
        "(min-max) over images and seeds; a time is over the runs that reached the target.\n",
        "| variant | " + " | ".join(f"s to SSIM {t} (reached)" for t in targets)
        + " | final SSIM | final PSNR | final MSE |",
        "|---|" + "---|" * (len(targets) + 3),
    ]  # fmt: skip
    for variant, e in result["summary"].items():
        times = " | ".join(f"{_fmt(e[f'seconds_{t}'])} ({e[f'reached_{t}']}/{e['runs']})" for t in targets)
        lines.append(f"| {variant} | {times} | {_fmt(e['final_ssim'], 3)} | {_fmt(e['final_psnr'], 2)} | "
                     f"{_fmt(e['final_mse'], 5)} |")  # fmt: skip
    lines.append("\n![ssim vs time](ablation_ssim_vs_time.png)\n")
    return "\n".join(lines)


def _plot(curves, settings: AblationSettings, path):
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = {v: f"C{i}" for i, v in enumerate(VARIANTS)}
    seen = set()
    for key, points in curves.items():
        variant = key.split("/", 2)[2]
        ax.plot(*zip(*points, strict=True), "-", color=colours[variant], alpha=0.7, lw=1,
                label=None if variant in seen else variant)  # fmt: skip
        seen.add(variant)
    for target in settings.targets:
        ax.axhline(target, color="k", ls=":", lw=0.8)
    ax.set_xlabel("wall seconds (pre-computation + training)")
    ax.set_ylabel("denoising SSIM")
    ax.legend(fontsize=8)
    fig.tight_layout()
    files.save_figure(fig, path, dpi=120)
