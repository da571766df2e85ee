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
embedded loss). ``g`` and the drift ``f`` are those of the forward SDE
(:mod:`fpjax.diffusion.sde`; fpjax's own is ``dx = g dW`` of the FP config,
:func:`fpjax.diffusion.sde.from_fp_config`, with zero drift: the papers' setting).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from fpjax.diffusion import pds
from fpjax.diffusion import sde as sde_lib


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


def g_function(fp_config) -> Callable:
    """``g(t)`` of an :class:`fpjax.FPConfig` for any ``t`` in ``[0, 1]`` (piecewise linear between the ``t_n``).

    A thin wrapper kept for older callers: pass the SDE itself (:func:`fpjax.diffusion.sde.from_fp_config`) to
    the samplers instead, which gives them the exact prior variance too. Like the old function it ignores a drift.
    """
    return sde_lib.from_g(fp_config.g, fp_config.T).g


def _drift_function(sde: sde_lib.SDE, drift: Callable | None) -> Callable | None:
    """``f(x, tb)`` for ``(B, ...)`` states and ``(B,)`` times: ``drift`` if given, else the SDE's own (or ``None``)."""
    if drift is not None or sde.drift is None:
        return drift
    return lambda x, tb: sde.drift(x, tb.reshape((-1,) + (1,) * (x.ndim - 1)))


def reverse_sample(score: Callable, x, key, sde, config: SamplerConfig, drift: Callable | None = None,
                   preconditioner=None):  # fmt: skip
    """Integrate the reverse SDE / probability-flow ODE from ``x`` at ``t_start`` down to ``t_end``.

    With a ``preconditioner`` ``M`` (:class:`~fpjax.diffusion.pds.Preconditioner`: ``apply`` = ``M``,
    ``gram`` = ``M M^T``)
    the score term becomes ``M M^T s`` and the noise ``M z`` (PDS); the Langevin corrector
    (``config.corrector_steps``) likewise, with step ``eps = 2 (snr |z| / |M^T s|)^2`` per sample.

    Args:
      score: ``s(x, t)`` for ``(B, ...)`` states and ``(B,)`` times.
      x: ``(B, ...)`` the state at ``t_start``.
      key: PRNG key for the SDE noise (unused by the ODE).
      sde: the forward :class:`~fpjax.diffusion.sde.SDE` (its ``g`` and ``drift``); a bare ``g(t)`` function
        is taken as ``dx = g dW`` (:func:`fpjax.diffusion.sde.as_sde`).
      config: :class:`SamplerConfig` (static).
      drift: optional ``f(x, t)`` for ``(B,)`` times, replacing the SDE's own drift.
      preconditioner: optional PDS preconditioner.
    Returns:
      ``(B, ...)`` the sample at ``t_end``.
    """
    sde = sde_lib.as_sde(sde)
    m = pds.as_preconditioner(preconditioner)
    drift = _drift_function(sde, drift)
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
            x = corrector_step(score(x, tb), x, jax.random.fold_in(corrector_key, c), config.snr, m)
        g_t = sde.g(t)
        update = weight * g_t**2 * m.gram(score(x, tb))
        if drift is not None:
            update = update - drift(x, tb)
        x = x + update * dt
        if config.method == "sde":
            noise_scale = g_t * jnp.sqrt(dt) * (1.0 if config.final_noise else (k != last))
            x = x + noise_scale * m.apply(jax.random.normal(step_key, x.shape, x.dtype))
        return x, None

    keys = jax.random.split(key, config.steps)
    x, _ = jax.lax.scan(step, x, (jnp.arange(config.steps), times[:-1], times[1:], keys))
    if config.tweedie is not None:
        x = x + config.tweedie * score(x, jnp.full((batch,), times[-1], x.dtype))
    return jnp.clip(x, 0.0, 1.0) if config.clip else x


def corrector_step(s, x, key, snr: float, preconditioner=None):
    """One preconditioned Langevin corrector step ``x + eps M M^T s + sqrt(2 eps) M z`` for ``(B, ...)`` states and
    their scores ``s``, with Song et al.'s step ``eps = 2 (snr |z| / |M^T s|)^2`` per sample (``M = I`` without a
    preconditioner)."""
    m = pds.as_preconditioner(preconditioner)
    z = jax.random.normal(key, x.shape, x.dtype)
    axes = tuple(range(1, x.ndim))
    s_norm = jnp.sqrt(jnp.sum(m.transpose(s) ** 2, axis=axes, keepdims=True))
    z_norm = jnp.sqrt(jnp.sum(z**2, axis=axes, keepdims=True))
    eps = 2.0 * (snr * z_norm / jnp.maximum(s_norm, 1e-12)) ** 2
    return x + eps * m.gram(s) + jnp.sqrt(2.0 * eps) * m.apply(z)


def denoise(score: Callable, noisy, key, sde, config: SamplerConfig, drift: Callable | None = None,
            preconditioner=None):  # fmt: skip
    """Denoise ``(B, H, W, C)`` noisy images: the reverse process of ``sde`` started from them at ``t_start``."""
    return reverse_sample(score, noisy, key, sde, config, drift, preconditioner)


def prior_sample(key, shape, sde, t_start: float = 1.0, mean: float = 0.5, dtype=jnp.float32, preconditioner=None):
    """The reverse process's start for generation: ``mean_scale(t_start) mean + M sqrt(variance(t_start)) z``
    (:meth:`~fpjax.diffusion.sde.SDE.prior_sampling` about ``mean``; ``M = I`` without a preconditioner).

    For fpjax's ``dx = g dW`` that is ``mean + sqrt(int_0^t_start g^2) M z``, the variance exact for a constant or
    per-step ``g`` (:mod:`fpjax.diffusion.sde`)."""
    sde = sde_lib.as_sde(sde)
    centre = sde.mean_scale(jnp.asarray(t_start, dtype)) * mean
    return centre + pds.as_preconditioner(preconditioner).apply(sde.prior_sampling(key, shape, dtype, t_start))


def generate(score: Callable, key, shape, sde, config: SamplerConfig, mean: float = 0.5, drift=None,
             preconditioner=None):  # fmt: skip
    """Generate ``shape = (B, H, W, C)`` images from the prior of ``sde`` (:func:`prior_sample`)."""
    prior_key, sample_key = jax.random.split(key)
    x = prior_sample(prior_key, shape, sde, config.t_start, mean, preconditioner=preconditioner)
    return reverse_sample(score, x, sample_key, sde, config, drift, preconditioner)


def noisy_copy(key, images, noise_level: float):
    """``images + noise_level * z``: the corrupted input of the denoising check (not clipped)."""
    return images + noise_level * jax.random.normal(key, images.shape, images.dtype)
