"""fpjax: fast score pre-computation for score-based diffusion models, in JAX.

Solve the log-density Fokker-Planck equation of each image on its pixel grid,
turn the solution into scores, and (in later modules) embed, train and sample.
"""

from fpjax.batch.precompute import PrecomputeResult, precompute
from fpjax.learn.embedding import embed
from fpjax.solver.initial import initial_log_density, validate_image
from fpjax.solver.problem import ConvergenceError, FPConfig, FPSolution, check_solution, diffusion_schedule
from fpjax.solver.scores import pixel_score, score
from fpjax.solver.solve import solve, solve_image, solve_images

__version__ = "0.1.0"

__all__ = [
    "ConvergenceError",
    "FPConfig",
    "FPSolution",
    "check_solution",
    "diffusion_schedule",
    "embed",
    "initial_log_density",
    "precompute",
    "PrecomputeResult",
    "pixel_score",
    "score",
    "solve",
    "solve_image",
    "solve_images",
    "validate_image",
]
