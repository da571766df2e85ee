"""Reverse-time sampling with a score ``s(x, t)``: reverse SDE and probability-flow ODE.

Reverse SDE (cross-matrix paper eq. 30, DESIGN.md section 6), on a descending
time grid ``t_start = tau_0 > tau_1 > ... > tau_K = t_end`` with
``dt_k = tau_k - tau_(k+1)``::

    x <- x + (g(tau_k)^2 s(x, tau_k) - f(x, tau_k)) dt_k + g(tau_k) sqrt(dt_k) z

and the deterministic probability-flow ODE (Euler)::

    x <- x + (1/2 g(tau_k)^2 s(x, tau_k) - f(x, tau_k)) dt_k

Both run as one ``lax.scan``, batched over the leading axis, jittable. The last
SDE step adds no noise unless ``final_noise``; ``tweedie`` adds a last
denoising step ``x + tweedie * s(x, t_end)`` (Tweedie's formula for a model
trained to denoise at one noise variance ``tweedie``, e.g. ``lambda^2`` of the
embedded loss). The drift ``f`` is zero unless given (the papers' setting).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Attributes:
    steps: number of reverse steps ``K``.
    method: ``"sde"`` (eq. 30) or ``"ode"`` (probability flow).
    schedule: ``"uniform"`` times, or ``"quadratic"`` (``tau = t_end + (t_start - t_end) (1 - k/K)^2``:
      finer steps near ``t_end``).
    t_start, t_end: the time interval, ``1 >= t_start > t_end >= 0``.
    final_noise: whether the last SDE step adds noise.
    tweedie: noise variance of a final Tweedie denoising step (``None``: no such step).
    clip: clip the result to ``[0, 1]``.
    corrector_steps: Langevin corrector steps before each predictor step (predictor-corrector; 0: none).
    snr: the corrector's signal-to-noise ratio (Song et al.'s step rule).

    Fewer ``steps`` over the same interval take proportionally longer steps, which keeps the accumulated
    update: PDS's ``T/c`` speed-up knob.
    """

    steps: int = 100
    method: str = "sde"
    schedule: str = "uniform"
    t_start: float = 1.0
    t_end: float = 0.0
    final_noise: bool = False
    tweedie: float | None = None
    clip: bool = True
    corrector_steps: int = 0
    snr: float = 0.16

    def __post_init__(self):
        if self.method not in ("sde", "ode"):
            raise ValueError(f"method must be 'sde' or 'ode', got {self.method!r}")
        if self.schedule not in ("uniform", "quadratic"):
            raise ValueError(f"schedule must be 'uniform' or 'quadratic', got {self.schedule!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.t_end < self.t_start <= 1.0:
            raise ValueError(f"need 0 <= t_end < t_start <= 1, got t_start={self.t_start}, t_end={self.t_end}")

    def times(self, dtype=jnp.float32):
        """``(steps + 1,)`` descending times ``tau_0 = t_start .. tau_K = t_end``."""
        u = jnp.linspace(0.0, 1.0, self.steps + 1, dtype=dtype)
        if self.schedule == "quadratic":
            return self.t_end + (self.t_start - self.t_end) * (1.0 - u) ** 2
        return self.t_start - (self.t_start - self.t_end) * u


def constant_g(value: float = 0.5) -> Callable:
    return lambda t: jnp.full(jnp.shape(t), value, jnp.result_type(t))


def g_function(fp_config) -> Callable:
    """``g(t)`` of an :class:`fpjax.FPConfig`, for any ``t`` in ``[0, 1]`` (piecewise linear between the ``t_n``)."""
    import numpy as np

    from fpjax.solver import log_density as fp

    if callable(fp_config.g):
        return fp_config.g
    if np.ndim(fp_config.g) == 0:
        return constant_g(float(fp_config.g))
    values = fp.diffusion_schedule(fp_config)
    grid = jnp.arange(fp_config.T + 1, dtype=values.dtype) * fp_config.dt
    return lambda t: jnp.interp(t, grid, values)


def integrated_variance(g: Callable, t_start: float, t_end: float = 0.0, points: int = 1001):
    """``int_{t_end}^{t_start} g(t)^2 dt`` (trapezoidal rule): the variance the forward SDE adds."""
    t = jnp.linspace(t_end, t_start, points)
    return jnp.trapezoid(g(t) ** 2, t)


def reverse_sample(
    score: Callable, x, key, g: Callable, config: SamplerConfig, drift: Callable | None = None, preconditioner=None
):
    """Integrate the reverse SDE / probability-flow ODE from ``x`` at ``t_start`` down to ``t_end``.

    With a ``preconditioner`` ``M`` (:class:`~fpjax.diffusion.pds.Preconditioner`: ``apply`` = ``M``,
    ``gram`` = ``M M^T``)
    the score term becomes ``M M^T s`` and the noise ``M z`` (PDS); the Langevin corrector
    (``config.corrector_steps``) likewise, with step ``eps = 2 (snr |z| / |M^T s|)^2`` per sample.

    Args:
      score: ``s(x, t)`` for ``(B, ...)`` states and ``(B,)`` times.
      x: ``(B, ...)`` the state at ``t_start``.
      key: PRNG key for the SDE noise (unused by the ODE).
      g: the diffusion ``g(t)``, vectorised over ``t``.
      config: :class:`SamplerConfig` (static).
      drift: optional ``f(x, t)``; zero by default.
      preconditioner: optional PDS preconditioner.
    Returns:
      ``(B, ...)`` the sample at ``t_end``.
    """
    gram = (lambda v: v) if preconditioner is None else preconditioner.gram
    shape_noise = (lambda v: v) if preconditioner is None else preconditioner.apply
    transpose = (lambda v: v) if preconditioner is None else preconditioner.transpose
    times = config.times(x.dtype)
    batch = x.shape[0]
    weight = 1.0 if config.method == "sde" else 0.5
    last = config.steps - 1

    def step(x, inputs):
        k, t, t_next, step_key = inputs
        dt = t - t_next
        tb = jnp.full((batch,), t, x.dtype)
        corrector_key, step_key = jax.random.split(step_key)
        for c in range(config.corrector_steps):
            x = _langevin_step(score(x, tb), x, jax.random.fold_in(corrector_key, c), config.snr, gram, shape_noise,
                               transpose)  # fmt: skip
        g_t = g(t)
        update = weight * g_t**2 * gram(score(x, tb))
        if drift is not None:
            update = update - drift(x, tb)
        x = x + update * dt
        if config.method == "sde":
            noise_scale = g_t * jnp.sqrt(dt) * (1.0 if config.final_noise else (k != last))
            x = x + noise_scale * shape_noise(jax.random.normal(step_key, x.shape, x.dtype))
        return x, None

    keys = jax.random.split(key, config.steps)
    x, _ = jax.lax.scan(step, x, (jnp.arange(config.steps), times[:-1], times[1:], keys))
    if config.tweedie is not None:
        x = x + config.tweedie * score(x, jnp.full((batch,), times[-1], x.dtype))
    return jnp.clip(x, 0.0, 1.0) if config.clip else x


def _langevin_step(s, x, key, snr, gram, shape_noise, transpose):
    """One preconditioned Langevin corrector step ``x + eps M M^T s + sqrt(2 eps) M z`` (Song et al.'s step rule)."""
    z = jax.random.normal(key, x.shape, x.dtype)
    axes = tuple(range(1, x.ndim))
    s_norm = jnp.sqrt(jnp.sum(transpose(s) ** 2, axis=axes, keepdims=True))
    z_norm = jnp.sqrt(jnp.sum(z**2, axis=axes, keepdims=True))
    eps = 2.0 * (snr * z_norm / jnp.maximum(s_norm, 1e-12)) ** 2
    return x + eps * gram(s) + jnp.sqrt(2.0 * eps) * shape_noise(z)


def denoise(
    score: Callable, noisy, key, g: Callable, config: SamplerConfig, drift: Callable | None = None, preconditioner=None
):
    """Denoise ``(B, H, W, C)`` noisy images: the reverse process started from them at ``t_start``."""
    return reverse_sample(score, noisy, key, g, config, drift, preconditioner)


def prior_sample(
    key, shape, g: Callable, t_start: float = 1.0, mean: float = 0.5, dtype=jnp.float32, preconditioner=None
):
    """The reverse process's start for generation: ``mean + sqrt(int_0^t_start g^2) M z`` (variance-exploding
    prior; ``M = I`` without a preconditioner)."""
    std = jnp.sqrt(integrated_variance(g, t_start))
    z = jax.random.normal(key, shape, dtype)
    return mean + std * (z if preconditioner is None else preconditioner.apply(z))


def generate(
    score: Callable, key, shape, g: Callable, config: SamplerConfig, mean: float = 0.5, drift=None, preconditioner=None
):
    """Generate ``shape = (B, H, W, C)`` images from the prior."""
    prior_key, sample_key = jax.random.split(key)
    x = prior_sample(prior_key, shape, g, config.t_start, mean, preconditioner=preconditioner)
    return reverse_sample(score, x, sample_key, g, config, drift, preconditioner)


def noisy_copy(key, images, noise_level: float):
    """``images + noise_level * z``: the corrupted input of the denoising check (not clipped)."""
    return images + noise_level * jax.random.normal(key, images.shape, images.dtype)
