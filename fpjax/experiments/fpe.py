"""``fpjax experiment score-fpe``: the score-FPE residual and the FP regulariser, measured (issue 7).

Four parts, each written to ``report.md`` / ``score_fpe.json`` with figures:

1. The paper's 2-D Gaussian mixture (eight modes on a circle) under a VE SDE: small score MLPs trained by
   DSM and by DSM + the FP regulariser at a few ``gamma``; residual curves ``r_FP(t)`` beside the DSM-like
   error ``r_DSM(t)`` (Figure 1), the exact score's as the reference, held-out NLL through the probability-flow
   ODE against the true density, and the learned densities on a grid.
2. scikit-learn's 8x8 digits (ships with the package; nothing downloaded): DSM against DSM + regulariser,
   test NLL in bits per dimension (the paper's Tables 1-2 metric).
3. Images: ``r_FP(t)`` of an fpjax model (trained on score-embedded trajectories) and of a DSM-trained DDPM
   model, each on its own SDE, Hutchinson + finite difference as in the paper.
4. fpjax's own FP solutions: the discrete log-density FP residual of every step, recomputed from the stored
   trajectory, against the outer iteration's tolerance.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from fpjax import files
from fpjax.batch.precompute import precompute
from fpjax.data import sample_images
from fpjax.diffusion import likelihood, mixtures
from fpjax.diffusion import score_fpe as sf
from fpjax.diffusion.sde import VESDE
from fpjax.learn import ddpm as dd
from fpjax.learn import dsm
from fpjax.learn import trainer as training
from fpjax.learn.embedding import embed
from fpjax.learn.models.unet import UNetConfig
from fpjax.learn.objectives import EmbeddedDenoising, TrainData
from fpjax.provenance import machine
from fpjax.solver import log_density as fp
from fpjax.solver.problem import FPConfig


@dataclasses.dataclass(frozen=True)
class FPESettings:
    """What the run depends on (written into the report)."""

    mixture_steps: int = 4000
    mixture_gammas: tuple = (0.0, 0.0015, 0.05)
    digits_steps: int = 4000
    digits_gammas: tuple = (0.0, 0.001, 0.01, 0.1)
    digits_test: int = 300
    nll_points: int = 1000
    grid: int = 48
    image_budget: float = 60.0
    image_points: int = 4
    seed: int = 0


QUICK_FPE = FPESettings(mixture_steps=400, mixture_gammas=(0.0, 0.05), digits_steps=200, digits_test=20,
                        nll_points=100, grid=16, image_budget=10.0, image_points=2)  # fmt: skip

MIXTURE_SDE = VESDE(0.01, 3.0)
DIGITS_SDE = VESDE(0.01, 5.0)
TIMES = tuple(np.round(np.linspace(0.02, 1.0, 12), 3))


def _fit(data, sde, key, steps, gamma, hidden, depth):
    reg = sf.Regulariser(gamma=gamma) if gamma else None
    config = dsm.DSMConfig(steps=steps, chunk=min(500, steps), reg=reg, hidden=hidden, depth=depth)
    start = time.perf_counter()
    graphdef, params, losses = dsm.train_score(data, sde, key, config)
    return dsm.score_function(graphdef, params, sde), losses, time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
# 1. the 2-D mixture


def mixture_part(settings: FPESettings, out: pathlib.Path) -> dict:
    mixture = mixtures.ring()
    sde = MIXTURE_SDE
    key = jax.random.key(settings.seed)
    train = mixture.sample(jax.random.fold_in(key, 1), 20000)
    test = mixture.sample(jax.random.fold_in(key, 2), settings.nll_points)
    times = jnp.asarray(TIMES)
    t_min = 1e-3
    truth_nll = -float(jnp.mean(mixture.log_prob(test, jnp.full(test.shape[:1], t_min), sde)))
    models = {"exact score": (mixture.score(sde), None, 0.0)}
    for gamma in settings.mixture_gammas:
        score, losses, seconds = _fit(train, sde, jax.random.fold_in(key, 3), settings.mixture_steps, gamma, 128, 3)
        models[f"gamma={gamma:g}"] = (score, losses, seconds)
    rows, curves = [], {}
    for name, (score, losses, seconds) in models.items():
        r_fp = sf.residual_curve(score, test[:256], times, jax.random.fold_in(key, 4), sde)
        r_dsm = sf.dsm_curve(score, test[:256], times, jax.random.fold_in(key, 5), sde)
        nll = -float(jnp.mean(jax.jit(lambda x, s=score: likelihood.pf_ode_logp(s, x, sde, t_min=t_min))(test)))
        curves[name] = dict(r_fp=np.asarray(r_fp).tolist(), r_dsm=np.asarray(r_dsm).tolist())
        rows.append(dict(model=name, nll=nll, mean_r_fp=float(jnp.mean(r_fp)), mean_r_dsm=float(jnp.mean(r_dsm)),
                         train_seconds=seconds, final_loss=None if losses is None else losses[-1]))  # fmt: skip
    _plot_curves(curves, TIMES, out / "score_fpe_mixture_residuals.png")
    _plot_densities(models, mixture, sde, settings.grid, t_min, out / "score_fpe_mixture_densities.png")
    return dict(data="8-mode ring, radius 1, std 0.1", sde=dataclasses.asdict(sde), times=list(TIMES),
                true_nll=truth_nll, rows=rows, curves=curves)  # fmt: skip


def _plot_curves(curves, times, path, title="2-D mixture"):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (name, c) in enumerate(curves.items()):
        axes[0].plot(times, c["r_fp"], "-o", ms=3, color=f"C{i}", label=name)
        if "r_dsm" in c:
            axes[1].plot(times, c["r_dsm"], "-o", ms=3, color=f"C{i}", label=name)
    axes[0].set_ylabel(r"$r_{FP}(t)$: $E|\epsilon[s]|_2 / D$")
    axes[1].set_ylabel(r"$r_{DSM}(t)$: $E|s - \nabla \log p_{0t}|_2 / D$")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("t")
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    files.save_figure(fig, path, dpi=120)


def _plot_densities(models, mixture, sde, grid, t_min, path):
    axis = np.linspace(-1.6, 1.6, grid)
    xx, yy = np.meshgrid(axis, axis)
    points = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], 1), jnp.float32)
    panels = [("data", np.exp(np.asarray(mixture.log_prob(points))))]
    for name, (score, _, _) in models.items():
        if name != "exact score":
            logp = jax.jit(lambda x, s=score: likelihood.pf_ode_logp(s, x, sde, t_min=t_min, steps=50))(points)
            panels.append((name, np.exp(np.asarray(logp))))
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3))
    for ax, (name, density) in zip(axes, panels, strict=True):
        ax.imshow(density.reshape(grid, grid), origin="lower", extent=(-1.6, 1.6, -1.6, 1.6), cmap="viridis")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    files.save_figure(fig, path, dpi=120)


# ----------------------------------------------------------------------------------------------
# 2. digits


def load_digits(key):
    """scikit-learn's 1797 8x8 digits, 17 grey levels, uniformly dequantised to ``[0, 1]``: ``(N, 64)``."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as error:  # pragma: no cover - the test extra installs it
        raise ImportError("the digits part needs scikit-learn (pip install scikit-learn)") from error
    levels = sk_digits().data.astype(np.float32)
    u = np.asarray(jax.random.uniform(key, levels.shape))
    return (levels + u) / 17.0


