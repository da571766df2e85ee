"""``fpjax experiment pds-exact``: PDS judged on exact scores (issue 17).

A trained network's errors blur any judgement of a sampler; these models have no such errors:

1. The stationary Gaussian fitted to the CIFAR-10 trucks (:func:`fpjax.diffusion.exact.fit_gaussian`): every
   sampler's output law, and its KL divergence to the data Gaussian, in closed form
   (:func:`fpjax.diffusion.exact.propagate`) at every step count, plain and with PDS's frequency preconditioner
   over ``alpha``: steps (and score evaluations) to fixed KL levels, the paper-form bias floors against their
   closed-form limit, the best ``alpha`` against steps, both masks (the paper's normalisation and the released
   code's).
2. The perturbed empirical mixture of the same trucks (:class:`fpjax.diffusion.exact.EmpiricalMixture`), sampled
   by the real sampler code: the median RMS distance and SSIM to the nearest truck, and how many distinct trucks
   the samples land on.

Writes ``report.md``, ``pds_exact.json`` and ``pds_exact_kl_vs_steps.png``.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from fpjax import files
from fpjax.data import cifar_subset, load_cifar10
from fpjax.diffusion import exact, pds, sampling
from fpjax.diffusion.sde import VESDE
from fpjax.eval import metrics
from fpjax.provenance import machine


@dataclasses.dataclass(frozen=True)
class ExactSettings:
    """What the run depends on (written into the report)."""

    images: int = 200
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    counts: tuple = tuple(range(1, 201)) + (220, 250, 300, 350, 400, 500, 600, 700, 800, 900, 1000)
    alphas: tuple = (1.5, 2.0, 3.0, 5.0, 10.0, 20.0)
    thresholds: tuple = (100.0, 10.0, 1.0)
    best_alpha_steps: tuple = (10, 20, 50, 100, 200, 500, 1000)
    mask_alphas: tuple = (1.8, 3.0, 10.0)
    mask_steps: tuple = (20, 50, 100, 1000)
    heun_sigma_min: float = 0.002
    mixture_steps: tuple = (10, 20, 50, 100, 200)
    mixture_alphas: tuple = (10.0, 5.0, 3.0)
    mixture_samples: int = 64
    rms_level: float = 0.002
    seed: int = 0
    cifar: str | None = None
    only: tuple = ()  # sampler names to run (empty: all of :func:`samplers`; the floors need the two reverse SDEs)


QUICK_EXACT = ExactSettings(images=24, counts=(2, 5, 10, 20, 40), alphas=(3.0, 10.0), best_alpha_steps=(10, 40),
                            mask_alphas=(3.0,), mask_steps=(10,), mixture_steps=(5,), mixture_alphas=(10.0,),
                            mixture_samples=4)  # fmt: skip

PLAIN = "plain"


def samplers(settings: ExactSettings) -> dict:
    """``{name: (config factory of the padded length, takes a preconditioner)}``: every sampler of the tables.

    PDS in the paper's form (``pds_form="paper"``, named: the library's default is the marginal-preserving form)
    except in the row that says otherwise."""
    return {
        "reverse SDE (Euler-Maruyama)": (lambda k: sampling.SamplerConfig(steps=k, clip=False, pds_form="paper"), True),
        "reverse SDE, marginal-preserving PDS": (
            lambda k: sampling.SamplerConfig(steps=k, clip=False, pds_form="marginal"), True),
        "predictor-corrector (fpjax)": (
            lambda k: sampling.SamplerConfig(steps=k, clip=False, corrector_steps=1, pds_form="paper"), True),
        "released PDS sampler (RD + Langevin)": (
            lambda k: sampling.ReverseDiffusionConfig(steps=k, pds_form="paper"), True),
        "PF-ODE Heun (EDM, rho=7)": (lambda k: sampling.HeunConfig(steps=k, sigma_min=settings.heun_sigma_min), False),
        "DDIM": (lambda k: sampling.DDIMConfig(steps=k), False),
        "PF-ODE Euler": (lambda k: sampling.SamplerConfig(steps=k, clip=False, method="ode"), False),
    }  # fmt: skip


def _label(alpha) -> str:
    return PLAIN if alpha is None else f"a={alpha:g}"


def kl_curve(model, sde, factory, preconditioner, counts) -> list:
    """The exact KL (nats) of the sampler ``factory(K)`` at each of ``counts`` steps: one compiled, vmapped
    propagation per padded length (counts up to 200 padded to 200, the rest to their maximum)."""
    counts = np.asarray(counts)
    out = np.empty(len(counts))
    data = model.moments()
    for chunk in (counts <= 200, counts > 200):
        if not chunk.any():
            continue
        start = exact.prior_moments(model, sde, 1.0, 0.5, preconditioner)
        fn = _kl_function(model, sde, factory(int(counts[chunk].max())), start, data)
        out[chunk] = np.asarray(fn(jnp.asarray(counts[chunk]), preconditioner))
    return [float(v) for v in out]


def _kl_function(model, sde, config, start, data):
    """``(step counts (n,), M) -> KL (n,)``, jitted and vmapped over the counts."""
    return jax.jit(jax.vmap(lambda n, m: exact.kl(exact.propagate(model, sde, config, start, m, n), data), (0, None)))


def gaussian_curves(model, images, sde, settings: ExactSettings) -> dict:
    """``{sampler: {"plain" | "a=..": [KL per count]}}`` on the Gaussian, paper-normalised frequency masks."""
    curves = {}
    for name, (factory, takes_m) in samplers(settings).items():
        if settings.only and name not in settings.only:
            continue
        alphas = settings.alphas if takes_m else ()
        rows = {} if "marginal" in name else {PLAIN: kl_curve(model, sde, factory, None, settings.counts)}
        for alpha in alphas:
            m = pds.from_data(images, alpha, pixel=False)
            rows[_label(alpha)] = kl_curve(model, sde, factory, m, settings.counts)
        curves[name] = rows
        print(f"pds-exact: {name} done", flush=True)
    return curves


def _first(counts, values, level):
    hit = [n for n, v in zip(counts, values, strict=True) if np.isfinite(v) and v <= level]
    return min(hit) if hit else None


def steps_to_levels(curves, settings: ExactSettings) -> dict:
    """Per sampler: the fewest steps (and score evaluations) to each KL level, plain and with the best ``alpha``."""
    configs = samplers(settings)
    table = {}
    for name, rows in curves.items():
        config = configs[name][0](1)
        entry = {}
        for level in settings.thresholds:
            plain = _first(settings.counts, rows[PLAIN], level) if PLAIN in rows else None
            pds_hits = [(_first(settings.counts, v, level), k) for k, v in rows.items() if k != PLAIN]
            pds_hits = [(n, k) for n, k in pds_hits if n is not None]
            best = min(pds_hits) if pds_hits else None
            entry[f"{level:g}"] = dict(
                plain=plain, plain_evals=None if plain is None else exact.score_evaluations(config, plain),
                pds=None if best is None else best[0], pds_alpha=None if best is None else best[1],
                pds_evals=None if best is None else exact.score_evaluations(config, best[0]))  # fmt: skip
        table[name] = entry
    return table


def _at(counts, values, steps):
    """The value at ``steps`` of a curve over ``counts`` (``None`` where not computed)."""
    return values[list(counts).index(steps)] if steps in counts else None


def floors(model, images, curves, settings: ExactSettings) -> list:
    """The paper form's KL at the largest step count per ``alpha`` against the closed-form limit, and the
    marginal-preserving form's KL there."""
    n = max(settings.counts)
    em, marginal = curves["reverse SDE (Euler-Maruyama)"], curves["reverse SDE, marginal-preserving PDS"]
    rows = []
    for alpha in sorted(settings.alphas, reverse=True):
        limit = float(exact.floor_kl(model, pds.from_data(images, alpha, pixel=False)))
        rows.append(dict(alpha=alpha, steps=n, paper=_at(settings.counts, em[_label(alpha)], n), limit=limit,
                         marginal=_at(settings.counts, marginal[_label(alpha)], n)))  # fmt: skip
    return rows


