"""The cross-matrix paper's experiments, reproduced side by side with a DDPM baseline on this machine.

``fpjax experiment exp1|exp2|exp3|all [--quick] --out DIR``; each writes
``report.md`` (our numbers beside the paper's), ``results.json`` and figures,
and states the machine, sizes, seeds and settings.

* exp1 (Tables 1-3): single-image denoising, time to a target SSIM; fpjax's time
  is pre-computation + training, DDPM's is training. One fresh network per image
  and method; both share the U-Net, Adam, batch size and the SSIM check
  (noise std 0.5 in ``[0, 1]`` units, a fixed draw); a run is trained to the
  highest target and the time each target is first met is read from its log.
  Compilation is excluded from both by a warm-up run per method and size.
* exp2 (Table 4): the projection benchmark (``fpjax bench projection``).
* exp3 (Table 5, Figs. 4-6): the same wall-clock budget for both; fpjax
  pre-computes and trains image by image, DDPM trains on the mixed set; then both
  generate and each generated image is scored by its SSIM to the nearest
  training image.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from fpjax import files
from fpjax.bench import projection
from fpjax.diffusion import sampling
from fpjax.eval import metrics
from fpjax.eval.figures import show_image
from fpjax.experiments.common import (
    Settings,
    embedded,
    first_reach,
    fit,
    load_images,
    resolved,
    targets_for,
    train_config,
)
from fpjax.learn import ddpm as dd
from fpjax.learn import trainer as training
from fpjax.learn.models.unet import UNetConfig
from fpjax.provenance import jsonable, machine
from fpjax.solver.problem import FPConfig

# The cross-matrix paper's Tables 1-3 (V100 GPU for training, M4 CPU for the pre-computation):
# size -> target -> (ours s, DDPM s, ours MSE, DDPM MSE, ours PSNR, DDPM PSNR, speedup).
PAPER_EXP1 = {
    32: {
        0.95: (16.75, 356.68, 0.002586, 0.005398, 15.87, 22.68, 21.30),
        0.99: (60.27, 1634.93, 0.000958, 0.001122, 30.19, 29.50, 27.13),
    },
    64: {
        0.95: (80.04, 5036.53, 0.007052, 0.008262, 21.52, 20.83, 62.93),
        0.99: (122.45, 14131.53, 0.001375, 0.001340, 28.62, 28.73, 115.40),
    },
    128: {
        0.85: (166.14, 7329.93, 0.014860, 0.023668, 18.28, 16.26, 44.12),
        0.90: (186.09, 11319.86, 0.009359, 0.015459, 20.29, 18.11, 60.83),
    },
}
# Table 5 and Figs. 4-6: size -> (pre-compute s, training s, total s, ours mean SSIM, DDPM mean SSIM).
PAPER_EXP3 = {32: (35.45, 4119.72, 4155.17, 0.8991, 0.8517), 64: (128.56, 6260.03, 6388.59, 0.6302, 0.4446),
              128: (556.71, 28585.18, 29141.89, 0.8312, None)}  # fmt: skip


def exp1(out: pathlib.Path, settings: Settings, progress=True) -> dict:
    settings = resolved(settings)
    fp_config = FPConfig()
    unet = UNetConfig(channels=settings.channels)
    methods = {"fpjax": training.EmbeddedDenoising(), "DDPM": dd.DDPM()}
    rows, curves = [], {}
    for size in settings.sizes:
        images, source = load_images(settings, size, settings.images)
        for name, objective in methods.items():  # warm-up: compile both methods' programs for this size
            config = train_config(settings, objective, target_ssim=None, max_steps=1, steps_per_call=1)
            fit(images[:1], fp_config, unet, config, name, settings.seed)
        for i, image in enumerate(images):
            for name, objective in methods.items():
                config = train_config(
                    settings, objective, target_ssim=max(settings.targets), max_steps=10**9,
                    max_seconds=settings.max_seconds,
                )  # fmt: skip
                log, pre = fit(image[None], fp_config, unet, config, name, settings.seed + i)
                curves[f"{size}/{i}/{name}"] = [(r["wall_seconds"], r["ssim"]) for r in log]
                for target in targets_for(settings, size):
                    hit = first_reach(log, target)
                    last = log[-1]
                    rows.append(
                        dict(size=size, image=i, method=name, target=target, reached=hit is not None,
                             seconds=hit["wall_seconds"] if hit else last["wall_seconds"], precompute_seconds=pre,
                             steps=hit["global_step"] if hit else last["global_step"],
                             mse=(hit or last)["mse"], psnr=(hit or last)["psnr"], ssim=(hit or last)["ssim"])
                    )  # fmt: skip
                if progress:
                    print(f"exp1 {size}x{size} image {i} {name:5s}: SSIM {log[-1]['ssim']:.3f} after "
                          f"{log[-1]['wall_seconds']:.1f} s ({log[-1]['global_step']} steps)", flush=True)  # fmt: skip
    summary = _exp1_summary(rows, settings)
    result = dict(experiment="exp1", source=source, machine=machine(), settings=dataclasses.asdict(settings),
                  fp=jsonable(fp_config), unet=jsonable(unet), rows=rows, summary=summary)  # fmt: skip
    _plot_curves(curves, settings, out / "exp1_ssim_vs_time.png")
    files.write_json(out / "exp1.json", result)
    return result


def _exp1_summary(rows, settings):
    summary = []
    for size in settings.sizes:
        for target in targets_for(settings, size):
            entry = dict(size=size, target=target)
            for method in ("fpjax", "DDPM"):
                sel = [r for r in rows if r["size"] == size and r["target"] == target and r["method"] == method]
                times = np.array([r["seconds"] for r in sel])
                entry[method] = dict(
                    reached=f"{sum(r['reached'] for r in sel)}/{len(sel)}",
                    median_seconds=float(np.median(times)), min_seconds=float(times.min()),
                    max_seconds=float(times.max()),
                    median_mse=float(np.median([r["mse"] for r in sel])),
                    median_psnr=float(np.median([r["psnr"] for r in sel])),
                    median_precompute_seconds=float(np.median([r["precompute_seconds"] for r in sel])),
                )  # fmt: skip
            pairs = [
                (a["seconds"], b["seconds"], a["reached"] and b["reached"])
                for a in rows for b in rows
                if a["size"] == b["size"] == size and a["target"] == b["target"] == target and a["image"] == b["image"]
                and a["method"] == "fpjax" and b["method"] == "DDPM"
            ]  # fmt: skip
            ratios = [d / f for f, d, _ in pairs]
            entry["speedup_median"] = float(np.median(ratios))
            entry["speedup_range"] = [float(min(ratios)), float(max(ratios))]
            entry["speedup_is_lower_bound"] = not all(both for *_, both in pairs)
            summary.append(entry)
    return summary


def exp1_markdown(result) -> str:
    lines = [
        "| size | target SSIM | method | reached | median s (min-max) | pre-compute s | median MSE | median PSNR "
        "| speedup (median, range) | paper: s, MSE, PSNR, speedup |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in result["summary"]:
        paper = PAPER_EXP1.get(e["size"], {}).get(e["target"])
        for k, method in enumerate(("fpjax", "DDPM")):
            m = e[method]
            speed = ""
            if method == "fpjax":
                bound = ">= " if e["speedup_is_lower_bound"] else ""
                lo, hi = e["speedup_range"]
                speed = f"{bound}{e['speedup_median']:.2f}x ({lo:.2f}-{hi:.2f})"
            p = ""
            if paper:
                p = f"{paper[k]:.2f} s, {paper[2 + k]:.4f}, {paper[4 + k]:.2f} dB" + (
                    f", {paper[6]:.2f}x" if k == 0 else ""
                )
            lines.append(
                f"| {e['size']} | {e['target']} | {method} | {m['reached']} | {m['median_seconds']:.1f} "
                f"({m['min_seconds']:.1f}-{m['max_seconds']:.1f}) | {m['median_precompute_seconds']:.2f} | "
                f"{m['median_mse']:.5f} | {m['median_psnr']:.2f} | {speed} | {p or '-'} |"
            )
    return "\n".join(lines)


def _plot_curves(curves, settings, path):
    sizes = settings.sizes
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 3.5), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        for key, points in curves.items():
            s, image, method = key.split("/")
            if int(s) != size or not points:
                continue
            ax.plot(*zip(*points, strict=True), ".-", lw=1, ms=3, color="C0" if method == "fpjax" else "C3",
                    label=method if image == "0" else None)  # fmt: skip
        for target in targets_for(settings, size):
            ax.axhline(target, color="k", ls="--", lw=0.6)
        ax.set_xscale("log")
        ax.set_xlabel("wall time (s), pre-computation included")
        ax.set_ylabel("denoising SSIM")
        ax.set_title(f"exp1: {size}x{size}, one line per image")
        ax.legend(fontsize=8)
    fig.tight_layout()
    files.save_figure(fig, path, dpi=120)


# ----------------------------------------------------------------------------------------------
# exp2


def exp2(out: pathlib.Path, settings: Settings, quick: bool) -> dict:
    settings = resolved(settings)

    args = argparse.Namespace(
        sizes=list(settings.sizes), n=8 if quick else 100, T=100, batch=16, cifar=settings.cifar,
        out=str(out / "exp2.json"),
    )  # fmt: skip
    projection.run(args)
    result = json.loads((out / "exp2.json").read_text())
    result["markdown"] = projection.markdown(result["rows"])
    return result


# ----------------------------------------------------------------------------------------------
# exp3


def exp3(out: pathlib.Path, settings: Settings, progress=True) -> dict:
    settings = resolved(settings)
    size = settings.sizes[0]
    images, source = load_images(settings, size, settings.exp3_images)
    fp_config = FPConfig()
    key = jax.random.key(settings.seed)
    result = dict(experiment="exp3", source=source, size=size, machine=machine(), settings=dataclasses.asdict(settings))

    # fpjax: pre-compute (counted in the budget), then image by image with replay until the budget is spent.
    trajectories, pre = embedded(images, fp_config)
    unet = UNetConfig(channels=settings.channels, num_images=len(images))
    ours_config = train_config(settings, training.EmbeddedDenoising(), target_ssim=0.9, max_steps=10**9,
                                max_total_seconds=settings.budget, replay=0.5)  # fmt: skip
    ours = training.train(images, trajectories, fp_config, unet_config=unet, config=ours_config, key=key,
                          precompute_seconds=pre, progress=progress)  # fmt: skip
    labels = jnp.arange(settings.generate) % len(images)
    generated_ours = sampling.generate(ours.score(labels), (settings.generate,) + images.shape[1:],
                                       jax.random.fold_in(key, 1), ours.sde, ours_config.sampler)  # fmt: skip
    # DDPM: mixed training on all images for the same budget.
    ddpm_config = train_config(settings, dd.DDPM(), target_ssim=None, max_steps=10**9, max_seconds=settings.budget)
    ddpm_unet = UNetConfig(channels=settings.channels)
    base = training.train(images, jnp.asarray(images)[:, None], None, unet_config=ddpm_unet,
                          config=ddpm_config, key=key, mode="mixed", progress=progress)  # fmt: skip
    generated_ddpm = dd.generate(dd.eps_function(base), (settings.generate,) + images.shape[1:],
                                 jax.random.fold_in(key, 2), ddpm_config.objective)  # fmt: skip
    for name, run, generated in (("fpjax", ours, generated_ours), ("DDPM", base, generated_ddpm)):
        best, index = metrics.nearest_ssim(generated, jnp.asarray(images))
        result[name] = dict(
            precompute_seconds=pre if name == "fpjax" else 0.0,
            train_seconds=run.log[-1]["train_seconds"] if run.log else 0.0,
            steps=int(run.state.step),
            images_trained=len(run.images),
            mean_nearest_ssim=float(jnp.mean(best)),
            nearest_ssim=[float(b) for b in best],
            nearest_index=[int(i) for i in index],
        )
        np.save(out / f"exp3_generated_{name}.npy", np.asarray(generated))
    _plot_exp3(images, generated_ours, generated_ddpm, result, out / "exp3_generated.png")
    files.write_json(out / "exp3.json", result)
    return result


def _plot_exp3(images, ours, ddpm, result, path):
    cols = max(len(ours), min(len(images), 8))
    fig, axes = plt.subplots(3, cols, figsize=(1.2 * cols + 0.8, 4.0), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    rows = (("training images", images[:cols]), ("fpjax", ours), ("DDPM", ddpm))
    for r, (label, batch) in enumerate(rows):
        for j in range(min(cols, len(batch))):
            show_image(axes[r, j], batch[j])
        axes[r, 0].set_title(label, fontsize=8, loc="left")
    fig.suptitle(
        f"exp3: same budget; mean SSIM to nearest training image: fpjax {result['fpjax']['mean_nearest_ssim']:.3f}, "
        f"DDPM {result['DDPM']['mean_nearest_ssim']:.3f}",
        fontsize=9,
    )
    fig.tight_layout()
    files.save_figure(fig, path, dpi=120)


def exp3_markdown(result) -> str:
    size = result["size"]
    paper = PAPER_EXP3.get(size)
    lines = [
        "| method | pre-compute s | training s | total s | steps | images trained "
        "| mean SSIM to nearest training image | paper (pre-compute, training, total s; SSIM) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, name in enumerate(("fpjax", "DDPM")):
        r = result[name]
        p = "-"
        if paper:
            ssim = paper[3 + k]
            p = (f"{paper[0]:.1f}, {paper[1]:.1f}, {paper[2]:.1f}; " if k == 0 else "same budget; ") + (
                f"{ssim:.4f}" if ssim is not None else "no recognisable images"
            )
        lines.append(
            f"| {name} | {r['precompute_seconds']:.1f} | {r['train_seconds']:.1f} | "
            f"{r['precompute_seconds'] + r['train_seconds']:.1f} | {r['steps']} | {r['images_trained']} | "
            f"{r['mean_nearest_ssim']:.4f} | {p} |"
        )
    return "\n".join(lines)