def digits_part(settings: FPESettings) -> dict:
    key = jax.random.key(settings.seed + 1)
    data = jnp.asarray(load_digits(jax.random.fold_in(key, 0)))
    order = np.asarray(jax.random.permutation(jax.random.fold_in(key, 1), data.shape[0]))
    test, train = data[order[: settings.digits_test]], data[order[settings.digits_test :]]
    sde = DIGITS_SDE
    rows = []
    for gamma in settings.digits_gammas:
        score, losses, seconds = _fit(train, sde, jax.random.fold_in(key, 2), settings.digits_steps, gamma, 256, 3)
        logp = jax.jit(lambda x, s=score: likelihood.pf_ode_logp(s, x, sde, t_min=1e-3, steps=50))(test)
        r_fp = sf.residual_curve(score, test[:32], jnp.asarray(TIMES), jax.random.fold_in(key, 3), sde)
        rows.append(dict(gamma=gamma, bpd=float(jnp.mean(likelihood.bits_per_dim(logp, 64, 1.0 / 17))),
                         mean_r_fp=float(jnp.mean(r_fp)), train_seconds=seconds, final_loss=losses[-1]))  # fmt: skip
    return dict(data=f"scikit-learn digits, {train.shape[0]} train / {test.shape[0]} test, 17 levels", rows=rows,
                sde=dataclasses.asdict(sde))  # fmt: skip