def best_alphas(curves, settings: ExactSettings) -> dict:
    """Per stochastic sampler and step count: the setting (plain or an ``alpha``) of least KL."""
    out = {}
    for name in ("reverse SDE (Euler-Maruyama)", "predictor-corrector (fpjax)", "released PDS sampler (RD + Langevin)"):
        if name not in curves:
            continue
        rows = curves[name]
        out[name] = {str(n): min(rows, key=lambda k, n=n: _at(settings.counts, rows[k], n))
                     for n in settings.best_alpha_steps if n in settings.counts}  # fmt: skip
    return out


def masks(model, images, sde, settings: ExactSettings) -> list:
    """The released sampler's KL with the paper's and the released code's mask normalisation."""
    factory = samplers(settings)["released PDS sampler (RD + Langevin)"][0]
    rows = []
    for alpha in settings.mask_alphas:
        for mask in ("paper", "released"):
            m = pds.from_data(images, alpha, pixel=False, mask=mask)
            kls = dict(zip(settings.mask_steps, kl_curve(model, sde, factory, m, settings.mask_steps), strict=True))
            rows.append(dict(alpha=alpha, mask=mask, min_multiplier=float(jnp.min(1.0 / m.r_f)),
                             max_multiplier=float(jnp.max(1.0 / m.r_f)), kl=kls))  # fmt: skip
    return rows


