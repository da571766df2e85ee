"""Exact-score models of a dataset, and the exact output law of each sampler on a Gaussian.

Two models whose score under any linear forward SDE ``x_t = a(t) x_0 + sqrt(v(t)) z`` (:mod:`fpjax.diffusion.sde`)
is known in closed form, so a sampler can be judged without a trained network:

* :class:`StationaryGaussian` (:func:`fit_gaussian`): the mean image ``mu`` and, per channel, the power spectrum
  ``S_k = E |F[x - mu]|^2 / (H W)`` (``F`` the unnormalised 2-D DFT over ``(H, W)``; ``S_k`` is then the variance
  of mode ``k`` of the unitary DFT ``U = F / sqrt(H W)``). Its covariance ``U^* diag(S) U`` is circulant, so
  ``p_t = N(a mu, U^* diag(a^2 S + v) U)`` and the score is ``-F^-1[(F[x] - a F[mu]) / (a^2 S_k + v)]`` (VE:
  ``a = 1``, ``v = sigma^2``).
* :class:`EmpiricalMixture`: the dataset itself, ``p_0 = 1/N sum_i delta(x - x_i)``, perturbed:
  ``p_t = 1/N sum_i N(a x_i, v I)``; score ``(a sum_i w_i x_i - x) / v`` with softmax weights
  ``w_i ~ exp(-|x - a x_i|^2 / (2 v))``, by log-sum-exp (float32-safe: differences, not expanded squares).

On the Gaussian every sampler of :mod:`fpjax.diffusion.sampling` (with no preconditioner or a *frequency*
preconditioner, which is diagonal in the same basis) acts on each Fourier mode ``X_k`` alone by an affine map
``X <- A X + b + c Z`` with real ``A, c``: the output is Gaussian and :func:`propagate` follows each mode's mean
and variance exactly (:class:`Moments`), and :func:`kl` gives the exact KL divergence to the data Gaussian. The
correctors' step sizes depend on norms of the whole state; there :func:`propagate` uses their large-dimension
limit (``|z|^2 -> E|z|^2``, ``|s|^2 -> E|s|^2`` under the current law), exact as ``H W C -> inf`` and within
``O((H W C)^(-1/2))`` of the sampler otherwise (the released corrector averages the norms over the batch, which
shrinks the gap further).

Mode bookkeeping: the state is real, so ``X_(-k) = conj(X_k)``. Summing over the *full* ``(H, W)`` DFT grid (not
``rfft2``'s half) counts each Hermitian pair ``(k, -k)``, two real degrees of freedom each of variance
``P_k / 2``, exactly twice as :func:`kl` needs, and each self-conjugate mode (``k = -k``: the DC term and, for even
sizes, the Nyquist rows and columns' crossings; real-valued, one degree of freedom of variance ``P_k``) once.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fpjax.diffusion import sampling
from fpjax.diffusion import sde as sde_lib

AXES = (-3, -2)


def unitary_fft(x):
    """``U x = F[x] / sqrt(H W)`` over the ``(H, W)`` axes of ``(..., H, W, C)`` images."""
    return jnp.fft.fft2(x, axes=AXES, norm="ortho")


def _inverse(spectrum, dtype):
    return jnp.real(jnp.fft.ifft2(spectrum, axes=AXES, norm="ortho")).astype(dtype)


def _per_sample(t, x):
    return jnp.reshape(jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1]), (-1,) + (1,) * (x.ndim - 1))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Moments:
    """A Gaussian law with circulant covariance, per unitary-DFT mode: ``mean`` complex ``(H, W, C)`` (``U`` of the
    mean image) and ``var`` real ``(H, W, C)``, ``E |X_k - mean_k|^2``."""

    mean: jax.Array
    var: jax.Array

    def affine(self, a, b, c2):
        """The law of ``A X + b + c Z`` (``Z`` standard, ``E |Z_k|^2 = 1``): ``(A m + b, A^2 P + c^2)``."""
        return Moments(a * self.mean + b, a**2 * self.var + c2)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StationaryGaussian:
    """``N(mean, U^* diag(spectrum) U)``: ``mean`` the ``(H, W, C)`` mean image, ``spectrum`` ``(H, W, C)`` the
    per-mode variances ``S_k`` in the unshifted DFT layout (even in ``k``). A pytree (a traced argument)."""

    mean: jax.Array
    spectrum: jax.Array

    def moments(self) -> Moments:
        return Moments(unitary_fft(self.mean), self.spectrum)

    def marginal(self, sde: sde_lib.SDE, t) -> Moments:
        """The exact law of ``x_t``: mean ``a U[mu]``, variances ``a^2 S + v``."""
        a, v = sde.mean_scale(t), sde.variance(t)
        return Moments(a * unitary_fft(self.mean), a**2 * self.spectrum + v)

    def score(self, sde: sde_lib.SDE):
        """The exact ``s(x, t) = -F^-1[(F[x] - a F[mu]) / (a^2 S + v)]`` for ``(B, H, W, C)`` states and ``(B,)`` (or
        scalar) times; jittable and vmappable."""

        def score(x, t):
            a, v = sde.mean_scale(_per_sample(t, x)), sde.variance(_per_sample(t, x))
            residual = unitary_fft(x - a * jnp.broadcast_to(self.mean, x.shape))
            return -_inverse(residual / (a**2 * jnp.broadcast_to(self.spectrum, x.shape) + v), x.dtype)

        return score

    def sample(self, key, n: int, dtype=jnp.float32):
        """``(n, H, W, C)`` draws: ``mu + U^* (sqrt(S) U z)``, ``z`` white (the real part of a circulant filter of
        white noise has exactly the covariance ``U^* diag(S) U``)."""
        z = jax.random.normal(key, (n,) + self.mean.shape, dtype)
        return self.mean.astype(dtype)[None] + _inverse(jnp.sqrt(self.spectrum)[None] * unitary_fft(z), dtype)


def fit_gaussian(images) -> StationaryGaussian:
    """The stationary Gaussian of ``(N, H, W, C)`` images: their mean image and per-channel power spectrum
    ``S_k = mean_n |U[x_n - mu]_k|^2`` (``= E |F[x - mu]|^2 / (H W)``)."""
    images = jnp.asarray(images)
    mean = jnp.mean(images, axis=0)
    return StationaryGaussian(mean, jnp.mean(jnp.abs(unitary_fft(images - mean[None])) ** 2, axis=0))


def moments_of_samples(x) -> Moments:
    """The per-mode empirical mean and variance of ``(B, H, W, C)`` samples (a Monte Carlo check of
    :func:`propagate`)."""
    modes = unitary_fft(x)
    mean = jnp.mean(modes, axis=0)
    return Moments(mean, jnp.mean(jnp.abs(modes - mean[None]) ** 2, axis=0))


def kl(p: Moments, q: Moments):
    """``KL(N_p || N_q)`` in nats for two circulant Gaussians, exact:
    ``1/2 sum_k [P_k / Q_k - 1 - log(P_k / Q_k) + |m_k - n_k|^2 / Q_k]`` over the full DFT grid and channels (see the
    module's note on Hermitian pairs). Written with ``log1p`` so small divergences keep their digits."""
    d = (p.var - q.var) / q.var
    return 0.5 * jnp.sum(d - jnp.log1p(d) + jnp.abs(p.mean - q.mean) ** 2 / q.var)


def frequency_gain(preconditioner, shape, dtype=jnp.float32):
    """``q_k = |m_k|^2``, the per-mode factor of ``M M^T`` for a frequency preconditioner ``M = F^-1 diag(m) F``
    (``m = 1 / R_f``), ``(H, W, C)``; ones without one. A pixel factor is not diagonal in Fourier: refused."""
    if preconditioner is None or (preconditioner.r_f is None and preconditioner.r_p is None):
        return jnp.ones(shape, dtype)
    if preconditioner.r_p is not None:
        raise ValueError("closed forms need a frequency-only preconditioner (pds.from_data(..., pixel=False))")
    return jnp.broadcast_to(1.0 / jnp.asarray(preconditioner.r_f, dtype) ** 2, shape)


def prior_moments(model: StationaryGaussian, sde: sde_lib.SDE, t_start: float = 1.0, mean: float = 0.5,
                  preconditioner=None) -> Moments:  # fmt: skip
    """The law of :func:`fpjax.diffusion.sampling.prior_sample`: ``a(t_start) mean + M sqrt(v(t_start)) z``."""
    dtype = model.spectrum.dtype
    t = jnp.asarray(t_start, dtype)
    h, w, _ = model.mean.shape
    q = frequency_gain(preconditioner, model.mean.shape, dtype)
    centre = jnp.zeros(model.mean.shape, dtype).at[0, 0].set(sde.mean_scale(t) * mean * np.sqrt(h * w))
    return Moments(centre.astype(unitary_fft(model.mean).dtype), sde.variance(t) * q)


def _gram_terms(model, sde, t, state, q):
    """``(kappa, a U[mu], sum_k q_k^p kappa^2 E|X_k - a mu_k|^2 for p = 1, 2)``, ``kappa = 1 / (a^2 S + v)``: the
    score's per-mode factor and the expected ``|M^T s|^2``, ``|M M^T s|^2`` under ``state``."""
    a, v = sde.mean_scale(t), sde.variance(t)
    kappa = 1.0 / (a**2 * model.spectrum + v)
    target = a * unitary_fft(model.mean)
    second = kappa**2 * (state.var + jnp.abs(state.mean - target) ** 2)
    return kappa, target, jnp.sum(q * second), jnp.sum(q**2 * second)


def _scan(step, state, steps_max: int, steps):
    """``state <- step(k, state)`` for ``k < steps`` (traced) within a static ``steps_max``-long ``lax.scan``."""

    def body(state, k):
        new = step(k, state)
        return jax.tree_util.tree_map(lambda n, o: jnp.where(k < steps, n, o), new, state), None

    state, _ = jax.lax.scan(body, state, jnp.arange(steps_max))
    return state


def _drift_coefficient(sde, t):
    """``c(t)`` of a linear drift ``f(x, t) = c(t) x`` (0 without a drift; VP: ``-beta/2``)."""
    return 0.0 if sde.drift is None else sde.drift(jnp.ones_like(t), t)


def _reverse_moments(model, sde, config: sampling.SamplerConfig, start, q, steps):
    """:func:`fpjax.diffusion.sampling.reverse_sample` (Euler-Maruyama / Euler ODE, fpjax's Langevin corrector)."""
    dtype = model.spectrum.dtype
    weight = 1.0 if config.method == "sde" else 0.5
    w = q if config.effective_pds_form == "paper" else 0.5 * (1.0 + q)
    size = model.spectrum.size

    def step(k, state):
        t, t_next = (config.time_at(jnp.asarray(j, dtype) / steps) for j in (k, k + 1))
        for _ in range(config.corrector_steps):  # eps = 2 (snr |z| / |M^T s|)^2, |z|^2 -> H W C
            kappa, target, s2, _ = _gram_terms(model, sde, t, state, q)
            eps = 2.0 * config.snr**2 * size / s2
            state = state.affine(1.0 - eps * q * kappa, eps * q * kappa * target, 2.0 * eps * q)
        dt, g2 = t - t_next, sde.g(t) ** 2
        kappa, target, _, _ = _gram_terms(model, sde, t, state, q)
        noise = g2 * dt * q * (config.method == "sde") * jnp.logical_or(config.final_noise, k != steps - 1)
        a = 1.0 - dt * (weight * g2 * w * kappa + _drift_coefficient(sde, t))
        return state.affine(a, dt * weight * g2 * w * kappa * target, noise)

    state = _scan(step, start, config.steps, steps)
    if config.tweedie is not None:
        kappa, target, _, _ = _gram_terms(model, sde, jnp.asarray(config.t_end, dtype), state, q)
        state = state.affine(1.0 - config.tweedie * kappa, config.tweedie * kappa * target, 0.0)
    return state


def _released_moments(model, sde, config: sampling.ReverseDiffusionConfig, start, q, steps):
    """:func:`fpjax.diffusion.sampling.reverse_diffusion_sample` (corrector step from the large-batch limit of
    ``mean |M z|`` and ``mean |M M^T s|``)."""
    dtype = model.spectrum.dtype

    def step(k, state):
        t, t_next = (config.time_at(jnp.asarray(j, dtype) / steps) for j in (k, k + 1))
        rho, g2 = sampling.transition(sde, t, t_next)
        for _ in range(config.corrector_steps):
            kappa, target, _, s2 = _gram_terms(model, sde, t, state, q)
            eps = 2.0 * rho**2 * config.snr**2 * jnp.sum(q) / s2
            state = state.affine(1.0 - eps * q * kappa, eps * q * kappa * target, 2.0 * eps * q)
        kappa, target, _, _ = _gram_terms(model, sde, t, state, q)
        w = q if config.pds_form == "paper" else 0.5 * (1.0 + q)
        shrink = q * (rho - 1.0) if config.pds_form == "paper" else rho - 1.0
        noise = g2 * q * jnp.logical_or(not config.denoise, k != steps - 1)
        return state.affine(1.0 - shrink - w * g2 * kappa, w * g2 * kappa * target, noise)

    return _scan(step, start, config.steps, steps)


def _heun_moments(model, sde, config: sampling.HeunConfig, start, steps):
    """:func:`fpjax.diffusion.sampling.heun_sample`: on the scaled state the data law is ``N(mu, S)`` at every
    ``a``, and each step multiplies ``Y - U[mu]`` by a real factor per mode."""
    dtype = model.spectrum.dtype
    t_start = jnp.asarray(config.t_start, dtype)
    scale = sde.mean_scale(t_start)
    sigma_max = sampling.noise_level(sde, t_start)
    mu, spectrum = unitary_fft(model.mean), model.spectrum

    def step(i, state):
        sigma, sigma_next = (sampling.edm_sigma(config, sigma_max, j, steps).astype(dtype) for j in (i, i + 1))
        c, c_next = sigma / (spectrum + sigma**2), sigma_next / (spectrum + sigma_next**2)
        delta = sigma_next - sigma
        euler = 1.0 + delta * c
        a = jnp.where(sigma_next > 0, 1.0 + 0.5 * delta * (c + c_next * euler), euler)
        return state.affine(a, (1.0 - a) * mu, 0.0)

    scaled = Moments(start.mean / scale, start.var / scale**2)
    end = _scan(step, scaled, config.steps, steps)
    a0 = sde.mean_scale(jnp.asarray(0.0, dtype))
    return Moments(a0 * end.mean, a0**2 * end.var)


def _ddim_moments(model, sde, config: sampling.DDIMConfig, start, steps):
    """:func:`fpjax.diffusion.sampling.ddim_sample`: ``X - a mu`` is multiplied by
    ``(a a' S + sqrt(v v')) / (a^2 S + v)`` per step."""
    dtype = model.spectrum.dtype
    mu, spectrum = unitary_fft(model.mean), model.spectrum

    def step(k, state):
        t, t_next = (config.time_at(jnp.asarray(j, dtype) / steps) for j in (k, k + 1))
        a, a_next = sde.mean_scale(t), sde.mean_scale(t_next)
        v, v_next = (jnp.maximum(sde.variance(u), 0.0) for u in (t, t_next))  # v(0) may round to -1e-20
        factor = (a * a_next * spectrum + jnp.sqrt(v * v_next)) / (a**2 * spectrum + v)
        return state.affine(factor, (a_next - factor * a) * mu, 0.0)

    return _scan(step, start, config.steps, steps)


def propagate(model: StationaryGaussian, sde, config, start: Moments, preconditioner=None, steps=None) -> Moments:
    """The exact per-mode law of a sampler's output on the Gaussian ``model``, started from the law ``start``
    (:func:`prior_moments`, or ``model.marginal(sde, t_start)``).

    ``config``: a :class:`~fpjax.diffusion.sampling.SamplerConfig` (with ``clip=False``), ``ReverseDiffusionConfig``,
    ``HeunConfig`` or ``DDIMConfig``, the same object the sampler takes; ``preconditioner``: ``None`` or a
    frequency-only :class:`~fpjax.diffusion.pds.Preconditioner` (the stochastic samplers). ``steps``: the number of
    steps, possibly traced, at most ``config.steps`` (default ``config.steps``), so one compilation serves (and
    ``vmap`` batches) every step count up to ``config.steps``. Float64 inputs give float64 results.
    """
    sde = sde_lib.as_sde(sde)
    steps = config.steps if steps is None else steps
    q = frequency_gain(preconditioner, model.mean.shape, model.spectrum.dtype)
    if isinstance(config, sampling.SamplerConfig):
        if config.clip:
            raise ValueError("clipping is not linear: use SamplerConfig(clip=False) for the closed form")
        return _reverse_moments(model, sde, config, start, q, steps)
    if isinstance(config, sampling.ReverseDiffusionConfig):
        return _released_moments(model, sde, config, start, q, steps)
    if preconditioner is not None:
        raise ValueError(f"{type(config).__name__} is deterministic and takes no preconditioner")
    if isinstance(config, sampling.HeunConfig):
        return _heun_moments(model, sde, config, start, steps)
    if isinstance(config, sampling.DDIMConfig):
        return _ddim_moments(model, sde, config, start, steps)
    raise TypeError(f"no closed form for {type(config).__name__}")


def score_evaluations(config, steps: int) -> int:
    """Score evaluations of ``steps`` steps of the sampler ``config`` (Heun: ``2 K - 1``; correctors: one more per
    corrector step; a Tweedie step: one more)."""
    if isinstance(config, sampling.HeunConfig):
        return 2 * steps - 1
    if isinstance(config, sampling.DDIMConfig):
        return steps
    extra = 1 if isinstance(config, sampling.SamplerConfig) and config.tweedie is not None else 0
    return steps * (1 + config.corrector_steps) + extra


def floor_variance(spectrum, q):
    """The per-mode output variance of the paper's preconditioned reverse SDE as the steps grow:
    ``S q / (2 q - 1)`` (``q = m^2 = 1 / R^2 > 1/2``). From ``dP/du = 2 q P / u - q`` along ``u = a^2 S + v``:
    ``P = C u^(2q) + q u / (2 q - 1)``, whose first term vanishes by ``(S / u_max)^(2q)`` at ``u = S``."""
    return spectrum * q / (2.0 * q - 1.0)


def floor_kl(model: StationaryGaussian, preconditioner):
    """The paper-form bias floor :func:`kl` of :func:`floor_variance` against the data (the mean is unbiased)."""
    q = frequency_gain(preconditioner, model.mean.shape, model.spectrum.dtype)
    data = model.moments()
    return kl(Moments(data.mean, floor_variance(model.spectrum, q)), data)


# ----------------------------------------------------------------------------------------------
# the perturbed empirical mixture


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EmpiricalMixture:
    """``p_0 = 1/N sum_i delta(x - x_i)`` for ``points`` ``(N, ...)`` (e.g. ``(N, H, W, C)`` images); under a forward
    SDE ``p_t = 1/N sum_i N(a x_i, v I)`` (``v(t) > 0``: ``t > 0`` for the SDEs of :mod:`fpjax.diffusion.sde`)."""

    points: jax.Array

    def _logits(self, x, a, v):
        """``-|x - a x_i|^2 / (2 v)`` for one state ``x`` (the points' shape less ``N``) -> ``(N,)``."""
        axes = tuple(range(1, self.points.ndim))
        return -jnp.sum((x[None] - a * self.points.astype(x.dtype)) ** 2, axis=axes) / (2.0 * v)

    def log_prob(self, x, t, sde: sde_lib.SDE):
        """``log p_t(x)`` for ``(B, ...)`` states and ``(B,)`` or scalar times -> ``(B,)``."""
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        dim = int(np.prod(self.points.shape[1:]))

        def one(x, t):
            a, v = sde.mean_scale(t), sde.variance(t)
            logits = self._logits(x, a, v)
            return jax.nn.logsumexp(logits) - jnp.log(logits.shape[0]) - 0.5 * dim * jnp.log(2.0 * jnp.pi * v)

        return jax.vmap(one)(x, t)

    def score(self, sde: sde_lib.SDE):
        """The exact ``s(x, t) = (a sum_i w_i x_i - x) / v``, ``w = softmax(-|x - a x_i|^2 / (2 v))``, for ``(B, ...)``
        states and ``(B,)`` or scalar times; jittable and vmappable."""

        def one(x, t):
            a, v = sde.mean_scale(t), sde.variance(t)
            w = jax.nn.softmax(self._logits(x, a, v))
            centre = jnp.tensordot(w, self.points.astype(x.dtype), axes=1, precision=jax.lax.Precision.HIGHEST)
            return (a * centre - x) / v

        def score(x, t):
            return jax.vmap(one)(x, jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1]))

        return score

    def nearest(self, x):
        """For ``(B, ...)`` states: the index of each one's nearest point and the RMS distance to it, ``(B,)`` each."""

        def one(x):
            rms = jnp.sqrt(jnp.mean((x[None] - self.points.astype(x.dtype)) ** 2, axis=tuple(range(1, x.ndim + 1))))
            return jnp.argmin(rms), jnp.min(rms)

        return jax.vmap(one)(x)