# ----------------------------------------------------------------------------------------------
# 3. image models and 4. fpjax's own FP solution


def image_part(settings: FPESettings, out: pathlib.Path) -> dict:

    images = np.asarray(sample_images(32)[:2], np.float32)
    fp_config = FPConfig()
    solved = precompute(images, fp_config)
    m = jnp.asarray(solved.m)  # (N, T+1, H, W, C)
    per_channel = jax.vmap(lambda mm: fp.step_residuals(mm, fp_config), in_axes=-1)
    step_residuals = np.asarray(jax.vmap(per_channel)(m))  # (N, C, T)
    trajectories = embed(images, m, fp_config)
    unet = UNetConfig(channels=8, num_images=len(images))
    key = jax.random.key(settings.seed + 2)
    curves = {}
    for name, objective in (("fpjax (embedded, eq. 29)", EmbeddedDenoising()), ("DDPM (DSM)", dd.DDPM())):
        config = training.TrainConfig(objective=objective, target_ssim=None, max_steps=10**9, batch_size=8,
                                      max_total_seconds=settings.image_budget, checkpoint_every=10**9)  # fmt: skip
        result = training.train(images, trajectories, fp_config if name.startswith("fpjax") else None,
                                unet_config=unet, config=config, key=key, mode="mixed", progress=False)  # fmt: skip
        objective, config = result.config.objective, result.config  # bound to the run's SDE
        net = training.network(result.graphdef, result.state.ema, result.uses_labels)
        data = TrainData(trajectories, jnp.arange(len(images)))
        score = lambda x, t, labels, net=net, objective=objective, config=config: objective.score(
            net, labels, config)(x, t)  # fmt: skip
        residual = jax.jit(lambda x, t, k, labels, score=score, objective=objective: sf.residual(
            score, x, t, objective.sde, k, sf.ESTIMATED, labels))  # fmt: skip
        r_fp, relative = [], []
        for i, t in enumerate(TIMES):
            # The points are drawn at the time the residual is evaluated at (x ~ p_t).
            at_t = jnp.full((config.batch_size,), t, trajectories.dtype)
            x, tb, labels = objective.fpe_points(jax.random.fold_in(key, i), data, config, at_t)
            x, tb, labels = x[: settings.image_points], tb[: settings.image_points], labels[: settings.image_points]
            eps = residual(x, tb, jax.random.fold_in(key, 100 + i), labels)
            s = score(x, tb, labels)
            r_fp.append(float(jnp.mean(sf.per_dimension_norm(eps))))
            relative.append(float(jnp.mean(jnp.linalg.norm(eps.reshape(len(x), -1), axis=1)
                                           / jnp.linalg.norm(s.reshape(len(x), -1), axis=1))))  # fmt: skip
        curves[name] = dict(r_fp=r_fp, relative=relative, steps=result.log[-1]["step"],
                            sde=type(objective.sde).__name__)  # fmt: skip
    _plot_curves({k: dict(r_fp=v["r_fp"]) for k, v in curves.items()}, TIMES, out / "score_fpe_images.png", "images")
    return dict(images="fpjax sample images 0-1, 32x32", budget=settings.image_budget, curves=curves,
                fp_residual=dict(per_step_max=step_residuals.max((0, 1)).tolist(), max=float(step_residuals.max()),
                                 median=float(np.median(step_residuals)), outer_tol=fp_config.scheme.outer_tol,
                                 solver_residual_max=float(np.asarray(solved.stats["residual"]).max())))  # fmt: skip