def _mixture_sampler(name, steps, shape, score, sde):
    """A jitted ``(key, M) -> samples`` for the mixture: fpjax's reverse SDE or the released sampler, from
    :func:`fpjax.diffusion.sampling.prior_sample`."""
    if name == "reverse SDE (Euler-Maruyama)":
        config = sampling.SamplerConfig(steps=steps, clip=False, pds_form="paper")
        return jax.jit(lambda k, m: sampling.generate(score, shape, k, sde, config, preconditioner=m))
    config = sampling.ReverseDiffusionConfig(steps=steps, pds_form="paper")

    def run(key, m):
        prior_key, key = jax.random.split(key)
        x = sampling.prior_sample(prior_key, shape, sde, 1.0, 0.5, preconditioner=m)
        return sampling.reverse_diffusion_sample(score, x, key, sde, config, preconditioner=m)

    return jax.jit(run)


def mixture_rows(images, sde, settings: ExactSettings) -> list:
    """Samples of the empirical mixture by the real samplers: median nearest-truck RMS distance and SSIM, and
    the number of distinct trucks hit, per sampler, step count and setting."""
    mixture = exact.EmpiricalMixture(jnp.asarray(images, jnp.float32))
    score = mixture.score(sde)
    shape = (settings.mixture_samples,) + images.shape[1:]
    key = jax.random.key(settings.seed)
    rows = []
    for name in ("reverse SDE (Euler-Maruyama)", "released PDS sampler (RD + Langevin)"):
        for steps in settings.mixture_steps:
            fn = _mixture_sampler(name, steps, shape, score, sde)
            for alpha in (None, *settings.mixture_alphas):
                m = None if alpha is None else pds.from_data(images, alpha, pixel=False)
                x = fn(jax.random.fold_in(key, steps), m)
                index, rms = mixture.nearest(x)
                best_ssim, _ = metrics.nearest_ssim(jnp.clip(x, 0.0, 1.0), mixture.points)
                rows.append(dict(sampler=name, steps=steps, setting=_label(alpha),
                                 median_rms=float(jnp.median(rms)), median_ssim=float(jnp.median(best_ssim)),
                                 distinct=int(np.unique(np.asarray(index)).size),
                                 finite=bool(jnp.all(jnp.isfinite(x)))))  # fmt: skip
        print(f"pds-exact: mixture, {name} done", flush=True)
    return rows


