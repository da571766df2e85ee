"""fpjax: fast score pre-computation for score-based diffusion models, in JAX.

The public surface, by the job it does (the README's "Architecture" maps the packages):

* Solve the Fokker-Planck equation of an image on its pixel grid: :func:`solve`, :func:`solve_image`,
  :func:`solve_images`, :class:`FPConfig` (the problem) with a scheme (:class:`LogDensity`,
  :class:`Density`, :class:`Spectral`; their linear solves' options: :class:`Krylov`),
  :class:`FPSolution`, :func:`initial_log_density`, :func:`score`, :func:`pixel_score`.
* Many images at once, into a resumable store: :func:`precompute`.
* Score embedding and training: :func:`embed`, :func:`train`, :class:`TrainConfig`, :class:`DDPM`.
* The forward SDE and sampling: :func:`sde_from_fp_config`, :func:`denoise`, :func:`generate`,
  :class:`SamplerConfig`; PDS: :mod:`fpjax.diffusion.pds`; the score FPE: :mod:`fpjax.diffusion.score_fpe`.

Trajectories of images keep the channels last, ``(N, T+1, H, W, C)``, from :func:`solve_images` through
:func:`precompute` and its store to :func:`embed`; scores carry their component last, ``x`` first, in pixel
units: ``docs/conventions.md`` has the layouts.

The solver names are imported eagerly; the learning and sampling ones on first use (they pull in Flax,
Optax and Orbax, which ``import fpjax`` alone should not pay for).
"""

import importlib

from fpjax.batch.precompute import PrecomputeResult, precompute
from fpjax.learn.embedding import embed
from fpjax.solver.initial import check_image, check_images, initial_log_density
from fpjax.solver.problem import (
    SCHEMES,
    ConvergenceError,
    Density,
    FPConfig,
    FPSolution,
    Krylov,
    LogDensity,
    Spectral,
    check_solution,
    diffusion_schedule,
)
from fpjax.solver.scores import pixel_score, score
from fpjax.solver.solve import solve, solve_image, solve_images
from fpjax.solver.status import Status

__version__ = "0.1.0"

_LAZY = {
    "train": ("fpjax.learn.trainer", "train"),
    "TrainConfig": ("fpjax.learn.trainer", "TrainConfig"),
    "DDPM": ("fpjax.learn.ddpm", "DDPM"),
    "SamplerConfig": ("fpjax.diffusion.sampling", "SamplerConfig"),
    "denoise": ("fpjax.diffusion.sampling", "denoise"),
    "generate": ("fpjax.diffusion.sampling", "generate"),
    "sde_from_fp_config": ("fpjax.diffusion.sde", "from_fp_config"),
    "pds": ("fpjax.diffusion.pds", None),
    "score_fpe": ("fpjax.diffusion.score_fpe", None),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'fpjax' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ConvergenceError",
    "Density",
    "FPConfig",
    "FPSolution",
    "Krylov",
    "LogDensity",
    "PrecomputeResult",
    "SCHEMES",
    "Spectral",
    "Status",
    "check_solution",
    "diffusion_schedule",
    "embed",
    "initial_log_density",
    "pixel_score",
    "precompute",
    "score",
    "solve",
    "solve_image",
    "solve_images",
    "check_image",
    "check_images",
    *_LAZY,
]
