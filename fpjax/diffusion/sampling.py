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

Beside them: the released PDS code's sampler (score_sde's reverse-diffusion
predictor and Langevin corrector, :func:`reverse_diffusion_sample`), and the
deterministic anchors a user would pick instead: the probability-flow ODE by
Heun's method on EDM's sigma schedule (:func:`heun_sample`) and DDIM
(:func:`ddim_sample`). :mod:`fpjax.diffusion.exact` gives each one's exact
output law on a Gaussian.

Calling convention, shared with :mod:`fpjax.learn.ddpm`'s samplers: the model first (the score ``s(x, t)``),
then the data (the states ``x`` / ``noisy`` images, or the ``shape`` to generate), then the PRNG ``key``, then
the process and its settings (the forward ``sde`` and the sampler's config); every extra (``drift``,
``preconditioner``, ``mean``) is keyword-only::

    denoise(score, noisy, key, sde, config, *, drift=None, preconditioner=None)
    generate(score, shape, key, sde, config, *, mean=0.5, drift=None, preconditioner=None)
    ddim_sample(score, x, key, sde, config)

The deterministic samplers (:func:`heun_sample`, :func:`ddim_sample`) take the ``key`` in the same place and
ignore it (``None`` is fine), so every sampler is called the same way.

Preconditioned (PDS) sampling: ``SamplerConfig.pds_form`` defaults to the unbiased marginal-preserving form
for the reverse SDE (``"paper"``, the PDS paper's biased form, must be asked for by name; the probability-flow
ODE has only that one), and ``ReverseDiffusionConfig.pds_form`` to ``"marginal"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

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
    t_start: where the reverse process starts (``1 >= t_start > t_end``; 1: from the prior).
    t_end: where it stops (``t_start > t_end >= 0``; 0: at the data).
    final_noise: whether the last SDE step adds noise.
    tweedie: noise variance of a final Tweedie denoising step (``None``: no such step).
    clip: clip the result to ``[0, 1]``.
    corrector_steps: Langevin corrector steps before each predictor step (predictor-corrector; 0: none).
    snr: the corrector's signal-to-noise ratio (Song et al.'s step rule).
    pds_form: how a preconditioner ``M`` enters the reverse SDE (no effect without one); ``None`` (the default):
      ``"marginal"`` for ``method="sde"``, ``"paper"`` for ``"ode"`` (:attr:`effective_pds_form`; ``"marginal"`` is
      only defined for the SDE). A reproduction of the PDS paper passes ``"paper"`` by name.
      ``"paper"``: ``g^2 M M^T s dt + g sqrt(dt) M z`` (the PDS paper's eq. 27, its released code); **biased**: it
      is the reversal of the forward process ``dx = g M dW``, not of ``dx = g dW``, so it does not keep the
      marginals ``p_t`` whose score it uses. For a Gaussian with per-mode variance ``S`` and a frequency
      preconditioner multiplying mode ``k`` by ``m = 1/R_k`` (``m^2 > 1/2``), the output variance of that mode
      tends to ``S m^2 / (2 m^2 - 1)`` as the steps grow (in ``[S/2, S)`` for ``m^2 > 1``), whatever the number of
      steps. ``"marginal"``: ``g^2 (I + M M^T)/2 s dt + g sqrt(dt) M z``, the reverse SDE whose Fokker-Planck
      equation is that of ``p_t`` for any ``M`` (the reverse drift ``b`` must satisfy
      ``grad.(b p) = 1/2 g^2 grad.((I + M M^T) grad p)``): unbiased as the steps grow.

    Fewer ``steps`` over the same interval take proportionally longer steps, which keeps the accumulated
    update: PDS's ``T/c`` speed-up knob.
    """

    steps: int = 100
    method: Literal["sde", "ode"] = "sde"
    schedule: Literal["uniform", "quadratic"] = "uniform"
    t_start: float = 1.0
    t_end: float = 0.0
    final_noise: bool = False
    tweedie: float | None = None
    clip: bool = True
    corrector_steps: int = 0
    snr: float = 0.16
    pds_form: Literal["paper", "marginal"] | None = None

    def __post_init__(self):
        if self.method not in ("sde", "ode"):
            raise ValueError(f"method must be 'sde' or 'ode', got {self.method!r}")
        if self.pds_form not in (None, "paper", "marginal") or (self.pds_form == "marginal" and self.method != "sde"):
            raise ValueError(f"pds_form must be None, 'paper', or 'marginal' with method 'sde'; got {self.pds_form!r}")
        if self.schedule not in ("uniform", "quadratic"):
            raise ValueError(f"schedule must be 'uniform' or 'quadratic', got {self.schedule!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.t_end < self.t_start <= 1.0:
            raise ValueError(f"need 0 <= t_end < t_start <= 1, got t_start={self.t_start}, t_end={self.t_end}")

    @property
    def effective_pds_form(self) -> str:
        """The form the sampler uses: ``pds_form``, or for ``None`` ``"marginal"`` (SDE) / ``"paper"`` (ODE)."""
        if self.pds_form is not None:
            return self.pds_form
        return "marginal" if self.method == "sde" else "paper"

    def times(self, dtype=jnp.float32):
        """``(steps + 1,)`` descending times ``tau_0 = t_start .. tau_K = t_end``."""
        return self.time_at(jnp.linspace(0.0, 1.0, self.steps + 1, dtype=dtype))

    def time_at(self, u):
        """The time at fraction ``u = k / K`` of the grid (``0``: ``t_start``, ``1``: ``t_end``), elementwise."""
        return schedule_time(self.schedule, self.t_start, self.t_end, u)


def schedule_time(schedule: str, t_start: float, t_end: float, u):
    """``uniform``: ``t_end + (t_start - t_end) (1 - u)``; ``quadratic``: ``t_end + (t_start - t_end) (1 - u)^2``
    (written about ``t_end`` and with ``u`` clipped to ``[0, 1]``, so ``u = 1`` gives ``t_end`` exactly, even when a
    compiler turns ``k / K`` into ``k * (1 / K)``)."""
    u = jnp.clip(u, 0.0, 1.0)
    if schedule == "quadratic":
        return t_end + (t_start - t_end) * (1.0 - u) ** 2
    return t_end + (t_start - t_end) * (1.0 - u)


def _drift_function(sde: sde_lib.SDE, drift: Callable | None) -> Callable | None:
    """``f(x, tb)`` for ``(B, ...)`` states and ``(B,)`` times: ``drift`` if given, else the SDE's own (or ``None``)."""
    if drift is not None or sde.drift is None:
        return drift
    return lambda x, tb: sde.drift(x, tb.reshape((-1,) + (1,) * (x.ndim - 1)))


def reverse_sample(score: Callable, x, key, sde, config: SamplerConfig, *, drift: Callable | None = None,
                   preconditioner=None):  # fmt: skip
    """Integrate the reverse SDE / probability-flow ODE from ``x`` at ``t_start`` down to ``t_end``.

    With a ``preconditioner`` ``M`` (:class:`~fpjax.diffusion.pds.Preconditioner`: ``apply`` = ``M``,
    ``gram`` = ``M M^T``)
    the score term becomes ``M M^T s`` (``pds_form="paper"``) or ``(I + M M^T)/2 s`` (``"marginal"``, the
    default for the SDE: :attr:`SamplerConfig.effective_pds_form`) and the noise ``M z`` (PDS); the Langevin
    corrector (``config.corrector_steps``) takes ``M M^T s`` and ``M z`` in either form, with step
    ``eps = 2 (snr |z| / |M^T s|)^2`` per sample.

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
    form = config.effective_pds_form
    last = config.steps - 1

    def step(x, inputs):
        k, t, t_next, step_key = inputs
        dt = t - t_next
        tb = jnp.full((batch,), t, x.dtype)
        corrector_key, step_key = jax.random.split(step_key)
        for c in range(config.corrector_steps):
            x = corrector_step(score(x, tb), x, jax.random.fold_in(corrector_key, c), config.snr, m)
        g_t = sde.g(t)
        s = score(x, tb)
        update = weight * g_t**2 * (m.gram(s) if form == "paper" else 0.5 * (s + m.gram(s)))
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


def denoise(score: Callable, noisy, key, sde, config: SamplerConfig, *, drift: Callable | None = None,
            preconditioner=None):  # fmt: skip
    """Denoise ``(B, H, W, C)`` noisy images: the reverse process of ``sde`` started from them at ``t_start``
    (:func:`reverse_sample`)."""
    return reverse_sample(score, noisy, key, sde, config, drift=drift, preconditioner=preconditioner)


def prior_sample(key, shape, sde, t_start: float = 1.0, mean: float = 0.5, dtype=jnp.float32, preconditioner=None):
    """The reverse process's start for generation: ``mean_scale(t_start) mean + M sqrt(variance(t_start)) z``
    (:meth:`~fpjax.diffusion.sde.SDE.prior_sampling` about ``mean``; ``M = I`` without a preconditioner).

    For fpjax's ``dx = g dW`` that is ``mean + sqrt(int_0^t_start g^2) M z``, the variance exact for a constant or
    per-step ``g`` (:mod:`fpjax.diffusion.sde`)."""
    sde = sde_lib.as_sde(sde)
    centre = sde.mean_scale(jnp.asarray(t_start, dtype)) * mean
    return centre + pds.as_preconditioner(preconditioner).apply(sde.prior_sampling(key, shape, dtype, t_start))


def generate(score: Callable, shape, key, sde, config: SamplerConfig, *, mean: float = 0.5,
             drift: Callable | None = None, preconditioner=None, sharding=None):  # fmt: skip
    """Generate ``shape = (B, H, W, C)`` images from the prior of ``sde`` (:func:`prior_sample`, about ``mean``).

    ``sharding``: where the samples live (:func:`fpjax.devices.batch_sharding`: split along ``B`` over a data
    mesh); the same images for the same key on any number of devices (the noise is drawn whole, then split)."""
    prior_key, sample_key = jax.random.split(key)
    x = prior_sample(prior_key, shape, sde, config.t_start, mean, preconditioner=preconditioner)
    x = x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)
    return reverse_sample(score, x, sample_key, sde, config, drift=drift, preconditioner=preconditioner)


def noisy_copy(key, images, noise_level: float):
    """``images + noise_level * z``: the corrupted input of the denoising check (not clipped)."""
    return images + noise_level * jax.random.normal(key, images.shape, images.dtype)


# ----------------------------------------------------------------------------------------------
# the released PDS code's sampler: score_sde's reverse-diffusion predictor and Langevin corrector


@dataclasses.dataclass(frozen=True)
class ReverseDiffusionConfig:
    """The sampler of the PDS paper's released code (score_sde's ``ReverseDiffusionPredictor`` with its
    ``LangevinCorrector``, the masks applied as in that code).

    Attributes:
      steps: predictor steps ``K`` (score evaluations ``K (1 + corrector_steps)``).
      corrector_steps: Langevin corrector steps before each predictor step (score_sde's ``n_steps_each``).
      snr: the corrector's signal-to-noise ratio (score_sde's CIFAR-10 VE setting: 0.16).
      schedule, t_start, t_end: the time grid, as in :class:`SamplerConfig`.
      denoise: return the last predictor step's mean (score_sde's ``noise_removal``).
      pds_form: ``"marginal"`` (the default: ``(I + M M^T)/2`` on the score term, ``M z``, unbiased) or ``"paper"``
        (the released code: ``M M^T`` on the whole reverse drift, ``M z`` noise; biased like
        :class:`SamplerConfig`'s ``"paper"``; pass it to reproduce the released code with a preconditioner).
    """

    steps: int = 100
    corrector_steps: int = 1
    snr: float = 0.16
    schedule: str = "uniform"
    t_start: float = 1.0
    t_end: float = 0.0
    denoise: bool = True
    pds_form: str = "marginal"

    def __post_init__(self):
        if self.steps < 1 or self.corrector_steps < 0:
            raise ValueError(f"need steps >= 1 and corrector_steps >= 0, got {self.steps}, {self.corrector_steps}")
        if self.pds_form not in ("paper", "marginal"):
            raise ValueError(f"pds_form must be 'paper' or 'marginal', got {self.pds_form!r}")

    def time_at(self, u):
        return schedule_time(self.schedule, self.t_start, self.t_end, u)


def transition(sde: sde_lib.SDE, t, s):
    """The forward one-step kernel from time ``s`` to ``t > s``: ``x_t = rho x_s + G z``; returns ``(rho, G^2)``
    with ``rho = a(t)/a(s)``, ``G^2 = v(t) - rho^2 v(s)`` (VE: ``rho = 1``, ``G^2 = sigma_t^2 - sigma_s^2``,
    score_sde's ``VESDE.discretize``; VP: ``rho = sqrt(1 - beta)``, ``G^2 = beta``, its ``VPSDE.discretize``)."""
    rho = sde.mean_scale(t) / sde.mean_scale(s)
    return rho, sde.variance(t) - rho**2 * sde.variance(s)


def released_corrector_step(s, x, key, snr: float, alpha=1.0, preconditioner=None):
    """The released PDS code's Langevin corrector: ``x + eps M M^T s + sqrt(2 eps) M z`` with one step for the
    whole batch, ``eps = 2 alpha (snr mean_b |M z_b| / mean_b |M M^T s_b|)^2`` (score_sde's rule, its norms averaged
    over the batch; ``alpha``: 1 for VE, ``1 - beta`` for VP). ``(B, ...)`` states and scores."""
    m = pds.as_preconditioner(preconditioner)
    noise = m.apply(jax.random.normal(key, x.shape, x.dtype))
    grad = m.gram(s)
    axes = tuple(range(1, x.ndim))
    grad_norm = jnp.mean(jnp.sqrt(jnp.sum(grad**2, axis=axes)))
    noise_norm = jnp.mean(jnp.sqrt(jnp.sum(noise**2, axis=axes)))
    eps = 2.0 * alpha * (snr * noise_norm / jnp.maximum(grad_norm, 1e-30)) ** 2
    return x + eps * grad + jnp.sqrt(2.0 * eps) * noise


def reverse_diffusion_sample(score: Callable, x, key, sde, config: ReverseDiffusionConfig, *, preconditioner=None):
    """The released PDS code's sampler from ``(B, ...)`` states ``x`` at ``t_start`` down to ``t_end``: one
    ``lax.scan`` over the grid ``tau_0 > ... > tau_K``; at each ``tau_k`` the corrector
    (:func:`released_corrector_step`, ``alpha = rho^2``) and then the reverse-diffusion predictor

        x <- x - M M^T [(rho - 1) x - G^2 s(x, tau_k)] + G M z,     (rho, G^2) = transition(tau_k, tau_(k+1))

    (``"marginal"`` form: ``x - (rho - 1) x + G^2 (I + M M^T)/2 s + G M z``). With ``denoise`` the last step adds
    no noise. ``M = I`` without a preconditioner: score_sde's PC sampler on the forward SDE ``sde``."""
    sde = sde_lib.as_sde(sde)
    m = pds.as_preconditioner(preconditioner)
    times = config.time_at(jnp.linspace(0.0, 1.0, config.steps + 1, dtype=x.dtype))
    batch, last = x.shape[0], config.steps - 1

    def step(x, inputs):
        k, t, t_next, step_key = inputs
        tb = jnp.full((batch,), t, x.dtype)
        rho, g2 = transition(sde, t, t_next)
        keys = jax.random.split(step_key, config.corrector_steps + 1)
        for c in range(config.corrector_steps):
            x = released_corrector_step(score(x, tb), x, keys[c], config.snr, rho**2, m)
        s = score(x, tb)
        if config.pds_form == "paper":
            x = x - m.gram((rho - 1.0) * x - g2 * s)
        else:
            x = x - (rho - 1.0) * x + 0.5 * g2 * (s + m.gram(s))
        noise = jnp.sqrt(jnp.maximum(g2, 0.0)) * m.apply(jax.random.normal(keys[-1], x.shape, x.dtype))
        return x + noise * (1.0 if not config.denoise else (k != last)), None

    keys = jax.random.split(key, config.steps)
    x, _ = jax.lax.scan(step, x, (jnp.arange(config.steps), times[:-1], times[1:], keys))
    return x


# ----------------------------------------------------------------------------------------------
# deterministic anchors: Heun on EDM's sigma schedule, DDIM


@dataclasses.dataclass(frozen=True)
class HeunConfig:
    """The probability-flow ODE by Heun's second-order method on EDM's schedule (Karras et al. 2022, alg. 1):
    ``sigma_i = (sigma_max^(1/rho) + i/(K-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``, ``i < K``,
    ``sigma_K = 0``; ``sigma`` is the noise level of the scaled state ``x / a(t)``, ``sigma^2 = v(t) / a(t)^2``,
    and ``sigma_max`` that at ``t_start``; ``sigma_min`` EDM's 0.002. ``2 K - 1`` score evaluations (the last step is
    Euler: from ``sigma_min`` to 0 it shrinks a mode of variance ``S`` to ``S^2 / (S + sigma_min^2)``, a bias where
    ``S`` is not much above ``sigma_min^2``)."""

    steps: int = 18
    rho: float = 7.0
    sigma_min: float = 0.002
    t_start: float = 1.0

    def __post_init__(self):
        if self.steps < 1 or self.sigma_min <= 0:
            raise ValueError(f"need steps >= 1 and sigma_min > 0, got {self.steps}, {self.sigma_min}")


def edm_sigma(config: HeunConfig, sigma_max, i, steps):
    """EDM's ``sigma_i`` of a ``steps``-step grid (elementwise in ``i``; ``i = steps``: 0)."""
    u = i / jnp.maximum(steps - 1, 1)
    lo, hi = config.sigma_min ** (1.0 / config.rho), sigma_max ** (1.0 / config.rho)
    return jnp.where(i >= steps, 0.0, (hi + u * (lo - hi)) ** config.rho)


def noise_level(sde: sde_lib.SDE, t):
    """``sigma(t) = sqrt(v(t)) / a(t)``: the noise level of the scaled state ``x / a(t)``."""
    return jnp.sqrt(jnp.maximum(sde.variance(t), 0.0)) / sde.mean_scale(t)


def time_of_noise_level(sde: sde_lib.SDE, sigma, t_max: float = 1.0, iterations: int = 60):
    """The time ``t`` in ``[0, t_max]`` with ``noise_level(t) = sigma`` (bisection; ``noise_level`` increases)."""
    sigma = jnp.asarray(sigma)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        above = noise_level(sde, mid) > sigma
        return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

    lo, hi = jax.lax.fori_loop(0, iterations, body, (jnp.zeros_like(sigma), jnp.full_like(sigma, t_max)))
    return 0.5 * (lo + hi)


def heun_sample(score: Callable, x, key, sde, config: HeunConfig):
    """EDM's deterministic Heun sampler (:class:`HeunConfig`) from ``(B, ...)`` states at ``t_start`` to ``t = 0``
    (``key`` unused, ``None`` is fine: the module's calling convention).

    On the scaled state ``y = x / a(t)``: ``dy / dsigma = -sigma s_y(y, sigma)`` with ``s_y = a s(a y, t)``; each
    step an Euler step and, unless ``sigma_(i+1) = 0``, its trapezoidal correction. One ``lax.scan``."""
    del key
    sde = sde_lib.as_sde(sde)
    batch = x.shape[0]
    t_start = jnp.asarray(config.t_start, x.dtype)
    sigma_max = noise_level(sde, t_start)
    index = jnp.arange(config.steps + 1)
    sigmas = edm_sigma(config, sigma_max, index, config.steps).astype(x.dtype)
    times = jnp.where(index == 0, t_start, time_of_noise_level(sde, sigmas, config.t_start)).astype(x.dtype)

    def slope(y, sigma, t):
        a = sde.mean_scale(t)
        return -sigma * a * score(a * y, jnp.full((batch,), t, x.dtype))

    def step(y, inputs):
        sigma, sigma_next, t, t_next = inputs
        d = slope(y, sigma, t)
        euler = y + (sigma_next - sigma) * d
        safe = sigma_next > 0
        d_next = slope(euler, jnp.where(safe, sigma_next, sigma), jnp.where(safe, t_next, t))
        return jnp.where(safe, y + 0.5 * (sigma_next - sigma) * (d + d_next), euler), None

    y, _ = jax.lax.scan(step, x / sde.mean_scale(t_start), (sigmas[:-1], sigmas[1:], times[:-1], times[1:]))
    return y * sde.mean_scale(jnp.asarray(0.0, x.dtype))


@dataclasses.dataclass(frozen=True)
class DDIMConfig:
    """Deterministic DDIM (``eta = 0``) in continuous time on the grid of :class:`SamplerConfig` (``schedule``,
    ``t_start``, ``t_end``); ``steps`` score evaluations."""

    steps: int = 50
    schedule: str = "uniform"
    t_start: float = 1.0
    t_end: float = 0.0

    def time_at(self, u):
        return schedule_time(self.schedule, self.t_start, self.t_end, u)


def ddim_sample(score: Callable, x, key, sde, config: DDIMConfig):
    """DDIM from ``(B, ...)`` states at ``t_start``: per step from ``t`` to ``t'``, with ``x0 = (x + v s) / a``
    (Tweedie) and ``eps = -sqrt(v) s``, ``x <- a' x0 + sqrt(v') eps`` (``a, v`` of ``sde`` at ``t``; primed at
    ``t'``). For VE that is ``x0 + (sigma'/sigma)(x - x0)``. One ``lax.scan``. Deterministic: ``key`` is unused
    (``None`` is fine; it keeps the module's calling convention, that of :func:`fpjax.learn.ddpm.ddim_sample`)."""
    del key
    sde = sde_lib.as_sde(sde)
    batch = x.shape[0]
    times = config.time_at(jnp.linspace(0.0, 1.0, config.steps + 1, dtype=x.dtype))

    def step(x, inputs):
        t, t_next = inputs
        s = score(x, jnp.full((batch,), t, x.dtype))
        v, v_next = (jnp.maximum(sde.variance(u), 0.0) for u in (t, t_next))  # v(0) may round to -1e-20
        x0 = (x + v * s) / sde.mean_scale(t)
        return sde.mean_scale(t_next) * x0 - jnp.sqrt(v_next) * jnp.sqrt(v) * s, None

    x, _ = jax.lax.scan(step, x, (times[:-1], times[1:]))
    return x