def _plot(curves, settings: ExactSettings, path):
    names = [n for n, rows in curves.items() if len(rows) > 1]
    rows = -(-(len(names) + 1) // 3)
    fig, grid = plt.subplots(rows, 3, figsize=(13, 3.8 * rows), sharey=True, squeeze=False)
    for ax in grid.reshape(-1)[len(names) + 1 :]:
        ax.set_visible(False)
    axes = list(grid.reshape(-1)[: len(names) + 1])
    colours = plt.cm.viridis(np.linspace(0.0, 0.9, max(len(settings.alphas), 1)))
    for ax, name in zip(axes, names, strict=False):
        for label, values in curves[name].items():
            colour = "k" if label == PLAIN else colours[[_label(a) for a in settings.alphas].index(label)]
            ax.plot(settings.counts, values, "--" if label == PLAIN else "-", color=colour, label=label, lw=1)
        ax.set_title(name, fontsize=8)
    configs = samplers(settings)
    for name, rows in curves.items():
        if PLAIN in rows:
            evals = [exact.score_evaluations(configs[name][0](1), n) for n in settings.counts]
            axes[-1].plot(evals, rows[PLAIN], label=name, lw=1)
    axes[-1].set_title("plain samplers against score evaluations", fontsize=8)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(1e-3, 1e6)
        ax.set_xlabel("steps" if ax is not axes[-1] else "score evaluations")
        for level in settings.thresholds:
            ax.axhline(level, color="grey", lw=0.5, ls=":")
        ax.legend(fontsize=6)
    axes[0].set_ylabel("KL to the data Gaussian (nats)")
    fig.tight_layout()
    files.save_figure(fig, path, dpi=110)
    plt.close(fig)


def load_trucks(settings: ExactSettings):
    """The first ``settings.images`` CIFAR-10 test trucks as ``(N, 32, 32, 3)`` float64 NumPy, or ``None`` where the
    subset is absent."""
    path = settings.cifar or cifar_subset()
    if path is None or not pathlib.Path(path).exists():
        return None, None
    images, _ = load_cifar10(path, "truck")
    return np.asarray(images[: settings.images], np.float64), f"CIFAR-10 test trucks ({path})"


def run_experiment(out: pathlib.Path, settings: ExactSettings) -> dict:
    """Everything above, written to ``out``; skips (``result["skipped"]``) where the CIFAR-10 subset is absent."""
    images, source = load_trucks(settings)
    if images is None:
        result = dict(experiment="pds-exact", skipped="the CIFAR-10 subset is absent (FPJAX_DATA_ROOT)")
        files.write_text(out / "report.md", markdown(result))
        return result
    sde = VESDE(settings.sigma_min, settings.sigma_max)
    with jax.enable_x64(True):  # the closed forms in float64: KL down to 1e-3 nats over 3072 modes
        model = exact.fit_gaussian(jnp.asarray(images))
        curves = gaussian_curves(model, images, sde, settings)
        result = dict(experiment="pds-exact", source=source, machine=machine(), settings=dataclasses.asdict(settings),
                      curves=curves, steps_to=steps_to_levels(curves, settings),
                      floors=floors(model, images, curves, settings), best_alpha=best_alphas(curves, settings),
                      masks=masks(model, images, sde, settings))  # fmt: skip
    result["mixture"] = mixture_rows(images.astype(np.float32), sde, settings)
    _plot(curves, settings, out / "pds_exact_kl_vs_steps.png")
    files.write_json(out / "pds_exact.json", result)
    files.write_text(out / "report.md", markdown(result))
    return result


def _cell(n, evals, alpha=None):
    if n is None:
        return "never"
    return f"{n} ({evals}{', ' + alpha if alpha else ''})"


def _kl_text(value):
    return "-" if value is None else (f"{value:.3g}" if value < 1e4 else f"{value:.1e}")


def _level_table(result) -> list:
    s = result["settings"]
    levels = [f"{v:g}" for v in s["thresholds"]]
    lines = ["| sampler | " + " | ".join(f"KL <= {v}: plain" for v in levels) + " | "
             + " | ".join(f"KL <= {v}: PDS (best alpha)" for v in levels) + " |",
             "|---|" + "---|" * (2 * len(levels))]  # fmt: skip
    for name, entry in result["steps_to"].items():
        has_plain = name in _with_plain(result)
        plain = [_cell(entry[v]["plain"], entry[v]["plain_evals"]) if has_plain else "(= Euler-Maruyama)"
                 for v in levels]  # fmt: skip
        with_pds = [_cell(entry[v]["pds"], entry[v]["pds_evals"], entry[v]["pds_alpha"])
                    if len(result["curves"][name]) > 1 else "n/a" for v in levels]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(plain + with_pds) + " |")
    return lines