# ----------------------------------------------------------------------------------------------
# report


def run_experiment(out: pathlib.Path, settings: FPESettings, parts=("mixture", "digits", "images")) -> dict:

    result = dict(experiment="score-fpe", settings=dataclasses.asdict(settings), machine=machine())
    if "mixture" in parts:
        result["mixture"] = mixture_part(settings, out)
    if "digits" in parts:
        result["digits"] = digits_part(settings)
    if "images" in parts:
        result["images"] = image_part(settings, out)
    files.write_json(out / "score_fpe.json", result)
    return result


def markdown(result) -> str:
    lines = [f"Settings: `{result['settings']}`.\n"] if "settings" in result else []
    if "mixture" in result:
        m = result["mixture"]
        lines += [f"### 2-D mixture ({m['data']}; VE SDE sigma {m['sde']['sigma_min']}..{m['sde']['sigma_max']})\n",
                  f"Held-out NLL through the probability-flow ODE (nats, t_min = 1e-3); the true density's: "
                  f"{m['true_nll']:.3f}. Mean over t of r_FP and r_DSM (times {m['times'][0]}..{m['times'][-1]}).\n",
                  "| model | NLL | mean r_FP | mean r_DSM | training s |", "|---|---|---|---|---|"]  # fmt: skip
        for r in m["rows"]:
            lines.append(f"| {r['model']} | {r['nll']:.3f} | {r['mean_r_fp']:.4g} | {r['mean_r_dsm']:.4g} | "
                         f"{r['train_seconds']:.1f} |")  # fmt: skip
        lines += [
            "\n![residuals](score_fpe_mixture_residuals.png)\n",
            "![densities](score_fpe_mixture_densities.png)\n",
        ]
    if "digits" in result:
        d = result["digits"]
        lines += [f"### Digits ({d['data']}; VE SDE sigma {d['sde']['sigma_min']}..{d['sde']['sigma_max']})\n",
                  "| gamma | test NLL (bits/dim) | mean r_FP | training s |", "|---|---|---|---|"]  # fmt: skip
        for r in d["rows"]:
            lines.append(f"| {r['gamma']:g} | {r['bpd']:.3f} | {r['mean_r_fp']:.4g} | {r['train_seconds']:.1f} |")
    if "images" in result:
        im = result["images"]
        lines += [f"\n### Images ({im['images']}; each model trained {im['budget']:g} s)\n",
                  "r_FP(t) by Hutchinson + finite difference, each model on its own SDE (fpjax: dx = 0.5 dW on "
                  "[0, 1] pixels; DDPM: the VP SDE of its chain on [-1, 1]); `relative` is |eps| / |s|.\n",
                  "| model | SDE | steps | r_FP at t = " + ", ".join(f"{t:g}" for t in TIMES[::3])
                  + " | mean relative |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, c in im["curves"].items():
            lines.append(f"| {name} | {c['sde']} | {c['steps']} | " + ", ".join(f"{v:.3g}" for v in c["r_fp"][::3])
                         + f" | {np.mean(c['relative']):.3g} |")  # fmt: skip
        f = im["fp_residual"]
        lines += ["\n![images](score_fpe_images.png)\n",
                  f"fpjax's own FP solutions (2 sample images, T = 100): discrete step residual "
                  f"`||F(m^n)|| / ||m^(n-1)/dt||` recomputed from the stored trajectories: max {f['max']:.2e}, median "
                  f"{f['median']:.2e} (outer tolerance {f['outer_tol']:g}; the solver's own report: max "
                  f"{f['solver_residual_max']:.2e}).\n"]  # fmt: skip
    return "\n".join(lines)
