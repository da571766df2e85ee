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

import dataclasses
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from fpjax.batch.precompute import precompute
from fpjax.diffusion import sampling
from fpjax.eval import metrics
from fpjax.learn import ddpm as dd
from fpjax.learn import trainer as training
from fpjax.learn.embedding import embed
from fpjax.learn.models.unet import UNetConfig
from fpjax.pipeline import _jsonable, _machine
from fpjax.solver import log_density as fp

CIFAR = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10_subset.npz"

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


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything an experiment run depends on (written into its report)."""

    sizes: tuple | None = None  # (32, 64), and 128 when an accelerator is present
    images: int = 3
    targets: tuple = (0.95, 0.99)
    max_seconds: float = 300.0  # per image and method (exp1)
    budget: float = 600.0  # seconds per method (exp3)
    exp3_images: int = 16
    generate: int = 8
    channels: int = 32
    batch_size: int = 8
    learning_rate: float = 1e-3
    ddpm_learning_rate: float = 1e-3
    seed: int = 0
    cifar: str = str(CIFAR)


QUICK = Settings(sizes=(32,), images=1, targets=(0.7, 0.8), max_seconds=10.0, budget=10.0, exp3_images=2, generate=2,
                 channels=8)  # fmt: skip


def default_sizes() -> tuple:
    """32 and 64 on CPUs; 128 too when an accelerator is present (the paper's three sizes)."""
    return (32, 64) if jax.default_backend() == "cpu" else (32, 64, 128)


def targets_for(settings: Settings, size: int) -> tuple:
    """The paper's targets: ``settings.targets`` (0.95, 0.99), and 0.85 / 0.90 at 128x128 (Table 3)."""
    return (0.85, 0.90) if size >= 128 and settings.targets == Settings.targets else settings.targets


def _resolved(settings: Settings) -> Settings:
    return settings if settings.sizes else dataclasses.replace(settings, sizes=default_sizes())


def load_images(settings: Settings, size: int, count: int):
    """CIFAR-10 trucks when the shared subset is present, else the embedded samples; resized to ``size``."""
    from fpjax.data import _resize, load_cifar10, sample_images

    if pathlib.Path(settings.cifar).exists():
        images, _ = load_cifar10(settings.cifar, "truck")
        source = f"CIFAR-10 test trucks ({settings.cifar})"
    else:
        images = sample_images(32)
        source = "fpjax sample images (CIFAR-10 subset absent)"
    images = np.asarray(images[:count], np.float32)
    if size != images.shape[1]:
        images = np.stack([_resize(im, size) for im in images]).astype(np.float32)
    return images, source


def _train_config(settings: Settings, objective, **changes):
    lr = settings.ddpm_learning_rate if isinstance(objective, dd.DDPM) else settings.learning_rate
    return training.TrainConfig(
        learning_rate=lr, batch_size=settings.batch_size, objective=objective, checkpoint_every=10**9, **changes
    )


def _first_reach(log, target):
    return next((r for r in log if r["ssim"] >= target), None)


# ----------------------------------------------------------------------------------------------
# exp1


def exp1(out: pathlib.Path, settings: Settings, progress=True) -> dict:
    settings = _resolved(settings)
    fp_config = fp.FPConfig()
    unet = UNetConfig(channels=settings.channels)
    methods = {"fpjax": training.EmbeddedDenoising(), "DDPM": dd.DDPM()}
    rows, curves = [], {}
    for size in settings.sizes:
        images, source = load_images(settings, size, settings.images)
        g_values = fp.diffusion_schedule(fp_config)
        for name, objective in methods.items():  # warm-up: compile both methods' programs for this size
            config = _train_config(settings, objective, target_ssim=2.0, max_steps=1, steps_per_call=1)
            _fit(images[:1], fp_config, g_values, unet, config, name, settings.seed)
        for i, image in enumerate(images):
            for name, objective in methods.items():
                config = _train_config(
                    settings, objective, target_ssim=max(settings.targets), max_steps=10**9,
                    max_seconds=settings.max_seconds,
                )  # fmt: skip
                log, pre = _fit(image[None], fp_config, g_values, unet, config, name, settings.seed + i)
                curves[f"{size}/{i}/{name}"] = [(r["wall_seconds"], r["ssim"]) for r in log]
                for target in targets_for(settings, size):
                    hit = _first_reach(log, target)
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
    result = dict(experiment="exp1", source=source, machine=_machine(), settings=dataclasses.asdict(settings),
                  fp=_jsonable(fp_config), unet=_jsonable(unet), rows=rows, summary=summary)  # fmt: skip
    _plot_curves(curves, settings, out / "exp1_ssim_vs_time.png")
    (out / "exp1.json").write_text(json.dumps(result, indent=1))
    return result


def _embedded(images, fp_config, transport=embed):
    """Pre-compute and embed ``images`` -> (trajectories, wall seconds of both).

    ``transport(images, m, fp_config)`` makes the trajectories from the log-densities (default: the score
    embedding; :mod:`fpjax.experiments.ablation` passes its variants)."""
    start = time.perf_counter()
    m = precompute(images, fp_config).m
    trajectories = jax.block_until_ready(transport(images, m, fp_config))
    return trajectories, time.perf_counter() - start


def _fit(images, fp_config, g_values, unet, config, name, seed):
    """Train one method on ``images``; returns (log, pre-computation seconds)."""
    pre = 0.0
    if name == "fpjax":
        trajectories, pre = _embedded(images, fp_config)
    else:
        trajectories = jnp.asarray(images)[:, None]
        g_values = g_values[:1]
    result = training.train(
        images, trajectories, g_values, unet_config=unet, config=config, key=jax.random.key(seed),
        precompute_seconds=pre, progress=False,
    )  # fmt: skip
    return result.log, pre


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
    from fpjax.eval.figures import plt

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
    fig.savefig(path, dpi=120)


# ----------------------------------------------------------------------------------------------
# exp2


def exp2(out: pathlib.Path, settings: Settings, quick: bool) -> dict:
    settings = _resolved(settings)
    import argparse

    from fpjax.bench import projection

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
    settings = _resolved(settings)
    size = settings.sizes[0]
    images, source = load_images(settings, size, settings.exp3_images)
    fp_config = fp.FPConfig()
    g_values = fp.diffusion_schedule(fp_config)
    key = jax.random.key(settings.seed)
    result = dict(
        experiment="exp3", source=source, size=size, machine=_machine(), settings=dataclasses.asdict(settings)
    )

    # fpjax: pre-compute (counted in the budget), then image by image with replay until the budget is spent.
    trajectories, pre = _embedded(images, fp_config)
    unet = UNetConfig(channels=settings.channels, num_images=len(images))
    ours_config = _train_config(settings, training.EmbeddedDenoising(), target_ssim=0.9, max_steps=10**9,
                                max_total_seconds=settings.budget, replay=0.5)  # fmt: skip
    ours = training.train(images, trajectories, g_values, unet_config=unet, config=ours_config, key=key,
                          precompute_seconds=pre, progress=progress)  # fmt: skip
    labels = jnp.arange(settings.generate) % len(images)
    generated_ours = sampling.generate(ours.score(labels), jax.random.fold_in(key, 1),
                                       (settings.generate,) + images.shape[1:], sampling.g_function(fp_config),
                                       ours_config.sampler)  # fmt: skip
    # DDPM: mixed training on all images for the same budget.
    ddpm_config = _train_config(settings, dd.DDPM(), target_ssim=2.0, max_steps=10**9, max_seconds=settings.budget)
    ddpm_unet = UNetConfig(channels=settings.channels)
    base = training.train(images, jnp.asarray(images)[:, None], g_values[:1], unet_config=ddpm_unet,
                          config=ddpm_config, key=key, mode="mixed", progress=progress)  # fmt: skip
    generated_ddpm = dd.generate(ddpm_config.objective, dd.eps_function(base), jax.random.fold_in(key, 2),
                                 (settings.generate,) + images.shape[1:])  # fmt: skip
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
    (out / "exp3.json").write_text(json.dumps(result, indent=1))
    return result


def _plot_exp3(images, ours, ddpm, result, path):
    from fpjax.eval.figures import _show, plt

    cols = max(len(ours), min(len(images), 8))
    fig, axes = plt.subplots(3, cols, figsize=(1.2 * cols + 0.8, 4.0), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    rows = (("training images", images[:cols]), ("fpjax", ours), ("DDPM", ddpm))
    for r, (label, batch) in enumerate(rows):
        for j in range(min(cols, len(batch))):
            _show(axes[r, j], batch[j])
        axes[r, 0].set_title(label, fontsize=8, loc="left")
    fig.suptitle(
        f"exp3: same budget; mean SSIM to nearest training image: fpjax {result['fpjax']['mean_nearest_ssim']:.3f}, "
        f"DDPM {result['DDPM']['mean_nearest_ssim']:.3f}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


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


# ----------------------------------------------------------------------------------------------
# pds


def _median_seconds(fn, repeats: int = 5) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


PDS_ALPHAS = (1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


def exp_pds(out: pathlib.Path, settings: Settings, progress=True, step_counts=(5, 10, 20, 50, 100),
            alphas=PDS_ALPHAS) -> dict:  # fmt: skip
    """Quality against sampling steps, plain and with PDS at each ``alpha``, for an fpjax and a DDPM model.

    Rows carry ``alpha=None`` for the plain sampler. The summary picks the best ``alpha`` per step count (by
    denoising SSIM), fits eq. 50 to those, and counts the steps each sampler needs to reach 95% of the plain
    sampler's best denoising SSIM.
    """
    from fpjax.diffusion import pds

    settings = _resolved(settings)
    size = settings.sizes[0]
    images, source = load_images(settings, size, settings.exp3_images)
    stats_images, _ = load_images(settings, size, 200)
    preconditioners = {alpha: pds.from_data(stats_images, alpha) for alpha in alphas}
    for alpha, m in preconditioners.items():
        m.save(out / f"pds_preconditioner_alpha{alpha:g}.npz")
    fp_config = fp.FPConfig()
    g_values = fp.diffusion_schedule(fp_config)
    g = sampling.g_function(fp_config)
    key = jax.random.key(settings.seed)
    trajectories, _ = _embedded(images, fp_config)
    ours_config = _train_config(settings, training.EmbeddedDenoising(), target_ssim=0.9, max_steps=10**9,
                                max_total_seconds=settings.budget, replay=0.5)  # fmt: skip
    unet = UNetConfig(channels=settings.channels, num_images=len(images))
    ours = training.train(images, trajectories, g_values, unet_config=unet, config=ours_config, key=key,
                          progress=progress)  # fmt: skip
    ddpm_config = _train_config(settings, dd.DDPM(), target_ssim=2.0, max_steps=10**9, max_seconds=settings.budget)
    base = training.train(images, jnp.asarray(images)[:, None], g_values[:1],
                          unet_config=UNetConfig(channels=settings.channels), config=ddpm_config, key=key,
                          mode="mixed", progress=progress)  # fmt: skip

    clean = jnp.asarray(images)
    noisy = sampling.noisy_copy(jax.random.fold_in(key, 7), clean, 0.5)
    labels = jnp.arange(len(images))
    gen_labels = jnp.arange(settings.generate) % len(images)
    shape = (settings.generate,) + images.shape[1:]
    eps = dd.eps_function(base)
    rows = []
    for steps in tqdm.tqdm(step_counts, desc="pds sweep", disable=not progress):
        samplers = _pds_samplers(ours, labels, gen_labels, eps, ddpm_config.objective, g, shape, steps)
        k1, k2 = jax.random.split(jax.random.fold_in(key, steps))
        for alpha in (None, *alphas):
            m_ = None if alpha is None else preconditioners[alpha]
            for method, (denoiser, generator) in samplers.items():
                denoised = denoiser(noisy, k1, m_)
                generated = generator(k2, m_)
                rows.append(dict(
                    method=method, steps=steps, alpha=alpha, pds=alpha is not None,
                    denoise_ssim=float(jnp.mean(metrics.ssim(denoised, clean))),
                    denoise_psnr=float(jnp.mean(metrics.psnr(denoised, clean))),
                    generate_nearest_ssim=float(jnp.mean(metrics.nearest_ssim(generated, clean)[0])),
                ))  # fmt: skip
    # Overhead per sampling step: the fpjax SDE sampler, 50 steps, batch `generate`, with and without PDS.
    cfg = sampling.SamplerConfig(steps=50, method="sde")
    fn = jax.jit(lambda k, m: sampling.generate(ours.score(gen_labels), k, shape, g, cfg, preconditioner=m))
    timing = {name: _median_seconds(lambda m_=m_: fn(key, m_)) / cfg.steps
              for name, m_ in (("plain", None), ("pds", preconditioners[alphas[0]]))}  # fmt: skip
    result = dict(experiment="pds", source=source, size=size, alphas=list(alphas), machine=_machine(),
                  settings=dataclasses.asdict(settings), rows=rows, seconds_per_step=timing,
                  summary=pds_summaries(rows),
                  fpjax_train_seconds=ours.log[-1]["train_seconds"],
                  ddpm_train_seconds=base.log[-1]["train_seconds"])  # fmt: skip
    _plot_pds(rows, out / "pds_quality_vs_steps.png")
    (out / "pds.json").write_text(json.dumps(result, indent=1))
    return result


PDS_METRICS = ("denoise_ssim", "generate_nearest_ssim")


def pds_summaries(rows) -> dict:
    """:func:`pds_summary` for both methods and both quality measures: ``{method: {metric: summary}}``."""
    return {
        method: {metric: pds_summary(rows, method, metric) for metric in PDS_METRICS} for method in ("fpjax", "DDPM")
    }


def _pds_samplers(ours, labels, gen_labels, eps, ddpm, g, shape, steps):
    """Jitted ``(denoise(noisy, key, M), generate(key, M))`` per method at ``steps`` sampling steps.

    The preconditioner ``M`` is a traced argument: one compilation per step count serves every alpha.
    """
    cfg = sampling.SamplerConfig(steps=steps, method="sde")
    ddpm = dataclasses.replace(ddpm, sampler="ddim", sampler_steps=steps)
    return {
        "fpjax": (jax.jit(lambda n, k, m: sampling.denoise(ours.score(labels), n, k, g, cfg, None, m)),
                  jax.jit(lambda k, m: sampling.generate(ours.score(gen_labels), k, shape, g, cfg, preconditioner=m))),
        "DDPM": (jax.jit(lambda n, k, m: dd.denoise(ddpm, eps, n, 0.5, k, m)),
                 jax.jit(lambda k, m: dd.generate(ddpm, eps, k, shape, preconditioner=m))),
    }  # fmt: skip


def _steps_to_reach(points, level):
    """The fewest steps among ``(steps, quality)`` points whose quality reaches ``level`` (``None``: none do)."""
    reached = [steps for steps, quality in points if quality >= level]
    return min(reached) if reached else None


def pds_summary(rows, method: str, metric: str = "denoise_ssim", fraction: float = 0.95) -> dict:
    """Best alpha per step count, the eq. 50 fit to the finite best alphas, and the steps to a common quality.

    The common quality is ``fraction`` of the plain sampler's best ``metric`` over all step counts; "PDS" there
    means the best alpha at each step count (an oracle choice, which favours PDS).
    """
    mine = [r for r in rows if r["method"] == method]
    step_counts = sorted({r["steps"] for r in mine})
    plain = {r["steps"]: r[metric] for r in mine if not r["pds"]}
    best = {}
    for steps in step_counts:
        top = max((r for r in mine if r["steps"] == steps), key=lambda r: r[metric])
        best[steps] = dict(alpha=top["alpha"], quality=top[metric], plain=plain[steps])
    level = fraction * max(plain.values())
    plain_steps = _steps_to_reach(plain.items(), level)
    pds_steps = _steps_to_reach(((s, b["quality"]) for s, b in best.items() if b["alpha"] is not None), level)
    finite = [(s, b["alpha"]) for s, b in best.items() if b["alpha"] is not None]
    fit = None
    if len({s for s, _ in finite}) >= 2 and len({a for _, a in finite}) >= 2:
        from fpjax.diffusion import pds

        a, b = pds.fit_alpha_T(*zip(*finite, strict=True), power=2)
        fit = dict(a=a, b=b, power=2, points=finite)
    return dict(metric=metric, best=best, level=level, plain_steps=plain_steps, pds_steps=pds_steps,
                speedup=(plain_steps / pds_steps) if plain_steps and pds_steps else None, fit=fit)  # fmt: skip


def _plot_pds(rows, path):
    from fpjax.eval.figures import plt

    alphas = sorted({r["alpha"] for r in rows if r["alpha"] is not None})
    colours = plt.cm.viridis(np.linspace(0.0, 0.9, max(len(alphas), 1)))
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = (("denoise_ssim", "denoising SSIM"), ("generate_nearest_ssim", "generated: SSIM to nearest training"))
    for row_axes, method in zip(axes, ("fpjax", "DDPM"), strict=True):
        for ax, (metric, label) in zip(row_axes, panels, strict=True):
            for alpha, colour in ((None, "k"), *zip(alphas, colours, strict=True)):
                pts = [(r["steps"], r[metric]) for r in rows if r["method"] == method and r["alpha"] == alpha]
                ax.plot(*zip(*pts, strict=True), "--o" if alpha is None else "-o", color=colour, ms=3,
                        label="plain" if alpha is None else f"PDS alpha={alpha:g}")  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlabel("sampling steps")
            ax.set_ylabel(label)
            ax.set_title(method)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def pds_markdown(result) -> str:
    rows = result["rows"]
    alphas = result["alphas"]
    head = " | ".join(f"a={a:g}" for a in alphas)
    lines = ["Denoising SSIM (noise std 0.5) by sampling steps and alpha; generated images' SSIM to the nearest "
             "training image in brackets.\n",
             f"| method | steps | plain | {head} |", "|---|---|" + "---|" * (len(alphas) + 1)]  # fmt: skip
    for method in ("fpjax", "DDPM"):
        for steps in sorted({r["steps"] for r in rows}):
            cells = []
            for alpha in (None, *alphas):
                r = next(r for r in rows if r["method"] == method and r["steps"] == steps and r["alpha"] == alpha)
                cells.append(f"{r['denoise_ssim']:.3f} ({r['generate_nearest_ssim']:.2f})")
            lines.append(f"| {method} | {steps} | " + " | ".join(cells) + " |")
    lines.append("\nPer quality measure: the best alpha at each step count, the level (95% of the plain sampler's "
                 "best), the fewest steps reaching it (plain / PDS at its best alpha), and eq. 50 fitted to the finite "
                 "best alphas.\n")  # fmt: skip
    lines.append("| method | measure | best alpha per step count | level | steps: plain / PDS | eq. 50 fit (power 2) |")
    lines.append("|---|---|---|---|---|---|")
    for method, by_metric in result["summary"].items():
        for metric, s in by_metric.items():
            best = ", ".join(f"{k}: {'plain' if b['alpha'] is None else format(b['alpha'], 'g')}"
                             for k, b in s["best"].items())  # fmt: skip
            fit = "n/a (fewer than two distinct finite best alphas)" if s["fit"] is None else (
                f"a = {s['fit']['a']:.3g}, b = {s['fit']['b']:.3g}")  # fmt: skip
            lines.append(f"| {method} | {metric} | {best} | {s['level']:.3f} | {s['plain_steps']} / {s['pds_steps']} "
                         f"| {fit} |")  # fmt: skip
    t = result["seconds_per_step"]
    lines.append(f"\nSeconds per sampling step (fpjax SDE, batch of generated images): plain {t['plain']:.4f}, "
                 f"PDS {t['pds']:.4f} (paper, RTX 3090, NCSN++ 64x64: 0.10 vs 0.12).")  # fmt: skip
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# report


def write_report(out: pathlib.Path, results: dict, settings: Settings, command: str) -> pathlib.Path:
    machine = _machine()
    parts = [
        "# fpjax experiments against the cross-matrix paper\n",
        f"Command: `{command}`  \nMachine: {machine['platform']}, {machine['cpu_count']} CPU cores, JAX "
        f"{machine['jax']} on {machine['backend']}.  \nSettings: `{dataclasses.asdict(settings)}`.  \n"
        "SSIM: Gaussian 11x11 window, sigma 1.5 (dm-pix); the paper's script used another window.\n",
    ]
    if "exp1" in results:
        r = results["exp1"]
        parts += [
            "## exp1: single-image denoising, time to target SSIM (Tables 1-3)\n",
            f"Data: {r['source']}. fpjax time = pre-computation (FP solve + embedding) + training; DDPM time = "
            "training. Both: the same U-Net, Adam, batch, SSIM check (noise std 0.5, fixed draw); fpjax checks with "
            "the 50-step probability-flow ODE, DDPM with DDIM (100-step grid, from the level matching the noise). "
            "Compilation excluded by warm-up runs. A time for a target not reached is the budget spent, and the "
            "speedup then a bound.\n",
            exp1_markdown(r),
            "\n![exp1](exp1_ssim_vs_time.png)\n",
        ]
    if "exp2" in results:
        parts += ["## exp2: projection vs spsolve (Table 4)\n", results["exp2"]["markdown"], ""]
    if "exp3" in results:
        r = results["exp3"]
        parts += [
            "## exp3: fixed compute budget (Table 5, Figs. 4-6)\n",
            f"Data: {r['source']}, {r['size']}x{r['size']}, {len(r['fpjax']['nearest_ssim'])} generated per method. "
            "fpjax: pre-computation + image-by-image training (replay 0.5) inside the budget; DDPM: mixed training "
            "for the budget.\n",
            exp3_markdown(r),
            "\n![exp3](exp3_generated.png)\n",
        ]
    if "pds" in results:
        r = results["pds"]
        parts += [
            "## PDS: quality against sampling steps\n",
            f"Data: {r['source']}, {r['size']}x{r['size']}; alphas {r['alphas']}; preconditioner from up to 200 "
            "images of the same source; fpjax: reverse SDE (eq. 30), DDPM: DDIM with that many steps.\n",
            pds_markdown(r),
            "\n![pds](pds_quality_vs_steps.png)\n",
        ]
    if "score-fpe" in results:
        from fpjax.experiments import fpe as fpe_experiment

        parts += ["## Score Fokker-Planck equation (FP-Diffusion)\n", fpe_experiment.markdown(results["score-fpe"])]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path


def run(args) -> int:
    settings = QUICK if args.quick else Settings()
    changes = {k: v for k, v in (("sizes", tuple(args.sizes) if args.sizes else None), ("images", args.images),
                                 ("budget", args.budget), ("max_seconds", args.max_seconds),
                                 ("cifar", args.cifar)) if v is not None}  # fmt: skip
    settings = _resolved(dataclasses.replace(settings, **changes))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    which = ("exp1", "exp2", "exp3") if args.which == "all" else (args.which,)
    results = {}
    if "exp1" in which:
        results["exp1"] = exp1(out, settings)
        print(exp1_markdown(results["exp1"]))
    if "exp2" in which:
        results["exp2"] = exp2(out, settings, args.quick)
    if "exp3" in which:
        results["exp3"] = exp3(out, settings)
        print(exp3_markdown(results["exp3"]))
    if "score-fpe" in which:
        from fpjax.experiments import fpe as fpe_experiment

        fpe_settings = fpe_experiment.QUICK_FPE if args.quick else fpe_experiment.FPESettings()
        results["score-fpe"] = fpe_experiment.run(out, fpe_settings)
        print(fpe_experiment.markdown(results["score-fpe"]))
    if "ablation" in which:
        from fpjax.experiments import ablation

        base = ablation.QUICK_ABLATION if args.quick else ablation.AblationSettings()
        changes = {k: v for k, v in (("images", args.images), ("max_seconds", args.max_seconds)) if v is not None}
        results["ablation"] = ablation.run(out, dataclasses.replace(base, **changes), settings.cifar)
        print(ablation.markdown(results["ablation"]))
        return 0  # the ablation writes its own report.md
    if "pds" in which:
        results["pds"] = exp_pds(
            out,
            settings,
            step_counts=(5,) if args.quick else (5, 10, 20, 50, 100),
            alphas=(2.0,) if args.quick else PDS_ALPHAS,
        )
        print(pds_markdown(results["pds"]))
    command = "fpjax experiment " + args.which + (" --quick" if args.quick else "") + f" --out {args.out}"
    path = write_report(out, results, settings, command)
    print(f"wrote {path}")
    return 0


def add_arguments(parser) -> None:
    parser.add_argument("which", choices=["exp1", "exp2", "exp3", "pds", "score-fpe", "ablation", "all"])
    parser.add_argument("--quick", action="store_true", help="small settings: a smoke test in a few minutes")
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--images", type=int, help="images per size (exp1)")
    parser.add_argument("--budget", type=float, help="seconds per method (exp3)")
    parser.add_argument("--max-seconds", type=float, help="seconds per image and method (exp1)")
    parser.add_argument("--cifar", help="CIFAR-10 npz (default ../shared/data/cifar10_subset.npz)")
    parser.add_argument("--out", default="fpjax_experiments")