def _alpha_table(result) -> list:
    """Steps to each KL level per sampler and setting (plain and every ``alpha``), from the curves."""
    s = result["settings"]
    levels = s["thresholds"]
    lines = ["| sampler | setting | " + " | ".join(f"steps to KL <= {v:g}" for v in levels) + " |",
             "|---|---|" + "---|" * len(levels)]  # fmt: skip
    for name, rows in result["curves"].items():
        if len(rows) < 2:
            continue
        for label, values in rows.items():
            cells = [str(_first(s["counts"], values, v) or "never") for v in levels]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    return lines


def _with_plain(result):
    return [name for name, rows in result["curves"].items() if PLAIN in rows]


def _kl_table(result, steps=(10, 20, 50, 100, 200, 1000)) -> list:
    s = result["settings"]
    steps = [n for n in steps if n in s["counts"]]
    lines = [
        "| sampler | setting | " + " | ".join(f"{n} steps" for n in steps) + " |",
        "|---|---|" + "---|" * len(steps),
    ]
    for name, rows in result["curves"].items():
        for label, values in rows.items():
            cells = [_kl_text(_at(s["counts"], values, n)) for n in steps]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    return lines


def _mixture_table(result) -> list:
    head = "| sampler | steps | setting | median RMS to nearest truck | median SSIM to nearest | distinct trucks hit |"
    lines = [head, "|---|---|---|---|---|---|"]
    n = result["settings"]["mixture_samples"]
    for r in result["mixture"]:
        rms = f"{r['median_rms']:.4f}" if r["finite"] else "diverged"
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['setting']} | {rms} | {r['median_ssim']:.3f} | "
                     f"{r['distinct']} of {n} |")  # fmt: skip
    level = result["settings"]["rms_level"]
    lines += [f"\nFewest steps (of {result['settings']['mixture_steps']}) to a median RMS <= {level:g}:\n",
              "| sampler | " + " | ".join(dict.fromkeys(r["setting"] for r in result["mixture"])) + " |",
              "|---|" + "---|" * len(dict.fromkeys(r["setting"] for r in result["mixture"]))]  # fmt: skip
    for sampler in dict.fromkeys(r["sampler"] for r in result["mixture"]):
        mine = [r for r in result["mixture"] if r["sampler"] == sampler]
        cells = [str(_first([r["steps"] for r in mine if r["setting"] == setting],
                            [r["median_rms"] for r in mine if r["setting"] == setting], level) or "never")
                 for setting in dict.fromkeys(r["setting"] for r in mine)]  # fmt: skip
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    return lines


def markdown(result) -> str:
    if "skipped" in result:
        return f"# PDS on exact scores\n\nSkipped: {result['skipped']}.\n"
    s = result["settings"]
    host = result["machine"]
    lines = [
        "# PDS on exact scores (issue 17)\n",
        "Command: `fpjax experiment pds-exact --out DIR` (about 25 minutes on 2 CPU cores, most of it the mixture).\n",
        f"Data: {result['source']}, the first {s['images']}, 32x32x3 (3072 dimensions). Forward SDE: VE, sigma "
        f"{s['sigma_min']:g}..{s['sigma_max']:g} (`VESDE`, variance `sigma(t)^2 - sigma_min^2`). Prior: "
        "`sampling.prior_sample` (mean 0.5, `M z` with a preconditioner). Preconditioner: frequency only (as the "
        "paper does on CIFAR-10), estimated from the same images, normalised as in the paper's text unless said. "
        f"Machine: {host['cpu_count']} CPU cores, JAX {host['jax']} on {host['backend']}.\n",
        "## 1. The stationary Gaussian: steps to a KL level\n",
        "Exact KL (nats) of each sampler's output to the Gaussian fitted to the trucks, from the closed-form "
        "propagation of each Fourier mode's mean and variance (`fpjax.diffusion.exact.propagate`, float64). Cells: "
        "fewest steps (score evaluations, best alpha) to reach the level, over step counts "
        f"1..200 and {', '.join(str(n) for n in s['counts'] if n > 200)}; PDS: the best of alpha in {s['alphas']} "
        "(an oracle choice that favours PDS). Correctors: one step, snr 0.16. Heun: EDM's schedule, rho 7, "
        f"sigma_min {s['heun_sigma_min']:g}. DDIM: the uniform-in-t grid (geometric sigmas).\n",
        *_level_table(result),
        "\nPer setting (the issue's figures used alpha <= 10):\n",
        *_alpha_table(result),
        "\nKL at a few step counts:\n",
        *_kl_table(result),
        "\n![KL against steps](pds_exact_kl_vs_steps.png)\n",
        "## 2. The paper's form is biased: floors against the closed-form limit\n",
        "The paper's preconditioned reverse SDE (`M M^T` on the score, `M z` noise) at the largest step count, "
        "against the KL of its limit, each mode's variance `S m^2 / (2 m^2 - 1)` (`fpjax.diffusion.exact.floor_kl`); "
        "the marginal-preserving form (`(I + M M^T)/2` on the score) at the same step count.\n",
        "| alpha | steps | paper's form | closed-form limit | marginal-preserving form |",
        "|---|---|---|---|---|",
        *[
            f"| {r['alpha']:g} | {r['steps']} | {_kl_text(r['paper'])} | {r['limit']:.3g} | {_kl_text(r['marginal'])} |"
            for r in result["floors"]
        ],  # fmt: skip
        "\n## 3. Best alpha against steps (least KL; eq. 50 says it should rise with the steps)\n",
        "| sampler | " + " | ".join(f"{n} steps" for n in next(iter(result["best_alpha"].values()))) + " |",
        "|---|" + "---|" * len(next(iter(result["best_alpha"].values()))),
        *[f"| {name} | " + " | ".join(best.values()) + " |" for name, best in result["best_alpha"].items()],
        "\n## 4. The two masks (released sampler)\n",
        "Paper: `R <- (R / max R + alpha - 1) / alpha` (multipliers `1/R >= 1`); released code: "
        "`(R + alpha - 1) / alpha` (`R = log(E|F x|^2 + 1)` up to ~12.6 here, so low frequencies are shrunk and keep "
        "the prior's noise).\n",
        "| alpha | mask | multipliers 1/R | " + " | ".join(f"KL, {n} steps" for n in s["mask_steps"]) + " |",
        "|---|---|---|" + "---|" * len(s["mask_steps"]),
        *[
            f"| {r['alpha']:g} | {r['mask']} | {r['min_multiplier']:.3f}..{r['max_multiplier']:.3f} | "
            + " | ".join(_kl_text(v) for v in r["kl"].values())
            + " |"
            for r in result["masks"]
        ],  # fmt: skip
        "\n## 5. The empirical mixture (the real sampler code, exact mixture score)\n",
        f"{s['mixture_samples']} samples per row; the correct sampler memorises, so the distance to the nearest "
        "truck measures the sampler's error. SSIM on samples clipped to [0, 1]. The released sampler's last step "
        "returns the predictor's mean (score_sde's `noise_removal`), Tweedie's estimate, which for the mixture at "
        "noise ~0.01 is the nearest truck itself: its plain rows are 0 by construction, and its PDS rows measure "
        "what `M M^T` does to that step.\n",
        *_mixture_table(result),
    ]
    return "\n".join(lines) + "\n"
